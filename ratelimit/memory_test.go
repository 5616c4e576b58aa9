package ratelimit

import (
	"net/netip"
	"runtime"
	"testing"
)

// memoryBound is the documented most heap one limiter at DefaultMaxClients
// may hold, whatever the number of distinct clients; README.md records the
// measured figure (23.5 MiB: ~190 bytes a held client).
const memoryBound = 32 << 20

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC() // a second cycle, so finalizers and sweeping settle
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// 1,000,000 distinct clients through a limiter at the default capacity keep
// it at DefaultMaxClients clients and under memoryBound of heap.
func TestMemoryBoundMillionClients(t *testing.T) {
	const clients = 1_000_000
	before := heapInUse()
	l := newLimiter(t, Policy{Rate: 50, Burst: 100}) // the default policy of DESIGN.md
	for i := range clients {
		// 100.64.0.0/10: four million distinct IPv4 addresses.
		a := netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)})
		if ok, _ := l.Allow(KeyFromAddr(a, 0), t0); !ok {
			t.Fatalf("client %d refused on its first request", i)
		}
	}
	after := heapInUse()
	st := l.Stats()
	runtime.KeepAlive(l)
	grown := int64(after) - int64(before)
	t.Logf("%d distinct clients: %d held (max %d), %d evicted; heap %.1f MiB → %.1f MiB, +%.1f MiB (%.0f bytes a held client)",
		clients, st.Clients, DefaultMaxClients, st.Evicted,
		float64(before)/(1<<20), float64(after)/(1<<20), float64(grown)/(1<<20), float64(grown)/float64(st.Clients))
	if st.Clients > DefaultMaxClients {
		t.Errorf("holds %d clients, over MaxClients %d", st.Clients, DefaultMaxClients)
	}
	if st.Evicted != uint64(clients-st.Clients) {
		t.Errorf("evicted %d, want %d", st.Evicted, clients-st.Clients)
	}
	if grown > memoryBound {
		t.Errorf("heap grew %.1f MiB for one limiter, over the documented bound of %d MiB", float64(grown)/(1<<20), memoryBound>>20)
	}
}
