package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestStack starts the whole stack once and runs every end-to-end check on
// it. The steps share the stack and depend on its state (the browser sells
// a session out that the contract then expects sold out; the outage comes
// last), so they are subtests in order, not separate tests.
func TestStack(t *testing.T) {
	ss := loadSchemas(t)
	t.Run("schemas reject wrong shapes", func(t *testing.T) { testSchemasRejectWrongShapes(t, ss) })
	chromiumPath(t) // fail before the 20 s of startup when Chromium is missing

	// The origins check their databases once, at start: the browser step
	// pauses replication, and an origin that noticed would read from the
	// primary and leave the GTID cookie untested (a replica behind but
	// still in rotation, lagging under -replica-max-lag, is the case the
	// cookie exists for).
	s := startStack(t, "-health-interval", "1h")
	buyGame, soldOutGame := pickGames(t, s)
	t.Logf("stack up: edge %s, origins %v; buying on game %d, selling out game %d",
		s.edgeURL, s.originURLs, buyGame, soldOutGame)

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"browser", func(t *testing.T) { testBrowser(t, s, buyGame, soldOutGame) }},
		{"contract", func(t *testing.T) { testContract(t, s, ss, buyGame, soldOutGame) }},
		{"smoke", func(t *testing.T) { testSmoke(t, s, buyGame) }},
		{"bench scenarios", func(t *testing.T) { testBenchScenarios(t, s, ss) }},
		{"waiting room", func(t *testing.T) { testWaitingRoom(t, s, pickRoomGame(t, s, buyGame, soldOutGame)) }},
		{"purchase retried only with a key", func(t *testing.T) { testPurchaseRetry(t, s, buyGame) }},
		{"browser with every origin down", func(t *testing.T) { testBrowserOriginsDown(t, s) }},
	}
	for _, step := range steps {
		if !t.Run(step.name, step.run) && step.name == "browser" {
			// Later steps rely on the browser having sold a game out.
			t.Fatal("the browser step failed; the steps after it depend on its purchases")
		}
	}
}

