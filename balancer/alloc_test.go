//go:build !race

// Allocation counts are only meaningful without the race detector, which
// allocates on its own.

package balancer

import "testing"

func TestPickAllocs(t *testing.T) {
	p := newPool(t, 1, 2, 1, 1)
	if n := testing.AllocsPerRun(1000, func() { p.PickExcept(nil) }); n != 0 {
		t.Errorf("PickExcept allocates %v times per call, want 0", n)
	}
}
