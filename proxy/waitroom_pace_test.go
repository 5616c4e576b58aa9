package proxy

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"
)

// TestNextVisit: a waiting visitor comes back after the refresh, spread
// over ±1/4 of it so that visitors who arrived together drift apart, or
// sooner when the estimated wait is shorter; never sooner than 1 s.
func TestNextVisit(t *testing.T) {
	for _, tt := range []struct {
		refresh, wait int64
		status        int32
		lo, hi        int64
	}{
		{5, 100, roomOpen, 4, 6},
		{60, 1000, roomOpen, 45, 75},
		{5, 2, roomOpen, 2, 2},
		{5, 0, roomOpen, 1, 1},
		{1, 30, roomOpen, 1, 1},
		{8, 2, roomPaused, 6, 10}, // paused: the estimate means nothing
	} {
		seen := map[int64]bool{}
		for range 2000 {
			s := nextVisit(tt.refresh, tt.wait, tt.status)
			if limit := int64(maxVisitAfter(time.Duration(tt.refresh)*time.Second) / time.Second); s > limit {
				t.Fatalf("nextVisit(%d, ...) = %d, beyond the %d s the hold after a restart covers", tt.refresh, s, limit)
			}
			if s < tt.lo || s > tt.hi {
				t.Fatalf("nextVisit(%d, %d, %d) = %d, want %d..%d", tt.refresh, tt.wait, tt.status, s, tt.lo, tt.hi)
			}
			seen[s] = true
		}
		if want := int(tt.hi - tt.lo + 1); len(seen) != want {
			t.Errorf("nextVisit(%d, %d, %d) drew %d distinct values in 2000, want all %d of %d..%d", tt.refresh, tt.wait, tt.status, len(seen), want, tt.lo, tt.hi)
		}
	}
}

// TestWaitingRoomEstimateAtStart: the first visitors of a sale are told a
// wait near their place over the rate as soon as admission starts, not a
// wait measured while the room was still settling (it was 10 times too
// long: 53 s shown for 6 s in the e2e step), and the API's Retry-After
// brings the front of the queue back when it is due.
func TestWaitingRoomEstimateAtStart(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 2, 0)
	tokens := make([]string, 12)
	for i := range tokens {
		tokens[i] = e.visit(t, "GET", "/games/3/buy", fmt.Sprintf("192.0.2.%d", i+1), "", true).token
		clock.ms.Add(1)
	}
	// Past the hold after start (refresh 1 s + 1 s, which covers the
	// settle time, 2 s), and half a second of admission.
	e.advance(2_500)
	for _, i := range []int{11, 5, 2} {
		v := e.visit(t, "GET", "/games/3/buy", fmt.Sprintf("192.0.2.%d", i+1), tokens[i], true)
		var info waitInfo
		if err := json.Unmarshal([]byte(v.body), &info); err != nil || v.status != 429 {
			t.Fatalf("visitor %d: %d %s", i, v.status, v.body)
		}
		// At 2 a second, ahead/2 s; a second either way for the rounding
		// and the place passed in part.
		want := float64(info.Ahead) / 2
		if got := float64(info.EstimatedWaitSeconds); got < want-1 || got > want+1.5 {
			t.Errorf("visitor %d, %d ahead: estimated wait %v s, want about %v", i, info.Ahead, got, want)
		}
		ra, _ := strconv.ParseInt(v.header.Get("Retry-After"), 10, 64)
		if ra != info.RefreshSeconds || ra < 1 || ra > max(info.EstimatedWaitSeconds, 1) {
			t.Errorf("visitor %d: Retry-After %d, refresh_seconds %d, want both the estimated wait %d (the room refreshes every 1 s at most)", i, ra, info.RefreshSeconds, info.EstimatedWaitSeconds)
		}
	}
}

// TestAppendWait: the waiting page says a wait as a fan reads it.
func TestAppendWait(t *testing.T) {
	for s, want := range map[int64]string{
		-1: "0 s", 0: "0 s", 59: "59 s", 60: "about 1 min", 61: "about 2 min", 3540: "about 59 min",
		3541: "about 1 h 00 min", 3600: "about 1 h 00 min", 3900: "about 1 h 05 min", 36000: "about 10 h 00 min",
	} {
		if got := string(appendWait(nil, s)); got != want {
			t.Errorf("appendWait(%d) = %q, want %q", s, got, want)
		}
	}
}
