package waitroom

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGateJoinOnce: one identity joining 100 times, with a new place each
// time (tabs without the cookie), is counted once and keeps its first
// place; another identity is counted too. Once admitted, the identity is
// forgotten, and a later arrival joins anew.
func TestGateJoinOnce(t *testing.T) {
	r := testRoom(t)
	c := newFakeClock(opensMs + 10_000)
	g := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 10, SettleMs: 100}, c, &MemStore{})
	id := []byte("198.51.100.7")
	idh := r.IdentityHash(id)
	first := g.Join(idh, r.PlaceFor(id, c.NowMs()))
	for i := range 100 {
		c.ms.Add(1)
		if got := g.Join(idh, r.PlaceFor(id, c.NowMs())); got != first {
			t.Fatalf("join %d: place %v, want the first %v", i, got, first)
		}
	}
	if got := g.Queued(); math.Abs(got-1) > 1e-9 {
		t.Fatalf("one identity joined 101 times: %v queued, want 1", got)
	}
	other := []byte("198.51.100.8")
	g.Join(r.IdentityHash(other), r.PlaceFor(other, c.NowMs()))
	if got := g.Queued(); math.Abs(got-2) > 1e-9 {
		t.Fatalf("a second identity: %v queued, want 2", got)
	}
	tickTo(t, g, c, c.NowMs()+1_000, 10)
	if s, _ := g.Check(first); s != Admitted {
		t.Fatalf("after a second at 10/s the first place is %v", s)
	}
	again := g.Join(idh, r.PlaceFor(id, c.NowMs()))
	if again == first || g.Queued() < 1-1e-9 {
		t.Errorf("an admitted identity joining again got %v (first %v), queued %v: want a new place, counted", again, first, g.Queued())
	}
}

// TestGateAhead: the places ahead of each of 300 arrivals are the ones
// before it, and fall as the watermark passes them.
func TestGateAhead(t *testing.T) {
	r := testRoom(t)
	ps := places(r, 300, func(i int) int64 { return opensMs + 1 + int64(i) })
	c := newFakeClock(opensMs + 400)
	g := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 100, SettleMs: 100}, c, &MemStore{})
	for i, p := range ps {
		g.Join(r.IdentityHash(fmt.Appendf(nil, "id %d", i)), p)
	}
	for _, i := range []int{0, 1, 150, 299} {
		// One place a millisecond: the share of its own millisecond
		// before it is under one place, so the floor is exact.
		if got := g.Ahead(ps[i]); math.Floor(got) != float64(i) {
			t.Errorf("place %d: %v ahead, want %d (floored)", i, got, i)
		}
	}
	tickTo(t, g, c, c.NowMs()+1_000, 10)
	n := admitted(t, g, ps)
	if n < 90 || n > 110 {
		t.Fatalf("%d admitted after a second at 100/s", n)
	}
	if got, want := g.Ahead(ps[299]), float64(299-n); math.Abs(got-want) > 1 {
		t.Errorf("last place after %d admitted: %v ahead, want %v ± 1", n, got, want)
	}
	if got := g.Ahead(ps[0]); got != 0 {
		t.Errorf("an admitted place has %v ahead, want 0", got)
	}
	if got, want := g.Passed(), float64(n); math.Abs(got-want) > 1 {
		t.Errorf("Passed = %v, want %v ± 1", got, want)
	}
}

