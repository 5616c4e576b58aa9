package transport

import (
	"errors"
	"io"
	"net"
	"os"
	"time"

	"github.com/valyala/fasthttp"
)

// Upstream carries requests to one upstream over its pooled keep-alive
// connections. Set its fields before the first Do and never change them;
// Do is safe for concurrent use. An Upstream must not be copied.
type Upstream struct {
	// Client keeps the connection pool: dialling (make Dial with Dialer,
	// or the pool's connections are plain ones), the connection limit and
	// idle-connection cleanup. Requests go through Do, not Client.Do, so
	// Client's request options are unused.
	Client *fasthttp.HostClient

	// Duration, when set, is given the seconds of each Do that got an
	// answer, from its start to the answer read.
	Duration Observer

	// Resent, when set, is called for each request Do sends again on a
	// fresh connection after the upstream closed a pooled one under it.
	Resent func()
}

// Observer takes one measurement (a Prometheus histogram's Observe).
type Observer interface {
	Observe(float64)
}

// pooledConn is what Do needs of a pooled connection beyond net.Conn, to
// send a request again when the upstream closed the connection under it,
// and on Linux to save its system calls. Dialer's connections have it: the
// Linux upstreamConn and the portable plainUpstreamConn. A connection made
// by another dialer (a test's in-memory one) does not, and Do then sets
// its deadlines on every request and never resends on it.
type pooledConn interface {
	net.Conn
	// begin starts an exchange; with check, a reused connection is first
	// checked for a close by the upstream (see exchangeState.start).
	begin(check bool) error
	// arm sets the deadlines of an exchange that must end by d, timeout
	// from its start.
	arm(d time.Time, timeout time.Duration) error
	// stale says whether the exchange that just failed may be sent again
	// on a fresh connection, as if it had not been tried.
	stale(replayable bool) bool
	// redial replaces the socket by a new connection made by dial.
	redial(dial func() (net.Conn, error)) error
	// markReused marks the connection as one an exchange got its answer on.
	markReused()
}

// exchangeState is what the exchange in progress on a pooled connection
// has done, for Do's decision to send its request again on a fresh
// connection. Both kinds of pooledConn embed it and record wrote and
// answered as bytes really leave and arrive, so the rule of when a
// request may be sent twice is this one, whatever the connection.
type exchangeState struct {
	reused   bool // an earlier exchange on this socket got its answer
	wrote    bool // some byte of this exchange's request went into the socket
	answered bool // some byte of its answer came back
}

// start begins an exchange and says whether the connection must first be
// checked for a close by the upstream while it sat in the pool: only a
// connection an earlier exchange used, and only when the caller asks
// (check, for a request that must not be sent twice). A closed one is
// found before the request is sent, errUpstreamClosed, so the request
// provably never reached the upstream. The check narrows the window in
// which such a request can be lost to an idle close to the moment between
// the check and the send; a request that may be sent twice needs none,
// since Do resends it after a failure.
func (s *exchangeState) start(check bool) bool {
	s.wrote, s.answered = false, false
	return check && s.reused
}

// stale says whether the exchange that just failed may be sent again on a
// fresh connection, as if it had not been tried: it failed on a
// connection an earlier exchange used, before any byte of its answer came,
// and it may be sent twice (replayable) or provably never left the edge.
// That is the upstream closing a pooled connection, at its keep-alive
// timeout or on a restart, just before or as the edge used it. nginx
// likewise does not count a failure on a cached connection as a try
// (ngx_http_upstream_next), and Go's Transport resends on a new
// connection (persistConn.shouldRetryRequest).
func (s *exchangeState) stale(replayable bool) bool {
	return s.reused && !s.answered && (replayable || !s.wrote)
}

// markReused records that an exchange got its answer on the connection,
// so a later failure on it may be the upstream closing it while it sat in
// the pool.
func (s *exchangeState) markReused() { s.reused = true }

// errUpstreamClosed is a pooled connection found closed by the upstream
// before a request was sent on it.
var errUpstreamClosed = errors.New("the upstream had closed the pooled connection")

// errIdleBytes is a pooled connection the upstream sent bytes on while it
// sat idle: whatever they are, the connection's framing is lost.
var errIdleBytes = errors.New("the upstream sent bytes on an idle connection")

