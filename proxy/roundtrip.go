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
// One silent retry, on the same host, and only where it cannot repeat
// work: an idempotent request whose pooled keep-alive connection the
// upstream had already closed. Anything else is forward's decision.
func (u *upstream) do(req *fasthttp.Request, resp *fasthttp.Response, start time.Time, timeout time.Duration) error {
	if timeout <= 0 {
		return fasthttp.ErrTimeout
	}
	deadline := start.Add(timeout)
	req.URI().DisablePathNormalizing = true // forward the path as the client sent it
	for attempt := 0; ; attempt++ {
		retry, err := u.roundTrip(req, resp, deadline, timeout)
		if err == nil {
			return nil
		}
		if err == io.EOF {
			err = fasthttp.ErrConnectionClosed
		}
		if !retry || attempt > 0 || req.IsBodyStream() || !isIdempotent(req.Header.Method()) ||
			!errors.Is(err, fasthttp.ErrConnectionClosed) {
			return err
		}
	}
}

// roundTrip is one exchange on one connection. retry says whether the
// request may be sent again on a fresh connection (fasthttp's rule: any
// failure but a response body over the limit).
func (u *upstream) roundTrip(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, timeout time.Duration) (retry bool, err error) {
	hc := u.client
	cc, err := hc.AcquireConn(timeout, req.ConnectionClose())
	if err != nil {
		return false, err
	}
	conn := cc.Conn()
	if uc, ok := conn.(*upstreamConn); ok {
		err = uc.arm(deadline, timeout)
	} else {
		err = conn.SetDeadline(deadline)
	}
	if err != nil {
		hc.CloseConn(cc)
		return true, err
	}

	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if err != nil {
		hc.CloseConn(cc)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fasthttp.ErrTimeout
		}
		return true, err
	}

	// ReadLimitBody resets the header and body it reads into but keeps
	// the flags the server set on a client's response (no default
	// Content-Type); upstream header names are kept as they were sent.
	resp.SkipBody = req.Header.IsHead()
	resp.Header.DisableNormalizing()
	br := hc.AcquireReader(conn)
	err = resp.ReadLimitBody(br, hc.MaxResponseBodySize)
	hc.ReleaseReader(br)
	if err != nil {
		hc.CloseConn(cc)
		return !errors.Is(err, fasthttp.ErrBodyTooLarge), err
	}
	if req.ConnectionClose() || resp.ConnectionClose() {
		hc.CloseConn(cc)
	} else {
		hc.ReleaseConn(cc)
	}
	return false, nil
}
