//go:build linux && !portable

package transport

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// native says whether the raw connections run here.
const native = true

// clientConn is a client's connection to the edge, under fasthttp's
// server. It changes three things about a *net.TCPConn, all about cost
// per request; what fasthttp and the client see is the same.
//
// Read deadlines are applied lazily. fasthttp sets one before each
// request (the idle timeout) and another once its first byte is in (the
// header timeout): two clock reads and a runtime timer update each. Here
// SetReadDeadline only records the deadline; it is put on the socket when
// a read finds nothing and must wait, and a deadline already on the
// socket that is no earlier than the wanted one and at most slack later
// (1/64 of the shortest client timeout: 78 ms with the defaults) is left
// as it is. So a keep-alive connection re-arms its timer about once per
// slack, and a client timeout fires at most slack late. A deadline on the
// socket that passes while no read is waiting (a long request to a slow
// upstream) is not a timeout: the read re-arms the wanted one and goes on.
//
// The write timeout (timeouts.write) is nginx's send_timeout: it bounds
// how long a send waits for the client to take a byte, not the whole
// response, so a slow but steady download of any size finishes, and a
// client that pipelines requests and never reads is closed. It too is put
// on the socket only when a send must wait: a response the socket buffer
// takes at once, nearly every one, costs no clock read and no timer
// update. A wait arms now+timeout, or keeps an armed deadline no earlier
// than that and at most slack later, so a long download re-arms about once
// per slack, and a stalled client is closed at most slack late. A
// deadline left on the socket by an earlier wait (the connection has been
// idle since, or busy reading) is not a timeout of the send in progress:
// it is replaced, as a stale read deadline is. fasthttp's own
// SetWriteDeadline calls (the zero deadline around a FlushBig response)
// are only recorded.
//
// Reads and writes are recvfrom(2) and sendto(2), without the file
// layer's steps (see upstreamConn).
//
// fasthttp sends a response bigger than its 4 KiB write buffer with one
// writev(2) on a *net.TCPConn and in two writes on anything else: its
// full buffer, then the rest. For a body over the buffer (the handler says
// so through FlushBig) clientConn holds that full buffer and sends it with
// the rest in one writev. Only then: the rest is certain to follow within
// the same response, because the body alone overflows the buffer and
// FlushBig has fasthttp flush the response at once, even with a pipelined
// request waiting (fasthttp keeps responses in its buffer while one waits,
// which its writev path had avoided for big ones). So nothing is ever
// held across requests, and a connection fasthttp sees idle holds nothing.
type clientConn struct {
	*net.TCPConn // addresses, the socket options
	raw          syscall.RawConn
	l            *Listener // slack, the write timeout and its hook

	wantRD, armedRD time.Time

	// wantWD is the caller's write deadline (SetWriteDeadline), a bound on
	// top of the write timeout; armedWD the write deadline on the socket;
	// stallWD the deadline the send in progress waits under (zero while
	// it has not waited).
	wantWD, armedWD, stallWD time.Time

	// bigBody is set by FlushBig for the response being written; held is
	// its first, full buffer until the rest comes. Both belong to the
	// serving goroutine.
	bigBody bool
	held    *[]byte

	// State of one Read or Write, for the callbacks (method values made
	// once, so neither allocates).
	onRead, onWrite func(fd uintptr) bool
	buf             []byte
	vec             [2][]byte
	n               int
	err             error

	// rearms counts read deadlines put on the socket, wrearms write
	// deadlines, and sends the send system calls, for tests.
	rearms, wrearms, sends int
}

// newClientConn wraps an accepted connection: a clientConn for a TCP
// connection, the portable plainClientConn for anything else or when l
// asks for it.
func newClientConn(c net.Conn, l *Listener) net.Conn {
	tc, raw, ok := rawTCP(c)
	if !ok || l.plain {
		return &plainClientConn{Conn: c, l: l}
	}
	cc := &clientConn{TCPConn: tc, raw: raw, l: l}
	cc.onRead = cc.readOnce
	cc.onWrite = cc.writeOnce
	return cc
}

// SetReadDeadline records t; Read applies it when it has to wait.
func (c *clientConn) SetReadDeadline(t time.Time) error {
	c.wantRD = t
	return nil
}

// SetWriteDeadline records t; a send that has to wait applies it, or the
// write timeout when that comes first.
func (c *clientConn) SetWriteDeadline(t time.Time) error {
	c.wantWD = t
	return nil
}

func (c *clientConn) SetDeadline(t time.Time) error {
	c.wantRD, c.wantWD = t, t
	return nil
}

