//go:build !race

// Allocation counts are only meaningful without the race detector.

package proxy

import "testing"

func TestProxyPathAllocs(t *testing.T) {
	p := inmemoryEdge(t)
	s := newRawServer(rawGet)
	s.serve(t, p) // warm the pools
	if n := testing.AllocsPerRun(2000, func() { s.serve(t, p) }); n != 0 {
		t.Errorf("a proxied GET allocates %v times, want 0", n)
	}
}
