package waitroom

import (
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"testing"
)

// fakeClock is a Clock the test moves by hand.
type fakeClock struct{ ms atomic.Int64 }

func (c *fakeClock) NowMs() int64 { return c.ms.Load() }

func newFakeClock(ms int64) *fakeClock {
	c := &fakeClock{}
	c.ms.Store(ms)
	return c
}

func mustGate(t *testing.T, cfg GateConfig, c Clock, s Store) *Gate {
	t.Helper()
	g, err := NewGate(cfg, c, s)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// tickTo moves the clock to ms in steps of stepMs, ticking at each.
func tickTo(t *testing.T, g *Gate, c *fakeClock, ms, stepMs int64) {
	t.Helper()
	for c.NowMs() < ms {
		c.ms.Store(min(c.NowMs()+stepMs, ms))
		if err := g.Tick(); err != nil {
			t.Fatal(err)
		}
	}
}

// admitted counts the places g admits, and fails the test unless they are
// a prefix of the places in queue order (sorted).
func admitted(t *testing.T, g *Gate, sorted []Place) int {
	t.Helper()
	n := 0
	for i, p := range sorted {
		if s, _ := g.Check(p); s == Admitted {
			if n != i {
				t.Fatalf("place %d in queue order is admitted, but place %d is not", i, n)
			}
			n++
		}
	}
	return n
}

// places are the places of n identities arriving at arrival(i), sorted.
func places(r *Room, n int, arrival func(i int) int64) []Place {
	ps := make([]Place, n)
	for i := range ps {
		ps[i] = r.PlaceFor(fmt.Appendf(nil, "203.0.%d.%d", i/256, i%256), arrival(i))
	}
	slices.SortFunc(ps, func(a, b Place) int {
		if a.Before(b) {
			return -1
		}
		if b.Before(a) {
			return 1
		}
		return 0
	})
	return ps
}

// TestGateRate: three arrivals a millisecond after opening, admitted at
// 100 a second in queue order; the count after each second is the rate's,
// give or take the three places of the millisecond the watermark is in.
func TestGateRate(t *testing.T) {
	r := testRoom(t)
	ps := places(r, 3000, func(i int) int64 { return opensMs + 1 + int64(i/3) })
	c := newFakeClock(opensMs + 1001)
	g := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 100, SettleMs: 1000}, c, &MemStore{})
	for _, p := range ps {
		g.Arrive(p)
	}
	start := c.NowMs()
	for s := int64(1); s <= 10; s++ {
		tickTo(t, g, c, start+s*1000, 10)
		if got, want := admitted(t, g, ps), 100*int(s); got < want-4 || got > want+4 {
			t.Errorf("after %d s at 100/s: %d admitted, want %d ± 4", s, got, want)
		}
	}
}

// TestGatePreQueue: 2,000 visitors who came before the opening wait until
// it (and the settle time) has passed, then are admitted by their draw at
// the rate. They share one millisecond, so the count admitted is
// binomial: 6 standard deviations, sqrt(2000/4) each, bound it.
func TestGatePreQueue(t *testing.T) {
	r := testRoom(t)
	ps := places(r, 2000, func(i int) int64 { return opensMs - 60_000 + int64(i) })
	c := newFakeClock(opensMs - 60_000)
	g := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 200, SettleMs: 500}, c, &MemStore{})
	for _, p := range ps {
		g.Arrive(p)
	}
	tickTo(t, g, c, opensMs+500, 100)
	if got := admitted(t, g, ps); got != 0 {
		t.Fatalf("%d admitted by the opening plus the settle time, want 0", got)
	}
	tickTo(t, g, c, opensMs+500+5_000, 100)
	bound := int(math.Ceil(6 * math.Sqrt(2000*0.25)))
	if got, want := admitted(t, g, ps), 1000; got < want-bound || got > want+bound {
		t.Errorf("5 s after opening at 200/s: %d admitted, want %d ± %d", got, want, bound)
	}
}

// TestGateSettleAndNoHoarding: a minute of empty queue saves up no budget,
// and a place is not passed before the settle time.
func TestGateSettleAndNoHoarding(t *testing.T) {
	r := testRoom(t)
	c := newFakeClock(nowMs)
	g := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 100, SettleMs: 500}, c, &MemStore{})
	tickTo(t, g, c, nowMs+60_000, 100)
	arrival := c.NowMs()
	ps := places(r, 1000, func(int) int64 { return arrival })
	for _, p := range ps {
		g.Arrive(p)
	}
	tickTo(t, g, c, arrival+500, 10)
	if got := admitted(t, g, ps); got != 0 {
		t.Fatalf("%d admitted within the settle time, want 0", got)
	}
	tickTo(t, g, c, arrival+500+1000, 10)
	bound := int(math.Ceil(6 * math.Sqrt(1000*0.1*0.9)))
	if got, want := admitted(t, g, ps), 100; got < want-bound || got > want+bound {
		t.Errorf("1 s after the settle time at 100/s: %d admitted, want %d ± %d", got, want, bound)
	}
}

