package proxy

import (
	"fmt"
	"os"
	"path/filepath"
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
