//go:build !linux || portable

package transport

import (
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// plainUpstreamConn is the portable pooled connection, for systems without
// upstreamConn's system calls: reads and writes are the dialled net.Conn's
// own, and Do sets both deadlines on every request. What it adds is what
// Do needs to send a request again when the upstream closed the
// connection under it, under the same rule as on Linux (exchangeState):
// it records whether a byte of the request left and a byte of the answer
// came, and checks an idle connection for a close before a request that
// must not be sent twice (probe).
//
// It is used by one goroutine at a time, as a pooled HostClient
// connection is; it must not be copied.
type plainUpstreamConn struct {
	net.Conn
	exchangeState
}

var _ pooledConn = (*plainUpstreamConn)(nil)

// newUpstreamConn wraps a dialled connection in a plainUpstreamConn.
func newUpstreamConn(c net.Conn) net.Conn { return &plainUpstreamConn{Conn: c} }

func (c *plainUpstreamConn) begin(check bool) error {
	if !c.start(check) {
		return nil
	}
	return probe(c.Conn)
}

func (c *plainUpstreamConn) arm(d time.Time, _ time.Duration) error {
	return c.Conn.SetDeadline(d)
}

func (c *plainUpstreamConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.wrote = true
	}
	return n, err
}

func (c *plainUpstreamConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.answered = true
	}
	return n, err
}

// redial replaces c's connection by a new one to the same upstream, made
// by dial, so that c keeps its place in the HostClient's pool (and its
// count towards max_conns). On error c is closed.
func (c *plainUpstreamConn) redial(dial func() (net.Conn, error)) error {
	c.Conn.Close()
	nc, err := dial()
	if err != nil {
		return err
	}
	if fresh, ok := nc.(*plainUpstreamConn); ok {
		nc = fresh.Conn
	}
	c.Conn = nc
	c.exchangeState = exchangeState{}
	return nil
}

// probeWait is how long readProbe waits for a FIN on a connection that
// turns out to be open: the price of the check, paid only by a request
// that must not be sent twice, on a reused connection, on a system
// without a non-blocking peek.
const probeWait = time.Millisecond

// readProbe checks c for a close by the upstream with net.Conn alone: a
// one-byte read under a deadline probeWait away. A FIN or reset that came
// while c sat idle is waiting and is read at once; on an open connection
// the read times out. If the goroutine is held up for longer than
// probeWait before the read, the deadline fires first and the check finds
// nothing: the request then goes out as it would without a check. The
// byte a read may take is of no use anyway (errIdleBytes): the caller
// closes the connection on any error.
func readProbe(c net.Conn) error {
	if err := c.SetReadDeadline(time.Now().Add(probeWait)); err != nil {
		return err
	}
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return errIdleBytes
	case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		return nil
	case errors.Is(err, io.EOF):
		return errUpstreamClosed
	default:
		return err
	}
}
