//go:build unix

package transport

import (
	"net"
	"os"
	"syscall"
)

// peeked is what a one-byte recvfrom(2) with MSG_PEEK on an idle pooled
// connection, made without waiting, found (errno nil when the call
// succeeded): nil while the connection is open (EAGAIN, nothing waiting),
// errUpstreamClosed for the upstream's FIN, errIdleBytes for bytes nobody
// asked for, and any other failure (a reset) as the read error it is.
// Both the Linux and the portable connection check with it.
func peeked(n int, errno error, local, peer net.Addr) error {
	switch {
	case errno == syscall.EAGAIN:
		return nil
	case errno != nil:
		return sockError("read", errno, local, peer)
	case n == 0:
		return errUpstreamClosed
	default:
		return errIdleBytes
	}
}

// sockError is a failed system call on a socket as net.Conn reports it
// ("read tcp A->B: ...").
func sockError(op string, errno error, local, peer net.Addr) error {
	return &net.OpError{Op: op, Net: "tcp", Source: local, Addr: peer, Err: os.NewSyscallError(op, errno)}
}
