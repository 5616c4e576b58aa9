// Package proxy is the fasthttp edge server: routing, forwarding over pooled
// keep-alive connections, header hygiene, limits and timeouts, the edge's
// own error pages, and the admin endpoints.
package proxy

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/cache"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/ratelimit"
	"github.com/podium-edge/podium/transport"
	"github.com/podium-edge/podium/waitroom"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/singleflight"
)

// maxResponseBytes bounds a buffered upstream response. The ticket API's
// largest answer, the full listing, is well under 1 MiB.
const maxResponseBytes = 32 << 20

// Proxy is the edge's request handler and the servers around it. Build it
// with New; the zero value is not usable.
//
// A Proxy is safe for concurrent use; it must not be copied.
type Proxy struct {
	// boot is the config the process started with. Its restart-only keys
	// (listeners, limits, the upstream connection pool) are read from it;
	// everything that reloads is read from state.
	boot    *config.Edge
	state   atomic.Pointer[state]
	none    *route // counts requests that matched no route or failed before routing
	pool    *balancer.Pool
	metrics *Metrics
	log     *slog.Logger
	limits  *ratelimit.Set
	store   *cache.Store       // nil when no route caches
	flight  singleflight.Group // one origin fetch per cache key
	logs    *logLimiter        // bounds error lines per client (access_log.error_limit)

	draining      atomic.Bool
	warming       atomic.Bool
	active        atomic.Int64 // client requests in flight, for the retry budget
	activeRetries atomic.Int64
	idPrefix      [16]byte // hex of 8 random bytes, fixed per process
	idCounter     atomic.Uint64

	server *fasthttp.Server

	// The waiting rooms' clock, tick interval (0: tests tick by hand),
	// history store, and the runtime of each room by name, which outlives
	// reloads that leave a room's name, epoch and opening alone.
	clock     waitroom.Clock
	tickEvery time.Duration
	roomStore *waitroom.FileStore
	roomsMu   sync.Mutex // guards rooms
	rooms     map[string]*roomRuntime
	bg        context.Context // ends on Close: the rooms' tickers
	stopBg    context.CancelFunc
	// tickers counts the rooms' running tickers, so Close waits for a
	// Tick under way before it closes the history files (a Tick after
	// that reopened them and leaked the descriptors; review 18, 16).
	// Added to only under roomsMu while bg is live.
	tickers sync.WaitGroup
	// roomConsul, when set, coordinates the rooms over many edges.
	roomConsul *roomConsul
}

// roomTick is how often a waiting room's watermark advances: 20 times a
// second keeps the admissions of a 500/s room to bursts of 25.
const roomTick = 50 * time.Millisecond

// New builds the edge for cfg. Its pool starts empty: feed it with
// Pool().Update from a discovery source, and run a health checker on it.
// Its waiting rooms tick until Close.
func New(cfg *config.Edge, log *slog.Logger) (*Proxy, error) {
	return newProxy(cfg, log, wallClock{}, roomTick)
}