// Do sends req to the upstream over one of its pooled keep-alive
// connections and reads the answer into resp, giving up at start+timeout.
// It returns when the exchange ended, the one clock read it makes.
//
// It is fasthttp's HostClient.Do and default transport with what the edge
// does not use taken out (redirects, streamed bodies, user agents, TLS):
// the pool, the dialer, the connection limit and the idle-connection
// cleaner are still the HostClient's. What is different is the clock:
// HostClient.DoTimeout reads it four times per request to turn the timeout
// into deadlines, and sets the read deadline (two more reads and a runtime
// timer update) on every request. Here the caller's start time makes the
// deadline, and an upstreamConn re-arms its read deadline only when the
// armed one is out of date (see upstreamConn.arm).
//
// A request that fails on a pooled connection an earlier request used,
// before any byte of its answer, is sent again at once on a fresh
// connection to the same upstream, where that cannot do its work twice
// (exchangeState.stale), on every system: replayable says it may be sent twice (an idempotent
// method, or an Idempotency-Key); anything else only when it provably
// never left the edge. That is an upstream closing an idle keep-alive
// connection (Node's keepAliveTimeout is 5 s by default) as the edge took
// it from the pool. It is not a retry: it goes to the same upstream, and
// the caller neither counts it as one nor blames the upstream for it. A
// failure on a fresh connection, or once an answer has begun, is the
// caller's to handle.
func (u *Upstream) Do(req *fasthttp.Request, resp *fasthttp.Response, start time.Time, timeout time.Duration, replayable bool) (end time.Time, err error) {
	err = u.do(req, resp, start, timeout, replayable)
	end = time.Now()
	if err == nil && u.Duration != nil {
		u.Duration.Observe(end.Sub(start).Seconds())
	}
	return end, err
}

func (u *Upstream) do(req *fasthttp.Request, resp *fasthttp.Response, start time.Time, timeout time.Duration, replayable bool) error {
	if timeout <= 0 {
		return fasthttp.ErrTimeout
	}
	deadline := start.Add(timeout)
	// Forward the path the caller normalised, byte for byte: the form it
	// was routed and keyed by. fasthttp's own normalisation would decode
	// the escapes that form keeps (%3B, %C3%A9).
	req.URI().DisablePathNormalizing = true
	hc := u.Client
	cc, err := hc.AcquireConn(timeout, req.ConnectionClose())
	if err != nil {
		return err
	}
	conn := cc.Conn()
	pc, _ := conn.(pooledConn) // nil for a plain connection
	for {
		err = u.exchange(conn, pc, req, resp, deadline, timeout, !replayable)
		if err == nil {
			break
		}
		if pc == nil || !pc.stale(replayable) || req.IsBodyStream() || errors.Is(err, fasthttp.ErrTimeout) {
			hc.CloseConn(cc)
			if err == io.EOF {
				err = fasthttp.ErrConnectionClosed
			}
			return err
		}
		if u.Resent != nil {
			u.Resent()
		}
		if err = pc.redial(u.dial); err != nil {
			hc.CloseConn(cc)
			return err
		}
	}
	if req.ConnectionClose() || resp.ConnectionClose() {
		hc.CloseConn(cc)
		return nil
	}
	if pc != nil {
		pc.markReused()
	}
	hc.ReleaseConn(cc)
	return nil
}

// dial makes a new connection to the upstream with the HostClient's dialer.
func (u *Upstream) dial() (net.Conn, error) { return u.Client.Dial(u.Client.Addr) }

// exchange is one request and its answer on conn (pc when it is a
// pooledConn); check has a reused connection checked for a close by the
// upstream before the request is sent (upstreamConn.begin).
func (u *Upstream) exchange(conn net.Conn, pc pooledConn, req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, timeout time.Duration, check bool) error {
	var err error
	if pc != nil {
		if err = pc.begin(check); err == nil {
			err = pc.arm(deadline, timeout)
		}
	} else {
		err = conn.SetDeadline(deadline)
	}
	if err != nil {
		return err
	}

	hc := u.Client
	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fasthttp.ErrTimeout
		}
		return err
	}

	// ReadLimitBody resets the header and body it reads into but keeps
	// the flags the server set on a client's response (no default
	// Content-Type); upstream header names are kept as they were sent.
	resp.SkipBody = req.Header.IsHead()
	resp.Header.DisableNormalizing()
	br := hc.AcquireReader(conn)
	err = resp.ReadLimitBody(br, hc.MaxResponseBodySize)
	hc.ReleaseReader(br)
	return err
}

// Dialer is a HostClient.Dial that connects within timeout and wraps each
// connection so that Do can send a request again when the upstream closed
// the connection under it, and on Linux save its system calls: an
// upstreamConn there, a plainUpstreamConn elsewhere.
func Dialer(timeout time.Duration) fasthttp.DialFunc {
	return func(addr string) (net.Conn, error) {
		c, err := fasthttp.DialTimeout(addr, timeout)
		if err != nil {
			return nil, err
		}
		return newUpstreamConn(c), nil
	}
}

// plainUpstreamConn is the portable pooled connection, for systems without
// upstreamConn's system calls: reads and writes are the dialled net.Conn's
// own, and Do sets both deadlines on every request. What it adds is what
// Do needs to send a request again when the upstream closed the
// connection under it, under the same rule as on Linux (exchangeState):
// it records whether a byte of the request left and a byte of the answer
// came, and checks an idle connection for a close before a request that
// must not be sent twice (probe).
//
// Dialer makes it where upstreamConn does not run; on Linux tests make it
// too, to run the fallback. It is used by one goroutine at a time, as a
// pooled HostClient connection is; it must not be copied.
type plainUpstreamConn struct {
	net.Conn
	exchangeState
}

var _ pooledConn = (*plainUpstreamConn)(nil)

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
