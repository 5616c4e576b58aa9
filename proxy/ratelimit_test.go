package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

func limitedEdge(t *testing.T, u *testUpstream, opts ...edgeOption) *testEdge {
	return startEdge(t, []*testUpstream{u}, nil, append([]edgeOption{func(c *config.Edge) {
		c.RateLimits = map[string]config.RateLimit{
			"default": {Rate: 20, Burst: 5},
			"buy":     {Rate: 2, Burst: 2},
		}
		c.Routes = []config.Route{
			{Name: "buy", Match: config.Match{Path: "/api/games/*/buy", Methods: []string{"POST"}}, RateLimit: "buy"},
			{Name: "open", Match: config.Match{PathPrefix: "/open"}, RateLimit: "none"},
			{Name: "default", Match: config.Match{PathPrefix: "/"}},
		}
		c.TrustedProxies = []string{"127.0.0.1/32"}
	}}, opts...)...)
}

// from sends a GET as the client at addr (via X-Forwarded-For from the
// trusted loopback peer).
func from(t *testing.T, e *testEdge, method, path, addr string) result {
	return do(t, method, e.url(path), "X-Forwarded-For", addr)
}

// timedResult is one request as its client saw it: the edge read the
// clock for it (ctx.Time, which the limiter uses) somewhere between sent
// and got.
type timedResult struct {
	sent, got time.Time
	result
}

func timedFrom(t *testing.T, e *testEdge, method, path, addr string) timedResult {
	sent := time.Now()
	r := from(t, e, method, path, addr)
	return timedResult{sent, time.Now(), r}
}

// tokensBetween bounds the tokens a bucket refilling at rate mints between
// the edge's clock readings for requests a and b (a before b), knowing
// only when each was sent and answered.
func tokensBetween(rate float64, a, b timedResult) (lo, hi float64) {
	return rate * b.sent.Sub(a.got).Seconds(), rate * b.got.Sub(a.sent).Seconds()
}

func TestRateLimitAtTenTimesRate(t *testing.T) {
	// A client at 10x its rate (200/s against 20/s) gets through at its
	// rate, every refusal with a correct Retry-After; a well-behaved client
	// on another address at the same time is never limited.
	//
	// No assumption on how fast this machine is: the client records when
	// each request left and its answer came, and the count allowed is
	// checked against what a token bucket can mint in that time. From the
	// first refusal (bucket under one token) to the last (under one again)
	// the bucket took in rate × elapsed tokens and let through as many, ± 1.
	// It cannot have overflowed meanwhile: refilling from empty to the
	// burst of 100 takes 5 s, longer than any stall of a client that asks
	// every 5 ms.
	const rate, burst = 20, 100
	u := newUpstream(t)
	e := limitedEdge(t, u, func(c *config.Edge) {
		c.RateLimits["default"] = config.RateLimit{Rate: rate, Burst: burst}
	})
	fanDone := make(chan struct{})
	var fanOK, fanLimited atomic.Int64
	abuser := make(chan []timedResult, 1)
	firstRefusal := make(chan struct{})
	go func() {
		var rs []timedResult
		defer func() { abuser <- rs }()
		tick := time.NewTicker(5 * time.Millisecond) // 200/s
		defer tick.Stop()
		var refusedAt time.Time
		// Bounded: a 429 ends the run once the fan is done and 2 s have
		// passed since the first; 10,000 requests is over 40 s at 200/s.
		for range 10000 {
			<-tick.C
			r := timedFrom(t, e, "GET", "/x", "198.51.100.7")
			rs = append(rs, r)
			if r.code != 429 {
				continue
			}
			if refusedAt.IsZero() {
				refusedAt = r.got
				close(firstRefusal)
			}
			select {
			case <-fanDone:
				if time.Since(refusedAt) > 2*time.Second {
					return
				}
			default:
			}
		}
	}()
	go func() {
		defer close(fanDone)
		<-firstRefusal // the abuser is being limited now
		for range 20 {
			// 10/s at most, under its 20/s: two tokens between requests.
			time.Sleep(100 * time.Millisecond)
			if r := from(t, e, "GET", "/x", "203.0.113.5"); r.code == 200 {
				fanOK.Add(1)
			} else {
				fanLimited.Add(1)
			}
		}
	}()
	rs := <-abuser
	<-fanDone

	first, last := -1, len(rs)-1
	okTotal, okAfter, limited, badRefusal := 0, 0, 0, 0
	for i, r := range rs {
		switch r.code {
		case 200:
			okTotal++
			if first >= 0 {
				okAfter++
			}
		case 429:
			limited++
			if first < 0 {
				first = i
			}
			// At 20/s the next token is under a second away: 1.
			if r.header.Get("Retry-After") != "1" || !strings.Contains(r.body, "Too many requests") {
				badRefusal++
			}
		default:
			t.Fatalf("abuser's request %d: status %d %q", i, r.code, r.body)
		}
	}
	if first < 0 || rs[last].code != 429 {
		t.Fatalf("abuser at 10x its rate: %d requests, %d limited, the last %d; want the run to end on a 429", len(rs), limited, rs[last].code)
	}
	// Until the first refusal: the full bucket and what refilled meanwhile.
	if _, hi := tokensBetween(rate, rs[0], rs[first]); okTotal-okAfter > burst+int(hi) || okTotal-okAfter < burst {
		t.Errorf("abuser got %d requests through before the first 429, want the burst of %d plus at most %.1f refilled", okTotal-okAfter, burst, hi)
	}
	lo, hi := tokensBetween(rate, rs[first], rs[last])
	if got := float64(okAfter); got <= lo-1 || got >= hi+1 {
		t.Errorf("abuser got %d requests through between its first and last 429, %.2f s apart; want %.1f..%.1f (20/s)", okAfter, rs[last].got.Sub(rs[first].sent).Seconds(), lo, hi)
	}
	if badRefusal != 0 {
		t.Errorf("%d of %d 429s had a wrong Retry-After or body", badRefusal, limited)
	}
	if fanLimited.Load() != 0 || fanOK.Load() != 20 {
		t.Errorf("the well-behaved client was limited %d times (%d ok of 20)", fanLimited.Load(), fanOK.Load())
	}
	t.Logf("abuser: %d sent, %d ok (%d after the first 429, %.1f..%.1f allowed), %d limited", len(rs), okTotal, okAfter, lo, hi, limited)
}