// newProxy is New with the waiting rooms' clock and tick interval; a zero
// interval starts no ticker (tests call tickRooms).
func newProxy(cfg *config.Edge, log *slog.Logger, clock waitroom.Clock, tickEvery time.Duration) (*Proxy, error) {
	if log == nil {
		log = slog.Default()
	}
	p := &Proxy{boot: cfg, log: log, clock: clock, tickEvery: tickEvery, rooms: map[string]*roomRuntime{}}
	p.bg, p.stopBg = context.WithCancel(context.Background())
	p.roomStore = &waitroom.FileStore{Dir: cfg.WaitingRoomStatePath(), Log: log}
	rc, err := newRoomConsul(cfg)
	if err != nil {
		return nil, err
	}
	p.roomConsul = rc
	var seed [8]byte
	_, _ = crand.Read(seed[:])
	hex.Encode(p.idPrefix[:], seed[:])

	limits, err := ratelimit.NewSet(policies(cfg))
	if err != nil {
		return nil, fmt.Errorf("rate limits: %w", err)
	}
	p.limits = limits
	p.pool = &balancer.Pool{}
	p.pool.Configure(poolSettings(cfg))
	if needsStore(cfg) {
		st, err := cache.NewStore(cfg.Cache.MaxBytes, cfg.Cache.LastGoodEntries, cfg.Cache.LastGoodBytes)
		if err != nil {
			return nil, err
		}
		p.store = st
	}
	p.metrics = NewMetrics(p.pool, p.store, &p.active, p.limits)
	p.logs = newLogLimiter(p.metrics.logDropped)
	p.none = &route{name: "none", counts: p.metrics.routeCounts("none")}
	plan, err := p.prepareRooms(cfg)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("waiting rooms: %w", err)
	}
	p.state.Store(p.newState(cfg, nil, plan.commit(p)))
	p.metrics.Registry.MustRegister(&roomCollector{p: p, queue: roomQueueDesc, wait: roomWaitDesc})
	p.pool.OnAdd = p.attach
	p.pool.OnRemove = func(h *balancer.Host) {
		p.metrics.forgetUpstream(h.Addr)
		// Idle pooled connections close on their own after max_idle_time;
		// in-flight requests finish on them first.
	}
	p.server = &fasthttp.Server{
		Handler:                       p.Handle,
		ErrorHandler:                  p.handleParseError,
		HeaderReceived:                p.headerReceived,
		Name:                          "podium",
		ReadBufferSize:                cfg.Limits.MaxHeaderBytes,
		WriteBufferSize:               transport.WriteBufferSize,
		MaxRequestBodySize:            cfg.Limits.MaxBodyBytes,
		ReadTimeout:                   cfg.Timeouts.ReadHeader.D(),
		IdleTimeout:                   cfg.Timeouts.Idle.D(),
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		DisablePreParseMultipartForm:  true,
		CloseOnShutdown:               true,
		DisableHeaderNamesNormalizing: false, // header lookups must be case-insensitive (X-Forwarded-For spoofing)
		Logger:                        fasthttpLogger{log},
	}
	return p, nil
}

// Close stops the waiting rooms' tickers, closes their history files and
// releases the cache's background goroutines.
func (p *Proxy) Close() {
	p.stopBg()
	p.roomsMu.Lock()
	p.rooms = map[string]*roomRuntime{}
	p.roomsMu.Unlock()
	p.tickers.Wait()
	if err := p.roomStore.Close(); err != nil {
		p.log.Warn("waiting room history: closing", "error", err.Error())
	}
	if p.store != nil {
		p.store.Close()
	}
}

// Pool is the upstream pool the proxy balances over.
func (p *Proxy) Pool() *balancer.Pool { return p.pool }

// Metrics are the proxy's Prometheus metrics.
func (p *Proxy) Metrics() *Metrics { return p.metrics }

// Server is the client-facing fasthttp server.
func (p *Proxy) Server() *fasthttp.Server { return p.server }

// SetDraining makes the edge's /ping answer 503 draining, so load balancers
// in front stop sending new connections before the listener closes.
func (p *Proxy) SetDraining(v bool) { p.draining.Store(v) }

// SetWarming makes the edge's /ping answer 503 warming up while it waits,
// before it takes traffic, for an upstream to pass its health check.
func (p *Proxy) SetWarming(v bool) { p.warming.Store(v) }

// WrapListener makes the client connections ln accepts the transport's
// (see transport.Listener): the server must serve the wrapped listener.
func (p *Proxy) WrapListener(ln net.Listener) net.Listener {
	t := p.boot.Timeouts
	return &transport.Listener{
		Listener: ln,
		// A client timeout may fire up to 1/64 of the shortest one late
		// (78 ms with the defaults): a keep-alive connection then re-arms
		// its socket's deadline about once per slack, not per request.
		Slack:          min(t.ReadHeader.D(), t.ReadBody.D(), t.Idle.D(), t.Write.D()) >> 6,
		WriteTimeout:   t.Write.D(),
		OnWriteTimeout: p.clientWriteTimedOut,
	}
}

