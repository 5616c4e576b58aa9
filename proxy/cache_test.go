package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/cache"
	"github.com/podium-edge/podium/config"
)

// ticketUpstream is a tiny stand-in for the origin's listing and purchase,
// enough to see what the cache does with them: a seat counter, a listing
// that shows it, and a buy that lowers it.
type ticketUpstream struct {
	*testUpstream
	seats    atomic.Int64
	listings atomic.Int64 // listing requests that reached the origin
	cc       atomic.Value // Cache-Control of the listing
	// age is the Age a listing's 200 declares ("" for none): how old the
	// origin says the copy already is. It lets a test put a copy past its
	// lifetime, or past stale_if_error, without waiting for the clock.
	age atomic.Value
}

func newTicketUpstream(t *testing.T) *ticketUpstream {
	u := &ticketUpstream{testUpstream: newUpstream(t)}
	u.seats.Store(500)
	u.cc.Store("public, max-age=2")
	u.age.Store("")
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/buy"):
			u.seats.Add(-1)
			w.WriteHeader(201)
			io.WriteString(w, `{"tickets":[1]}`)
		case r.URL.Path == "/api/games" || r.URL.Path == "/games" || strings.HasPrefix(r.URL.Path, "/api/games/"):
			u.listings.Add(1)
			etag := fmt.Sprintf(`"seats-%d"`, u.seats.Load())
			w.Header().Set("ETag", etag)
			w.Header().Set("Cache-Control", u.cc.Load().(string))
			if r.Header.Get("If-None-Match") == etag {
				w.WriteHeader(304) // without Content-Type, as the origin answers
				return
			}
			if a := u.age.Load().(string); a != "" {
				w.Header().Set("Age", a)
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"remaining":%d}`, u.seats.Load())
		default:
			io.WriteString(w, "other")
		}
	}
	return u
}

func cachingEdge(t *testing.T, ups []*testUpstream, opts ...edgeOption) *testEdge {
	t.Helper()
	return startEdge(t, ups, nil, append([]edgeOption{func(c *config.Edge) {
		c.Routes = config.DefaultRoutes()
		for i := range c.Routes {
			c.Routes[i].RateLimit = "none" // these tests are about the cache, from one client
		}
		// Probes a busy machine cannot fail: these tests are about the
		// cache, not the prober. (The harness's 100 ms probe timeout once
		// kept an upstream down past startEdge's 3 s wait, under -race
		// beside two CPU hogs.) Each probe has a second; any pass brings
		// the upstream up, and three probes fit in the wait.
		c.HealthCheck.Interval = config.Duration(time.Second)
		c.HealthCheck.Timeout = config.Duration(time.Second)
		c.HealthCheck.Rise = 1
	}}, opts...)...)
}

type result struct {
	code   int
	body   string
	header http.Header
}

// do sends one request with the given header name, value pairs and reads
// the whole answer; it fails the test if there is none.
func do(t *testing.T, method, url string, hdr ...string) result {
	t.Helper()
	r, err := fetch(method, url, hdr...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fetch is do for a goroutine other than the test's, which may not call
// t.Fatal. The bound only keeps a broken edge from hanging the test.
func fetch(method, url string, hdr ...string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return result{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return result{}, fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, fmt.Errorf("%s %s: reading the body: %w", method, url, err)
	}
	return result{resp.StatusCode, string(b), resp.Header}, nil
}

func TestColdListingOneOriginRequest(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60")             // long enough that a slow machine cannot see it expire mid-test
	u.delay.Store(int64(200 * time.Millisecond)) // a slow listing query: most of the 1,000 arrive during it
	// A thousand clients starting at once on two busy cores can take more
	// than read_header's 5 s to send their headers (under -race beside two
	// CPU hogs, 51 of them got the edge's 408 once); this is not the
	// slowloris test. Nor is it the connect-timeout test: the one fetch's
	// dial once took longer than the default 1 s at a load of 30 (a stress
	// run, 1 of 50), and its 27 waiters got 502.
	e := cachingEdge(t, []*testUpstream{u.testUpstream}, func(c *config.Edge) {
		c.Timeouts.ReadHeader = config.Duration(time.Minute)
		c.Timeouts.Connect = config.Duration(30 * time.Second)
	})
	const n = 1000
	var wg sync.WaitGroup
	var bad atomic.Int64
	var firstErr atomic.Value
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: 0}}
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := client.Get(e.url("/api/games"))
			if err != nil {
				bad.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != `{"remaining":500}` {
				bad.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q", resp.StatusCode, b))
			}
		}()
	}
	close(start)
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d of %d requests failed, the first with %v", bad.Load(), n, firstErr.Load())
	}
	if got := u.listings.Load(); got != 1 {
		t.Errorf("origin saw %d listing requests for 1,000 concurrent cold requests, want exactly 1", got)
	}
}

func TestHitHeadersAnd304(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60")
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	asked := time.Now()
	first := do(t, "GET", e.url("/api/games"))
	answered := time.Now()
	if first.header.Get("X-Cache") != "MISS" {
		t.Errorf("first X-Cache %q, want MISS", first.header.Get("X-Cache"))
	}
	if ct := first.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("MISS Content-Type %q, want the origin's application/json", ct)
	}
	time.Sleep(1100 * time.Millisecond) // a lower bound: longer only moves the bounds below
	hitAsked := time.Now()
	hit := do(t, "GET", e.url("/api/games"))
	hitAnswered := time.Now()
	if hit.header.Get("X-Cache") != "HIT" || hit.body != first.body || hit.header.Get("ETag") != `"seats-500"` {
		t.Errorf("hit: %d %q X-Cache %q ETag %q", hit.code, hit.body, hit.header.Get("X-Cache"), hit.header.Get("ETag"))
	}
	if ct := hit.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("HIT Content-Type %q, want the origin's application/json", ct)
	}
	// RFC 9111 §4.2.3: the age counts the time the copy has been stored,
	// at least hitAsked-answered, and, the origin's Date having one-second
	// resolution, at most a second more than the copy has existed,
	// hitAnswered-asked. Both bounds come from the test's own clock, so a
	// slow machine moves them instead of failing them.
	lo := int(hitAsked.Sub(answered) / time.Second)
	hi := 1 + int(hitAnswered.Sub(asked)/time.Second)
	if age, err := strconv.Atoi(hit.header.Get("Age")); err != nil || age < lo || age > hi {
		t.Errorf("Age %q, want %d..%d (stored %v before the hit was asked)", hit.header.Get("Age"), lo, hi, hitAsked.Sub(answered))
	}
	nm := do(t, "GET", e.url("/api/games"), "If-None-Match", `"x", W/"seats-500"`)
	if nm.code != 304 || nm.body != "" || nm.header.Get("ETag") != `"seats-500"` {
		t.Errorf("If-None-Match: %d %q ETag %q, want 304 with the ETag", nm.code, nm.body, nm.header.Get("ETag"))
	}
	head := do(t, "HEAD", e.url("/api/games"))
	if head.code != 200 || head.body != "" || head.header.Get("X-Cache") != "HIT" {
		t.Errorf("HEAD: %d %q X-Cache %q", head.code, head.body, head.header.Get("X-Cache"))
	}
	if got := u.listings.Load(); got != 1 {
		t.Errorf("origin saw %d listing requests, want 1", got)
	}
	// The query is normalised: the same parameters in another order hit.
	do(t, "GET", e.url("/api/games?b=2&a=1"))
	if r := do(t, "GET", e.url("/api/games?a=1&b=2")); r.header.Get("X-Cache") != "HIT" {
		t.Errorf("reordered query: X-Cache %q, want HIT", r.header.Get("X-Cache"))
	}
}

// TestExpiredEntryRevalidatesWith304: an expired copy is revalidated with
// its ETag, and the origin's 304 makes it fresh again. The origin says the
// first copy is already a minute old (Age), so it has expired when stored,
// and its 304 gives a minute more: no wait for a clock, and no
// revalidated copy that the origin's whole-second Date leaves fresh for
// only milliseconds.
func TestExpiredEntryRevalidatesWith304(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60")
	u.age.Store("60")
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	do(t, "GET", e.url("/api/games"))
	u.age.Store("")
	r := do(t, "GET", e.url("/api/games"))
	if r.code != 200 || r.body != `{"remaining":500}` {
		t.Fatalf("after revalidation: %d %q", r.code, r.body)
	}
	if got := e.p.metrics.cacheRevalidated; testCounter(got) != 1 {
		t.Errorf("revalidated %v times, want 1 (a 304 from the origin)", testCounter(got))
	}
	// The 304 carries no Content-Type: the stored one stays (a client
	// library's default must not stand in for a header the origin did not
	// send).
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("revalidated answer has Content-Type %q, want the stored application/json", ct)
	}
	r2 := do(t, "GET", e.url("/api/games"))
	if r2.header.Get("X-Cache") != "HIT" {
		t.Errorf("after a 304 the entry is not fresh again: X-Cache %q", r2.header.Get("X-Cache"))
	}
	if ct := r2.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("hit after revalidation has Content-Type %q, want application/json", ct)
	}
}

// TestStaleIfErrorThen503: when no origin can answer, the last good copy
// stands in, marked STALE, until stale_if_error past its expiry; after
// that the client gets the edge's own 503, JSON for the API and a page for
// a browser. The copies' ages are the origin's to say (Age), so which side
// of the bound a request falls on does not depend on how busy the machine
// is: the first copy is 60 s stale against a bound of an hour; the second
// arrives one second short of the bound, and the test waits until a second
// has passed on its own clock since it had the copy, which a slow machine
// only lengthens. The origin is taken down by hand, with the prober idle,
// so every request past the bound finds no healthy origin: 503, never a
// 502 from a connection the prober has not yet noticed is refused.
func TestStaleIfErrorThen503(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60")
	const sie = time.Hour
	e := cachingEdge(t, []*testUpstream{u.testUpstream}, func(c *config.Edge) {
		for i := range c.Routes {
			if c.Routes[i].Cache != nil {
				c.Routes[i].Cache.StaleIfError = config.Duration(sie)
			}
		}
		oneProbe(c)
	})
	host := e.p.Pool().Hosts()[0]
	down := func() { u.stop(); host.SetHealthy(false, time.Now()) }
	pages := []struct{ path, accept string }{{"/api/games", ""}, {"/games", "text/html"}}
	fill := func(want string) (received time.Time) {
		t.Helper()
		for _, pg := range pages {
			if r := do(t, "GET", e.url(pg.path), "Accept", pg.accept); r.code != 200 || r.header.Get("X-Cache") != "MISS" || r.body != want {
				t.Fatalf("fill %s: %d %q X-Cache %q, want %s from the origin", pg.path, r.code, r.body, r.header.Get("X-Cache"), want)
			}
		}
		return time.Now()
	}

	u.age.Store("120") // 60 s past its 60 s lifetime: stale, and far within the bound
	fill(`{"remaining":500}`)
	down()
	for _, pg := range pages {
		r := do(t, "GET", e.url(pg.path), "Accept", pg.accept)
		if r.code != 200 || r.header.Get("X-Cache") != "STALE" || r.body != `{"remaining":500}` {
			t.Errorf("%s within stale_if_error: %d %q X-Cache %q, want 200 STALE with the last listing", pg.path, r.code, r.body, r.header.Get("X-Cache"))
		}
	}

	// The origin comes back with a new listing, one second short of the
	// bound (lifetime 60 s + stale_if_error 3600 s), and goes again.
	u.restart()
	host.SetHealthy(true, time.Now())
	u.seats.Store(499) // a new ETag: a 200, not a 304 that would refresh the old copy
	u.age.Store(strconv.Itoa(int((60*time.Second+sie)/time.Second) - 1))
	received := fill(`{"remaining":499}`)
	down()
	// The edge received the copy before the test did, so once a second
	// has passed here the copy is past the bound there.
	time.Sleep(time.Until(received.Add(time.Second)))

	r := do(t, "GET", e.url("/api/games"))
	id := r.header.Get("X-Request-ID")
	if want := fmt.Sprintf("{\"error\":%q,\"request_id\":%q}\n", failNoUpstream.msg, id); r.code != 503 || r.body != want || len(id) != 32 {
		t.Errorf("/api/games past the bound: %d %q X-Request-ID %q, want the edge's 503 %q", r.code, r.body, id, want)
	}
	if ct, cc, xc := r.header.Get("Content-Type"), r.header.Get("Cache-Control"), r.header.Get("X-Cache"); ct != "application/json" || cc != "no-store" || xc != "" {
		t.Errorf("/api/games past the bound: Content-Type %q Cache-Control %q X-Cache %q, want the edge's own JSON error, no-store, no X-Cache", ct, cc, xc)
	}
	r = do(t, "GET", e.url("/games"), "Accept", "text/html")
	id = r.header.Get("X-Request-ID")
	if r.code != 503 || r.header.Get("Content-Type") != "text/html; charset=utf-8" || r.header.Get("X-Cache") != "" ||
		!strings.Contains(r.body, "<title>503 The ticket service is busy · Podium</title>") ||
		!strings.Contains(r.body, sentence(failNoUpstream.msg)) || len(id) != 32 || !strings.Contains(r.body, "request "+id) {
		t.Errorf("/games past the bound: %d Content-Type %q X-Cache %q %q, want the edge's 503 page with request %s",
			r.code, r.header.Get("Content-Type"), r.header.Get("X-Cache"), r.body, id)
	}
	if got := testCounter(e.p.metrics.cacheStaleOnError); got != 2 {
		t.Errorf("served stale on error %v times, want 2 (the first copy, on each page)", got)
	}
}

// oneProbe has the edge's prober check each upstream once, at the start,
// and then leave its health to the test (Host.SetHealthy): no probe can
// take an upstream down or bring it back while the test looks.
func oneProbe(c *config.Edge) {
	c.HealthCheck.Interval = config.Duration(time.Hour)
	c.HealthCheck.Timeout = config.Duration(2500 * time.Millisecond) // within startEdge's 3 s wait
}

func TestUncacheableResponsesNotStored(t *testing.T) {
	u := newUpstream(t)
	var mode atomic.Value
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load().(string) {
		case "cookie":
			w.Header().Set("Set-Cookie", "session="+r.Header.Get("X-Who"))
			w.Header().Set("Cache-Control", "public, max-age=60")
		case "no-store":
			w.Header().Set("Cache-Control", "no-store")
		case "private":
			w.Header().Set("Cache-Control", "private, max-age=60")
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "for "+r.Header.Get("X-Who"))
	}
	e := cachingEdge(t, []*testUpstream{u})
	for _, m := range []string{"cookie", "no-store", "private"} {
		mode.Store(m)
		before := u.count.Load()
		a := do(t, "GET", e.url("/api/games/"+m), "X-Who", "alice")
		b := do(t, "GET", e.url("/api/games/"+m), "X-Who", "bob")
		if got := u.count.Load() - before; got != 2 {
			t.Errorf("%s: origin saw %d requests, want 2 (never from cache)", m, got)
		}
		if ct := a.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q, want the origin's", m, ct)
		}
		if b.body != "for bob" || b.header.Get("X-Cache") == "HIT" {
			t.Errorf("%s: bob got %q X-Cache %q", m, b.body, b.header.Get("X-Cache"))
		}
		if m == "cookie" && (a.header.Get("Set-Cookie") != "session=alice" || b.header.Get("Set-Cookie") != "session=bob") {
			t.Errorf("cookies crossed: alice %q bob %q", a.header.Get("Set-Cookie"), b.header.Get("Set-Cookie"))
		}
	}
}

func TestVaryVariantsDoNotMix(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "Accept-Encoding")
		w.Header().Set("Cache-Control", "public, max-age=60")
		io.WriteString(w, "encoding="+r.Header.Get("Accept-Encoding"))
	}
	e := cachingEdge(t, []*testUpstream{u})
	for round := range 2 {
		for _, enc := range []string{"gzip", "br", ""} {
			r := do(t, "GET", e.url("/api/games"), "Accept-Encoding", enc)
			if r.body != "encoding="+enc {
				t.Errorf("round %d, Accept-Encoding %q: got %q", round, enc, r.body)
			}
			if want := map[int]string{0: "MISS", 1: "HIT"}[round]; r.header.Get("X-Cache") != want {
				t.Errorf("round %d, %q: X-Cache %q, want %s", round, enc, r.header.Get("X-Cache"), want)
			}
		}
	}
	if got := u.count.Load(); got != 3 {
		t.Errorf("origin saw %d requests, want 3 (one per variant)", got)
	}
}

func TestAdminPurge(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60")
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	admin := startAdmin(t, e)
	do(t, "GET", e.url("/api/games"))
	do(t, "GET", e.url("/api/games/3"))
	if r := do(t, "GET", admin+"/cache/purge?prefix=/api"); r.code != 405 {
		t.Errorf("GET purge: %d, want 405", r.code)
	}
	if r := do(t, "POST", admin+"/cache/purge?prefix=api"); r.code != 400 {
		t.Errorf("relative prefix: %d, want 400", r.code)
	}
	r := do(t, "POST", admin+"/cache/purge?prefix=/api/games")
	if r.code != 200 || !strings.Contains(r.body, `"purged":2`) {
		t.Errorf("purge: %d %s, want 2 purged", r.code, r.body)
	}
	if r := do(t, "GET", e.url("/api/games")); r.header.Get("X-Cache") != "MISS" {
		t.Errorf("after purge: X-Cache %q", r.header.Get("X-Cache"))
	}
}

// TestStaleWhileRevalidate: a copy past its lifetime but within
// stale-while-revalidate is served at once while one background request
// refreshes it, and the refreshed copy is what the next fan gets. The
// origin says how old the first copy is (Age: 60 against max-age=60, so
// stale when stored, with 30 s of stale-while-revalidate left) and holds
// the revalidation until the fan has had the stale copy, so "at once"
// means "without waiting for the origin", whatever the machine's speed.
// The refreshed copy has a minute to live. (Waiting for a max-age=1 copy
// to expire instead would not do: the origin's whole-second Date can leave
// the refreshed copy fresh for as little as a few milliseconds, and the
// next fan would see it stale in some 2-5% of runs.)
func TestStaleWhileRevalidate(t *testing.T) {
	u := newUpstream(t)
	var seats, fetches atomic.Int64
	seats.Store(500)
	held := make(chan struct{}, 1) // the revalidation reached the origin
	var release *gate              // and may answer
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=60, stale-while-revalidate=30")
		w.Header().Set("Content-Type", "application/json")
		if fetches.Add(1) == 1 {
			w.Header().Set("Age", "60")
		} else {
			select {
			case held <- struct{}{}:
			default:
			}
			<-release.ch
		}
		fmt.Fprintf(w, `{"remaining":%d}`, seats.Load())
	}
	// No stale-if-error: a stale answer can only be stale-while-revalidate's.
	e := cachingEdge(t, []*testUpstream{u}, func(c *config.Edge) {
		for i := range c.Routes {
			if c.Routes[i].Cache != nil {
				c.Routes[i].Cache.StaleIfError = 0
			}
		}
	})
	release = newGate(t) // after the edge, so opened before the edge's cleanup

	if r := do(t, "GET", e.url("/api/games")); r.code != 200 || r.header.Get("X-Cache") != "MISS" {
		t.Fatalf("fill: %d %q X-Cache %q", r.code, r.body, r.header.Get("X-Cache"))
	}
	seats.Store(400)
	// The origin holds the revalidation until this request is answered: an
	// edge that waited for it would never answer (fetch's bound ends it).
	r, err := fetch("GET", e.url("/api/games"))
	if err != nil {
		t.Fatalf("a fan asking for a copy within stale-while-revalidate was not answered while the origin held the revalidation: %v", err)
	}
	if r.code != 200 || r.header.Get("X-Cache") != "STALE" || r.body != `{"remaining":500}` {
		t.Fatalf("expired within stale-while-revalidate: %d %q X-Cache %q, want the stale copy", r.code, r.body, r.header.Get("X-Cache"))
	}
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("no revalidation reached the origin")
	}
	release.open()

	// The background revalidation lands (the store holds the new copy);
	// the next fan gets it from the cache.
	var kb [128]byte
	key := cache.AppendKey(kb[:0], []byte("/api/games"), nil, []byte(e.addr))
	waitFor(t, "the revalidated copy stored", func() bool {
		c := e.p.lookup(cache.Hash(key), key)
		return c != nil && string(c.Body) == `{"remaining":400}`
	})
	r = do(t, "GET", e.url("/api/games"))
	if r.body != `{"remaining":400}` || r.header.Get("X-Cache") != "HIT" {
		t.Errorf("after the background revalidation: %q X-Cache %q, want the new count as a HIT", r.body, r.header.Get("X-Cache"))
	}
	if got := fetches.Load(); got != 2 {
		t.Errorf("origin saw %d listing requests, want 2 (the fill and one revalidation)", got)
	}
}

// TestClientNoCacheDoesNotBypassCache: a client's Cache-Control: no-cache
// (or max-age=0, or Pragma: no-cache) does not send it past the cache, as
// at CDNs: a flood of such requests, cold or warm, asks the origin once
// per TTL, here once in all, since the TTL is a minute.
func TestClientNoCacheDoesNotBypassCache(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60")
	u.delay.Store(int64(50 * time.Millisecond)) // a listing query long enough that the cold flood meets it
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	const n = 100
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := fetch("GET", e.url("/api/games"), "Cache-Control", "no-cache", "Pragma", "no-cache")
			if err != nil || r.code != 200 || r.body != `{"remaining":500}` {
				t.Errorf("cold no-cache flood: %d %q %v, want the listing", r.code, r.body, err)
			}
		}()
	}
	wg.Wait()
	if got := u.listings.Load(); got != 1 {
		t.Errorf("origin saw %d listing requests for %d cold no-cache requests, want 1", got, n)
	}
	for _, hdr := range [][]string{
		{"Cache-Control", "no-cache"},
		{"Cache-Control", "max-age=0"},
		{"Pragma", "no-cache"},
		{"Cache-Control", "no-cache, max-age=0", "Pragma", "no-cache"},
	} {
		for range 10 {
			if r := do(t, "GET", e.url("/api/games"), hdr...); r.header.Get("X-Cache") != "HIT" || r.body != `{"remaining":500}` {
				t.Errorf("%q on a fresh copy: %q X-Cache %q, want a HIT", hdr, r.body, r.header.Get("X-Cache"))
			}
		}
	}
	if got := u.listings.Load(); got != 1 {
		t.Errorf("origin saw %d listing requests in all, want 1 (one per TTL)", got)
	}
}

// TestSetCookieAnswerNotHandedToWaiters: requests waiting on a fetch whose
// answer sets a cookie do not get that answer, which is one client's: each
// asks the origin itself, and gets its own cookie. The origin holds the
// first fetch until every request is in the edge, so the others wait on
// it; a request the scheduler kept from joining it would ask the origin on
// its own, whatever the edge does with cookies, so the round is repeated
// until some request did wait (podium_edge_cache_coalesced_total).
func TestSetCookieAnswerNotHandedToWaiters(t *testing.T) {
	u := newUpstream(t)
	var mu sync.Mutex
	gates := map[string]*gate{} // the first fetch of a path waits on its gate
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		g := gates[r.URL.Path]
		delete(gates, r.URL.Path)
		mu.Unlock()
		if g != nil {
			<-g.ch
		}
		who := r.Header.Get("X-Who")
		w.Header().Set("Set-Cookie", "session="+who)
		w.Header().Set("Cache-Control", "public, max-age=60")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"for":%q}`, who)
	}
	e := cachingEdge(t, []*testUpstream{u})
	const n = 8
	for round := 1; testCounter(e.p.metrics.cacheCoalesced) == 0; round++ {
		if round > 5 {
			t.Fatal("in 5 rounds no request waited on another's fetch: nothing was tested")
		}
		path := fmt.Sprintf("/api/games/%d", round)
		g := newGate(t)
		mu.Lock()
		gates[path] = g
		mu.Unlock()
		before := u.count.Load()
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				who := fmt.Sprintf("fan%d", i)
				r, err := fetch("GET", e.url(path), "X-Who", who)
				if err != nil {
					t.Error(err)
					return
				}
				if r.code != 200 || r.header.Get("Set-Cookie") != "session="+who || r.body != fmt.Sprintf(`{"for":%q}`, who) || r.header.Get("X-Cache") != "MISS" {
					t.Errorf("round %d, %s got %d %q Set-Cookie %q X-Cache %q, want its own answer and cookie from the origin",
						round, who, r.code, r.body, r.header.Get("Set-Cookie"), r.header.Get("X-Cache"))
				}
			}()
		}
		// Every request is in the edge: the first held at the origin, the
		// others waiting on its fetch.
		waitFor(t, "every request in the edge", func() bool { return e.p.active.Load() == n })
		g.open()
		wg.Wait()
		if got := u.count.Load() - before; got != n {
			t.Errorf("round %d: origin saw %d requests for %d fans, want %d (each asks for its own)", round, got, n, n)
		}
	}
}

