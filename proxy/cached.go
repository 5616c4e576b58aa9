package proxy

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/cache"
	"github.com/podium-edge/podium/transport"
	"github.com/valyala/fasthttp"
)

// X-Cache values.
const (
	xcHit   = "HIT"
	xcMiss  = "MISS"
	xcStale = "STALE"
)

// fillResult is what one origin fetch for a cache key gives every request
// waiting on it.
type fillResult struct {
	// entry is the response to serve: stored, refreshed, a stale stand-in,
	// or a shareable error. nil when the response may not be shared
	// (Set-Cookie, private): each waiter then asks the origin itself.
	entry  *cache.Entry
	xcache string
	// fail is set when no origin answered and no stale copy may stand in.
	fail *upstreamFailure
	// leader's own response when entry is nil; never seen by waiters.
	resp *fasthttp.Response
	host *balancer.Host
	took time.Duration
}

// serveCached serves a GET or HEAD on a caching route: from memory when
// fresh; otherwise through one origin fetch per key that every concurrent
// request for the key waits on (nginx's proxy_cache_lock, without its
// 500 ms polling).
func (x *exchange) serveCached() {
	p, ctx := x.p, x.ctx
	req := &ctx.Request
	var kb [512]byte
	key := cache.AppendKey(kb[:0], normalPath(req), ctx.URI().QueryString(), ctx.Host())
	f := fillJob{st: x.st, route: x.route, hash: cache.Hash(key)}
	e := p.store.Get(f.hash, key)
	f.baseLen = len(key)
	if e != nil && e.IsVary {
		key = cache.AppendVariant(key, e.Vary, func(name string) []byte { return req.Header.Peek(name) })
		f.hash = cache.Hash(key)
		e = p.store.Get(f.hash, key)
	}
	f.stale = e
	now := time.Now()
	if e != nil && e.Fresh(now) {
		p.metrics.cacheHit.Inc()
		p.serveEntry(ctx, e, xcHit, now)
		x.finish(now)
		return
	}
	if e != nil && e.ServeWhileRevalidating(now) {
		p.metrics.cacheStale.Inc()
		p.serveEntry(ctx, e, xcStale, now)
		x.finish(now)
		p.revalidateInBackground(req, &f, key)
		return
	}

	fillReq := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(fillReq)
	p.fillRequest(req, fillReq, key)
	led := false
	v, _, _ := p.flight.Do(string(key), func() (any, error) {
		led = true
		// A fetch that finished between our lookup and now has stored the
		// answer: check again before asking the origin.
		if again := p.lookup(f.hash, key); again != nil && again.Fresh(time.Now()) {
			return &fillResult{entry: again, xcache: xcHit}, nil
		}
		return p.fill(&f, key, fillReq), nil
	})
	res := v.(*fillResult)
	if !led {
		p.metrics.cacheCoalesced.Inc()
	}
	switch {
	case res.entry != nil && (led || p.variantMatches(req, res.entry, key[:f.baseLen])):
		switch res.xcache {
		case xcStale:
			p.metrics.cacheStale.Inc()
		case xcHit:
			p.metrics.cacheHit.Inc()
		default:
			p.metrics.cacheMiss.Inc()
		}
		p.serveEntry(ctx, res.entry, res.xcache, time.Now())
		x.host, x.upstreamTime = res.host, res.took
	case led && res.fail != nil:
		p.metrics.cacheMiss.Inc()
		x.host = res.host
		x.reject(res.fail.status, res.fail.kind, res.fail.msg)
		x.logUpstreamError(res.fail)
		return
	case led:
		// Not shareable: the leader serves its own response.
		p.metrics.cacheMiss.Inc()
		res.resp.CopyTo(&ctx.Response)
		fasthttp.ReleaseResponse(res.resp)
		ctx.Response.Header.Set("X-Cache", xcMiss)
		transport.FlushBig(ctx)
		x.host, x.upstreamTime = res.host, res.took
	case res.fail != nil:
		p.metrics.cacheMiss.Inc()
		x.host = res.host
		x.reject(res.fail.status, res.fail.kind, res.fail.msg)
		return
	default:
		// A waiter whose variant differs, or a response that may not be
		// shared: ask the origin itself.
		p.metrics.cacheMiss.Inc()
		start := time.Now()
		h, end, _, fail := p.forward(x.st, fillReq, &ctx.Response, start)
		x.host = h
		if fail != nil {
			x.reject(fail.status, fail.kind, fail.msg)
			return
		}
		ctx.Response.Header.Set("X-Cache", xcMiss)
		transport.FlushBig(ctx)
		x.upstreamTime = end.Sub(start)
	}
	if x.method == methodHEAD {
		ctx.Response.SkipBody = true
	}
	x.finish(time.Now())
}