// attach gives a host the pooled connections requests to it go over.
func (p *Proxy) attach(h *balancer.Host) {
	connect := p.boot.Timeouts.Connect.D()
	h.Transport = &transport.Upstream{
		Client: &fasthttp.HostClient{
			Addr:                h.Addr,
			MaxConns:            p.boot.UpstreamPool.MaxConns,
			MaxIdleConnDuration: p.boot.UpstreamPool.MaxIdleTime.D(),
			MaxConnWaitTimeout:  connect,
			MaxResponseBodySize: maxResponseBytes,
			ReadBufferSize:      p.boot.Limits.MaxHeaderBytes,
			Dial:                transport.Dialer(connect),
		},
		Duration: p.metrics.upstreamDuration.WithLabelValues(h.Addr),
		Resent:   p.metrics.staleConns.Inc,
	}
}

// isSafe reports whether a method is safe (RFC 9110 §9.2.1): it asks for
// nothing to change, so its answer invalidates nothing (RFC 9111 §4.4). A
// CORS preflight (OPTIONS) answered 204 once purged the listing it asked
// about, so any client could empty the cache of it at will.
func isSafe(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

func isIdempotent(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "OPTIONS":
		return true
	}
	return false
}

var (
	strPing            = []byte("/ping")
	strXForwardedFor   = []byte("X-Forwarded-For")
	strXRequestID      = []byte("X-Request-ID")
	strXForwardedProto = []byte("X-Forwarded-Proto")
	strXForwardedHost  = []byte("X-Forwarded-Host")
	strHTTP            = []byte("http")
	strHTTPS           = []byte("https")
)

// Handle serves one client request.
func (p *Proxy) Handle(ctx *fasthttp.RequestCtx) {
	p.active.Add(1)
	defer p.active.Add(-1)
	x := p.newExchange(ctx)
	if p.draining.Load() {
		// While draining, every answer closes its connection (/ping's and
		// the edge's own rejections too), so keep-alive clients and load
		// balancers reconnect, and land on the process taking over the
		// port. Deferred before recoverPanic, so it runs after it, and
		// after any reject, whose writeError resets the response.
		defer ctx.SetConnectionClose()
	}
	defer x.recoverPanic()
	req := &ctx.Request

	var scan rawScan
	scan.scan(req.Header.RawHeaders())
	x.peer = peerAddr(ctx)
	x.trusted = x.st.isTrusted(x.peer)
	x.idLen = len(p.requestID(req, x.trusted, x.idBuf[:0]))

	if why := scan.smuggling(); why != "" {
		// Never forwarded, and the connection is closed: what follows
		// on it cannot be framed safely. (After reject: writeError resets
		// the response, and with it a close set before.)
		x.reject(fasthttp.StatusBadRequest, kindSmuggling, "malformed request: "+why)
		ctx.SetConnectionClose()
		return
	}

	// The path is normalised once; that form is routed, keyed and
	// forwarded (normalize.go). Ambiguous encodings get 400.
	var pathBuf [128]byte
	path, perr := requestPath(req, pathBuf[:0])
	if perr != nil {
		x.reject(fasthttp.StatusBadRequest, kindMalformed, "malformed request: "+perr.Error())
		return
	}
	getOrHead := x.method == methodGET || x.method == methodHEAD
	if bytes.Equal(path, strPing) && getOrHead {
		p.ping(ctx)
		x.quiet = true
		x.finish(time.Now())
		return
	}

	x.route = x.st.match(req.Header.Method(), path)
	if x.route == nil {
		x.route = p.none
		x.reject(fasthttp.StatusNotFound, kindNoRoute, "no route for this path")
		return
	}
	route := x.route

	if route.policy != "" && !x.allowed() {
		return
	}
	if len(x.st.rooms) > 0 {
		if !x.waitingRoom(path) {
			return
		}
		x.stripRoomTokens()
	}
	if d := x.st.directResponse(route); d != nil {
		x.reject(d.status, kindDirect, d.msg)
		return
	}
	if c := route.inflight; c != nil {
		if !c.Acquire() {
			// Shed before the origins drown: a fast, clear 503 now beats a
			// slow timeout for everyone.
			p.metrics.shed.Inc()
			x.reject(fasthttp.StatusServiceUnavailable, kindShed, "the ticket service is at capacity; retry in a second")
			ctx.Response.Header.Set("Retry-After", "1")
			return
		}
		defer c.Release()
	}

	// Hop-by-hop hygiene (RFC 9110 §7.6.1). The client's wish to close is
	// its connection's business, not the pooled upstream connection's.
	clientClose := req.Header.ConnectionClose()
	stripHopByHop(&req.Header, scan.hop, scan.connTokens[:scan.nConnTokens])
	if scan.expect {
		req.Header.Del("Expect") // the edge already has the body
	}
	req.Header.ResetConnectionClose()
	x.setForwarded(scan.fwd)
	if clientClose {
		defer ctx.SetConnectionClose()
	}

	if route.cache != nil && getOrHead && p.store != nil {
		x.serveCached()
		return
	}

	h, end, retries, fail := p.forward(x.st, req, &ctx.Response, ctx.Time())
	x.host, x.retries = h, retries
	if retries > 0 {
		defer setRetries(ctx, retries)
	}
	if fail != nil {
		x.reject(fail.status, fail.kind, fail.msg)
		x.logUpstreamError(fail)
		return
	}
	x.upstreamTime = end.Sub(ctx.Time())
	status := ctx.Response.StatusCode()
	if status < 300 && status >= 200 && (len(route.purge) > 0 || !isSafe(req.Header.Method())) {
		p.invalidate(ctx, route)
	}
	transport.FlushBig(ctx)
	x.finish(end)
}

