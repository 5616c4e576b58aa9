package proxy

import (
	"context"
	"hash/maphash"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// logSlots is how many clients (and upstreams) the error-log limiter
// remembers at once: 4096 slots of 48 bytes, 192 KiB, allocated once.
const logSlots = 4096

// Reasons a log line was dropped (podium_edge_log_dropped_total{reason}).
const (
	logDroppedClient = "client" // that client's (or upstream's) lines were over access_log.error_limit.per_client
	logDroppedGlobal = "global" // every client's lines together were over access_log.error_limit.total
)

// logLimiter bounds the error lines the edge writes: a token bucket per
// subject (a client, keyed as the rate limiter keys it, IPv6 by its /64;
// or an upstream) and one for all subjects together. Error lines are
// written before any rate limit applies (a malformed request is refused
// before it is routed), so without a bound one client sending garbage, or
// many, would flood the log and the disk under it. What is dropped is
// counted in podium_edge_log_dropped_total, and the next line logged for
// the same subject says how many of its lines were dropped before it
// ("suppressed"), so the log still shows that something happened and how
// much.
//
// Subjects live in a direct-mapped table of logSlots slots under a keyed
// hash: memory is fixed, whatever the number of clients. A subject whose
// slot another takes starts again with a full bucket, and the lines it had
// suppressed are no longer reported on its next line (the metric still
// counted them); the total bucket still bounds what many subjects log.
//
// A logLimiter is safe for concurrent use; it must not be copied. Its
// rates are passed on every call, so a config reload applies at once.
type logLimiter struct {
	seed    maphash.Seed
	dropped [2]prometheus.Counter // logDroppedClient, logDroppedGlobal

	mu    sync.Mutex
	total bucket            // guarded by mu
	slots [logSlots]logSlot // guarded by mu
}

// logSlot is one subject's bucket and the lines it had dropped since its
// last logged one.
type logSlot struct {
	key        ratelimit.Key
	b          bucket
	suppressed uint64
	used       bool
}

// bucket is a token bucket; tokens at the time last (unix nanoseconds).
type bucket struct {
	tokens float64
	last   int64
}

// take refills b at rate per second up to burst, then takes one token if
// there is one.
func (b *bucket) take(now int64, rate float64, burst float64) bool {
	if b.last != 0 && now > b.last {
		b.tokens = min(burst, b.tokens+float64(now-b.last)*rate/1e9)
	}
	b.last = max(b.last, now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func newLogLimiter(dropped *prometheus.CounterVec) *logLimiter {
	l := &logLimiter{seed: maphash.MakeSeed()}
	l.dropped[0] = dropped.WithLabelValues(logDroppedClient)
	l.dropped[1] = dropped.WithLabelValues(logDroppedGlobal)
	return l
}

// clientLogKey keys a client's lines as the rate limiter keys the client.
func clientLogKey(a netip.Addr) ratelimit.Key {
	return ratelimit.KeyFromAddr(a, ratelimit.DefaultIPv6Prefix)
}

// upstreamLogKey keys an upstream's lines by its address.
func upstreamLogKey(addr string) ratelimit.Key {
	return ratelimit.KeyFromHeader([]byte(addr))
}

// allow reports whether a line about subject k may be written now, and how
// many of k's lines were dropped since the last one written for it (to be
// logged with this one). A dropped line is counted.
func (l *logLimiter) allow(lim *config.LogLimit, k ratelimit.Key, now time.Time) (ok bool, suppressed uint64) {
	ns := now.UnixNano()
	s := &l.slots[maphash.Comparable(l.seed, k)%logSlots]
	l.mu.Lock()
	if !s.used || s.key != k {
		*s = logSlot{key: k, used: true, b: bucket{tokens: float64(lim.Burst), last: ns}}
	}
	// Both buckets are checked before either is taken from, so a line the
	// total refuses does not spend the client's token.
	client := s.b
	if !client.take(ns, lim.PerClient, float64(lim.Burst)) {
		s.b = client
		s.suppressed++
		l.mu.Unlock()
		l.dropped[0].Inc()
		return false, 0
	}
	if l.total.last == 0 {
		l.total.tokens = lim.Total
	}
	if !l.total.take(ns, lim.Total, max(lim.Total, 1)) {
		s.suppressed++
		l.mu.Unlock()
		l.dropped[1].Inc()
		return false, 0
	}
	s.b = client
	suppressed, s.suppressed = s.suppressed, 0
	l.mu.Unlock()
	return true, suppressed
}

// suppressedAttr is the "suppressed" attribute of a line logged after
// some of its subject's were dropped, or the empty Attr, which slog's
// handlers leave out.
func suppressedAttr(n uint64) slog.Attr {
	if n == 0 {
		return slog.Attr{}
	}
	return slog.Uint64("suppressed", n)
}

// logClient is the client a request's error lines count against: the
// socket peer or, for a trusted proxy, the right-most untrusted
// X-Forwarded-For address, as the rate limiter sees it.
func logClient(st *state, ctx *fasthttp.RequestCtx) netip.Addr {
	peer := peerAddr(ctx)
	if !st.isTrusted(peer) {
		return peer
	}
	return ratelimit.ClientIPFields(peer, ctx.Request.Header.PeekAll(strXFFKey), st.trusted)
}

// clientWriteTimedOut counts, and logs within access_log.error_limit, a
// client connection whose answer made no progress for timeouts.write
// (the transport's send gave up; fasthttp closes the connection).
func (p *Proxy) clientWriteTimedOut(c net.Conn) {
	p.metrics.errors[kindClientWrite].Inc()
	var peer netip.Addr
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		peer = a.AddrPort().Addr().Unmap()
	}
	st := p.state.Load()
	ok, suppressed := p.logs.allow(&st.cfg.AccessLog.ErrorLimit, clientLogKey(peer), time.Now())
	if !ok || !p.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	p.log.LogAttrs(context.Background(), slog.LevelInfo, "client write timeout: the client took no byte of its answer; connection closed",
		slog.String("client", peer.String()), slog.Duration("timeout", p.boot.Timeouts.Write.D()), suppressedAttr(suppressed))
}
