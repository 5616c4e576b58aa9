package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/waitroom"
	"github.com/valyala/fasthttp"
)

// exchange is one client request on its way through the edge: the state
// it started on, its route, method and request ID, the upstream that
// answered; and finish, the one place where it ends, counted and logged,
// whatever path it took. Handle makes it on its stack and every helper on
// the request's path takes it, not its fields.
//
// An exchange belongs to the handler's goroutine and must not outlive the
// handler: fasthttp recycles ctx when the handler returns, so work that
// goes on after (stale-while-revalidate) copies what it needs. It must not
// be copied.
type exchange struct {
	p   *Proxy
	ctx *fasthttp.RequestCtx
	st  *state // the config the request started on, to its end

	route  *route // p.none until the request is routed, and if it never is
	method int    // methodIndex of the request's method

	// idBuf[:idLen] is the request ID: a trusted peer's X-Request-ID (at
	// most 128 bytes) or a new one. Kept in the exchange, not pointed to,
	// so that the exchange points at nothing on the handler's stack and
	// stays there itself.
	idBuf [128]byte
	idLen int

	peer    netip.Addr // the socket peer
	trusted bool       // the peer is a trusted proxy: its X-Forwarded-For counts
	// clientAddr is client()'s answer once clientSet: X-Forwarded-For is
	// parsed once a request, for the rate limit and the waiting room.
	clientAddr netip.Addr
	clientSet  bool

	// host is the upstream that answered, or the last one tried; nil when
	// no upstream was asked. upstreamTime is how long it took and retries
	// how many times the request was sent again to another upstream.
	host         *balancer.Host
	upstreamTime time.Duration
	retries      int

	// admitRoom, when set, is the waiting room that admitted this request
	// with the token admitTok: finish sets its cookie and header on the
	// answer, whatever the origin (or the edge's own error) answered.
	admitRoom *roomState
	admitTok  [waitroom.TokenLen]byte
	// guardRoom is the waiting room guarding the request's path, and
	// guardKey the game it is about there (waitroom_soldout.go): finish
	// marks the game sold out when the origin's answer says so.
	// The key is in guardKeyBuf[:guardKeyLen], or in guardKeyLong when it
	// did not fit: a slice of x's own array kept in x would move x to the
	// heap, and a waiting page allocates nothing.
	guardRoom    *roomState
	guardKeyBuf  [24]byte
	guardKeyLen  int
	guardKeyLong []byte

	// quiet is set for a request that is counted but never logged: the
	// edge's own /ping, which load balancers ask every few seconds.
	quiet bool
	// finished is set by finish, so that a panic after it (in the access
	// log, say) counts the request once.
	finished bool
}

// id is the request ID.
func (x *exchange) id() []byte { return x.idBuf[:x.idLen] }

// newExchange starts the exchange of the request in ctx, unrouted.
func (p *Proxy) newExchange(ctx *fasthttp.RequestCtx) exchange {
	return exchange{p: p, ctx: ctx, st: p.state.Load(), route: p.none, method: methodIndex(ctx.Request.Header.Method())}
}

// finish ends the exchange at end: it counts the request under its route,
// method and status, and writes its access-log line. Only its first call
// does anything.
func (x *exchange) finish(end time.Time) {
	if x.finished {
		return
	}
	x.finished = true
	if rs := x.admitRoom; rs != nil {
		x.setRoomToken(rs, x.admitTok[:], int64(rs.session/time.Second))
	}
	if x.guardRoom != nil {
		x.noteSoldOut()
	}
	status := x.ctx.Response.StatusCode()
	x.route.counts.done(x.method, status, x.ctx.Time(), end)
	if !x.quiet {
		x.accessLog(status)
	}
}

// reject answers with the edge's own error, counts its kind, and finishes
// the exchange.
func (x *exchange) reject(status int, kind, msg string) {
	writeError(x.ctx, status, msg, x.id())
	x.p.metrics.errors[kind].Inc()
	x.finish(time.Now())
}

// accessLog writes one JSON line per request: for a sampled share of
// requests, and for every 400 and 5xx; a line for a 4xx or 5xx answer
// only within access_log.error_limit for its client (see logLimiter).
func (x *exchange) accessLog(status int) {
	p, ctx := x.p, x.ctx
	al := &x.st.cfg.AccessLog
	if !al.Enabled {
		return
	}
	if status < 500 && status != fasthttp.StatusBadRequest && (al.Sample <= 0 || (al.Sample < 1 && rand.Float64() >= al.Sample)) {
		return
	}
	var suppressed uint64
	if status >= 400 {
		ok, n := p.logs.allow(&al.ErrorLimit, clientLogKey(logClient(x.st, ctx)), time.Now())
		if !ok {
			return
		}
		suppressed = n
	}
	upAddr := ""
	if x.host != nil {
		upAddr = x.host.Addr
	}
	p.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("request_id", string(x.id())),
		slog.String("method", string(ctx.Method())),
		slog.String("path", string(ctx.Path())),
		slog.String("route", x.route.name),
		slog.String("upstream", upAddr),
		slog.Int("status", status),
		slog.Float64("duration_ms", sinceMillis(ctx.Time())),
		slog.Float64("upstream_ms", float64(x.upstreamTime.Microseconds())/1000),
		slog.Int("retries", x.retries),
		slog.String("cache", string(ctx.Response.Header.Peek("X-Cache"))),
		slog.String("client", ctx.RemoteIP().String()),
		suppressedAttr(suppressed),
	)
}

// logUpstreamError logs, within access_log.error_limit for the upstream,
// why the upstream the exchange went to gave no answer.
func (x *exchange) logUpstreamError(f *upstreamFailure) {
	p := x.p
	if f.err == nil || x.host == nil {
		return
	}
	ok, suppressed := p.logs.allow(&x.st.cfg.AccessLog.ErrorLimit, upstreamLogKey(x.host.Addr), time.Now())
	if !ok || !p.log.Enabled(context.Background(), slog.LevelWarn) {
		return
	}
	p.log.LogAttrs(context.Background(), slog.LevelWarn, "upstream request failed",
		slog.String("request_id", string(x.id())), slog.String("upstream", x.host.Addr),
		slog.String("kind", f.kind), slog.String("error", f.err.Error()), suppressedAttr(suppressed))
}

// recoverPanic answers a request whose handler panicked with a 500, logs
// the panic and its stack once (within access_log.error_limit), closes
// the connection and finishes the exchange. fasthttp does not recover
// handler panics: one bad request would take the whole edge down with
// every fan's connection.
func (x *exchange) recoverPanic() {
	r := recover()
	if r == nil {
		return
	}
	p, ctx := x.p, x.ctx
	p.metrics.errors[kindPanic].Inc()
	if x.idLen == 0 {
		x.idLen = len(p.newRequestID(x.idBuf[:0]))
	}
	if ok, suppressed := p.logs.allow(&x.st.cfg.AccessLog.ErrorLimit, clientLogKey(peerAddr(ctx)), time.Now()); ok {
		p.log.Error("panic serving a request; answered 500", "request_id", string(x.id()), "path", string(ctx.Path()),
			"panic", fmt.Sprint(r), "stack", string(debug.Stack()), suppressedAttr(suppressed))
	}
	writeError(ctx, fasthttp.StatusInternalServerError, "the edge failed on this request; it has been logged", x.id())
	ctx.SetConnectionClose()
	x.finish(time.Now())
}