var strXFFKey = string(strXForwardedFor)

// allowed applies the route's rate limit to the client (the socket peer,
// or for a trusted peer the right-most untrusted X-Forwarded-For address),
// and answers 429 with Retry-After when the client is over it.
func (x *exchange) allowed() bool {
	p, ctx, route := x.p, x.ctx, x.route
	lim := p.limits.Limiter(route.policy)
	if lim == nil {
		return true
	}
	client := x.client()
	if x.st.allow.Contains(client) {
		return true
	}
	var hv []byte
	if h := lim.Policy().Header; h != "" {
		hv = ctx.Request.Header.Peek(h)
	}
	// The request's arrival time: close enough for a token bucket, and one
	// clock read fewer per request.
	ok, wait := lim.Allow(lim.Key(client, hv), ctx.Time())
	if ok {
		return true
	}
	p.metrics.rateLimited(route.policy)
	secs := ratelimit.RetryAfterSeconds(wait)
	x.reject(fasthttp.StatusTooManyRequests, kindRateLimited,
		"too many requests; retry after "+strconv.FormatInt(secs, 10)+" seconds")
	var b [20]byte
	ctx.Response.Header.SetBytesV("Retry-After", ratelimit.AppendRetryAfter(b[:0], wait))
	return false
}

// setRetries records on the response how many times the edge retried, for
// the client and the access log.
func setRetries(ctx *fasthttp.RequestCtx, n int) {
	var b [4]byte
	ctx.Response.Header.SetBytesV("X-Podium-Retries", strconv.AppendInt(b[:0], int64(n), 10))
}

// upstreamFailure is why forwarding produced no response.
type upstreamFailure struct {
	status    int
	kind, msg string
	err       error
}

