package proxy

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/waitroom"
)

// TestWaitingRoomReloadNewOpening: a reload that gives the room a new
// opens_at starts a fresh queue, with a history of its own in the state
// dir: its watermark at the new opening, not the old queue's, which is
// past it and would admit the new queue's first places at once (review
// 18, 14).
func TestWaitingRoomReloadNewOpening(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	e := startRoomEdge(t, newUpstream(t), dir, keys, clock, 2, 0)
	for i := range 5 {
		e.visit(t, "GET", "/games/1/buy", fmt.Sprintf("192.0.2.%d", i+1), "", false)
		clock.ms.Add(1)
	}
	e.advance(60_000)
	old := e.p.state.Load().rooms[0].rt.gate.Watermark()
	opens := int64(roomT0 + 30_000)
	if old.Ms <= opens {
		t.Fatalf("watermark %v after a minute, want past %d", old, opens)
	}
	cfg := *e.p.Config()
	cfg.WaitingRooms = []config.WaitingRoom{cfg.WaitingRooms[0]}
	cfg.WaitingRooms[0].OpensAt = time.UnixMilli(opens).UTC().Format(time.RFC3339)
	if err := cfg.Validate("reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
	gate := e.p.state.Load().rooms[0].rt.gate
	if w := gate.Watermark(); w != (waitroom.Place{Ms: opens}) {
		t.Errorf("after the reload the watermark is %v, want the new opening %d", w, opens)
	}
	v := e.visit(t, "GET", "/games/1/buy", "192.0.2.77", "", false)
	if v.position(t) != 1 {
		t.Errorf("a new visitor after the reload is at %d, want 1", v.position(t))
	}
	e.advance(10_000)
	if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("final.1.%d.log", opens))); err != nil {
		t.Errorf("the new opening's history: %v", err)
	}
}

// TestWaitingRoomMaxActiveBudget: max_active 10, 100 a second, 50
// waiting: the gate never passes more visitors than there is room for,
// counting those inside and those admitted who may still claim, so at
// most 10 are ever admitted and not expired, and they are the first in
// arrival order (review 18, 6: all 50 were admitted in half a second,
// and whoever refreshed first took each freed place). Once the first 10
// are inside and their sessions end, the next 10 are admitted, in order.
func TestWaitingRoomMaxActiveBudget(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	e := startRoomEdge(t, newUpstream(t), dir, keys, clock, 100, 10)
	rs := e.p.state.Load().rooms[0]
	who := func(i int) string { return fmt.Sprintf("192.0.2.%d", i+1) }
	tokens := make([]string, 50)
	places := make([]waitroom.Place, 50)
	for i := range tokens {
		v := e.visit(t, "GET", "/games/1/buy", who(i), "", false)
		tokens[i] = v.token
		id := netip.MustParseAddr(who(i)).As16()
		tok, reason := rs.room.Verify([]byte(v.token), id[:], clock.NowMs())
		if reason != waitroom.Valid {
			t.Fatalf("visitor %d: token %v", i, reason)
		}
		places[i] = tok.Place
		clock.ms.Add(1)
	}
	// admitted counts the places admitted and not expired, failing unless
	// they follow one another in arrival order after the spent ones.
	admitted := func(when string) (first, n int) {
		t.Helper()
		first = -1
		for i, p := range places {
			switch s, _ := rs.rt.gate.Check(p); {
			case s == waitroom.Spent && first >= 0, s == waitroom.Admitted && first >= 0 && first+n != i:
				t.Fatalf("%s: place %d is %v out of arrival order (admitted from %d: %d)", when, i, s, first, n)
			case s == waitroom.Admitted:
				if first < 0 {
					first = i
				}
				n++
			}
		}
		if n > 10 {
			t.Fatalf("%s: %d admitted and not expired, want at most max_active 10", when, n)
		}
		return first, n
	}
	step := func(ms int64, when string) (first, n int) {
		t.Helper()
		for end := clock.NowMs() + ms; clock.NowMs() < end; {
			e.advance(50)
			first, n = admitted(when)
		}
		return first, n
	}
	if first, n := step(5_000, "waiting"); first != 0 || n != 10 {
		t.Fatalf("after 5 s at 100/s: %d admitted from %d, want the first 10", n, first)
	}
	for i := range 10 {
		if v := e.visit(t, "GET", "/games/1/buy", who(i), tokens[i], false); !strings.Contains(v.body, "hello from") {
			t.Fatalf("admitted visitor %d was not let in: %d %s", i, v.status, v.body)
		}
	}
	if first, n := step(30_000, "the first 10 inside"); first != 0 || n != 10 {
		t.Fatalf("with 10 inside: %d admitted from %d, want the same first 10", n, first)
	}
	// Their sessions (a minute) and claim windows end; the next 10 come.
	if first, n := step(40_000, "the first 10 gone"); first != 10 || n != 10 {
		t.Fatalf("once the first 10 left: %d admitted from %d, want 10 from 10", n, first)
	}
}

// TestRoomFreeSlots: a place passed holds a place inside the room until
// it claims its admission, which then holds it instead (not both), or
// its claim window ends; an admission holds it until its session ends.
func TestRoomFreeSlots(t *testing.T) {
	var rt roomRuntime
	const t0, window, session = int64(roomT0), int64(60_000), int64(300_000)
	rt.reserve(t0, t0+window, 10)
	if got := rt.freeSlots(10, t0+1); got != 0 {
		t.Fatalf("10 passed, none claimed: %v free of 10, want 0", got)
	}
	for i := range 4 {
		if _, fresh, ok := rt.activate([16]byte{byte(i)}, 10, t0+2, t0+2+session, t0); !ok || !fresh {
			t.Fatalf("claim %d refused", i)
		}
	}
	if got := rt.freeSlots(10, t0+3); got != 0 {
		t.Errorf("10 passed, 4 of them inside: %v free, want 0 (each counted once)", got)
	}
	if got := rt.freeSlots(10, t0+window); got != 6 {
		t.Errorf("the 6 unclaimed past their claim window: %v free, want 6", got)
	}
	if got := rt.freeSlots(10, t0+2+session); got != 10 {
		t.Errorf("the 4 sessions over: %v free, want 10", got)
	}
}
