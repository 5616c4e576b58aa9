//go:build !race

// Allocation counts are only meaningful without the race detector, which
// allocates on its own.

package ratelimit

import (
	"net/netip"
	"testing"
	"time"
)

func TestAllocs(t *testing.T) {
	l := newLimiter(t, Policy{Rate: 1, Burst: 1, Header: "X-Api-Key", MaxClients: shardCount})
	known := addrKey("192.0.2.1")
	l.Allow(known, t0)
	set, err := NewSet([]Policy{{Name: "default", Rate: 1, Burst: 1}})
	if err != nil {
		t.Fatal(err)
	}
	// Fill every shard so that new clients evict rather than grow.
	var churn [4096]Key
	for i := range churn {
		churn[i] = KeyFromAddr(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 0)
		l.Allow(churn[i], t0)
	}
	peer := netip.MustParseAddr("10.0.0.1")
	xff := []byte("6.6.6.6, 198.51.100.7:4711, [2001:db8::1]:443, 10.0.0.2")
	bad := []byte("198.51.100.7, not-an-address, 10.0.0.2")
	v6 := netip.MustParseAddr("2001:db8:1:2::3")
	apiKey := []byte("0123456789abcdef0123456789abcdef")
	now := t0
	i := 0
	var c Concurrency
	c.Max = 10
	var buf [8]byte
	tests := []struct {
		name string
		fn   func()
	}{
		{"Allow known client, allowed", func() { now = now.Add(2 * time.Second); l.Allow(known, now) }},
		{"Allow known client, refused", func() { l.Allow(known, now) }},
		{"Allow new client at capacity", func() { i++; l.Allow(churn[i%len(churn)], now) }},
		{"ClientIP through trusted proxies", func() { ClientIP(peer, xff, testTrusted) }},
		{"ClientIP malformed entry", func() { ClientIP(peer, bad, testTrusted) }},
		{"KeyFromAddr ipv6", func() { KeyFromAddr(v6, 0) }},
		{"Limiter.Key header", func() { l.Key(peer, apiKey) }},
		{"Set.Limiter", func() { set.Limiter("default") }},
		{"AllowList.Contains", func() { allowListForAllocs.Contains(peer) }},
		{"Concurrency", func() {
			if c.Acquire() {
				c.Release()
			}
		}},
		{"AppendRetryAfter", func() { AppendRetryAfter(buf[:0], 1500*time.Millisecond) }},
	}
	for _, tt := range tests {
		if n := testing.AllocsPerRun(1000, tt.fn); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tt.name, n)
		}
	}
}

var allowListForAllocs = NewAllowList([]netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("10.0.0.0/8")})