// slowDefault makes the default policy one token a minute after a burst
// of 5: no test run, however slow the machine, sees a refill, so a count
// of what a bucket allowed is exact.
func slowDefault(c *config.Edge) {
	c.RateLimits["default"] = config.RateLimit{Rate: 1.0 / 60, Burst: 5}
}

// untilLimited repeats send until it answers 429 and returns that answer.
// A client sending back to back outruns any bucket refilling at a few
// tokens a second; the bound only ends a test whose limit is broken.
func untilLimited(t *testing.T, what string, send func() result) result {
	t.Helper()
	var r result
	for range 100 {
		if r = send(); r.code == 429 {
			return r
		}
	}
	t.Fatalf("%s: 100 requests back to back, none limited (last %d %q)", what, r.code, r.body)
	return r
}

func TestSpoofedForwardedForIsOneClient(t *testing.T) {
	u := newUpstream(t)
	untrusted := limitedEdge(t, u, slowDefault, func(c *config.Edge) { c.TrustedProxies = nil })
	ok := 0
	for i := range 1000 {
		if from(t, untrusted, "GET", "/x", fmt.Sprintf("10.%d.%d.1", i/250, i%250)).code == 200 {
			ok++
		}
	}
	if ok != 5 {
		t.Errorf("untrusted peer with 1,000 spoofed X-Forwarded-For: %d allowed, want them limited as one client (its burst of 5)", ok)
	}
	trusted := limitedEdge(t, u, slowDefault)
	ok = 0
	for i := range 1000 {
		if from(t, trusted, "GET", "/x", fmt.Sprintf("10.%d.%d.1", i/250, i%250)).code == 200 {
			ok++
		}
	}
	if ok != 1000 {
		t.Errorf("through a trusted proxy, 1,000 real clients: %d allowed, want all", ok)
	}
}

func TestIPv6PrefixSharesBucket(t *testing.T) {
	u := newUpstream(t)
	e := limitedEdge(t, u, slowDefault)
	allowed := 0
	for i := range 40 {
		// 40 addresses in one /64: one client with a burst of 5.
		if from(t, e, "GET", "/x", fmt.Sprintf("2001:db8:1:2::%x", i+1)).code == 200 {
			allowed++
		}
	}
	if allowed != 5 {
		t.Errorf("40 addresses of one /64: %d allowed, want them sharing one bucket (its burst of 5)", allowed)
	}
	if r := from(t, e, "GET", "/x", "2001:db8:1:3::1"); r.code != 200 {
		t.Errorf("another /64: %d, want its own bucket", r.code)
	}
}