// lookup finds key in ristretto, or else in the last-good copies, which
// hold every recent fill even when ristretto dropped or evicted it.
func (p *Proxy) lookup(hash uint64, key []byte) *cache.Entry {
	if e := p.store.Get(hash, key); e != nil {
		return e
	}
	if e, purged := p.store.LastGood(hash, key); !purged {
		return e
	}
	return nil
}

// fillRequest copies the client's request for an origin fetch whose answer
// is shared: always a full GET, without the client's own conditionals or
// range, which would make the answer that client's alone. Its target is
// exactly the one key stands for (cache.Target: the normalised path and
// the query with its parameters sorted, as Varnish's std.querysort sets
// req.url): what is stored under a key is the answer to the bytes that key
// names, never to another reading of them, which could poison the key.
func (p *Proxy) fillRequest(src, dst *fasthttp.Request, key []byte) {
	src.CopyTo(dst)
	dst.Header.SetMethod(fasthttp.MethodGet)
	for _, h := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range"} {
		dst.Header.Del(h)
	}
	path, query, _ := bytes.Cut(cache.Target(key), []byte{'?'})
	u := dst.URI()
	u.SetPathBytes(path)
	u.SetQueryStringBytes(query)
}

// fillJob is one origin fetch for a cache key: the config and route it
// runs under, and what the key found. It outlives the request that
// started it when it revalidates in the background, so it holds nothing
// of that request. The key itself travels beside it: in the job, the
// compiler would move every key buffer to the heap, since the job may go
// to another goroutine.
type fillJob struct {
	st      *state
	route   *route
	hash    uint64
	baseLen int          // the length of the key without its Vary variant
	stale   *cache.Entry // the expired entry, if any, to revalidate or stand in when the origin fails
}

// fill fetches key from an origin with req, stores what may be stored,
// and decides what every waiter gets.
func (p *Proxy) fill(fl *fillJob, key []byte, req *fasthttp.Request) *fillResult {
	st, rt, hash, baseLen, stale := fl.st, fl.route, fl.hash, fl.baseLen, fl.stale
	// Registered before the request is sent: a purge of this path from
	// now on (a purchase) keeps what this fetch brings from being stored.
	f := p.store.BeginFill(key)
	defer p.store.EndFill(f)
	if stale != nil {
		if len(stale.ETag) > 0 {
			req.Header.SetBytesV("If-None-Match", stale.ETag)
		}
		if len(stale.LastModified) > 0 {
			req.Header.SetBytesV("If-Modified-Since", stale.LastModified)
		}
	}
	resp := fasthttp.AcquireResponse()
	// Only what the origin sent: fasthttp would otherwise make up a
	// "text/plain" Content-Type for a response without one, and a 304's
	// made-up one would replace the stored entry's real one.
	resp.Header.SetNoDefaultContentType(true)
	sent := time.Now()
	h, received, _, fail := p.forward(st, req, resp, sent)
	res := &fillResult{host: h, took: received.Sub(sent)}
	status := resp.StatusCode()
	if fail != nil || status >= 500 {
		// stale-if-error: the entry just expired, or the last good copy.
		if se := p.standIn(stale, hash, key, received); se != nil {
			fasthttp.ReleaseResponse(resp)
			p.metrics.cacheStaleOnError.Inc()
			res.entry, res.xcache = se, xcStale
			return res
		}
		if fail != nil {
			fasthttp.ReleaseResponse(resp)
			res.fail = fail
			return res
		}
	}
	r := cache.Response{Status: status, Header: fieldsOf(&resp.Header), Body: resp.Body(), RequestTime: sent, ResponseTime: received}
	if status == fasthttp.StatusNotModified && stale != nil {
		if ne := rt.cache.Refreshed(stale, r); ne != nil {
			fasthttp.ReleaseResponse(resp)
			p.store.Set(ne, f)
			p.metrics.cacheRevalidated.Inc()
			res.entry, res.xcache = ne, xcMiss
			return res
		}
		// The 304 made the response unstorable (it said no-store, say).
		// The edge asked the conditional question, not the client, who is
		// owed the whole response: the stored body under the 304's fields.
		full := cache.NotModified(stale, r)
		if te := transientEntry(key, hash, full); te != nil {
			fasthttp.ReleaseResponse(resp)
			res.entry, res.xcache = te, xcMiss
			return res
		}
		setResponse(resp, full)
		res.resp = resp
		return res
	}
	if status >= 500 {
		// Share the origin's error with the waiters rather than send each
		// of them to a failing origin; it is never stored.
		if te := transientEntry(key, hash, r); te != nil {
			fasthttp.ReleaseResponse(resp)
			res.entry, res.xcache = te, xcMiss
			return res
		}
		res.resp = resp
		return res
	}
	auth := len(req.Header.Peek("Authorization")) > 0
	e, _ := rt.cache.Entry(key, hash, r, auth)
	if e == nil {
		if (status < 200 || status >= 300) && status != fasthttp.StatusNotModified && !auth {
			// An error the origin gave no lifetime (a 404 for a game id
			// that does not exist) is not stored, but the requests that
			// waited on this fetch get it too, as with a 5xx: a flood of
			// one bad id costs the origin one request at a time.
			if te := transientEntry(key, hash, r); te != nil {
				fasthttp.ReleaseResponse(resp)
				res.entry, res.xcache = te, xcMiss
				return res
			}
		}
		res.resp = resp // not storable, not shareable: the leader's alone
		return res
	}
	fasthttp.ReleaseResponse(resp)
	if len(e.Vary) > 0 && len(key) == baseLen {
		// First sight of a Vary response: a marker under the base key
		// says which request headers pick the variant.
		marker := &cache.Entry{Key: append([]byte(nil), key...), Hash: hash, IsVary: true, Vary: e.Vary,
			ResponseTime: e.ResponseTime, Lifetime: e.Lifetime + e.SIE}
		vkey := cache.AppendVariant(append([]byte(nil), key...), e.Vary, func(name string) []byte { return req.Header.Peek(name) })
		p.store.Set(marker, f)
		e.Key, e.Hash = vkey, cache.Hash(vkey)
	}
	p.store.Set(e, f)
	res.entry, res.xcache = e, xcMiss
	return res
}

