package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestWaitingRoomSoldOutGame: when the origin answers a guarded request
// with X-Podium-Sold-Out, the visitors waiting for that game, and new ones,
// are told it is sold out (409) without reaching the origin, while the
// room's other games queue on; "fewer seats than asked" (a 409 without the
// header) marks nothing; the mark runs out after soldOutTTL and the
// admin's resume drops it.
func TestWaitingRoomSoldOutGame(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	up := newUpstream(t)
	up.handler = func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, "/45/"):
			w.Header().Set(soldOutHeader, "true")
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `{"error":"sold out: no seats left for game 45","remaining":0}`)
		case strings.Contains(r.URL.Path, "/8/"):
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `{"error":"not enough seats: 4 requested, 1 left for game 8","remaining":1}`)
		default:
			io.WriteString(w, "hello from the origin")
		}
	}
	e := startRoomEdge(t, up, dir, writeRoomKeys(t, dir), clock, 1000, 0)
	admin := startAdmin(t, e.testEdge)

	// admitted queues who for path and returns the origin's answer once
	// the watermark has passed them.
	admitted := func(path, who string) visit {
		t.Helper()
		tok := e.visit(t, "POST", path, who, "", true).token
		e.advance(4_000) // the hold after start, and the settle time
		for range 20 {
			v := e.visit(t, "POST", path, who, tok, true)
			if v.status != http.StatusTooManyRequests {
				return v
			}
			e.advance(250)
		}
		t.Fatalf("%s for %s: never admitted", who, path)
		return visit{}
	}
	waiting := e.visit(t, "GET", "/games/45/buy", "198.51.100.7", "", false)
	if waiting.status != http.StatusOK || waiting.position(t) != 1 {
		t.Fatalf("a visitor for game 45 before the sell-out: %d\n%s", waiting.status, waiting.body)
	}
	if v := admitted("/api/games/8/buy", "198.51.100.1"); v.status != http.StatusConflict {
		t.Fatalf("game 8 through the room: %d %s", v.status, v.body)
	}
	if v := e.visit(t, "GET", "/games/8/buy", "198.51.100.2", "", false); v.status != http.StatusOK || !strings.Contains(v.body, `id="position"`) {
		t.Fatalf("game 8 (fewer seats than asked, no header) after its 409: %d, want the waiting page\n%s", v.status, v.body)
	}
	if v := admitted("/api/games/45/buy", "198.51.100.3"); v.status != http.StatusConflict || v.header.Get(soldOutHeader) != "true" {
		t.Fatalf("game 45 through the room: %d %s", v.status, v.body)
	}

	before := up.count.Load()
	for _, tt := range []struct {
		name, path, who, token string
		api                    bool
	}{
		{"a newcomer's page", "/games/45/buy", "198.51.100.4", "", false},
		{"a newcomer through the API, another spelling", "/API/games/45;x/buy", "198.51.100.5", "", true},
		{"the visitor waiting since before", "/games/45/buy", "198.51.100.7", waiting.token, false},
	} {
		v := e.visit(t, "GET", tt.path, tt.who, tt.token, tt.api)
		want := "Sold out"
		if tt.api {
			want = `"status":"sold_out"`
		}
		if v.status != http.StatusConflict || !strings.Contains(v.body, want) {
			t.Errorf("%s: %d, want 409 with %q\n%s", tt.name, v.status, want, v.body)
		}
	}
	if n := up.count.Load() - before; n != 0 {
		t.Errorf("%d requests for the sold-out game reached the origin", n)
	}
	if v := e.visit(t, "GET", "/games/7/buy", "198.51.100.6", "", false); v.status != http.StatusOK || !strings.Contains(v.body, `id="position"`) {
		t.Errorf("another game of the room: %d, want the waiting page\n%s", v.status, v.body)
	}

	rooms := func() []string {
		resp, err := http.Get(admin + "/rooms")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Rooms []struct {
				SoldOut []string `json:"sold_out"`
			} `json:"rooms"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Rooms) != 1 {
			t.Fatalf("GET /rooms: %v %+v", err, body)
		}
		return body.Rooms[0].SoldOut
	}
	if got := rooms(); len(got) != 1 || got[0] != "45/" {
		t.Errorf("GET /rooms sold_out = %q, want [45/]", got)
	}

	// The mark runs out: seats may have come back.
	e.advance(soldOutTTL.Milliseconds())
	if v := e.visit(t, "GET", "/games/45/buy", "198.51.100.8", "", false); v.status != http.StatusOK || !strings.Contains(v.body, `id="position"`) {
		t.Errorf("after soldOutTTL: %d, want the waiting page\n%s", v.status, v.body)
	}
	// Marked again, then dropped by the admin's resume.
	admitted("/api/games/45/buy", "198.51.100.9")
	if got := rooms(); len(got) != 1 {
		t.Fatalf("not marked again: %q", got)
	}
	resp, err := http.Post(admin+"/rooms/final/resume", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := rooms(); len(got) != 0 {
		t.Errorf("after resume sold_out = %q, want none", got)
	}
}
