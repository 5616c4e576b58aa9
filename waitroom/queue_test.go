package waitroom

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// aheadRef is Ahead as it was before the view (review 18, 4): a walk of
// every waiting millisecond, the reference the view must agree with.
func aheadRef(counts map[int64]int64, w, p Place) float64 {
	if p.Before(w) {
		return 0
	}
	var n float64
	for ms, c := range counts {
		if ms < w.Ms || ms > p.Ms {
			continue
		}
		lo, hi := uint64(0), ^uint64(0)
		if ms == w.Ms {
			lo = w.TB
		}
		if ms == p.Ms {
			hi = p.TB
		}
		n += share(float64(c), lo, hi)
	}
	return n
}

// TestGateAheadMatchesWalk: through arrivals in and out of order (the
// pre-queue's one millisecond, places restored after a restart, counts
// moved to an identity's earlier place), other edges' counts and ticks,
// Ahead and Queued answer what a walk of every waiting millisecond
// answers, whether the changes since the last tick are fewer or more
// than a view takes.
func TestGateAheadMatchesWalk(t *testing.T) {
	const t0 = 1_790_000_000_000
	rng := rand.New(rand.NewPCG(1, 2))
	c := newFakeClock(t0)
	g := mustGate(t, GateConfig{Room: "r", Rate: 300, OpensAtMs: t0, SettleMs: 500}, c, &MemStore{})
	local := map[int64]int64{}   // every place counted here, by millisecond
	remote := map[int64]uint32{} // the other edges'
	var joined []Place
	check := func(when string) {
		t.Helper()
		w := g.Watermark()
		all := map[int64]int64{}
		for ms, n := range local {
			if ms >= w.Ms {
				all[ms] += n
			}
		}
		for ms, n := range remote {
			if ms >= w.Ms {
				all[ms] += int64(n)
			}
		}
		probes := []Place{{Ms: math.MaxInt64, TB: math.MaxUint64}, w, {Ms: w.Ms, TB: w.TB + 1}}
		for range 50 {
			if len(joined) > 0 {
				probes = append(probes, joined[rng.IntN(len(joined))])
			}
		}
		for _, p := range probes {
			got, want := g.Ahead(p), aheadRef(all, w, p)
			if math.Abs(got-want) > 1e-6*max(1, want) {
				t.Fatalf("%s: Ahead(%v) = %v, want %v (watermark %v)", when, p, got, want, w)
			}
		}
	}
	for round := range 60 {
		// A burst of arrivals: most at "now", some in the pre-queue's
		// millisecond or restored at an earlier place, some identities
		// coming back with an earlier place (the count moves).
		n := 1 + rng.IntN(3*viewDeltas)
		for range n {
			now := c.NowMs()
			var p Place
			switch r := rng.IntN(10); {
			case r == 0:
				p = Place{Ms: t0, TB: rng.Uint64()}
			case r == 1:
				p = Place{Ms: now - rng.Int64N(now-t0+1), TB: rng.Uint64()}
			default:
				p = Place{Ms: now, TB: rng.Uint64()}
			}
			idh := [16]byte{byte(rng.IntN(256)), byte(rng.IntN(256))}
			before := g.Watermark()
			if q, ok := g.seen[idh]; ok && !q.Before(before) {
				if !p.Before(q) {
					if got := g.Join(idh, p); got != q {
						t.Fatalf("Join kept %v, want %v", got, q)
					}
					continue
				}
				local[q.Ms]--
			}
			if got := g.Join(idh, p); got != p {
				t.Fatalf("Join = %v, want %v", got, p)
			}
			if !p.Before(before) {
				local[p.Ms]++
				joined = append(joined, p)
			}
			if rng.IntN(50) == 0 {
				check("between arrivals")
			}
		}
		check("after arrivals")
		if round%7 == 3 {
			clear(remote)
			for range rng.IntN(200) {
				remote[c.NowMs()-rng.Int64N(3_000)] += uint32(1 + rng.IntN(3))
			}
			m := map[int64]uint32{}
			for ms, n := range remote {
				m[ms] = n
			}
			g.setRemote(m)
			check("after the other edges' counts")
		}
		c.ms.Add(1 + rng.Int64N(100))
		if err := g.Tick(); err != nil {
			t.Fatal(err)
		}
		check("after a tick")
	}
	if g.Watermark().Ms <= t0 {
		t.Fatalf("the watermark never moved: %v", g.Watermark())
	}
}

// TestGateAheadTakesNoLock: a waiting page's Ahead and Queued answer
// while the gate's lock is held (by a tick, or a burst of arrivals), so
// every waiting visitor's refresh does not queue behind them.
func TestGateAheadTakesNoLock(t *testing.T) {
	g, last := gate20k(t)
	g.mu.Lock()
	defer g.mu.Unlock()
	done := make(chan float64)
	go func() { done <- g.Ahead(last) + g.Queued() }()
	select {
	case n := <-done:
		if n < 39_990 {
			t.Errorf("Ahead + Queued = %v, want about 40,000", n)
		}
	case <-time.After(10 * time.Second): // a deadlock, not a bound on speed
		t.Fatal("Ahead waited for the gate's lock")
	}
}

// TestGateForgetsPassed: the identities the watermark passes are
// forgotten as it passes them (memory follows the queue, not every
// visitor since the start), without a scan of all of them each tick.
func TestGateForgetsPassed(t *testing.T) {
	g, last := gate20k(t)
	c := g.clock.(*fakeClock)
	if len(g.seen) != 20_000 {
		t.Fatalf("%d remembered, want 20,000", len(g.seen))
	}
	c.ms.Store(last.Ms + g.cfg.SettleMs + 60_000)
	if err := g.Tick(); err != nil {
		t.Fatal(err)
	}
	if s, _ := g.Check(last); s != Admitted {
		t.Fatalf("the last place is %v after a minute at 500/s", s)
	}
	if len(g.seen) != 0 || len(g.seenQ) != 0 {
		t.Errorf("%d identities remembered (%d queued) after all were admitted, want 0", len(g.seen), len(g.seenQ))
	}
}

// TestGateAheadConcurrent: Ahead and Queued read the view while joins
// append to it, rebuild it when full, and ticks and the other edges'
// counts replace it (run with -race).
func TestGateAheadConcurrent(t *testing.T) {
	const t0 = 1_790_000_000_000
	c := newFakeClock(t0)
	g := mustGate(t, GateConfig{Room: "r", Rate: 1000, OpensAtMs: t0, SettleMs: 10}, c, &MemStore{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 5_000 {
			g.Join([16]byte{byte(i), byte(i >> 8)}, Place{Ms: c.NowMs(), TB: uint64(i) << 40})
			if i%500 == 0 {
				g.setRemote(map[int64]uint32{c.NowMs(): 3})
			}
		}
	}()
	readers := make(chan float64)
	for range 2 {
		go func() {
			var n float64
			for i := range 5_000 {
				n += g.Ahead(Place{Ms: c.NowMs(), TB: uint64(i)}) + g.Queued()
			}
			readers <- n
		}()
	}
	tickTo(t, g, c, t0+1_000, 1)
	<-done
	for range 2 {
		if n := <-readers; n < 0 {
			t.Errorf("negative positions: %v", n)
		}
	}
}