// standIn returns a copy that may be served when the origin failed.
func (p *Proxy) standIn(stale *cache.Entry, hash uint64, key []byte, now time.Time) *cache.Entry {
	if stale != nil && stale.ServeOnError(now) {
		return stale
	}
	if lg, _ := p.store.LastGood(hash, key); lg != nil && lg.ServeOnError(now) {
		return lg
	}
	return nil
}

// transientEntry wraps a response for sharing with waiters without the
// storability rules (used for origin errors, never stored).
func transientEntry(key []byte, hash uint64, r cache.Response) *cache.Entry {
	e, _ := cache.Policy{}.Entry(key, hash, cache.Response{Status: 200, Header: r.Header, Body: r.Body, RequestTime: r.RequestTime, ResponseTime: r.ResponseTime}, false)
	if e == nil { // Set-Cookie or private on an error page: not shareable
		return nil
	}
	e.Status = r.Status
	return e
}

func (p *Proxy) variantMatches(req *fasthttp.Request, e *cache.Entry, base []byte) bool {
	if len(e.Vary) == 0 {
		return true
	}
	var kb [512]byte
	k := cache.AppendVariant(append(kb[:0], base...), e.Vary, func(name string) []byte { return req.Header.Peek(name) })
	return bytes.Equal(k, e.Key)
}

// revalidateInBackground refreshes key's stale entry after the client got
// the stale copy (stale-while-revalidate). The request and the key are
// copied: the handler's ctx and key buffer are gone when it returns.
func (p *Proxy) revalidateInBackground(src *fasthttp.Request, f *fillJob, key []byte) {
	req := fasthttp.AcquireRequest()
	p.fillRequest(src, req, key)
	job, k := *f, string(key)
	go func() {
		defer fasthttp.ReleaseRequest(req)
		p.flight.Do(k, func() (any, error) {
			res := p.fill(&job, []byte(k), req)
			if res.resp != nil {
				fasthttp.ReleaseResponse(res.resp)
			}
			return res, nil
		})
	}()
}

// setResponse makes resp the response r.
func setResponse(resp *fasthttp.Response, r cache.Response) {
	resp.Reset()
	resp.Header.SetNoDefaultContentType(true)
	resp.SetStatusCode(r.Status)
	for _, f := range r.Header {
		if !bytes.EqualFold(f.Key, []byte("Content-Length")) { // set from the body
			resp.Header.SetBytesKV(f.Key, f.Value)
		}
	}
	resp.SetBody(r.Body)
}

// fieldsOf lists a fasthttp response's headers.
func fieldsOf(h *fasthttp.ResponseHeader) []cache.Field {
	var out []cache.Field
	for k, v := range h.All() {
		out = append(out, cache.Field{Key: k, Value: v})
	}
	return out
}

var strAge = []byte("Age")