// forward sends req to the least-loaded healthy upstream and reads its
// answer into resp, stripped of hop-by-hop headers, retrying on another
// upstream where that is safe (see retryable). On failure resp is
// undefined and the returned failure says what the client gets. Nothing
// has reached the client before forward returns, so a retry can never
// follow a byte the client has seen.
//
// start is when the request reached the edge's handler (ctx.Time(), the
// clock read fasthttp already made): the upstream timeout and the first
// attempt's duration count from it, which saves a clock read per request
// and adds the edge's own microseconds before the send. forward returns
// when the last attempt ended, so the caller needs no clock read either.
func (p *Proxy) forward(st *state, req *fasthttp.Request, resp *fasthttp.Response, start time.Time) (*balancer.Host, time.Time, int, *upstreamFailure) {
	rc := &st.cfg.Retries
	total := st.cfg.Timeouts.Upstream.D()
	perTry := rc.PerTryTimeout.D()
	if perTry <= 0 || perTry > total {
		perTry = total
	}
	deadline := start.Add(total)
	replayable := st.replayable(req)
	var tried [config.MaxRetriesLimit + 1]*balancer.Host // validation caps max_retries
	var last *upstreamFailure
	var reason string // why the next attempt would be a retry
	var h *balancer.Host
	var end time.Time
	for attempt := 0; ; attempt++ {
		h = p.pool.PickExcept(tried[:attempt])
		if h == nil {
			if last == nil {
				return nil, start, attempt, &failNoUpstream
			}
			h = tried[attempt-1]
			if last.err == nil {
				break // the last answer was a 5xx: the client gets it as it is
			}
			return h, end, attempt - 1, last
		}
		tried[attempt] = h
		// A retry starts when the attempt before it ended: close enough,
		// and no clock read. perTry <= total, so the first attempt's
		// timeout is perTry.
		t0, timeout := start, perTry
		if attempt > 0 {
			t0 = end
			timeout = min(perTry, deadline.Sub(t0))
			p.activeRetries.Add(1)
			// Counted here, when it is sent: with no other upstream to
			// pick there is no retry, whatever retryable said.
			p.metrics.retries[reason].Inc()
		}
		h.Acquire()
		var err error
		end, err = h.Transport.Do(req, resp, t0, timeout, replayable) // its one clock read serves the attempt and the total
		h.Release()
		if attempt > 0 {
			p.activeRetries.Add(-1)
		}
		if err == nil {
			status := resp.StatusCode()
			if status < 500 {
				p.pool.Succeeded(h)
				break
			}
			p.upstreamFailed(h)
			if !st.retryStatus(status) || !p.retryable(st, replayable, attempt, kindUpstream, deadline) {
				break
			}
			reason = retryStatus5xx
			last = &upstreamFailure{status: status, kind: kindUpstream, msg: "the ticket service answered " + strconv.Itoa(status)}
			continue
		}
		status, kind, msg := classify(err)
		p.upstreamFailed(h)
		last = &upstreamFailure{status: status, kind: kind, msg: msg, err: err}
		if !p.retryable(st, replayable, attempt, kind, deadline) {
			return h, end, attempt, last
		}
		reason = kind
	}
	var toks [8][]byte
	if mask, tokens := responseHopMask(&resp.Header, toks[:0]); mask != 0 {
		stripHopByHop(&resp.Header, mask, tokens)
	}
	resp.Header.ResetConnectionClose()
	return h, end, countTried(tried[:]) - 1, nil
}

func countTried(t []*balancer.Host) int {
	n := 0
	for n < len(t) && t[n] != nil {
		n++
	}
	return n
}

// replayable says whether req may be sent twice without doing its work
// twice: an idempotent method (GET, HEAD, OPTIONS, and retries.methods),
// or a POST carrying an Idempotency-Key, which the origin deduplicates (no
// peer proxy retries those; the ticket origin's purchase contract makes
// it safe).
func (st *state) replayable(req *fasthttp.Request) bool {
	m := req.Header.Method()
	if isIdempotent(m) || len(req.Header.Peek("Idempotency-Key")) > 0 {
		return true
	}
	for _, allowed := range st.cfg.Retries.Methods {
		if string(m) == allowed {
			return true
		}
	}
	return false
}

