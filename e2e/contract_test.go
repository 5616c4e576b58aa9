package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// schemas are origin/schema/*.json compiled, by file name without .json.
type schemas map[string]*jsonschema.Schema

// loadSchemas compiles every schema of origin/schema, each under its $id,
// so that listing.json's {"$ref": "game.json"} resolves to the file beside
// it and nothing is fetched.
func loadSchemas(t testing.TB) schemas {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "origin", "schema", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no schemas in origin/schema: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat() // date-time is only an annotation in 2020-12 unless asserted
	ids := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		id, _ := doc.(map[string]any)["$id"].(string)
		if id == "" {
			t.Fatalf("%s has no $id", f)
		}
		if err := c.AddResource(id, doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		ids[strings.TrimSuffix(filepath.Base(f), ".json")] = id
	}
	out := schemas{}
	for name, id := range ids {
		sch, err := c.Compile(id)
		if err != nil {
			t.Fatalf("compiling origin/schema/%s.json: %v", name, err)
		}
		out[name] = sch
	}
	for _, want := range []string{"listing", "game", "purchase", "error"} {
		if out[want] == nil {
			t.Fatalf("origin/schema/%s.json is missing", want)
		}
	}
	return out
}

// check validates body against the named schema and fails the test with
// the validator's explanation.
func (ss schemas) check(t testing.TB, name, what string, body []byte) {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		t.Errorf("%s: not JSON: %v: %.300s", what, err, body)
		return
	}
	if err := ss[name].Validate(inst); err != nil {
		t.Errorf("%s does not match origin/schema/%s.json: %v\nbody: %.500s", what, name, err, body)
	}
}

// testSchemasRejectWrongShapes proves the schemas are not vacuous: each
// refuses a body that breaks the contract in one way.
func testSchemasRejectWrongShapes(t *testing.T, ss schemas) {
	game := `{"id":1,"sport":"Rugby Sevens","event":"Men's Pool Round","venue":"Stade de France","city":"Saint-Denis","starts_at":"2024-07-24T12:30:00Z","price_cents":2400,"currency":"EUR","capacity":69000,"remaining":69000,"sold_out":false}`
	cases := []struct {
		schema, name, body string
		valid              bool
	}{
		{"game", "good game", game, true},
		{"game", "missing remaining", strings.Replace(game, `"remaining":69000,`, "", 1), false},
		{"game", "negative remaining", strings.Replace(game, `"remaining":69000`, `"remaining":-1`, 1), false},
		{"game", "sold_out but seats left", strings.Replace(game, `"sold_out":false`, `"sold_out":true`, 1), false},
		{"game", "id as string", strings.Replace(game, `"id":1`, `"id":"1"`, 1), false},
		{"game", "starts_at not a date", strings.Replace(game, `2024-07-24T12:30:00Z`, `24 July`, 1), false},
		{"game", "unknown field", strings.Replace(game, `{`, `{"seats":1,`, 1), false},
		{"listing", "good page", `{"games":[` + game + `],"count":1,"next":"/api/games?after=MTcy&limit=1"}`, true},
		{"listing", "last page", `{"games":[],"count":0}`, true},
		{"listing", "bad item", `{"games":[{"id":1}],"count":1}`, false},
		{"listing", "no count", `{"games":[]}`, false},
		{"purchase", "good order", `{"order_id":7,"game_id":3,"email":"a@b.fr","quantity":2,"tickets":["PAR24-0003-00000007-01","PAR24-0003-00000007-02"],"created_at":"2026-11-28T10:00:00.123456Z"}`, true},
		{"purchase", "bad ticket number", `{"order_id":7,"game_id":3,"email":"a@b.fr","quantity":1,"tickets":["T1"],"created_at":"2026-11-28T10:00:00Z"}`, false},
		{"purchase", "no tickets", `{"order_id":7,"game_id":3,"email":"a@b.fr","quantity":1,"tickets":[],"created_at":"2026-11-28T10:00:00Z"}`, false},
		{"error", "good error", `{"error":"sold out","request_id":"abc","remaining":0}`, true},
		{"error", "no request_id", `{"error":"sold out"}`, false},
		{"error", "plain text", `"sold out"`, false},
	}
	for _, tc := range cases {
		inst, err := jsonschema.UnmarshalJSON(strings.NewReader(tc.body))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		err = ss[tc.schema].Validate(inst)
		if got := err == nil; got != tc.valid {
			t.Errorf("%s.json on %s: valid = %v, want %v (%v)", tc.schema, tc.name, got, tc.valid, err)
		}
	}
}