func TestBuyPolicyStricterAndNoneAndAllowList(t *testing.T) {
	u := newUpstream(t)
	e := limitedEdge(t, u, func(c *config.Edge) { c.RateLimitAllow = []string{"192.0.2.0/24"} })
	// buy is {2/s, burst 2}: the burst, then a 429 once the client outruns
	// the refill, whose Retry-After is 1 (the next token is at most 0.5 s
	// away). Counted against the clock rather than assumed quick.
	start := time.Now()
	codes := map[int]int{}
	r := untilLimited(t, "purchases under buy {2/s, burst 2}", func() result {
		r := from(t, e, "POST", "/api/games/1/buy", "198.51.100.9")
		codes[r.code]++
		return r
	})
	if hi := 2 + int(2*time.Since(start).Seconds()); codes[200] < 2 || codes[200] > hi {
		t.Errorf("purchases under buy {2/s, burst 2} before the first 429: %v, want 2..%d ok", codes, hi)
	}
	if !strings.Contains(r.body, `"error":"too many requests; retry after 1 seconds"`) || r.header.Get("Retry-After") != "1" {
		t.Errorf("API 429: %q Retry-After %q, want the JSON error", r.body, r.header.Get("Retry-After"))
	}
	for range 50 {
		if r := from(t, e, "GET", "/open/x", "198.51.100.9"); r.code != 200 {
			t.Fatalf("ratelimit: none route limited: %d", r.code)
		}
		if r := from(t, e, "GET", "/x", "192.0.2.44"); r.code != 200 {
			t.Fatalf("allow-listed client limited: %d", r.code)
		}
	}
	if got, want := testCounterVec(t, e, `podium_edge_ratelimit_rejected_total{policy="buy"}`), strconv.Itoa(codes[429]); got != want {
		t.Errorf("rejections by policy buy = %q, want %s (the 429s answered)", got, want)
	}
	// A browser over its rate gets the HTML page.
	r = untilLimited(t, "browser under default {20/s, burst 5}", func() result {
		return do(t, "GET", e.url("/games"), "X-Forwarded-For", "198.51.100.10", "Accept", "text/html,*/*")
	})
	if !strings.Contains(r.body, "<html") || !strings.Contains(r.body, "Too many requests") {
		t.Errorf("browser 429: %q, want the HTML page", r.body)
	}
}

func TestMaxInFlightSheds(t *testing.T) {
	// Three requests are held at the upstream until the other seven have
	// their answers, so all ten overlap however slow the machine.
	u := newUpstream(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "ok")
	}
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.Routes = []config.Route{{Name: "capped", Match: config.Match{PathPrefix: "/"}, MaxInFlight: 3}}
	})
	t.Cleanup(open) // before the edge's shutdown waits on the held requests
	results := make(chan result, 10)
	for range 10 {
		go func() { results <- do(t, "GET", e.url("/x")) }()
	}
	codes := map[int]int{}
	retryAfter := map[string]int{}
	hang := time.NewTimer(30 * time.Second)
	defer hang.Stop()
	for n := 0; n < 10; n++ {
		if n == 7 {
			open() // seven answered while three were held: let those go
		}
		select {
		case r := <-results:
			codes[r.code]++
			if r.code == 503 {
				retryAfter[r.header.Get("Retry-After")]++
			}
		case <-hang.C:
			open()
			t.Fatalf("after %d answers (%v) nothing more came in 30 s", n, codes)
		}
	}
	if codes[200] != 3 || codes[503] != 7 || retryAfter["1"] != 7 {
		t.Errorf("10 concurrent under max_in_flight 3: %v (Retry-After %v), want 3 ok and 7 shed with Retry-After 1", codes, retryAfter)
	}
	if got := u.count.Load(); got != 3 {
		t.Errorf("the upstream received %d requests, want the 3 in flight", got)
	}
}

func TestReloadKeepsUnchangedBuckets(t *testing.T) {
	// Policies slow enough that no bucket refills during the test, however
	// slow the machine: what a bucket allows afterwards tells whether the
	// reload kept it.
	u := newUpstream(t)
	e := limitedEdge(t, u, slowDefault, func(c *config.Edge) {
		c.RateLimits["buy"] = config.RateLimit{Rate: 1.0 / 60, Burst: 1}
	})
	const client = "198.51.100.20"
	untilLimited(t, "draining default", func() result { return from(t, e, "GET", "/x", client) })
	untilLimited(t, "draining buy", func() result { return from(t, e, "POST", "/api/games/1/buy", client) })

	cfg := *e.p.Config()
	cfg.RateLimits = map[string]config.RateLimit{
		"default": cfg.RateLimits["default"],  // unchanged: its buckets stay
		"buy":     {Rate: 1.0 / 60, Burst: 2}, // changed: new buckets
	}
	if err := cfg.Validate("reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
	if r := from(t, e, "GET", "/x", client); r.code != 429 {
		t.Errorf("after a reload that left the default policy alone, the drained client got %d, want 429", r.code)
	}
	if r := from(t, e, "POST", "/api/games/1/buy", client); r.code != 200 {
		t.Errorf("after a reload that changed the buy policy, the client got %d on it, want 200 from a new bucket", r.code)
	}
}

func testCounterVec(t *testing.T, e *testEdge, series string) string {
	t.Helper()
	admin := startAdmin(t, e)
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimPrefix(line, series+" ")
		}
	}
	return ""
}
