//go:build !race

// Allocation counts are only meaningful without the race detector.

package proxy

import (
	"bytes"
	"testing"

	"github.com/podium-edge/podium/config"
)

func TestProxyPathAllocs(t *testing.T) {
	p := inmemoryEdge(t)
	s := newRawServer(rawGet)
	s.serve(t, p) // warm the pools
	if n := testing.AllocsPerRun(2000, func() { s.serve(t, p) }); n != 0 {
		t.Errorf("a proxied GET allocates %v times, want 0", n)
	}
}

func TestProxyPathAllocsWithRateLimit(t *testing.T) {
	// The rate limiter on the path, for a client it already knows, through
	// a trusted proxy's X-Forwarded-For.
	p := inmemoryEdge(t, func(c *config.Edge) {
		c.RateLimits = map[string]config.RateLimit{"default": {Rate: 1e9, Burst: 1e9}}
		c.TrustedProxies = []string{"192.0.2.0/24"}
	})
	s := newRawServer(rawGet)
	s.serve(t, p)
	if n := testing.AllocsPerRun(2000, func() { s.serve(t, p) }); n != 0 {
		t.Errorf("a rate-limited proxied GET allocates %v times, want 0", n)
	}
}

func TestCachedHitAllocs(t *testing.T) {
	p := inmemoryEdge(t, func(c *config.Edge) {
		c.Routes = config.DefaultRoutes()
		c.RateLimits = map[string]config.RateLimit{"default": {Rate: 1e9, Burst: 1e9}, "buy": {Rate: 2, Burst: 5}}
		c.TrustedProxies = []string{"192.0.2.0/24"}
	})
	s := newRawServer(rawListing)
	s.serve(t, p) // the fill
	s.serve(t, p)
	if got := string(s.ctx.Response.Header.Peek("X-Cache")); got != "HIT" {
		t.Fatalf("X-Cache %q, want HIT", got)
	}
	if n := testing.AllocsPerRun(2000, func() { s.serve(t, p) }); n != 0 {
		t.Errorf("a cached hit allocates %v times, want 0", n)
	}
}

// TestWaitingPageAllocs: a waiting visitor's refresh, 20,000 queued ahead, (token checked,
// position, new token, the page) allocates nothing.
func TestWaitingPageAllocs(t *testing.T) {
	p, raw := roomBenchEdge(t)
	s := newRawServer(raw)
	s.serve(t, p)
	if !bytes.Contains(s.ctx.Response.Body(), []byte(`id="position">20001<`)) {
		t.Fatalf("not the waiting page of the last of 20,001: %s", s.ctx.Response.Body())
	}
	if n := testing.AllocsPerRun(2000, func() { s.serve(t, p) }); n != 0 {
		t.Errorf("a waiting page allocates %v times, want 0", n)
	}
}
