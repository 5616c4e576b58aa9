package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
	"github.com/valyala/fasthttp"
)

// TestRateLimitRunsBeforeCache: a client flooding a cached listing is
// limited like any other, though every answer would come from memory: its
// burst of 5 goes through (one MISS, four HITs), the sixth is the edge's
// 429 with Retry-After, and the origin saw one request. Another client
// still gets the cached copy, so it is the limit that refused, not the
// cache that broke. The policy refills a token a minute, so no run,
// however slow, sees a refill and the count is exact.
func TestRateLimitRunsBeforeCache(t *testing.T) {
	const burst = 5
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60") // fresh for the whole test: every request after the first is a HIT
	e := cachingEdge(t, []*testUpstream{u.testUpstream}, func(c *config.Edge) {
		c.RateLimits = map[string]config.RateLimit{"default": {Rate: 1.0 / 60, Burst: burst}}
		for i := range c.Routes {
			if c.Routes[i].Name == "api_games" {
				c.Routes[i].RateLimit = "default"
			}
		}
		c.TrustedProxies = []string{"127.0.0.1/32"}
	})
	const flood, fan = "198.51.100.7", "203.0.113.5"
	for i := range burst {
		want := "HIT"
		if i == 0 {
			want = "MISS"
		}
		if r := from(t, e, "GET", "/api/games", flood); r.code != 200 || r.header.Get("X-Cache") != want {
			t.Fatalf("request %d of the burst: %d %q X-Cache %q, want 200 %s", i+1, r.code, r.body, r.header.Get("X-Cache"), want)
		}
	}
	for i := range 3 { // the bucket stays empty: every further hit is refused
		r := from(t, e, "GET", "/api/games", flood)
		secs, err := strconv.Atoi(r.header.Get("Retry-After"))
		if r.code != 429 || err != nil || secs < 1 || secs > 60 || !strings.Contains(r.body, "too many requests") || r.header.Get("X-Cache") != "" {
			t.Errorf("request %d past the burst of %d, all cache hits: %d %q Retry-After %q X-Cache %q, want the edge's 429 with Retry-After 1..60 and no X-Cache",
				burst+i+1, burst, r.code, r.body, r.header.Get("Retry-After"), r.header.Get("X-Cache"))
		}
	}
	if r := from(t, e, "GET", "/api/games", fan); r.code != 200 || r.header.Get("X-Cache") != "HIT" || r.body != `{"remaining":500}` {
		t.Errorf("another client: %d %q X-Cache %q, want the cached listing (HIT)", r.code, r.body, r.header.Get("X-Cache"))
	}
	if got := u.listings.Load(); got != 1 {
		t.Errorf("origin saw %d listing requests, want 1", got)
	}
}

// Ways an origin fails a listing, for TestStaleIfErrorOnTimeoutRefusedAnd5xx.
const (
	originOK int32 = iota
	originStalls
	originDown // the listener closed; the host stays marked healthy
	originErrors
)

// originError is the origin's own 500, which the client must get as sent
// once no stale copy may stand in.
const originError = `{"error":"database unavailable"}`

