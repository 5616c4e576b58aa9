package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
}

func newTicketUpstream(t *testing.T) *ticketUpstream {
	u := &ticketUpstream{testUpstream: newUpstream(t)}
	u.seats.Store(500)
	u.cc.Store("public, max-age=2")
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
	}}, opts...)...)
}

type result struct {
	code   int
	body   string
	header http.Header
}

func do(t *testing.T, method, url string, hdr ...string) result {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, string(b), resp.Header}
}

func TestColdListingOneOriginRequest(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60")             // long enough that a slow machine cannot see it expire mid-test
	u.delay.Store(int64(200 * time.Millisecond)) // a slow listing query: most of the 1,000 arrive during it
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	const n = 1000
	var wg sync.WaitGroup
	var bad atomic.Int64
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
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != `{"remaining":500}` {
				bad.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d of %d requests failed", bad.Load(), n)
	}
	if got := u.listings.Load(); got != 1 {
		t.Errorf("origin saw %d listing requests for 1,000 concurrent cold requests, want exactly 1", got)
	}
}

func TestHitHeadersAnd304(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60")
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	first := do(t, "GET", e.url("/api/games"))
	if first.header.Get("X-Cache") != "MISS" {
		t.Errorf("first X-Cache %q, want MISS", first.header.Get("X-Cache"))
	}
	if ct := first.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("MISS Content-Type %q, want the origin's application/json", ct)
	}
	time.Sleep(1100 * time.Millisecond)
	hit := do(t, "GET", e.url("/api/games"))
	if hit.header.Get("X-Cache") != "HIT" || hit.body != first.body || hit.header.Get("ETag") != `"seats-500"` {
		t.Errorf("hit: %d %q X-Cache %q ETag %q", hit.code, hit.body, hit.header.Get("X-Cache"), hit.header.Get("ETag"))
	}
	if ct := hit.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("HIT Content-Type %q, want the origin's application/json", ct)
	}
	// RFC 9111 §4.2.3: the apparent age counts from the origin's Date,
	// which has one-second resolution, so after 1.1 s Age is 1 or 2.
	if age := hit.header.Get("Age"); age != "1" && age != "2" {
		t.Errorf("Age %q after 1.1s, want 1 or 2", age)
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

func TestExpiredEntryRevalidatesWith304(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=1")
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	do(t, "GET", e.url("/api/games"))
	time.Sleep(1100 * time.Millisecond)
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

func TestPurchasePurgesListing(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60") // long: only the purge can make it fresh
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	for _, path := range []string{"/api/games", "/api/games/7", "/api/games/8"} {
		do(t, "GET", e.url(path))
	}
	buy := do(t, "POST", e.url("/api/games/7/buy"))
	if buy.code != 201 {
		t.Fatalf("buy: %d %s", buy.code, buy.body)
	}
	for _, path := range []string{"/api/games", "/api/games/7"} {
		r := do(t, "GET", e.url(path))
		if r.body != `{"remaining":499}` || r.header.Get("X-Cache") != "MISS" {
			t.Errorf("%s after a purchase: %q X-Cache %q, want the new count from the origin", path, r.body, r.header.Get("X-Cache"))
		}
	}
	// Another game's page was not touched by this game's purchase.
	if r := do(t, "GET", e.url("/api/games/8")); r.header.Get("X-Cache") != "HIT" {
		t.Errorf("/api/games/8: X-Cache %q, want HIT", r.header.Get("X-Cache"))
	}
}

func TestStaleIfErrorThen503(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=1")
	e := cachingEdge(t, []*testUpstream{u.testUpstream}, func(c *config.Edge) {
		for i := range c.Routes {
			if c.Routes[i].Cache != nil {
				c.Routes[i].Cache.StaleIfError = config.Duration(2 * time.Second)
			}
		}
	})
	do(t, "GET", e.url("/api/games"))
	u.stop() // every origin gone
	time.Sleep(1200 * time.Millisecond)
	r := do(t, "GET", e.url("/api/games"))
	if r.code != 200 || r.header.Get("X-Cache") != "STALE" || r.body != `{"remaining":500}` {
		t.Errorf("within stale_if_error: %d %q X-Cache %q, want 200 STALE with the last listing", r.code, r.body, r.header.Get("X-Cache"))
	}
	time.Sleep(2 * time.Second) // age now past max-age + stale_if_error
	r = do(t, "GET", e.url("/games"), "Accept", "text/html")
	if r.code < 500 {
		t.Fatalf("uncached page with origins down: %d", r.code)
	}
	r = do(t, "GET", e.url("/api/games"))
	if r.code != 503 && r.code != 502 {
		t.Errorf("past the bound: %d %q, want a clear 502/503", r.code, r.body)
	}
	if !strings.Contains(r.body, `"request_id"`) {
		t.Errorf("past the bound: body %q is not the edge's JSON error", r.body)
	}
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

func TestStaleWhileRevalidate(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=1, stale-while-revalidate=30")
	e := cachingEdge(t, []*testUpstream{u.testUpstream})
	do(t, "GET", e.url("/api/games"))
	u.seats.Store(400)
	u.delay.Store(int64(500 * time.Millisecond)) // a slow origin: the fan must not wait for it
	time.Sleep(1100 * time.Millisecond)
	start := time.Now()
	r := do(t, "GET", e.url("/api/games"))
	if took := time.Since(start); r.header.Get("X-Cache") != "STALE" || r.body != `{"remaining":500}` || took > 300*time.Millisecond {
		t.Errorf("expired within stale-while-revalidate: %q X-Cache %q after %v, want the stale copy at once", r.body, r.header.Get("X-Cache"), took)
	}
	// The background revalidation lands; the next fan sees the new count.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if r = do(t, "GET", e.url("/api/games")); r.body == `{"remaining":400}` {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r.body != `{"remaining":400}` || r.header.Get("X-Cache") != "HIT" {
		t.Errorf("after the background revalidation: %q X-Cache %q, want the new count as a HIT", r.body, r.header.Get("X-Cache"))
	}
	if got := u.listings.Load(); got != 2 {
		t.Errorf("origin saw %d listing requests, want 2 (the fill and one revalidation)", got)
	}
}
