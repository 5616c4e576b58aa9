//go:build linux && !portable

package transport

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// maxHeldRequest is the most of a request an upstream connection holds back
// until the response is read. Bigger requests (large purchase bodies never
// are) go out as they are written.
const maxHeldRequest = 16 << 10

// heldBufs recycles the held-request buffers: a connection owns one only
// between a request's write and its response's first byte.
var heldBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// upstreamConn is one pooled keep-alive connection from the edge to an
// upstream. HTTP/1.1 on it is strictly request, then response (fasthttp's
// HostClient never pipelines), which lets it send a request and wait for
// the answer in one poller operation.
//
// Go's net.Conn reads as soon as it is asked to. Right after a request is
// written, the upstream cannot have answered yet, so that first read(2) is
// all but certain to return EAGAIN before the goroutine parks on the
// poller: one wasted system call per proxied request (see the package
// comment for the count). HAProxy and nginx read only once epoll says a socket
// is readable. upstreamConn does the same: Write holds the request; the
// following Read sends it from inside RawConn.Read, then waits, and makes
// its first read(2) when the poller reports the answer.
//
// Sending from inside the read operation is what makes this safe. The
// runtime forgets any earlier readiness when a read operation starts
// (internal/poll prepareRead), and with edge-triggered epoll a readiness
// edge that is forgotten does not come again. Any readiness that counts
// here is caused by the request, so it can only arrive after the send,
// which comes after the reset. Unsolicited bytes or a FIN from the
// upstream while the connection was idle may be forgotten, but the
// request that follows draws an answer or a reset (a new edge), and a
// read then sees the FIN as io.EOF, as on a plain net.Conn.
//
// Write deadlines are kept, not set on the socket, until a send would
// block: a request under the socket buffer never does, so the per-request
// SetWriteDeadline (a timer update) is saved too. Read deadlines are
// re-armed only when the armed one is out of date (see arm).
//
// The request goes out with sendto(2) and the answer's first bytes come in
// with recvfrom(2), as HAProxy does: on a socket they are read(2) and
// write(2) without the file-layer steps (file position lock, permission
// and notification hooks), which cost CPU on every call and buy a socket
// nothing.
// The socket is non-blocking, so they are made as raw system calls, without
// handing the goroutine's processor to the scheduler for the call.
//
// An upstreamConn is used by one goroutine at a time, as a pooled
// HostClient connection is; it must not be copied.
type upstreamConn struct {
	tc          *net.TCPConn
	raw         syscall.RawConn
	local, peer net.Addr // fasthttp asks for both on every request

	held      *[]byte   // request bytes written and not yet sent; nil when none
	writeDL   time.Time // the deadline Write's caller asked for
	appliedDL time.Time // the write deadline the socket has
	readDL    time.Time // the read deadline the socket has

	// State of one Read, for onReadable (a method value made once, so a
	// Read allocates nothing).
	onReadable func(fd uintptr) bool
	buf        []byte
	off, n     int
	err        error
	sent       bool
	blocked    bool

	exchangeState
	onProbe  func(fd uintptr)
	probeErr error

	// eagain counts reads that found nothing and rearms read deadlines put
	// on the socket, for tests.
	eagain, rearms int
}

var _ pooledConn = (*upstreamConn)(nil)

// newUpstreamConn wraps a dialled TCP connection; anything else is returned
// as it is, and Do treats it as the plain connection it is.
func newUpstreamConn(c net.Conn) net.Conn {
	tc, raw, ok := rawTCP(c)
	if !ok {
		return c
	}
	uc := &upstreamConn{tc: tc, raw: raw, local: tc.LocalAddr(), peer: tc.RemoteAddr()}
	uc.onReadable = uc.sendThenRead
	uc.onProbe = uc.probe
	return uc
}

// begin starts an exchange, first checking the connection for a close by
// the upstream where exchangeState.start asks: one recvfrom(2) with
// MSG_PEEK, for a FIN or reset that came while the connection was idle.
func (c *upstreamConn) begin(check bool) error {
	if !c.start(check) {
		return nil
	}
	c.probeErr = nil
	if err := c.raw.Control(c.onProbe); err != nil {
		return err
	}
	return c.probeErr
}

func (c *upstreamConn) probe(fd uintptr) {
	var b [1]byte
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		var err error
		if e != 0 {
			err = e
		}
		c.probeErr = peeked(int(n), err, c.local, c.peer)
		return
	}
}

// redial replaces c's socket by a new connection to the same upstream,
// made by dial, so that c keeps its place in the HostClient's pool (and
// its count towards max_conns). On error c is closed.
func (c *upstreamConn) redial(dial func() (net.Conn, error)) error {
	c.release()
	c.tc.Close()
	nc, err := dial()
	if err != nil {
		return err
	}
	fresh, ok := nc.(*upstreamConn)
	if !ok {
		nc.Close()
		return errors.New("redial: the dialer made no TCP connection")
	}
	c.tc, c.raw, c.local, c.peer = fresh.tc, fresh.raw, fresh.local, fresh.peer
	c.writeDL, c.appliedDL, c.readDL = time.Time{}, time.Time{}, time.Time{}
	c.exchangeState = exchangeState{}
	return nil
}