// TestHeadMissFetchesWithGet: a HEAD that misses is fetched with GET, so
// that the entry it fills has the body; the client gets the headers alone,
// and the GET after it is a HIT.
func TestHeadMissFetchesWithGet(t *testing.T) {
	u := newUpstream(t)
	const listing = `{"games":[7,9]}`
	var mu sync.Mutex
	var methods []string
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		methods = append(methods, r.Method)
		mu.Unlock()
		w.Header().Set("Cache-Control", "public, max-age=60")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("ETag", `"v1"`)
		io.WriteString(w, listing)
	}
	seen := func() string { mu.Lock(); defer mu.Unlock(); return strings.Join(methods, " ") }
	e := cachingEdge(t, []*testUpstream{u})

	head := func(want string) {
		t.Helper()
		h := do(t, "HEAD", e.url("/api/games"))
		if h.code != 200 || h.body != "" || h.header.Get("X-Cache") != want || h.header.Get("Content-Type") != "application/json" ||
			h.header.Get("ETag") != `"v1"` || h.header.Get("Content-Length") != strconv.Itoa(len(listing)) {
			t.Errorf("HEAD: %d %q X-Cache %q Content-Type %q ETag %q Content-Length %q, want the GET's headers without its body, %s",
				h.code, h.body, h.header.Get("X-Cache"), h.header.Get("Content-Type"), h.header.Get("ETag"), h.header.Get("Content-Length"), want)
		}
	}
	head("MISS")
	if got := seen(); got != "GET" {
		t.Errorf("for a HEAD miss the origin saw %q, want one GET", got)
	}
	if g := do(t, "GET", e.url("/api/games")); g.code != 200 || g.body != listing || g.header.Get("X-Cache") != "HIT" {
		t.Errorf("GET after a HEAD miss: %d %q X-Cache %q, want the listing as a HIT", g.code, g.body, g.header.Get("X-Cache"))
	}
	head("HIT")
	if got := seen(); got != "GET" {
		t.Errorf("origin saw %q in all, want one GET", got)
	}
}
