package waitroom

import (
	"fmt"
	"testing"
)

// TestGateHoldNoBurstOnResume: a gate held (its room paused) for ten
// minutes admits no more than Rate × dt in the first Tick after, not the
// pause's budget at once (rate 10/s, 1000 waiting: 980 in one Tick
// without Hold).
func TestGateHoldNoBurstOnResume(t *testing.T) {
	const t0 = 1_790_000_000_000
	c := newFakeClock(t0)
	g := mustGate(t, GateConfig{Room: "r", Rate: 10}, c, &MemStore{})
	for i := range 1000 {
		g.Arrive(Place{Ms: t0 + int64(i%1000), TB: uint64(i) << 40})
	}
	tickTo(t, g, c, t0+5_000, 50)
	before := g.Passed()
	// Paused for ten minutes: the ticker holds the gate instead of ticking.
	for c.NowMs() < t0+5_000+10*60_000 {
		c.ms.Add(50)
		g.Hold(c.NowMs())
	}
	c.ms.Add(100)
	if err := g.Tick(); err != nil {
		t.Fatal(err)
	}
	if got, limit := g.Passed()-before, 10*0.1+1; got > limit {
		t.Errorf("first Tick 100 ms after a 10 min hold passed %.1f places, want at most %.1f (rate × dt)", got, limit)
	}
	if g.Queued() < 900 {
		t.Errorf("queue %.0f after the resume, want most of 1000 still waiting", g.Queued())
	}
}

// TestGateJoinKeepsEarlierPlace: after a restart, a token-less request of
// an identity is counted at "now"; the identity's token, showing an
// earlier place, then gets that earlier place back, and the count moves
// with it (one place queued, none ahead of it).
func TestGateJoinKeepsEarlierPlace(t *testing.T) {
	const t0 = 1_790_000_000_000
	c := newFakeClock(t0 + 60_000)
	g := mustGate(t, GateConfig{Room: "r", Rate: 10, OpensAtMs: t0 - 1}, c, &MemStore{})
	idh := [16]byte{1}
	own := Place{Ms: t0, TB: 5}            // the token's place, from before the restart
	now := Place{Ms: t0 + 60_000, TB: 9}   // a token-less request's
	other := Place{Ms: t0 + 30_000, TB: 1} // another visitor, between the two
	g.Join([16]byte{2}, other)
	if got := g.Join(idh, now); got != now {
		t.Fatalf("first Join = %v, want %v", got, now)
	}
	if got := g.Join(idh, own); got != own {
		t.Errorf("Join with the earlier place = %v, want %v back", got, own)
	}
	if got := g.Join(idh, now); got != own {
		t.Errorf("a later token-less Join = %v, want the earlier place %v", got, own)
	}
	if q := g.Queued(); q != 2 {
		t.Errorf("queue %v, want 2 (the count moved, not added)", q)
	}
	if a := g.Ahead(other); a != 1 {
		t.Errorf("ahead of the other visitor %v, want 1 (the identity's earlier place)", a)
	}
}

// TestGateNewOpeningNewQueue: a gate made for a new opens_at (a reload or
// restart with the config's opening changed) starts a fresh queue on the
// same store: its watermark at the new opening and the new queue's
// places waiting, not the old queue's history, whose watermark is past
// the new opening (review 18, 14). The old opening's history stays its
// own.
func TestGateNewOpeningNewQueue(t *testing.T) {
	const t0 = 1_790_000_000_000
	store := &FileStore{Dir: t.TempDir()}
	defer store.Close()
	c := newFakeClock(t0)
	cfg := GateConfig{Room: "final", Epoch: 1, OpensAtMs: t0, Rate: 100}
	g := mustGate(t, cfg, c, store)
	for i := range 100 {
		g.Join([16]byte{byte(i)}, Place{Ms: t0 + 1 + int64(i)*100, TB: uint64(i)})
	}
	tickTo(t, g, c, t0+60_000, 50)
	h := *g.history.Load()
	old := h[len(h)-1].W // where a gate on this history resumes
	if old.Ms < t0+50_000 {
		t.Fatalf("watermark %v after a minute, want near %d", old, t0+58_000)
	}
	cfg.OpensAtMs = t0 + 30_000
	g2 := mustGate(t, cfg, c, store)
	if w := g2.Watermark(); w != (Place{Ms: cfg.OpensAtMs}) {
		t.Errorf("the new opening's watermark is %v, want the opening %d", w, cfg.OpensAtMs)
	}
	if s, _ := g2.Check(Place{Ms: cfg.OpensAtMs, TB: 1 << 63}); s != Waiting {
		t.Errorf("a place of the new opening is %v, want waiting", s)
	}
	cfg.OpensAtMs = t0
	if w := mustGate(t, cfg, c, store).Watermark(); w != old {
		t.Errorf("the old opening's watermark is %v, want %v", w, old)
	}
}

