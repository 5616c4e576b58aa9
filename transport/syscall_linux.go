//go:build linux && !portable

package transport

import (
	"errors"
	"net"
	"syscall"
	"unsafe"
)

// rawTCP is c as a TCP connection and its raw socket, for the wrappers
// that make their own system calls; ok is false for anything else.
func rawTCP(c net.Conn) (tc *net.TCPConn, raw syscall.RawConn, ok bool) {
	tc, ok = c.(*net.TCPConn)
	if !ok {
		return nil, nil, false
	}
	raw, err := tc.SyscallConn()
	return tc, raw, err == nil
}

// relabel makes RawConn's "raw-read" errors read like any other read error
// (fasthttp and the logs see "read tcp ...: i/o timeout").
func relabel(err error, op string) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		e := *oe
		e.Op = op
		return &e
	}
	return err
}

// send is sendto(2) of p on the connected socket fd, with MSG_NOSIGNAL: a
// peer that reset the connection is an EPIPE error, never a signal.
// It and recv (and sendv) retry a call a signal interrupted, so callers
// see only EAGAIN and real errors.
func send(fd uintptr, p []byte) (int, error) {
	raceSend(p)
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), syscall.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}

// recv is recvfrom(2) into p on the connected socket fd.
func recv(fd uintptr, p []byte) (int, error) {
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), 0, 0, 0)
		switch e {
		case 0:
			raceRecv(fd, p[:n])
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}

// sendv is writev(2) of both slices of v on the connected socket fd (both
// non-empty).
func sendv(fd uintptr, v *[2][]byte) (int, error) {
	var iov [2]syscall.Iovec
	for i := range v {
		raceSend(v[i])
		iov[i].Base = unsafe.SliceData(v[i])
		iov[i].SetLen(len(v[i]))
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), 2)
		switch e {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}