// pickGames returns the first game of the listing (to buy on) and the
// smallest session (to sell out cheaply), read from an origin.
func pickGames(t *testing.T, s *stack) (buy, soldOut int64) {
	t.Helper()
	var minCap int64 = -1
	next := "/api/games?limit=500"
	for pages := 0; next != "" && pages < 10; pages++ {
		resp, body := s.get(t, s.originURLs[0]+next)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %.200s", next, resp.StatusCode, body)
		}
		var page struct {
			Games []struct{ ID, Capacity, Remaining int64 } `json:"games"`
			Next  string                                    `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		for _, g := range page.Games {
			if buy == 0 && g.Remaining > 10 {
				buy = g.ID
			}
			if g.ID != buy && (minCap < 0 || g.Capacity < minCap) && g.Remaining > 0 {
				minCap, soldOut = g.Capacity, g.ID
			}
		}
		next = page.Next
	}
	if buy == 0 || soldOut == 0 {
		t.Fatalf("no games to test with (buy %d, sold out %d)", buy, soldOut)
	}
	return buy, soldOut
}

// sellOut buys every seat of game id directly on an origin, 100 at a time
// (the origins run with -max-per-order 100 -max-per-buyer 0), so that the invariant
// remaining + sold = capacity still holds.
func sellOut(t *testing.T, s *stack, id int64) {
	t.Helper()
	url := fmt.Sprintf("%s/api/games/%d/buy", s.originURLs[1], id)
	qty := 100
	for range 1000 {
		resp, body := s.do(t, http.MethodPost, url, fmt.Sprintf(`{"quantity":%d,"email":"bulk@podium.example"}`, qty))
		switch resp.StatusCode {
		case http.StatusCreated:
			continue
		case http.StatusConflict:
			var refusal struct {
				Remaining *int `json:"remaining"`
			}
			if err := json.Unmarshal(body, &refusal); err != nil || refusal.Remaining == nil {
				t.Fatalf("409 without remaining: %.200s", body)
			}
			if *refusal.Remaining == 0 {
				return
			}
			qty = *refusal.Remaining
		default:
			t.Fatalf("selling out game %d: %d %.200s", id, resp.StatusCode, body)
		}
	}
	t.Fatalf("game %d not sold out after 1000 purchases", id)
}

// testSmoke runs `podium smoke` against the stack, and against a dead
// address.
func testSmoke(t *testing.T, s *stack, game int64) {
	smoke := func(args ...string) (string, error) {
		out, err := exec.Command(podiumBin, append([]string{"smoke"}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := smoke("-h"); err != nil {
		t.Fatalf("podium smoke -h: %v\n%s\n(is the smoke subcommand wired into cmd/podium/main.go?)", err, out)
	}
	origins := strings.Join(s.originURLs, ",")

	out, err := smoke("-edge", s.edgeURL, "-origins", origins)
	if err != nil {
		t.Fatalf("podium smoke on a healthy stack: %v\n%s", err, out)
	}
	t.Logf("podium smoke -edge %s -origins %s:\n%s", s.edgeURL, origins, out)
	// 1 edge ping + 3 origin pings + listing + detail, all ok, nothing written.
	if n := strings.Count(out, " ok"); n != 6 || strings.Contains(out, "FAIL") || strings.Contains(out, "POST") {
		t.Errorf("podium smoke: want 6 ok rows and no POST:\n%s", out)
	}

	remaining := func() int64 {
		_, body := s.get(t, fmt.Sprintf("%s/api/games/%d", s.originURLs[0], game))
		var g struct{ Remaining int64 }
		if err := json.Unmarshal(body, &g); err != nil {
			t.Fatal(err)
		}
		return g.Remaining
	}
	// -write buys exactly one ticket: compare the seats left, read from an
	// origin once the replicas have applied every purchase before it (the
	// steps before this one bought seats of the same game) and then it.
	waitReplicas := func() {
		t.Helper()
		if o, err := exec.Command(s.script, "wait", s.dbDir).CombinedOutput(); err != nil {
			t.Fatalf("waiting for the replicas: %v\n%s", err, o)
		}
	}
	waitReplicas()
	before := remaining()
	out, err = smoke("-edge", s.edgeURL, "-origins", origins, "-write", "-game", strconv.FormatInt(game, 10))
	if err != nil {
		t.Fatalf("podium smoke -write: %v\n%s", err, out)
	}
	if !strings.Contains(out, fmt.Sprintf("POST /api/games/%d/buy", game)) || !strings.Contains(out, "ticket PAR24-") {
		t.Errorf("podium smoke -write: no purchase row:\n%s", out)
	}
	waitReplicas()
	if after := remaining(); after != before-1 {
		t.Errorf("smoke -write: remaining %d → %d, want one seat sold", before, after)
	}

	// A dead edge and a dead origin: a clear failure, non-zero exit.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	out, err = smoke("-edge", dead, "-origins", s.originURLs[0]+","+dead, "-timeout", "2s")
	if err == nil {
		t.Fatalf("podium smoke against a dead edge exited 0:\n%s", out)
	}
	t.Logf("podium smoke against a dead edge and origin (%v):\n%s", err, out)
	for _, want := range []string{"FAIL", "nothing listens at " + strings.TrimPrefix(dead, "http://"), "connection refused", "checks failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("podium smoke against a dead edge: output lacks %q:\n%s", want, out)
		}
	}
	// Bad usage says what to do.
	if out, err := smoke("-origins", origins); err == nil || !strings.Contains(out, "-edge is required") {
		t.Errorf("podium smoke without -edge: %v\n%s", err, out)
	}
	if out, err := smoke("-edge", s.edgeURL, "-write"); err == nil || !strings.Contains(out, "-write needs -game") {
		t.Errorf("podium smoke -write without -game: %v\n%s", err, out)
	}
}