// retryable says whether a failed attempt may be sent again, to another
// upstream. Only where it cannot do the work twice: a replayable request,
// or one that provably never reached an upstream (connect refused, or a
// dial that timed out). And only within max_retries, the time left, and
// the budget.
func (p *Proxy) retryable(st *state, replayable bool, attempt int, kind string, deadline time.Time) bool {
	rc := &st.cfg.Retries
	if attempt >= rc.MaxRetries || attempt >= config.MaxRetriesLimit || time.Until(deadline) <= 0 {
		return false
	}
	if !replayable && kind != kindRefused {
		return false
	}
	if kind == kindRefused {
		// A refused connection reached no upstream: its retry moves the
		// request, it adds no work anywhere, so the budget (which stops
		// retries from multiplying the load on upstreams already failing)
		// does not hold it back. A dead origin looks idle to least
		// connections and draws a burst of requests at once, each refused
		// within microseconds; held to the budget, the burst's fourth
		// retry was a 502 to a client.
		return true
	}
	// Envoy's retry budget: retries in flight at most budget_percent of
	// requests in flight, min_concurrent always allowed.
	limit := max(int64(rc.MinConcurrent), p.active.Load()*int64(rc.BudgetPercent)/100)
	if p.activeRetries.Load() >= limit {
		p.metrics.retryBudgetExhausted.Inc()
		return false
	}
	return true
}

func (st *state) retryStatus(code int) bool {
	for _, c := range st.cfg.Retries.OnStatus {
		if c == code {
			return true
		}
	}
	return false
}

// upstreamFailed feeds passive health checking and logs an ejection once.
func (p *Proxy) upstreamFailed(h *balancer.Host) {
	if ejected, d := p.pool.Failed(h, time.Now()); ejected {
		p.metrics.ejections.Inc()
		p.log.Warn("upstream ejected", "upstream", h.Addr, "id", h.ID, "for", d.String(), "times", h.Ejections())
	}
}

// ObserveProbe records an active health check and, when outlier ejection
// allows it, returns an ejected upstream whose check passed.
func (p *Proxy) ObserveProbe(h *balancer.Host, rtt time.Duration, err error) {
	p.metrics.ObserveProbe(h, rtt, err)
	if err == nil && p.state.Load().cfg.Outlier.UnejectOnActivePass && h.Uneject() {
		p.log.Info("upstream returned early by a passing health check", "upstream", h.Addr, "id", h.ID)
	}
}

var failNoUpstream = upstreamFailure{status: fasthttp.StatusServiceUnavailable, kind: kindNoUpstream,
	msg: "no healthy ticket service instance is available; try again in a few seconds"}

func (p *Proxy) ping(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.SetContentType("text/plain; charset=utf-8")
	if p.draining.Load() {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString("draining\n")
		return
	}
	if p.warming.Load() {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString("warming up: waiting for an upstream to pass its health check before taking traffic\n")
		return
	}
	ctx.SetBodyString("pong\n")
}

// headerReceived runs when a request's headers are parsed, before fasthttp
// reads its body. The headers are in; from here the client gets read_body
// to send a body (fasthttp's ReadTimeout covered the headers).
//
// A request whose framing headers are wrong (rawScan.smuggling: both
// Transfer-Encoding and Content-Length, a coding other than chunked, ...)
// is not read further. fasthttp's own parser lets some of them through
// (CL+TE is read as chunked, "identity" as the Content-Length), and would
// wait up to read_body for a body the edge then refuses; Envoy
// and HAProxy answer as soon as the headers are in. So its body is
// declared empty and the connection marked to close: the handler runs at
// once and answers 400 from the same check, and whatever the client sends
// after the headers is never read as a request.
func (p *Proxy) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	// 0, or -2 (neither Content-Length nor chunked): fasthttp reads no
	// body, and Handle checks the headers. Every GET returns here, without
	// the scan and without the clock read a body deadline costs.
	if n := h.ContentLength(); n == 0 || n == -2 {
		return fasthttp.RequestConfig{}
	}
	// A request with a body pays for a second pass over its headers
	// (Handle's is the one that decides); a GET does not.
	var scan rawScan
	scan.scan(h.RawHeaders())
	if scan.smuggling() != "" {
		h.SetContentLength(0)
		h.Del("Expect") // no 100 Continue inviting a body that will not be read
		h.SetConnectionClose()
		return fasthttp.RequestConfig{}
	}
	return fasthttp.RequestConfig{ReadTimeout: p.boot.Timeouts.ReadBody.D()}
}

