package ratelimit

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

func TestConcurrencyCap(t *testing.T) {
	const max, workers, rounds = 3, 8, 2000
	c := &Concurrency{Max: max}
	var (
		inside, peak, admitted, refused atomic.Int64
		wg                              sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for range rounds {
				if !c.Acquire() {
					refused.Add(1)
					continue
				}
				admitted.Add(1)
				n := inside.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				runtime.Gosched() // hold the slot across a reschedule
				inside.Add(-1)
				c.Release()
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > max {
		t.Errorf("%d requests in flight at once, cap %d", p, max)
	}
	if got := admitted.Load() + refused.Load(); got != workers*rounds {
		t.Errorf("admitted+refused = %d, want %d", got, workers*rounds)
	}
	if admitted.Load() == 0 {
		t.Error("nothing admitted")
	}
	if c.InFlight() != 0 {
		t.Errorf("in flight after all released: %d", c.InFlight())
	}

	// Exactly Max are admitted while none is released.
	c2 := &Concurrency{Max: 2}
	got := []bool{c2.Acquire(), c2.Acquire(), c2.Acquire()}
	if !got[0] || !got[1] || got[2] {
		t.Errorf("Acquire ×3 with Max 2: %v, want [true true false]", got)
	}
	c2.Release()
	if !c2.Acquire() {
		t.Error("refused after a Release freed a slot")
	}

	var unlimited Concurrency
	for range 100 {
		if !unlimited.Acquire() {
			t.Fatal("the zero Concurrency refused a request")
		}
	}
	if unlimited.InFlight() != 100 {
		t.Errorf("zero Concurrency counts %d in flight, want 100", unlimited.InFlight())
	}
}
