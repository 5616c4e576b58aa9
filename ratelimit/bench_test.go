package ratelimit

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// knownClients is the working set of the known-client benchmarks: 1,024
// clients spread over the shards as real traffic is.
func knownClients() []Key {
	keys := make([]Key, 1024)
	for i := range keys {
		keys[i] = KeyFromAddr(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), 0)
	}
	return keys
}

// BenchmarkAllowKnown: the steady state of an edge, each request from a
// client the limiter already holds and within its rate (the clock advances
// 25 µs a request, so each client comes back every ~25 ms, under the 50/s
// policy's 20 ms). 0 allocs/op.
func BenchmarkAllowKnown(b *testing.B) {
	l := newLimiter(b, Policy{Rate: 50, Burst: 100})
	keys := knownClients()
	var seq atomic.Uint64
	start := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(1) * 7919
		now := start
		for pb.Next() {
			i++
			now = now.Add(25 * time.Microsecond)
			if ok, _ := l.Allow(keys[i%uint64(len(keys))], now); !ok {
				b.Error("a client within its rate was refused")
				return
			}
		}
	})
}

// BenchmarkAllowKnownRefused: the same clients far over their rate, so
// nearly every request is refused and computes its Retry-After.
func BenchmarkAllowKnownRefused(b *testing.B) {
	l := newLimiter(b, Policy{Rate: 50, Burst: 100})
	keys := knownClients()
	var seq atomic.Uint64
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(1) * 7919
		for pb.Next() {
			i++
			l.Allow(keys[i%uint64(len(keys))], now)
		}
	})
}

// BenchmarkAllowChurn: every request from a client never seen before, at
// capacity, so each one evicts the least recently seen client of its
// shard: the flood of spoofed or rotating addresses.
func BenchmarkAllowChurn(b *testing.B) {
	l := newLimiter(b, Policy{Rate: 50, Burst: 100})
	var seq atomic.Uint32
	now := time.Now()
	for i := range DefaultMaxClients { // fill to capacity first
		l.Allow(KeyFromAddr(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 0), now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.Add(1)
			a := netip.AddrFrom4([4]byte{100, byte(64 + n>>16&63), byte(n >> 8), byte(n)})
			l.Allow(KeyFromAddr(a, 0), now)
		}
	})
}

// BenchmarkAllowNewBelowCapacity: new clients while the limiter still
// grows (map growth and slot chunks amortised), the cost a fresh edge pays.
func BenchmarkAllowNewBelowCapacity(b *testing.B) {
	now := time.Now()
	b.ReportAllocs()
	l := newLimiter(b, Policy{Rate: 50, Burst: 100, MaxClients: 1 << 30})
	var seq atomic.Uint32
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.Add(1)
			l.Allow(KeyFromAddr(netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), 0), now)
		}
	})
}

// BenchmarkRequestPath: ClientIP (one trusted hop), the allow-list check,
// the Set lookup, Key and Allow together, as the proxy calls them for one
// request, over 1,024 clients within their rate.
func BenchmarkRequestPath(b *testing.B) {
	set, err := NewSet([]Policy{{Name: "default", Rate: 50, Burst: 100}})
	if err != nil {
		b.Fatal(err)
	}
	allow := NewAllowList([]netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")})
	peer := netip.MustParseAddr("10.0.0.1")
	xffs := make([][]byte, 1024)
	for i := range xffs {
		xffs[i] = fmt.Appendf(nil, "203.0.%d.%d, 10.0.0.2", i>>8, i&255)
	}
	var seq atomic.Uint64
	start := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(1) * 7919
		now := start
		for pb.Next() {
			i++
			now = now.Add(25 * time.Microsecond)
			ip := ClientIP(peer, xffs[i%uint64(len(xffs))], testTrusted)
			if allow.Contains(ip) {
				continue
			}
			l := set.Limiter("default")
			if ok, _ := l.Allow(l.Key(ip, nil), now); !ok {
				b.Error("a client within its rate was refused")
				return
			}
		}
	})
}

func BenchmarkClientIP(b *testing.B) {
	for _, bc := range []struct {
		name, peer, xff string
	}{
		{"untrusted peer", "203.0.113.5", "6.6.6.6"},
		{"one trusted hop", "10.0.0.1", "203.0.113.50"},
		{"three trusted hops", "10.0.0.1", "6.6.6.6, 203.0.113.50, 10.0.0.2, 10.0.0.3"},
		{"ipv6", "::1", "2001:db8:1:2::77, fd00::1"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			peer, xff := netip.MustParseAddr(bc.peer), []byte(bc.xff)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					ClientIP(peer, xff, testTrusted)
				}
			})
		})
	}
}

func BenchmarkKeyFromHeader(b *testing.B) {
	v := []byte("3f2a9c4e-8d1b-4e7a-9b6c-1d2e3f4a5b6c")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			KeyFromHeader(v)
		}
	})
}
