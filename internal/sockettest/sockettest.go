//go:build linux

// Package sockettest makes TCP connections with small socket buffers, for
// tests of what a sender does when the client does not keep up.
package sockettest

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// BufSize is the socket buffer these tests ask for: small, so that a
// response of a few hundred KiB cannot hide in the kernel and a send
// really waits for the client. Linux doubles the value asked for, so
// 16 KiB is 32 KiB.
const BufSize = 16 << 10

// smallWindow is a Dialer.Control that sets SO_RCVBUF to BufSize and the
// segment size to Ethernet's before connecting. Loopback's 64 KiB
// segments would make a small window useless: a receiver opens a zero
// window again only once a whole segment fits (RFC 1122 §4.2.3.3, silly
// window avoidance), so the sender would stall on zero-window probes,
// with backoff, not on the reader.
func smallWindow(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = errors.Join(
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, BufSize),
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 1460))
	}); err != nil {
		return err
	}
	return serr
}

// DialSmallWindow connects to addr with a small receive buffer, set
// before the handshake so the window the client offers is small from the
// start; the connection is closed when t ends.
func DialSmallWindow(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, Control: smallWindow}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}
