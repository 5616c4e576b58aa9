package proxy

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// do sends req to the upstream over one of its pooled keep-alive
// connections and reads the answer into resp, giving up at start+timeout.
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
// (upstreamConn.stale): replayable says it may be sent twice (an
// idempotent method, or an Idempotency-Key); anything else only when it
// provably never left the edge. That is an upstream closing an idle
// keep-alive connection (Node's keepAliveTimeout is 5 s by default) as
// the edge took it from the pool. It is not a retry: it goes to the same upstream, it is not
// counted, and the upstream is not blamed for it. A failure on a fresh
// connection, or once an answer has begun, is the caller's to handle.
func (u *upstream) do(req *fasthttp.Request, resp *fasthttp.Response, start time.Time, timeout time.Duration, replayable bool) error {
	if timeout <= 0 {
		return fasthttp.ErrTimeout
	}
	deadline := start.Add(timeout)
	// Forward the path Handle normalised (requestPath), byte for byte:
	// the form it was routed and keyed by. fasthttp's own normalisation
	// would decode the escapes that form keeps (%3B, %C3%A9).
	req.URI().DisablePathNormalizing = true
	hc := u.client
	cc, err := hc.AcquireConn(timeout, req.ConnectionClose())
	if err != nil {
		return err
	}
	conn := cc.Conn()
	uc, _ := conn.(*upstreamConn) // nil only for a test's in-memory dialer
	for {
		err = u.exchange(conn, uc, req, resp, deadline, timeout, !replayable)
		if err == nil {
			break
		}
		if uc == nil || !uc.stale(replayable) || req.IsBodyStream() || errors.Is(err, fasthttp.ErrTimeout) {
			hc.CloseConn(cc)
			if err == io.EOF {
				err = fasthttp.ErrConnectionClosed
			}
			return err
		}
		u.stale.Inc()
		if err = uc.redial(u.dial); err != nil {
			hc.CloseConn(cc)
			return err
		}
	}
	if req.ConnectionClose() || resp.ConnectionClose() {
		hc.CloseConn(cc)
		return nil
	}
	if uc != nil {
		uc.reused = true
	}
	hc.ReleaseConn(cc)
	return nil
}

// dial makes a new connection to the upstream with the HostClient's dialer.
func (u *upstream) dial() (net.Conn, error) { return u.client.Dial(u.client.Addr) }

// exchange is one request and its answer on conn (uc when it is an
// upstreamConn); check has a reused connection checked for a close by the
// upstream before the request is sent (upstreamConn.begin).
func (u *upstream) exchange(conn net.Conn, uc *upstreamConn, req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, timeout time.Duration, check bool) error {
	var err error
	if uc != nil {
		if err = uc.begin(check); err == nil {
			err = uc.arm(deadline, timeout)
		}
	} else {
		err = conn.SetDeadline(deadline)
	}
	if err != nil {
		return err
	}

	hc := u.client
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