// handleParseError answers requests fasthttp could not parse. fasthttp
// closes the connection after it.
func (p *Proxy) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	x := p.newExchange(ctx)
	x.method = methodOther // the request line may be lost with the headers
	x.idLen = len(p.newRequestID(x.idBuf[:0]))
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	if t := parseErrorTarget(err); t != nil {
		// A request whose headers fasthttp rejected has lost its request
		// line; the error's format (JSON for /api/) and the log need it.
		ctx.Request.SetRequestURIBytes(t)
	}
	switch {
	case errors.As(err, &small):
		x.reject(fasthttp.StatusRequestHeaderFieldsTooLarge, kindHeaderLimit,
			"request headers are larger than the edge accepts ("+strconv.Itoa(p.boot.Limits.MaxHeaderBytes)+" bytes)")
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		x.reject(fasthttp.StatusRequestEntityTooLarge, kindHeaderLimit,
			"request body is larger than the edge accepts ("+strconv.Itoa(p.boot.Limits.MaxBodyBytes)+" bytes)")
	case errors.As(err, &ne) && ne.Timeout():
		x.reject(fasthttp.StatusRequestTimeout, kindClientTimeout, "the request was not received in time")
	default:
		x.reject(fasthttp.StatusBadRequest, kindMalformed, "malformed request: "+parseReason(err))
	}
	ctx.SetConnectionClose()
}

// parseReason keeps fasthttp's own words out of the response while still
// saying which part of the request was bad. It reads only fasthttp's
// message, not the request bytes its error quotes: a header value that
// says "chunked" must not make a bad Content-Length read as a bad chunk.
func parseReason(err error) string {
	s, _ := splitParseError(err)
	s = strings.ToLower(s)
	switch {
	case strings.Contains(s, "transfer-encoding"):
		return "unsupported Transfer-Encoding"
	case strings.Contains(s, "chunk"):
		return "invalid chunked body"
	case strings.Contains(s, "content-length"):
		return "invalid Content-Length"
	case strings.Contains(s, "invalid header key"):
		return "invalid header name"
	}
	return "could not parse the request line or headers"
}

// parseErrorContents is where fasthttp's header error quotes the bytes it
// could not parse (unless Server.SecureErrorLogMessage is set). Inside a
// Go-quoted string every '"' is escaped, so the first occurrence of this
// text is fasthttp's own, whatever the client sent.
const parseErrorContents = `, contents: "`

// splitParseError splits a fasthttp header error into its message and the
// start of the request it quotes (nil when it quotes none).
func splitParseError(err error) (msg string, head []byte) {
	s := err.Error()
	i := strings.Index(s, parseErrorContents)
	if i < 0 {
		return s, nil
	}
	msg = s[:i]
	if j := strings.LastIndex(msg, ": buffer size="); j >= 0 {
		msg = msg[:j]
	}
	q, qerr := strconv.QuotedPrefix(s[i+len(parseErrorContents)-1:])
	if qerr != nil {
		return msg, nil
	}
	u, qerr := strconv.Unquote(q)
	if qerr != nil {
		return msg, nil
	}
	return msg, []byte(u)
}

// parseErrorTarget is the request-target of a request fasthttp rejected
// while parsing its headers, or nil. fasthttp forgets the request line
// when it rejects the headers, but the edge's error must still be JSON for
// an /api/ path; the request line is the start of the bytes its error
// quotes ("POST /api/games/1/buy HTTP/1.1\r\n...").
func parseErrorTarget(err error) []byte {
	_, head := splitParseError(err)
	line, _, _ := bytes.Cut(head, []byte{'\n'})
	_, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return nil
	}
	target, _, ok := bytes.Cut(rest, []byte{' '})
	if !ok || len(target) == 0 || (target[0] != '/' && !bytes.Contains(target, []byte("://"))) {
		return nil
	}
	return target
}