// Write holds p until the next Read, up to maxHeldRequest bytes in all;
// past that, everything held and p are sent now.
func (c *upstreamConn) Write(p []byte) (int, error) {
	if c.held == nil {
		if len(p) > maxHeldRequest {
			return c.blockingWrite(p)
		}
		c.held = heldBufs.Get().(*[]byte)
	}
	if len(*c.held)+len(p) > maxHeldRequest {
		if _, err := c.flushHeldFrom(0); err != nil {
			return 0, err
		}
		return c.blockingWrite(p)
	}
	*c.held = append(*c.held, p...)
	return len(p), nil
}

// Read sends a held request and waits for the answer before the first
// read(2); with nothing held it is a plain read (the rest of a response).
func (c *upstreamConn) Read(p []byte) (int, error) {
	if c.held == nil {
		return c.readPlain(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	c.buf, c.off, c.n, c.err, c.sent, c.blocked = p, 0, 0, nil, false, false
	rerr := c.raw.Read(c.onReadable)
	c.buf = nil
	switch {
	case rerr != nil:
		// A deadline, or the connection closed under us. Whatever was not
		// sent never will be: the caller closes this connection on error.
		c.release()
		return 0, relabel(rerr, "read")
	case c.blocked:
		// The socket buffer was full: finish the send the ordinary way,
		// under the write deadline, then read the ordinary way.
		if _, err := c.flushHeldFrom(c.off); err != nil {
			return 0, err
		}
		return c.readPlain(p)
	}
	c.release()
	if c.err != nil {
		return 0, c.err
	}
	if c.n == 0 {
		return 0, io.EOF
	}
	return c.n, nil
}

// readPlain is a read with nothing to send first.
func (c *upstreamConn) readPlain(p []byte) (int, error) {
	n, err := c.tc.Read(p)
	if n > 0 {
		c.answered = true
	}
	return n, err
}

// sendThenRead runs under the poller's read lock: the first call sends the
// held request and asks to wait; later calls (each after the poller says
// readable) read.
func (c *upstreamConn) sendThenRead(fd uintptr) bool {
	if !c.sent {
		held := *c.held
		for c.off < len(held) {
			n, err := send(fd, held[c.off:])
			switch {
			case err == syscall.EAGAIN:
				c.blocked = true
				return true
			case err != nil:
				c.err = c.opError("write", err)
				return true
			}
			c.off += n
			c.wrote = true
		}
		c.sent = true
		return false // the answer cannot be there yet: wait for it
	}
	n, err := recv(fd, c.buf)
	switch {
	case err == syscall.EAGAIN:
		c.eagain++
		return false // woken early: wait again
	case err != nil:
		c.err = c.opError("read", err)
		return true
	}
	c.n = n
	c.answered = n > 0
	return true
}

// flushHeldFrom sends what is held from off on, blocking under the write
// deadline, and lets the buffer go.
func (c *upstreamConn) flushHeldFrom(off int) (int, error) {
	if c.held == nil {
		return 0, nil
	}
	n, err := c.blockingWrite((*c.held)[off:])
	c.release()
	return n, err
}

func (c *upstreamConn) blockingWrite(p []byte) (int, error) {
	if !c.appliedDL.Equal(c.writeDL) {
		if err := c.tc.SetWriteDeadline(c.writeDL); err != nil {
			return 0, err
		}
		c.appliedDL = c.writeDL
	}
	n, err := c.tc.Write(p)
	if n > 0 {
		c.wrote = true
	}
	return n, err
}

func (c *upstreamConn) release() {
	if c.held != nil {
		*c.held = (*c.held)[:0]
		if cap(*c.held) <= maxHeldRequest {
			heldBufs.Put(c.held)
		}
		c.held = nil
	}
}

func (c *upstreamConn) opError(op string, errno error) error {
	return sockError(op, errno, c.local, c.peer)
}

// Close drops anything held: the caller closes a connection only when it
// is done with it, and a request it wrote but did not read the answer to
// is one it gave up on.
func (c *upstreamConn) Close() error {
	c.release()
	return c.tc.Close()
}

func (c *upstreamConn) LocalAddr() net.Addr  { return c.local }
func (c *upstreamConn) RemoteAddr() net.Addr { return c.peer }

// arm sets the deadlines of one exchange: the request must be sent and its
// answer read by d, timeout from the exchange's start.
//
// The write deadline is kept for a send that blocks. Setting a read
// deadline costs two clock reads and a runtime timer update, so an armed
// read deadline no earlier than d and at most timeout/64 later is kept as
// it is, and a new one is armed that much late: under steady traffic a
// connection re-arms once per timeout/64 (156 ms for the default 10 s)
// instead of on every request, and a timeout fires at most 1.6% late.
// An armed deadline earlier than d, a stale one that already fired while
// the connection sat idle included, is always replaced.
func (c *upstreamConn) arm(d time.Time, timeout time.Duration) error {
	c.writeDL = d
	if late := c.readDL.Sub(d); late >= 0 && late <= timeout>>6 {
		return nil
	}
	return c.SetReadDeadline(d.Add(timeout >> 6))
}

func (c *upstreamConn) SetDeadline(t time.Time) error {
	c.writeDL = t
	return c.SetReadDeadline(t)
}

func (c *upstreamConn) SetReadDeadline(t time.Time) error {
	c.rearms++
	if err := c.tc.SetReadDeadline(t); err != nil {
		c.readDL = time.Time{}
		return err
	}
	c.readDL = t
	return nil
}

// SetWriteDeadline is applied when a send has to block (see blockingWrite).
func (c *upstreamConn) SetWriteDeadline(t time.Time) error {
	c.writeDL = t
	return nil
}