// TestGateHold: a gate restarted on a history, its counts lost, holds the
// watermark until HoldUntilMs while the waiting visitors join again; then
// it admits at the rate, in order. Without the hold the first Tick would
// pass them all at once.
func TestGateHold(t *testing.T) {
	r := testRoom(t)
	ps := places(r, 500, func(i int) int64 { return opensMs + 1 + int64(i) })
	store := &MemStore{}
	c := newFakeClock(opensMs + 600)
	cfg := GateConfig{Room: "final", Epoch: 1, OpensAtMs: opensMs, Rate: 100, SettleMs: 100}
	g := mustGate(t, cfg, c, store)
	for i, p := range ps {
		g.Join(r.IdentityHash(fmt.Appendf(nil, "id %d", i)), p)
	}
	tickTo(t, g, c, c.NowMs()+1_000, 10)
	before := admitted(t, g, ps)

	for _, hold := range []bool{true, false} {
		cfg := cfg
		restart := c.NowMs()
		if hold {
			cfg.HoldUntilMs = restart + 5_000
		}
		g2 := mustGate(t, cfg, newFakeClock(restart), store)
		c2 := g2.clock.(*fakeClock)
		// The visitors' pages come back over the refresh interval.
		for i, p := range ps {
			if s, _ := g2.Check(p); s == Waiting {
				c2.ms.Store(restart + int64(i)*4_000/int64(len(ps)))
				g2.Join(r.IdentityHash(fmt.Appendf(nil, "id %d", i)), p)
				if err := g2.Tick(); err != nil {
					t.Fatal(err)
				}
			}
		}
		tickTo(t, g2, c2, restart+4_990, 10)
		got := admitted(t, g2, ps)
		if hold && got != before {
			t.Errorf("held: %d admitted when the hold ends, want the %d admitted before the restart", got, before)
		}
		if !hold && got < len(ps)/2 {
			t.Errorf("not held: only %d admitted; the test no longer shows what the hold prevents", got)
		}
		if hold {
			tickTo(t, g2, c2, restart+6_000, 10)
			if got := admitted(t, g2, ps); got < before+90 || got > before+110 {
				t.Errorf("a second after the hold: %d admitted, want %d ± 10", got, before+100)
			}
		}
	}
}

// TestFileStore: checkpoints survive a new store on the same directory; a
// torn last line is ignored and logged; older lines from a second writer
// are skipped; a bad line elsewhere is skipped and logged with its number.
func TestFileStore(t *testing.T) {
	dir := t.TempDir()
	s := &FileStore{Dir: dir}
	want := []Checkpoint{{Ms: 10, W: Place{Ms: 5, TB: 7}}, {Ms: 20, W: Place{Ms: 5, TB: math.MaxUint64}}, {Ms: 30, W: Place{Ms: 9}}}
	for _, c := range want {
		if err := s.Append("final/3", c); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	file := filepath.Join(dir, "final.3.log")
	f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("25 5 8\n40 12") // an older view from another writer, then a torn line
	f.Close()
	var logged strings.Builder
	s2 := &FileStore{Dir: dir, Log: newTestLog(&logged)}
	got, err := s2.Load("final/3")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Load = %v, want %v", got, want)
	}
	if !strings.Contains(logged.String(), "torn last line") || !strings.Contains(logged.String(), "line=5") {
		t.Errorf("the torn line was not logged with its number: %q", logged.String())
	}
	if h, err := s2.Load("final/4"); h != nil || err != nil {
		t.Errorf("another epoch: %v, %v; want nothing", h, err)
	}
	os.WriteFile(file, []byte("10 5 7\nten 5 8\n20 6 0\n"), 0o600)
	logged.Reset()
	got, err = s2.Load("final/3")
	if err != nil || fmt.Sprint(got) != fmt.Sprint([]Checkpoint{{Ms: 10, W: Place{Ms: 5, TB: 7}}, {Ms: 20, W: Place{Ms: 6}}}) {
		t.Errorf("a bad line in the middle: Load = %v, %v; want it skipped", got, err)
	}
	if !strings.Contains(logged.String(), "not a checkpoint") || !strings.Contains(logged.String(), "line=2") {
		t.Errorf("the bad line was not logged with its number: %q", logged.String())
	}
}

func newTestLog(w *strings.Builder) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}

// TestGateNoOpening: a room with no opening (OpensAtMs far in the past)
// reaches its first arrival in one Tick, not a millisecond at a time.
func TestGateNoOpening(t *testing.T) {
	r := testRoom(t)
	c := newFakeClock(opensMs)
	g := mustGate(t, GateConfig{Room: "final", Epoch: 1, OpensAtMs: math.MinInt64 / 2, Rate: 10, SettleMs: 100}, c, &MemStore{})
	p := r.PlaceFor([]byte("x"), opensMs)
	g.Join(r.IdentityHash([]byte("x")), p)
	tickTo(t, g, c, opensMs+300, 100)
	if s, _ := g.Check(p); s != Admitted {
		t.Errorf("the only arrival is %v 300 ms on, want admitted", s)
	}
}