// TestStaleIfErrorOnTimeoutRefusedAnd5xx: the last good copy stands in,
// marked STALE, within stale_if_error whichever way the origin fails: it
// does not answer within timeouts.upstream, it refuses the connection
// while the edge still counts it healthy (no probe runs), or it answers
// 500. Past the bound the client gets what it would without a cache: the
// edge's 504, the edge's 502, the origin's 500 as the origin sent it.
//
// Which side of the bound a copy is on is the origin's to say (Age), as
// in TestStaleIfErrorThen503, so no clock is waited on: the first copy
// is 30 s short of the bound (lifetime 60 s + stale_if_error 3600 s), far
// more than a request takes here; the second is 1 s past it when stored.
func TestStaleIfErrorOnTimeoutRefusedAnd5xx(t *testing.T) {
	const sie = time.Hour
	bound := int((60*time.Second + sie) / time.Second)
	for _, tt := range []struct {
		name  string
		fail  int32
		opt   edgeOption
		check func(t *testing.T, r result) // the answer past the bound
	}{
		{"timeout", originStalls,
			// Long enough that a loaded machine fills in time; each stall costs it.
			func(c *config.Edge) { c.Timeouts.Upstream = config.Duration(3 * time.Second) },
			func(t *testing.T, r result) { checkEdgeError(t, r, 504, fasthttp.ErrTimeout) }},
		{"refused", originDown, nil,
			func(t *testing.T, r result) { checkEdgeError(t, r, 502, syscall.ECONNREFUSED) }},
		{"5xx", originErrors, nil,
			func(t *testing.T, r result) {
				if r.code != 500 || r.body != originError || r.header.Get("Content-Type") != "application/problem+json" || r.header.Get("X-Origin") != "failing" {
					t.Errorf("past the bound: %d %q Content-Type %q X-Origin %q, want the origin's 500 %s as it sent it",
						r.code, r.body, r.header.Get("Content-Type"), r.header.Get("X-Origin"), originError)
				}
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := newTicketUpstream(t)
			u.cc.Store("public, max-age=60")
			var mode atomic.Int32
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			listing := u.handler
			u.handler = func(w http.ResponseWriter, r *http.Request) {
				switch mode.Load() {
				case originStalls:
					select { // until the edge gives up on it, or the test ends
					case <-r.Context().Done():
					case <-release:
					}
				case originErrors:
					w.Header().Set("Content-Type", "application/problem+json")
					w.Header().Set("X-Origin", "failing")
					w.WriteHeader(500)
					io.WriteString(w, originError)
				default:
					listing(w, r)
				}
			}
			opts := []edgeOption{func(c *config.Edge) {
				for i := range c.Routes {
					if c.Routes[i].Cache != nil {
						c.Routes[i].Cache.StaleIfError = config.Duration(sie)
					}
				}
				oneProbe(c) // health is the test's: a refused connection must not take the host down
			}}
			if tt.opt != nil {
				opts = append(opts, tt.opt)
			}
			e := cachingEdge(t, []*testUpstream{u.testUpstream}, opts...)
			host := e.p.Pool().Hosts()[0]
			fail := func() {
				mode.Store(tt.fail)
				if tt.fail == originDown {
					u.stop()
				}
			}
			heal := func() {
				if tt.fail == originDown {
					u.restart()
				}
				mode.Store(originOK)
			}
			fill := func(age int, want string) {
				t.Helper()
				u.age.Store(strconv.Itoa(age))
				if r := do(t, "GET", e.url("/api/games")); r.code != 200 || r.header.Get("X-Cache") != "MISS" || r.body != want {
					t.Fatalf("fill: %d %q X-Cache %q, want %s from the origin", r.code, r.body, r.header.Get("X-Cache"), want)
				}
			}

			fill(bound-30, `{"remaining":500}`)
			fail()
			if r := do(t, "GET", e.url("/api/games")); r.code != 200 || r.header.Get("X-Cache") != "STALE" || r.body != `{"remaining":500}` {
				t.Errorf("within stale_if_error: %d %q X-Cache %q, want 200 STALE with the last listing", r.code, r.body, r.header.Get("X-Cache"))
			}

			heal()
			u.seats.Store(499) // a new ETag: a 200, not a 304 that would refresh the old copy
			fill(bound+1, `{"remaining":499}`)
			fail()
			r := do(t, "GET", e.url("/api/games"))
			if xc := r.header.Get("X-Cache"); xc == "STALE" {
				t.Errorf("past stale_if_error: %d %q X-Cache STALE, want no stale copy", r.code, r.body)
			}
			tt.check(t, r)
			if got := testCounter(e.p.metrics.cacheStaleOnError); got != 1 {
				t.Errorf("served stale on error %v times, want 1 (within the bound only)", got)
			}
			if !host.Healthy() {
				t.Errorf("upstream marked down: the test meant the edge to try it")
			}
		})
	}
}

// checkEdgeError checks that r is the edge's own JSON error with the
// status and message classify gives err.
func checkEdgeError(t *testing.T, r result, status int, err error) {
	t.Helper()
	wantStatus, _, msg := classify(err)
	id := r.header.Get("X-Request-ID")
	want := fmt.Sprintf("{\"error\":%q,\"request_id\":%q}\n", msg, id)
	if wantStatus != status || r.code != status || r.body != want || len(id) != 32 || r.header.Get("X-Cache") != "" {
		t.Errorf("past the bound: %d %q X-Cache %q, want the edge's %d %q", r.code, r.body, r.header.Get("X-Cache"), status, want)
	}
}

// TestPurgedLastGoodStandsInWhileOriginDown: a purchase purges the
// listing and its game's page, but their last good copies are kept
// aside: while no origin answers, they stand in, marked STALE, with what
// they said before the purchase, rather than the edge's 503.
func TestPurgedLastGoodStandsInWhileOriginDown(t *testing.T) {
	u := newTicketUpstream(t)
	u.cc.Store("public, max-age=60") // fresh until purged: within the default stale_if_error of 60 s
	e := cachingEdge(t, []*testUpstream{u.testUpstream}, oneProbe)
	pages := []string{"/api/games", "/api/games/7"}
	warm(t, e, pages)
	if r := do(t, "POST", e.url("/api/games/7/buy")); r.code != 201 {
		t.Fatalf("buy: %d %q", r.code, r.body)
	}
	u.stop()
	e.p.Pool().Hosts()[0].SetHealthy(false, time.Now())
	for _, p := range pages {
		if r := do(t, "GET", e.url(p)); r.code != 200 || r.header.Get("X-Cache") != "STALE" || r.body != `{"remaining":500}` {
			t.Errorf("%s purged by the purchase, origin down: %d %q X-Cache %q, want 200 STALE with the copy from before the purchase",
				p, r.code, r.body, r.header.Get("X-Cache"))
		}
	}
	if got := u.listings.Load(); got != int64(len(pages)) {
		t.Errorf("origin saw %d listing requests, want %d (one fill each)", got, len(pages))
	}
}