// testContract checks what the origin answers, directly and through the
// edge, against origin/schema. It buys on game buyGame and expects
// soldOutGame to be sold out.
func testContract(t *testing.T, s *stack, ss schemas, buyGame, soldOutGame int64) {
	origin := s.originURLs[0]
	for _, base := range []string{origin, s.edgeURL} {
		// Every page of the listing, following next to the end.
		seen := map[int64]bool{}
		next := "/api/games?limit=500"
		for pages := 0; next != ""; pages++ {
			if pages > 10 {
				t.Fatalf("%s: the listing did not end after 10 pages of 500", base)
			}
			resp, body := s.get(t, base+next)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s%s: %d %.300s", base, next, resp.StatusCode, body)
			}
			ss.check(t, "listing", "GET "+base+next, body)
			var page struct {
				Games []struct{ ID int64 } `json:"games"`
				Count int                  `json:"count"`
				Next  string               `json:"next"`
			}
			if err := json.Unmarshal(body, &page); err != nil {
				t.Fatal(err)
			}
			if page.Count != len(page.Games) {
				t.Errorf("%s: count %d but %d games", next, page.Count, len(page.Games))
			}
			for _, g := range page.Games {
				if seen[g.ID] {
					t.Errorf("game %d listed twice", g.ID)
				}
				seen[g.ID] = true
			}
			next = page.Next
		}
		if len(seen) < 2 {
			t.Fatalf("%s: listing has %d games", base, len(seen))
		}
		for _, q := range []string{"?limit=3", "?sport=Surfing", "?date=2024-08-04&limit=5"} {
			resp, body := s.get(t, base+"/api/games"+q)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s/api/games%s: %d %.300s", base, q, resp.StatusCode, body)
			}
			ss.check(t, "listing", "GET /api/games"+q, body)
		}
		for _, id := range []int64{buyGame, soldOutGame} {
			resp, body := s.get(t, fmt.Sprintf("%s/api/games/%d", base, id))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /api/games/%d: %d %.300s", id, resp.StatusCode, body)
			}
			ss.check(t, "game", fmt.Sprintf("GET %s/api/games/%d", base, id), body)
		}

		// A purchase: 201 with one ticket per seat.
		resp, body := s.do(t, http.MethodPost, fmt.Sprintf("%s/api/games/%d/buy", base, buyGame),
			`{"quantity":3,"email":"contract@podium.example"}`)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("buy: %d %.300s", resp.StatusCode, body)
		}
		ss.check(t, "purchase", "201 from "+base, body)
		var order struct {
			GameID   int64    `json:"game_id"`
			Quantity int      `json:"quantity"`
			Tickets  []string `json:"tickets"`
		}
		if err := json.Unmarshal(body, &order); err != nil {
			t.Fatal(err)
		}
		if order.GameID != buyGame || order.Quantity != 3 || len(order.Tickets) != 3 {
			t.Errorf("order = %+v, want 3 tickets for game %d", order, buyGame)
		}

		// Errors: every /api/ refusal is {"error","request_id"}.
		errs := []struct {
			name, method, path, body string
			hdr                      []string
			status                   int
		}{
			{"unknown game", "GET", "/api/games/99999", "", nil, 404},
			{"non-numeric id", "GET", "/api/games/abc", "", nil, 404},
			{"bad limit", "GET", "/api/games?limit=0", "", nil, 400},
			{"bad date", "GET", "/api/games?date=tomorrow", "", nil, 400},
			{"bad cursor", "GET", "/api/games?after=%25%25", "", nil, 400},
			{"buy unknown game", "POST", "/api/games/99999/buy", `{"quantity":1,"email":"a@b.fr"}`, nil, 404},
			{"buy bad JSON", "POST", fmt.Sprintf("/api/games/%d/buy", buyGame), `{"quantity":`, nil, 400},
			{"buy zero", "POST", fmt.Sprintf("/api/games/%d/buy", buyGame), `{"quantity":0,"email":"a@b.fr"}`, nil, 422},
			{"buy bad email", "POST", fmt.Sprintf("/api/games/%d/buy", buyGame), `{"quantity":1,"email":"nobody"}`, nil, 422},
			{"buy sold out", "POST", fmt.Sprintf("/api/games/%d/buy", soldOutGame), `{"quantity":1,"email":"a@b.fr"}`, nil, 409},
			{"buy as text", "POST", fmt.Sprintf("/api/games/%d/buy", buyGame), `{"quantity":1,"email":"a@b.fr"}`,
				[]string{"Content-Type", "text/plain"}, 415},
		}
		for _, e := range errs {
			resp, body := s.do(t, e.method, base+e.path, e.body, e.hdr...)
			if resp.StatusCode != e.status {
				t.Errorf("%s via %s: status %d, want %d: %.300s", e.name, base, resp.StatusCode, e.status, body)
				continue
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("%s via %s: Content-Type %q", e.name, base, ct)
			}
			ss.check(t, "error", e.name+" via "+base, body)
		}
	}

	// The edge's own refusals keep the same shape: a body over its limit.
	// The request announces 70,000 bytes and sends none, so the edge refuses
	// it on the header alone; a client that sent the body could lose the
	// race with the edge closing the connection (a broken pipe, not an answer).
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.edgeURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /api/games/%d/buy HTTP/1.1\r\nHost: podium\r\nContent-Type: application/json\r\nContent-Length: 70000\r\n\r\n", buyGame)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("oversized body via the edge: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body via the edge: %d, want 413: %.300s", resp.StatusCode, body)
	} else {
		ss.check(t, "error", "the edge's 413", body)
	}
}