// TestGateRejoinPastMaxVisitors: with MaxVisitors 3 and 10 visitors
// waiting, 7 are counted but not remembered; their refreshes (their
// tokens, signed since the gate was made) count nobody again, so the
// queue stays 10 and the last visitor's position with it (review 18, 8:
// it grew by 7 a round). After a restart (counts lost) the first refresh
// of each, with a token signed before, counts it once; the next, with the
// token that answer carried, does not.
func TestGateRejoinPastMaxVisitors(t *testing.T) {
	const t0 = 1_790_000_000_000
	store := &MemStore{}
	c := newFakeClock(t0)
	cfg := GateConfig{Room: "r", Rate: 1, OpensAtMs: t0 - 1, MaxVisitors: 3}
	g := mustGate(t, cfg, c, store)
	ps := make([]Place, 10)
	signed := make([]int64, 10)
	for i := range ps {
		c.ms.Add(1)
		ps[i] = g.Join([16]byte{byte(i)}, Place{Ms: c.NowMs(), TB: uint64(i)})
		signed[i] = c.NowMs()
	}
	refresh := func(g *Gate, round string) {
		t.Helper()
		for i, p := range ps {
			c.ms.Add(1)
			if got := g.Rejoin([16]byte{byte(i)}, p, signed[i]); got != p {
				t.Fatalf("%s: visitor %d rejoined at %v, want its place %v", round, i, got, p)
			}
			signed[i] = c.NowMs() // the waiting page's new token
		}
		if q, a := g.Queued(), g.Ahead(ps[9]); q != 10 || a != 9 {
			t.Errorf("%s: queue %v, %v ahead of the last, want 10 and 9", round, q, a)
		}
	}
	for r := range 5 {
		refresh(g, fmt.Sprintf("refresh %d", r))
	}
	c.ms.Add(1)
	g2 := mustGate(t, cfg, c, store) // a restart: nothing counted
	if q := g2.Queued(); q != 0 {
		t.Fatalf("a restarted gate counts %v, want 0", q)
	}
	for r := range 3 {
		refresh(g2, fmt.Sprintf("refresh %d after the restart", r))
	}
}

// TestGateRejoinOtherEdgesPlace: a place another edge counted (its token
// signed after this gate was made) is neither counted nor remembered
// here, so when the identity then shows an earlier place, the move does
// not take the count of another visitor of the same millisecond.
func TestGateRejoinOtherEdgesPlace(t *testing.T) {
	const t0 = 1_790_000_000_000
	c := newFakeClock(t0)
	g := mustGate(t, GateConfig{Room: "r", Rate: 1, OpensAtMs: t0 - 1}, c, &MemStore{})
	c.ms.Add(10)
	p := Place{Ms: c.NowMs(), TB: 5}
	g.Join([16]byte{1}, Place{Ms: p.Ms, TB: 9}) // a visitor of this edge, the same millisecond
	if got := g.Rejoin([16]byte{2}, p, c.NowMs()); got != p {
		t.Fatalf("Rejoin = %v, want %v", got, p)
	}
	if q := g.Queued(); q != 1 {
		t.Fatalf("queue %v after another edge's place, want 1 (this edge's own)", q)
	}
	g.Join([16]byte{2}, Place{Ms: t0, TB: 1}) // the identity's earlier place
	if q := g.Queued(); q != 2 {
		t.Errorf("queue %v after the earlier place, want 2: the other visitor's count kept", q)
	}
}
