package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestWaitingRoomControlShared: on a room coordinated through Consul, the
// admin API of one edge pauses, closes and re-rates the room on every
// edge; with Consul gone, the admin API says the change did not reach
// the others (503) instead of pretending.
func TestWaitingRoomControlShared(t *testing.T) {
	agent, e1, e2 := startConsulRoomEdges(t)
	admin1, admin2 := startAdmin(t, e1.testEdge), startAdmin(t, e2.testEdge)
	rt2 := e2.p.state.Load().rooms[0].rt
	post := func(admin, path string) (int, string) {
		t.Helper()
		resp, err := http.Post(admin+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// until waits (bounded) for the other edge's watcher to apply a change.
	until := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not applied on the other edge after 30 s", what)
			}
		}
	}

	if code, body := post(admin1, "/rooms/final/pause"); code != 200 {
		t.Fatalf("pause on edge 1: %d %s", code, body)
	}
	until("pause", func() bool { return rt2.status.Load() == roomPaused })
	if v := e2.visit(t, "GET", "/games/1/buy", "203.0.113.5", "", false); v.status != 200 || !strings.Contains(v.body, "paused") {
		t.Errorf("edge 2 while paused on edge 1: %d\n%s", v.status, v.body)
	}
	if code, body := post(admin1, "/rooms/final/rate?admit_per_second=42"); code != 200 {
		t.Fatalf("rate on edge 1: %d %s", code, body)
	}
	until("rate", func() bool { return rt2.gate.Rate() == 42 })
	// Back to the config's rate (10): every edge goes back, not only the
	// one asked (its control carries rate 0, "the config's").
	if code, body := post(admin1, "/rooms/final/rate?admit_per_second=10"); code != 200 {
		t.Fatalf("rate back on edge 1: %d %s", code, body)
	}
	until("rate back to the config's", func() bool { return rt2.gate.Rate() == 10 })
	if code, body := post(admin2, "/rooms/final/close"); code != 200 {
		t.Fatalf("close on edge 2: %d %s", code, body)
	}
	rt1 := e1.p.state.Load().rooms[0].rt
	until("close", func() bool { return rt1.status.Load() == roomClosed })
	if v := e1.visit(t, "GET", "/games/1/buy", "203.0.113.6", "", false); v.status != http.StatusConflict {
		t.Errorf("edge 1 after close on edge 2: %d, want 409 sold out", v.status)
	}

	// A resume on edge 1 drops the sold-out marks of edge 2 too.
	rt2.soldOut.mark([]byte("45/"), e2.clock.NowMs())
	if code, body := post(admin1, "/rooms/final/resume"); code != 200 {
		t.Fatalf("resume on edge 1: %d %s", code, body)
	}
	until("resume's marks", func() bool { return len(rt2.soldOut.list(e2.clock.NowMs())) == 0 && rt2.status.Load() == roomOpen })
	post(admin1, "/rooms/final/close")
	until("close again", func() bool { return rt2.status.Load() == roomClosed })

	agent.Stop()
	code, body := post(admin1, "/rooms/final/resume")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "not on the room's other edges") {
		t.Errorf("resume with Consul down: %d %s, want 503 saying the others did not hear it", code, body)
	}
	if rt1.status.Load() != roomOpen {
		t.Error("resume with Consul down: not applied on this edge either")
	}
}
