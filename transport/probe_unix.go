//go:build unix

package transport

import (
	"net"
	"syscall"
)

// probe checks an idle plainUpstreamConn for a close by the upstream as
// the Linux upstreamConn does, with one recvfrom(2) with MSG_PEEK that does
// not wait (Go's sockets are non-blocking); a connection without a raw
// socket is checked by readProbe.
func probe(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return readProbe(c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return readProbe(c)
	}
	var perr error
	if err := raw.Control(func(fd uintptr) {
		var b [1]byte
		for {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
			if err != syscall.EINTR {
				perr = peeked(n, err, c.LocalAddr(), c.RemoteAddr())
				return
			}
		}
	}); err != nil {
		return err
	}
	return perr
}