// classify maps an upstream error to the client's status.
func classify(err error) (status int, kind, msg string) {
	switch {
	case errors.Is(err, fasthttp.ErrDialTimeout), errors.Is(err, syscall.ECONNREFUSED):
		return fasthttp.StatusBadGateway, kindRefused, "could not connect to the ticket service"
	case errors.Is(err, fasthttp.ErrTimeout):
		return fasthttp.StatusGatewayTimeout, kindTimeout, "the ticket service did not answer in time"
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return fasthttp.StatusServiceUnavailable, kindPoolFull, "the ticket service is at its connection limit; try again shortly"
	}
	return fasthttp.StatusBadGateway, kindUpstream, "the ticket service returned an invalid or incomplete response"
}

func peerAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	if a, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

func (st *state) isTrusted(a netip.Addr) bool {
	for _, pr := range st.trusted {
		if pr.Contains(a) {
			return true
		}
	}
	return false
}

// setForwarded sets X-Forwarded-For/-Proto/-Host. A chain from a trusted
// peer is extended; from anyone else it is replaced, since an untrusted
// client could otherwise pick the address that rate limits and logs see.
func (x *exchange) setForwarded(present uint8) {
	h := &x.ctx.Request.Header
	peer, trusted := x.peer, x.trusted
	// set replaces a header the client sent and appends one it did not:
	// appending skips a scan of every header, and most requests carry
	// none of these.
	// A client may send a header twice; Del removes every copy, so a
	// second spoofed X-Forwarded-For line cannot survive.
	set := func(bit uint8, k, v []byte) {
		if present&bit != 0 {
			h.DelBytes(k)
		}
		h.AddBytesKV(k, v)
	}
	var buf [256]byte
	xff := buf[:0]
	if trusted && present&fwdFor != 0 {
		// Several lines make one list (RFC 9110 §5.3).
		for _, prev := range h.PeekAll(string(strXForwardedFor)) {
			if len(prev) > 0 {
				xff = append(append(xff, prev...), ", "...)
			}
		}
	}
	xff = peer.AppendTo(xff)
	set(fwdFor, strXForwardedFor, xff)
	if !trusted || present&fwdProto == 0 {
		set(fwdProto, strXForwardedProto, strHTTP)
	}
	if !trusted || present&fwdHost == 0 {
		set(fwdHost, strXForwardedHost, h.Host())
	}
	set(fwdRequestID, strXRequestID, x.id())
}

// requestID keeps a trusted peer's X-Request-ID (a sane one: at most 128
// printable bytes) and otherwise makes a new one.
func (p *Proxy) requestID(req *fasthttp.Request, trusted bool, dst []byte) []byte {
	if trusted {
		if id := req.Header.PeekBytes(strXRequestID); len(id) > 0 && len(id) <= 128 && printable(id) {
			return append(dst, id...)
		}
	}
	return p.newRequestID(dst)
}

// newRequestID appends 32 hex digits: a random per-process prefix and a
// counter, unique without a syscall or an allocation per request.
func (p *Proxy) newRequestID(dst []byte) []byte {
	n := p.idCounter.Add(1)
	dst = append(dst, p.idPrefix[:]...)
	var c [8]byte
	for i := 7; i >= 0; i-- {
		c[i] = byte(n)
		n >>= 8
	}
	return hex.AppendEncode(dst, c[:])
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// fasthttpLogger routes fasthttp's own messages into the structured log.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("fasthttp", "message", fmt.Sprintf(format, args...))
}

// sinceMillis is the milliseconds since t, or 0 when t is unset (a request
// fasthttp could not parse never got a start time).
func sinceMillis(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(time.Since(t).Microseconds()) / 1000
}
