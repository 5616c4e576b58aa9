package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPathConfusion is a cache poisoning by path confusion, against the
// real stack: real `podium origin` processes (Go's ServeMux) on MariaDB behind a
// real `podium edge` with the embedded default routes (listing cached 2 s,
// stale-if-error 60 s). An edge that routes and keys /api%2Fgames as
// /api/games but forwards it as sent gets the origin's 404 for it, and
// stores that 404 as every fan's listing.
//
// Each request below is sent as written (curl --path-as-is) on an empty
// cache, so it is the one that fills. It must get a clear 400 from the
// edge or the answer for its normal form; and a fan's GET /api/games, GET
// of a game and GET /games right after must get the real ones.
//
// go test -count=1 -run 'TestPathConfusion$' ./e2e/
func TestPathConfusion(t *testing.T) {
	s := startStack(t)
	edgeAddr := strings.TrimPrefix(s.edgeURL, "http://")

	// The real answers, from an origin directly.
	listingResp, listing := s.get(t, s.originURLs[0]+"/api/games")
	pageResp, page := s.get(t, s.originURLs[0]+"/games")
	if listingResp.StatusCode != 200 || pageResp.StatusCode != 200 {
		t.Fatalf("origin: /api/games %d, /games %d", listingResp.StatusCode, pageResp.StatusCode)
	}
	var games struct{ Games []struct{ ID int64 } }
	if err := json.Unmarshal(listing, &games); err != nil || len(games.Games) == 0 {
		t.Fatalf("origin listing: %v %.200s", err, listing)
	}
	gamePath := fmt.Sprintf("/api/games/%d", games.Games[0].ID)
	gameResp, game := s.get(t, s.originURLs[0]+gamePath)
	if gameResp.StatusCode != 200 {
		t.Fatalf("origin %s: %d", gamePath, gameResp.StatusCode)
	}

	const refused = 400
	tests := []struct {
		raw  string
		want int    // refused, or the status of the normal form
		body string // when set, the body the attack itself must get
	}{
		{"/api%2Fgames", refused, ""},
		{"/api%2fgames", refused, ""},
		{"/api%5Cgames", refused, ""},
		{"/api/games%3F", refused, ""},
		{"/api/games%3f/../games", refused, ""},
		{"/api/games%23", refused, ""},
		{"/api/games%00", refused, ""},
		{`/api\games`, refused, ""},
		{"/api/games/1%2F..%2F2", refused, ""},
		// Once keyed as the game's own path, answered 404 by the origin.
		{fmt.Sprintf("/api/games/999999%%2F..%%2F%d", games.Games[0].ID), refused, ""},
		{fmt.Sprintf("/api/games/x/../%d", games.Games[0].ID), 200, string(game)},
		{"/api/games/%zz", refused, ""},
		{"/gam%65s%2F", refused, ""},
		{"/api/./games", 200, string(listing)},
		{"/api/x/../games", 200, string(listing)},
		{"//api/games", 200, string(listing)},
		{"/api//games", 200, string(listing)},
		{"/%61pi/games", 200, string(listing)},
		{"/api/games/%2e%2e/games", 200, string(listing)},
		{"/api/games/.%2E/games", 200, string(listing)},
		{"/../api/games", 200, string(listing)},
		{"/games/./", 404, ""}, // /games/ is another resource; the origin has no page there
		{"/api/games/", 404, ""},
		{"/games/%2e%2e/games", 200, string(page)},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.raw, "/", "∕"), func(t *testing.T) {
			resp, body := s.do(t, http.MethodPost, s.adminURL+"/cache/purge?prefix=/", "")
			if resp.StatusCode != 200 {
				t.Fatalf("admin purge: %d %s", resp.StatusCode, body)
			}
			code, hdr, attack := rawRequest(t, edgeAddr, tt.raw)
			switch {
			case tt.want == refused:
				if code != 400 || !strings.Contains(attack, `"request_id"`) {
					t.Errorf("GET %q: %d X-Cache %q %.200s; want the edge's own 400", tt.raw, code, hdr.Get("X-Cache"), attack)
				}
			case code != tt.want:
				t.Errorf("GET %q: %d X-Cache %q Location %q %.200s; want %d, the origin's answer for its normal form",
					tt.raw, code, hdr.Get("X-Cache"), hdr.Get("Location"), attack, tt.want)
			case tt.body != "" && attack != tt.body:
				t.Errorf("GET %q: %d but not the resource of its normal form: %.200s", tt.raw, code, attack)
			}

			// Another fan, right after.
			fan, got := s.get(t, s.edgeURL+"/api/games")
			if fan.StatusCode != 200 || string(got) != string(listing) {
				t.Errorf("after GET %q, a fan's GET /api/games: %d X-Cache %q %.200s; want the listing",
					tt.raw, fan.StatusCode, fan.Header.Get("X-Cache"), got)
			}
			fan, got = s.get(t, s.edgeURL+gamePath)
			if fan.StatusCode != 200 || string(got) != string(game) {
				t.Errorf("after GET %q, a fan's GET %s: %d X-Cache %q %.200s; want the game",
					tt.raw, gamePath, fan.StatusCode, fan.Header.Get("X-Cache"), got)
			}
			fan, got = s.get(t, s.edgeURL+"/games", "Accept", "text/html")
			if fan.StatusCode != 200 || string(got) != string(page) {
				t.Errorf("after GET %q, a fan's GET /games: %d X-Cache %q; want the listing page", tt.raw, fan.StatusCode, fan.Header.Get("X-Cache"))
			}
		})
	}
}

// rawRequest sends GET target exactly as written, which Go's client would
// escape and clean, and returns the answer.
func rawRequest(t *testing.T, addr, target string) (int, http.Header, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\nConnection: close\r\n\r\n", target, addr); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %q: %v", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %q: reading the body: %v", target, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}
