package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// reloadOpening reloads e's room with opens_at at ms.
func (e *roomEdge) reloadOpening(t *testing.T, ms int64) {
	t.Helper()
	cfg := *e.p.Config()
	cfg.WaitingRooms = []config.WaitingRoom{cfg.WaitingRooms[0]}
	cfg.WaitingRooms[0].OpensAt = time.UnixMilli(ms).UTC().Format(time.RFC3339)
	if err := cfg.Validate("reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
}

// TestWaitingRoomOldOpeningPlacesReplaced: when opens_at moves later,
// the places of the old pre-queue are not let in at the old opening, all
// at once and ahead of the new queue: they are placed anew in the new
// opening's draw (review, MUST-FIX 1).
func TestWaitingRoomOldOpeningPlacesReplaced(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 2, 0)
	first, second := int64(roomT0+60_000), int64(roomT0+180_000)
	e.reloadOpening(t, first)
	tokens := make([]string, 5)
	for i := range tokens {
		tokens[i] = e.visit(t, "GET", "/games/1/buy", fmt.Sprintf("192.0.2.%d", i+1), "", false).token
	}
	e.reloadOpening(t, second)
	e.advance(first + 10_000 - clock.NowMs()) // well past the old opening and its settle time
	for i, tok := range tokens {
		v := e.visit(t, "GET", "/games/1/buy", fmt.Sprintf("192.0.2.%d", i+1), tok, false)
		if v.status != http.StatusOK || strings.Contains(v.body, "hello from") {
			t.Fatalf("visitor %d of the old opening: %d, let in before the new opening\n%s", i, v.status, v.body)
		}
		tokens[i] = v.token
	}
	if got := e.refused("stale_opening"); got != 5 {
		t.Errorf("stale_opening refusals %v, want 5", got)
	}
	// Placed anew, they wait for the new opening and go in at its rate.
	e.advance(second + 2_500 - clock.NowMs())
	in := 0
	for i, tok := range tokens {
		if v := e.visit(t, "GET", "/games/1/buy", fmt.Sprintf("192.0.2.%d", i+1), tok, false); strings.Contains(v.body, "hello from") {
			in++
		}
	}
	if in == 0 || in > 2 {
		t.Errorf("%d of 5 let in half a second past the new opening's settle at 2 a second, want 1 or 2", in)
	}
}

// TestWaitingRoomPauseKeepsClaims: a place the watermark passed just
// before a pause keeps its claim through a pause longer than the claim
// window (5 minutes): the page told its visitor the place is kept.
func TestWaitingRoomPauseKeepsClaims(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 100, 0)
	admin := startAdmin(t, e.testEdge)
	tok := e.visit(t, "GET", "/games/1/buy", "192.0.2.1", "", false).token
	e.advance(5_000) // past the hold and the settle time: passed, not yet claimed
	for _, action := range []string{"pause", "resume"} {
		resp, err := http.Post(admin+"/rooms/final/"+action, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if action == "pause" {
			e.advance(6 * 60_000)
		}
	}
	if v := e.visit(t, "GET", "/games/1/buy", "192.0.2.1", tok, false); !strings.Contains(v.body, "hello from") {
		t.Errorf("after a 6-minute pause the visitor passed before it: %d, not let in (spent refusals %v)\n%s", v.status, e.refused("spent"), v.body)
	}
}