// serveEntry writes a stored response, or 304 when the client's validators
// match it (RFC 9110 §13.1.2: If-None-Match wins over If-Modified-Since).
func (p *Proxy) serveEntry(ctx *fasthttp.RequestCtx, e *cache.Entry, xcache string, now time.Time) {
	resp := &ctx.Response
	resp.Reset()
	notModified := false
	if inm := ctx.Request.Header.Peek("If-None-Match"); len(inm) > 0 {
		notModified = len(e.ETag) > 0 && etagMatch(inm, e.ETag)
	} else if ims := ctx.Request.Header.Peek("If-Modified-Since"); len(ims) > 0 && len(e.LastModified) > 0 {
		t, err1 := http.ParseTime(string(ims))
		lm, err2 := http.ParseTime(string(e.LastModified))
		notModified = err1 == nil && err2 == nil && !lm.After(t)
	}
	if notModified && e.Status == 200 {
		resp.SetStatusCode(fasthttp.StatusNotModified)
		for _, f := range e.Header {
			switch strings.ToLower(string(f.Key)) { // RFC 9110 §15.4.5
			case "cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified":
				resp.Header.SetBytesKV(f.Key, f.Value)
			}
		}
	} else {
		resp.SetStatusCode(e.Status)
		for _, f := range e.Header {
			if bytes.EqualFold(f.Key, []byte("Content-Length")) {
				continue // set from the body
			}
			resp.Header.SetBytesKV(f.Key, f.Value)
		}
		resp.SetBodyRaw(e.Body)
	}
	transport.FlushBig(ctx)
	var ab [20]byte
	resp.Header.SetBytesKV(strAge, strconv.AppendInt(ab[:0], int64(e.Age(now)/time.Second), 10))
	resp.Header.Set("X-Cache", xcache)
	if ctx.IsHead() {
		resp.SkipBody = true
	}
}

// etagMatch is If-None-Match's weak comparison: any listed tag, W/ or not,
// equal to the stored one; "*" matches anything.
func etagMatch(list, etag []byte) bool {
	etag = bytes.TrimPrefix(etag, []byte("W/"))
	for len(list) > 0 {
		var t []byte
		t, list = nextToken(list)
		if bytes.Equal(t, []byte("*")) || bytes.Equal(bytes.TrimPrefix(t, []byte("W/")), etag) {
			return true
		}
	}
	return false
}

// invalidate runs after a successful request on a route that purges (a
// purchase) or with an unsafe method (RFC 9111 §4.4: the target URI and
// any same-host Location or Content-Location are invalidated; a safe
// method's answer, OPTIONS and TRACE included, invalidates nothing).
func (p *Proxy) invalidate(ctx *fasthttp.RequestCtx, rt *route) {
	if p.store == nil {
		return
	}
	path := normalPath(&ctx.Request)
	n := 0
	for _, pattern := range rt.purge {
		if rt.starSeg >= 0 && strings.Contains(pattern, "$1") {
			seg := segment(path, rt.starSeg)
			if len(seg) == 0 {
				continue
			}
			pattern = strings.ReplaceAll(pattern, "$1", string(seg))
		}
		if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
			n += p.store.PurgePrefix([]byte(prefix))
		} else {
			n += p.store.PurgePath([]byte(pattern))
		}
	}
	if isSafe(ctx.Method()) {
		p.metrics.cachePurged.Add(float64(n))
		return
	}
	n += p.store.PurgePath(path)
	for _, hdr := range []string{"Location", "Content-Location"} {
		if u := ctx.Response.Header.Peek(hdr); len(u) > 0 {
			if target := sameHostPath(u, ctx.Host()); target != nil {
				// Keys hold normalised paths; a target that has no normal
				// form names nothing the cache holds.
				var buf [128]byte
				if norm, err := normalizePath(buf[:0], target); err == nil {
					n += p.store.PurgePath(norm)
				}
			}
		}
	}
	p.metrics.cachePurged.Add(float64(n))
}

// sameHostPath returns the path of a Location value when it is relative or
// names the request's host, and nil otherwise (RFC 9111 §4.4 forbids
// invalidating another host's entries).
func sameHostPath(loc, host []byte) []byte {
	if len(loc) > 0 && loc[0] == '/' && (len(loc) == 1 || loc[1] != '/') {
		return stripQuery(loc)
	}
	var u fasthttp.URI
	if err := u.Parse(nil, loc); err != nil || !bytes.EqualFold(u.Host(), host) {
		return nil
	}
	return append([]byte(nil), u.PathOriginal()...)
}

func stripQuery(b []byte) []byte {
	if i := bytes.IndexAny(b, "?#"); i >= 0 {
		return b[:i]
	}
	return b
}