func (c *clientConn) Read(p []byte) (int, error) {
	c.bigBody = false
	if h := c.held; h != nil { // not expected: the rest always follows
		c.held = nil
		_, err := c.writev(*h, nil)
		fullBufs.Put(h)
		if err != nil {
			return 0, err
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		c.buf, c.n, c.err = p, 0, nil
		err := c.raw.Read(c.onRead)
		c.buf = nil
		switch {
		case err == nil && c.err != nil:
			return 0, c.err
		case err == nil && c.n == 0:
			return 0, io.EOF
		case err == nil:
			return c.n, nil
		case errors.Is(err, os.ErrDeadlineExceeded) && c.earlyDeadline():
			continue
		}
		return 0, relabel(err, "read")
	}
}

// readOnce runs under the poller's read lock each time the socket may be
// readable.
func (c *clientConn) readOnce(fd uintptr) bool {
	n, err := recv(fd, c.buf)
	switch {
	case err == syscall.EAGAIN:
		c.err = c.armRead()
		return c.err != nil // wait, unless the deadline could not be set
	case err != nil:
		c.err = c.opError("read", err)
		return true
	}
	c.n = n
	return true
}

// armRead puts the wanted read deadline on the socket unless the one there
// already does (see clientConn).
func (c *clientConn) armRead() error {
	want := c.wantRD
	switch {
	case want.IsZero() && c.armedRD.IsZero():
		return nil
	case want.IsZero():
		return c.putReadDeadline(want) // clear the one on the socket
	}
	if late := c.armedRD.Sub(want); !c.armedRD.IsZero() && late >= 0 && late <= c.l.Slack {
		return nil
	}
	return c.putReadDeadline(want.Add(c.l.Slack))
}

// earlyDeadline says whether a read deadline that fired was one put on the
// socket for an earlier wait, not the one wanted now, and if so puts the
// wanted one there.
func (c *clientConn) earlyDeadline() bool {
	if !c.wantRD.IsZero() && !time.Now().Before(c.wantRD) {
		return false
	}
	return c.putReadDeadline(c.wantRD) == nil
}

// putReadDeadline sets the socket's read deadline and remembers it.
func (c *clientConn) putReadDeadline(t time.Time) error {
	c.rearms++
	c.armedRD = time.Time{}
	if err := c.TCPConn.SetReadDeadline(t); err != nil {
		return err
	}
	c.armedRD = t
	return nil
}

// Write sends p, waiting (under the write deadline) while the socket
// buffer is full; the full buffer of a big response is held for the rest
// (see clientConn).
func (c *clientConn) Write(p []byte) (int, error) {
	if h := c.held; h != nil {
		c.held = nil
		n, err := c.writev(*h, p)
		fullBufs.Put(h)
		return max(0, n-WriteBufferSize), err
	}
	if c.bigBody {
		c.bigBody = false // the response's first write decides
		if len(p) == WriteBufferSize {
			b := fullBufs.Get().(*[]byte)
			copy(*b, p)
			c.held = b
			return len(p), nil
		}
	}
	return c.writev(p, nil)
}

var fullBufs = sync.Pool{New: func() any { b := make([]byte, WriteBufferSize); return &b }}

// writev sends a then b in as few system calls as the socket allows,
// waiting while its buffer is full (see clientConn for the write
// timeout), and returns how many bytes went out.
func (c *clientConn) writev(a, b []byte) (int, error) {
	c.vec[0], c.vec[1], c.n, c.err = a, b, 0, nil
	c.stallWD = time.Time{}
	err := c.raw.Write(c.onWrite)
	for err != nil && errors.Is(err, os.ErrDeadlineExceeded) && c.staleWriteDeadline() {
		err = c.raw.Write(c.onWrite)
	}
	c.vec[0], c.vec[1] = nil, nil
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && c.l.OnWriteTimeout != nil {
			c.l.OnWriteTimeout(c)
		}
		return c.n, relabel(err, "write")
	}
	return c.n, c.err
}

// armWrite puts on the socket the deadline of a send that must wait: the
// write timeout from now (every wait follows a send that made progress, or
// starts the write), or the caller's deadline when that is earlier. An
// armed deadline no earlier than that and at most slack later stays.
func (c *clientConn) armWrite() error {
	want := c.wantWD
	if t := c.l.WriteTimeout; t > 0 {
		if d := time.Now().Add(t); want.IsZero() || d.Before(want) {
			want = d
		}
	}
	c.stallWD = want
	switch {
	case want.IsZero() && c.armedWD.IsZero():
		return nil
	case want.IsZero():
		return c.putWriteDeadline(want)
	}
	if late := c.armedWD.Sub(want); !c.armedWD.IsZero() && late >= 0 && late <= c.l.Slack {
		return nil
	}
	return c.putWriteDeadline(want.Add(c.l.Slack))
}

// staleWriteDeadline says whether a write deadline that fired was not the
// one the send in progress waits under (one armed for an earlier wait,
// which the runtime reports before the send even starts), and if so puts
// that one there instead, so the send can go on.
func (c *clientConn) staleWriteDeadline() bool {
	if !c.stallWD.IsZero() && !time.Now().Before(c.stallWD) {
		return false
	}
	return c.putWriteDeadline(c.stallWD) == nil
}

// putWriteDeadline sets the socket's write deadline and remembers it.
func (c *clientConn) putWriteDeadline(t time.Time) error {
	c.wrearms++
	c.armedWD = time.Time{}
	if err := c.TCPConn.SetWriteDeadline(t); err != nil {
		return err
	}
	c.armedWD = t
	return nil
}

// writeOnce runs under the poller's write lock each time the socket may
// be writable.
func (c *clientConn) writeOnce(fd uintptr) bool {
	for len(c.vec[0])+len(c.vec[1]) > 0 {
		var n int
		var err error
		switch {
		case len(c.vec[1]) == 0:
			n, err = send(fd, c.vec[0])
		case len(c.vec[0]) == 0:
			n, err = send(fd, c.vec[1])
		default:
			n, err = sendv(fd, &c.vec)
		}
		c.sends++
		switch {
		case err == syscall.EAGAIN:
			if c.err = c.armWrite(); c.err != nil {
				return true // the deadline could not be set
			}
			return false
		case err != nil:
			c.err = c.opError("write", err)
			return true
		}
		c.n += n
		for i := range c.vec {
			k := min(n, len(c.vec[i]))
			c.vec[i] = c.vec[i][k:]
			n -= k
		}
	}
	return true
}

func (c *clientConn) opError(op string, errno error) error {
	return sockError(op, errno, c.LocalAddr(), c.RemoteAddr())
}

// expectBig marks c's next response as bigger than the write buffer
// (see clientConn); any other connection has nothing to hold.
func expectBig(c net.Conn) {
	if cc, ok := c.(*clientConn); ok {
		cc.bigBody = true
	}
}
