package proxy

import (
	"fmt"
	"math"
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

func TestRateLimitAtTenTimesRate(t *testing.T) {
	// A client at 10x its rate (200/s against 20/s) for 5 s gets through at
	// about its rate, with a correct Retry-After; a well-behaved client on
	// another address at the same time is never limited.
	u := newUpstream(t)
	e := limitedEdge(t, u)
	var okAbuser, limited, okFan, fanLimited atomic.Int64
	var retryAfterBad atomic.Int64
	stop := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond) // 200/s
		defer tick.Stop()
		for time.Now().Before(stop) {
			<-tick.C
			r := from(t, e, "GET", "/x", "198.51.100.7")
			switch r.code {
			case 200:
				okAbuser.Add(1)
			case 429:
				limited.Add(1)
				ra, err := strconv.Atoi(r.header.Get("Retry-After"))
				if err != nil || ra < 1 || ra > 1 {
					retryAfterBad.Add(1) // at 20/s the next token is under 1 s away: 1
				}
				if !strings.Contains(r.body, "Too many requests") {
					retryAfterBad.Add(1)
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		for time.Now().Before(stop) {
			if r := from(t, e, "GET", "/x", "203.0.113.5"); r.code == 200 {
				okFan.Add(1)
			} else {
				fanLimited.Add(1)
			}
			time.Sleep(100 * time.Millisecond) // 10/s, under its 20/s
		}
	}()
	wg.Wait()
	// 5 s at 20/s plus the burst of 5.
	want := 5.0*20 + 5
	if got := float64(okAbuser.Load()); math.Abs(got-want) > 0.1*want {
		t.Errorf("abuser got %v requests through in 5 s, want %v ± 10%%", got, want)
	}
	if limited.Load() < 500 {
		t.Errorf("only %d 429s for a client at 10x its rate", limited.Load())
	}
	if retryAfterBad.Load() != 0 {
		t.Errorf("%d 429s had a wrong Retry-After or body", retryAfterBad.Load())
	}
	if fanLimited.Load() != 0 || okFan.Load() < 30 {
		t.Errorf("the well-behaved client was limited %d times (%d ok)", fanLimited.Load(), okFan.Load())
	}
	t.Logf("abuser: %d ok, %d limited; fan: %d ok", okAbuser.Load(), limited.Load(), okFan.Load())
}

func TestSpoofedForwardedForIsOneClient(t *testing.T) {
	u := newUpstream(t)
	untrusted := limitedEdge(t, u, func(c *config.Edge) { c.TrustedProxies = nil })
	ok := 0
	for i := range 1000 {
		if from(t, untrusted, "GET", "/x", fmt.Sprintf("10.%d.%d.1", i/250, i%250)).code == 200 {
			ok++
		}
	}
	// One client: the burst, plus what refilled while the loop ran.
	if ok > 5+20*10 {
		t.Errorf("untrusted peer with 1,000 spoofed X-Forwarded-For: %d allowed, want them limited as one client", ok)
	}
	trusted := limitedEdge(t, u)
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
	e := limitedEdge(t, u)
	limited := 0
	for i := range 40 {
		// 40 addresses in one /64: one client with a burst of 5.
		if from(t, e, "GET", "/x", fmt.Sprintf("2001:db8:1:2::%x", i+1)).code == 429 {
			limited++
		}
	}
	if limited < 20 {
		t.Errorf("40 addresses of one /64: %d limited, want them sharing one bucket", limited)
	}
	if r := from(t, e, "GET", "/x", "2001:db8:1:3::1"); r.code != 200 {
		t.Errorf("another /64: %d, want its own bucket", r.code)
	}
}

func TestBuyPolicyStricterAndNoneAndAllowList(t *testing.T) {
	u := newUpstream(t)
	e := limitedEdge(t, u, func(c *config.Edge) { c.RateLimitAllow = []string{"192.0.2.0/24"} })
	codes := map[int]int{}
	for range 6 {
		codes[from(t, e, "POST", "/api/games/1/buy", "198.51.100.9").code]++
	}
	if codes[200] != 2 || codes[429] != 4 {
		t.Errorf("6 quick purchases under buy {2/s, burst 2}: %v, want 2 ok and 4 limited", codes)
	}
	r := do(t, "POST", e.url("/api/games/1/buy"), "X-Forwarded-For", "198.51.100.9")
	if r.code != 429 || !strings.Contains(r.body, `"error":"too many requests; retry after 1 seconds"`) || r.header.Get("Retry-After") != "1" {
		t.Errorf("API 429: %d %q Retry-After %q, want the JSON error", r.code, r.body, r.header.Get("Retry-After"))
	}
	for range 50 {
		if r := from(t, e, "GET", "/open/x", "198.51.100.9"); r.code != 200 {
			t.Fatalf("ratelimit: none route limited: %d", r.code)
		}
		if r := from(t, e, "GET", "/x", "192.0.2.44"); r.code != 200 {
			t.Fatalf("allow-listed client limited: %d", r.code)
		}
	}
	if got := testCounterVec(t, e, `podium_edge_ratelimit_rejected_total{policy="buy"}`); got != "5" {
		t.Errorf("rejections by policy buy = %q, want 5", got)
	}
	// A browser over its rate gets the HTML page.
	for range 10 {
		r = do(t, "GET", e.url("/games"), "X-Forwarded-For", "198.51.100.10", "Accept", "text/html,*/*")
	}
	if r.code != 429 || !strings.Contains(r.body, "<html") || !strings.Contains(r.body, "Too many requests") {
		t.Errorf("browser 429: %d %q, want the HTML page", r.code, r.body)
	}
}

func TestMaxInFlightSheds(t *testing.T) {
	u := newUpstream(t)
	u.delay.Store(int64(300 * time.Millisecond))
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.Routes = []config.Route{{Name: "capped", Match: config.Match{PathPrefix: "/"}, MaxInFlight: 3}}
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	var retryAfter string
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := do(t, "GET", e.url("/x"))
			mu.Lock()
			codes[r.code]++
			if r.code == 503 {
				retryAfter = r.header.Get("Retry-After")
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[200] != 3 || codes[503] != 7 || retryAfter != "1" {
		t.Errorf("10 concurrent under max_in_flight 3: %v (Retry-After %q), want 3 ok and 7 shed with Retry-After 1", codes, retryAfter)
	}
}

func TestReloadKeepsUnchangedBuckets(t *testing.T) {
	u := newUpstream(t)
	e := limitedEdge(t, u)
	for range 10 {
		from(t, e, "GET", "/x", "198.51.100.20") // drain the default bucket
	}
	cfg := *e.p.Config()
	cfg.RateLimits = map[string]config.RateLimit{"default": {Rate: 20, Burst: 5}, "buy": {Rate: 1, Burst: 1}}
	if err := cfg.Validate("reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
	if r := from(t, e, "GET", "/x", "198.51.100.20"); r.code != 429 {
		t.Errorf("after a reload that left the default policy alone, the drained client got %d, want 429", r.code)
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