// TestGateClaimWindow: a place admits for ClaimWindowMs after the
// watermark passes it, to the millisecond, and is spent after.
func TestGateClaimWindow(t *testing.T) {
	r := testRoom(t)
	c := newFakeClock(nowMs)
	g := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 10, SettleMs: 100, ClaimWindowMs: 60_000}, c, &MemStore{})
	p := r.PlaceFor(alice, nowMs)
	g.Arrive(p)
	if s, _ := g.Check(p); s != Waiting {
		t.Fatalf("new place: %v, want waiting", s)
	}
	tickTo(t, g, c, nowMs+1000, 10)
	s, passed := g.Check(p)
	if s != Admitted {
		t.Fatalf("after 1 s: %v, want admitted", s)
	}
	for _, tt := range []struct {
		at   int64
		want Status
	}{{passed + 60_000 - 1, Admitted}, {passed + 60_000, Spent}, {passed + 600_000, Spent}} {
		c.ms.Store(tt.at)
		if got, gotPassed := g.Check(p); got != tt.want || gotPassed != passed {
			t.Errorf("at passed%+d ms: %v (passed %d), want %v (passed %d)", tt.at-passed, got, gotPassed, tt.want, passed)
		}
	}
}

// TestGateRestart: a gate made again on the same store knows when each
// place was passed, so a spent place stays spent and an admitted one
// keeps its window; a gate on another store, or for another epoch, does
// not.
func TestGateRestart(t *testing.T) {
	r := testRoom(t)
	store := &MemStore{}
	cfg := GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 1, SettleMs: 100, ClaimWindowMs: 30_000}
	c := newFakeClock(nowMs)
	g := mustGate(t, cfg, c, store)
	early, late := r.PlaceFor(alice, nowMs), r.PlaceFor(bob, nowMs+50_000)
	g.Arrive(early)
	g.Arrive(late)
	tickTo(t, g, c, nowMs+50_000+5_000, 100)
	earlyStatus, earlyPassed := g.Check(early)
	lateStatus, latePassed := g.Check(late)
	if earlyStatus != Spent || lateStatus != Admitted {
		t.Fatalf("before restart: early %v, late %v; want spent, admitted", earlyStatus, lateStatus)
	}

	again := mustGate(t, cfg, c, store)
	if s, passed := again.Check(early); s != Spent || passed != earlyPassed {
		t.Errorf("after restart: early %v (passed %d), want spent (passed %d)", s, passed, earlyPassed)
	}
	if s, passed := again.Check(late); s != Admitted || passed != latePassed {
		t.Errorf("after restart: late %v (passed %d), want admitted (passed %d)", s, passed, latePassed)
	}
	// The watermark resumes from the last checkpoint. One that passed
	// nobody is recorded once every historyEveryMs (review 18, 10), so
	// it may resume that far behind, over milliseconds nobody waits in.
	h := *g.history.Load()
	if got, want := again.Watermark(), h[len(h)-1].W; got != want || g.Watermark().Ms-got.Ms > historyEveryMs+100 {
		t.Errorf("after restart: watermark %+v, want %+v, the last checkpoint's, within %d ms of %+v", got, want, historyEveryMs+100, g.Watermark())
	}
	if s, _ := mustGate(t, cfg, c, &MemStore{}).Check(early); s != Waiting {
		t.Errorf("gate on an empty store: early %v, want waiting", s)
	}
	cfg.Epoch = 2
	if s, _ := mustGate(t, cfg, c, store).Check(early); s != Waiting {
		t.Errorf("gate for epoch 2: early %v, want waiting", s)
	}
}

func TestNewGateErrors(t *testing.T) {
	c := newFakeClock(nowMs)
	for _, tt := range []struct {
		name  string
		rate  float64
		clock Clock
		store Store
	}{
		{"zero rate", 0, c, &MemStore{}},
		{"NaN rate", math.NaN(), c, &MemStore{}},
		{"infinite rate", math.Inf(1), c, &MemStore{}},
		{"no clock", 1, nil, &MemStore{}},
		{"no store", 1, c, nil},
	} {
		if _, err := NewGate(GateConfig{Room: "final", Rate: tt.rate}, tt.clock, tt.store); err == nil {
			t.Errorf("%s: NewGate succeeded", tt.name)
		}
	}
}

// TestGateConcurrent: Check (no lock) and Arrive run while Tick publishes
// history; run it with -race.
func TestGateConcurrent(t *testing.T) {
	r := testRoom(t)
	c := newFakeClock(nowMs)
	g := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 1000, SettleMs: 10}, c, &MemStore{})
	ps := places(r, 500, func(i int) int64 { return nowMs + int64(i) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range ps {
			g.Arrive(p)
			g.Check(p)
		}
	}()
	tickTo(t, g, c, nowMs+2_000, 1)
	<-done
	tickTo(t, g, c, nowMs+4_000, 1)
	if s, _ := g.Check(ps[len(ps)-1]); s != Admitted {
		t.Errorf("last place after 4 s at 1000/s: %v, want admitted", s)
	}
}
