package origin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

func TestBuyBadInput(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 10)
	buyURL := fmt.Sprintf("%s/api/games/%d/buy", s.URL, game)
	json := "application/json"
	for _, tt := range []struct {
		name        string
		method, url string
		body        string
		ctype, key  string
		status      int
		want        string // substring of the error message
	}{
		{"invalid JSON", "POST", buyURL, `{"quantity": 1,`, json, "", 400, "invalid JSON"},
		{"not an object", "POST", buyURL, `[1, 2]`, json, "", 400, "invalid JSON"},
		{"empty body", "POST", buyURL, ``, json, "", 400, "empty body"},
		{"two objects", "POST", buyURL, `{"quantity": 1, "email": "a@example.com"} {}`, json, "", 400, "exactly one object"},
		{"unknown field", "POST", buyURL, `{"quantity": 1, "email": "a@example.com", "seat": "A1"}`, json, "", 400, `unknown field "seat"`},
		{"quantity as string", "POST", buyURL, `{"quantity": "1", "email": "a@example.com"}`, json, "", 400, `"quantity" must be an integer`},
		{"quantity fractional", "POST", buyURL, `{"quantity": 1.5, "email": "a@example.com"}`, json, "", 400, `"quantity" must be an integer`},
		{"quantity missing", "POST", buyURL, `{"email": "a@example.com"}`, json, "", 422, "quantity: required"},
		// The per-order maximum is the per-buyer limit (8) by default.
		{"quantity zero", "POST", buyURL, `{"quantity": 0, "email": "a@example.com"}`, json, "", 422, "1..8"},
		{"quantity negative", "POST", buyURL, `{"quantity": -3, "email": "a@example.com"}`, json, "", 422, "1..8"},
		{"quantity above the per-order maximum", "POST", buyURL, `{"quantity": 9, "email": "a@example.com"}`, json, "", 422, "1..8"},
		{"email missing", "POST", buyURL, `{"quantity": 1}`, json, "", 422, "email: required"},
		{"email without at", "POST", buyURL, `{"quantity": 1, "email": "fan.example.com"}`, json, "", 422, "not an email address"},
		{"email with display name", "POST", buyURL, `{"quantity": 1, "email": "Fan <fan@example.com>"}`, json, "", 422, "not an email address"},
		{"email without domain dot", "POST", buyURL, `{"quantity": 1, "email": "fan@localhost"}`, json, "", 422, "domain name"},
		{"email too long", "POST", buyURL, `{"quantity": 1, "email": "` + strings.Repeat("a", 250) + `@example.com"}`, json, "", 422, "254"},
		{"body too large", "POST", buyURL, `{"quantity": 1, "email": "a@example.com", "x": "` + strings.Repeat("x", 5000) + `"}`, json, "", 413, "too large"},
		{"form content type", "POST", buyURL, `quantity=1&email=a@example.com`, "application/x-www-form-urlencoded", "", 415, "application/json"},
		{"bad idempotency key", "POST", buyURL, `{"quantity": 1, "email": "a@example.com"}`, json, "has space", 400, "Idempotency-Key"},
		{"unknown game", "POST", s.URL + "/api/games/999999999/buy", `{"quantity": 1, "email": "a@example.com"}`, json, "", 404, "no game with id 999999999"},
		{"non-numeric game", "POST", s.URL + "/api/games/abc/buy", `{"quantity": 1, "email": "a@example.com"}`, json, "", 404, `no game with id "abc"`},
		{"zero game", "POST", s.URL + "/api/games/0/buy", `{"quantity": 1, "email": "a@example.com"}`, json, "", 404, "no game"},
		{"GET on buy", "GET", buyURL, ``, "", "", 405, "use POST"},
		{"DELETE on a game", "DELETE", fmt.Sprintf("%s/api/games/%d", s.URL, game), ``, "", "", 405, "use GET"},
		{"unknown game details", "GET", s.URL + "/api/games/999999999", ``, "", "", 404, "no game with id 999999999"},
		{"unknown endpoint", "GET", s.URL + "/api/tickets", ``, "", "", 404, "no such endpoint"},
		{"bad date filter", "GET", s.URL + "/api/games?date=04-08-2024", ``, "", "", 400, "YYYY-MM-DD"},
		{"bad limit", "GET", s.URL + "/api/games?limit=0", ``, "", "", 400, "limit"},
		{"limit above the maximum", "GET", s.URL + "/api/games?limit=501", ``, "", "", 400, "1..500"},
		{"bad cursor", "GET", s.URL + "/api/games?after=!!", ``, "", "", 400, "after"},
		{"bad GTID header", "GET", s.URL + "/api/games", ``, "", "", 400, "GTID"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := "req-" + strings.ReplaceAll(tt.name, " ", "-")
			headers := []string{"X-Request-ID", id}
			if tt.ctype != "" {
				headers = append(headers, "Content-Type", tt.ctype)
			}
			if tt.key != "" {
				headers = append(headers, "Idempotency-Key", tt.key)
			}
			if tt.name == "bad GTID header" {
				headers = append(headers, GTIDHeader, "1; DROP TABLE games")
			}
			r := do(t, tt.method, tt.url, tt.body, headers...)
			if r.Status != tt.status {
				t.Fatalf("status %d, want %d; body %s", r.Status, tt.status, r.Body)
			}
			if ct := r.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var e errorBody
			if err := jsonStrict(r.Body, &e); err != nil {
				t.Fatalf("body %s: %v", r.Body, err)
			}
			if !strings.Contains(e.Error, tt.want) {
				t.Errorf("error %q does not contain %q", e.Error, tt.want)
			}
			if e.RequestID != id || r.Header.Get("X-Request-ID") != id {
				t.Errorf("request_id %q, header %q, want the edge's %q echoed", e.RequestID, r.Header.Get("X-Request-ID"), id)
			}
		})
	}
	// Nothing above may have sold a seat.
	if remaining, sold, _, _ := gameState(t, game); remaining != 10 || sold != 0 {
		t.Errorf("after bad input: remaining %d sold %d, want 10 and 0", remaining, sold)
	}
}

// jsonStrict decodes b into v refusing unknown fields, so that a test
// notices an error body growing a field it does not expect.
func jsonStrict(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func TestSoldOutSaysHowManyRemain(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 3)
	url := fmt.Sprintf("%s/api/games/%d/buy", s.URL, game)
	for _, tt := range []struct {
		qty    int
		status int
		want   string
		left   int64
	}{
		{2, 201, "", 1},
		{2, 409, "2 requested, 1 left", 1},
		{1, 201, "", 0},
		{1, 409, "sold out", 0},
	} {
		r := do(t, "POST", url, fmt.Sprintf(`{"quantity": %d, "email": "a@example.com"}`, tt.qty), "Content-Type", "application/json")
		if r.Status != tt.status || !strings.Contains(string(r.Body), tt.want) {
			t.Fatalf("buying %d: %d %s, want %d containing %q", tt.qty, r.Status, r.Body, tt.status, tt.want)
		}
		if tt.status == 409 {
			var e errorBody
			if err := jsonStrict(r.Body, &e); err != nil || e.Remaining == nil || *e.Remaining != tt.left {
				t.Errorf("409 body %s: remaining should be %d", r.Body, tt.left)
			}
		}
		// The edge's waiting room stops queueing for the game on this
		// header: only "no seat left" may carry it.
		if got, want := r.Header.Get(SoldOutHeader), map[bool]string{true: "true"}[tt.status == 409 && tt.left == 0]; got != want {
			t.Errorf("buying %d (%d left): %s %q, want %q", tt.qty, tt.left, SoldOutHeader, got, want)
		}
	}
}

func TestAppUserCannotDrop(t *testing.T) {
	_, err := tc.primaryDB.Exec("DROP TABLE tickets")
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1142 {
		t.Fatalf("DROP TABLE as the app user: %v, want error 1142 (command denied)", err)
	}
	if _, err := tc.primaryDB.Exec("CREATE TABLE podium_x (id INT)"); err == nil {
		t.Fatal("CREATE TABLE as the app user succeeded; it must be denied")
	}
}

func TestMigrationsTwice(t *testing.T) {
	done, err := Migrate(context.Background(), tc.migrate, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 0 {
		t.Errorf("second Migrate applied %v, want nothing", done)
	}
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tc.primaryDB.QueryRow("SELECT COUNT(*) FROM schema_migrations").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(ms) {
		t.Errorf("schema_migrations has %d rows, want %d", n, len(ms))
	}
}

func TestSeedIsTheParisProgramme(t *testing.T) {
	var games, sports, venues int
	var minCap, maxCap int64
	var first, last time.Time
	err := tc.primaryDB.QueryRow(`SELECT COUNT(*), COUNT(DISTINCT sport), COUNT(DISTINCT venue), MIN(capacity), MAX(capacity), MIN(starts_at), MAX(starts_at)
		FROM games WHERE id <= ?`, seedGames).Scan(&games, &sports, &venues, &minCap, &maxCap, &first, &last)
	if err != nil {
		t.Fatal(err)
	}
	if games != seedGames || sports < 40 || venues < 30 || minCap >= maxCap {
		t.Errorf("seed: %d games, %d sports, %d venues, capacities %d..%d", games, sports, venues, minCap, maxCap)
	}
	// Competition ran from 24 July (football, rugby sevens) to 11 August 2024.
	if first.Before(time.Date(2024, 7, 24, 0, 0, 0, 0, time.UTC)) || last.After(time.Date(2024, 8, 12, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("seed spans %s..%s, want within 24 July..11 August 2024", first, last)
	}
	var venue string
	if err := tc.primaryDB.QueryRow("SELECT venue FROM games WHERE sport = 'Surfing' LIMIT 1").Scan(&venue); err != nil || venue != "Teahupo'o" {
		t.Errorf("surfing venue %q (%v), want Teahupo'o", venue, err)
	}
}

func TestListingPaginationAndFilters(t *testing.T) {
	s := startServer(t, nil)
	// Walk every page: ordered by (starts_at, id), no game twice.
	var all []Game
	next := "/api/games?limit=97"
	for pages := 0; next != ""; pages++ {
		if pages > 100 {
			t.Fatal("pagination does not end")
		}
		r := do(t, "GET", s.URL+next, "")
		if r.Status != 200 {
			t.Fatalf("GET %s: %d %s", next, r.Status, r.Body)
		}
		var l gameList
		if err := jsonStrict(r.Body, &l); err != nil {
			t.Fatal(err)
		}
		if l.Count != len(l.Games) || l.Count > 97 {
			t.Fatalf("page of %d games says count %d", len(l.Games), l.Count)
		}
		all = append(all, l.Games...)
		next = l.Next
	}
	var total int
	if err := tc.primaryDB.QueryRow("SELECT COUNT(*) FROM games").Scan(&total); err != nil {
		t.Fatal(err)
	}
	// Tests running before may add games; the replicas are a moment behind.
	if len(all) < seedGames || len(all) > total {
		t.Errorf("walked %d games, want %d..%d", len(all), seedGames, total)
	}
	seen := map[int64]bool{}
	for i, g := range all {
		if seen[g.ID] {
			t.Fatalf("game %d listed twice", g.ID)
		}
		seen[g.ID] = true
		if i > 0 && (g.StartsAt.Before(all[i-1].StartsAt) || g.StartsAt.Equal(all[i-1].StartsAt) && g.ID < all[i-1].ID) {
			t.Fatalf("games %d and %d out of order", all[i-1].ID, g.ID)
		}
	}

	for _, tt := range []struct {
		query string
		check func(Game) bool
		min   int
	}{
		{"sport=Athletics", func(g Game) bool { return g.Sport == "Athletics" }, 20},
		{"date=2024-08-04", func(g Game) bool { return g.StartsAt.Format(time.DateOnly) == "2024-08-04" }, 20},
		{"sport=Surfing&date=2024-07-27", func(g Game) bool { return g.Sport == "Surfing" && g.StartsAt.Format(time.DateOnly) == "2024-07-27" }, 1},
		{"sport=Quidditch", func(Game) bool { return false }, 0},
	} {
		r := do(t, "GET", s.URL+"/api/games?limit=500&"+tt.query, "")
		var l gameList
		if err := jsonStrict(r.Body, &l); err != nil || r.Status != 200 {
			t.Fatalf("%s: %d %s", tt.query, r.Status, r.Body)
		}
		if len(l.Games) < tt.min {
			t.Errorf("%s: %d games, want at least %d", tt.query, len(l.Games), tt.min)
		}
		for _, g := range l.Games {
			if !tt.check(g) {
				t.Errorf("%s: game %+v does not match", tt.query, g)
			}
		}
	}
}

func TestListingCaching(t *testing.T) {
	s := startServer(t, nil)
	for _, path := range []string{"/api/games", "/api/games/1", "/games", "/games/1"} {
		r := do(t, "GET", s.URL+path, "")
		etag := r.Header.Get("ETag")
		if r.Status != 200 || etag == "" || r.Header.Get("Cache-Control") != "public, max-age=2" {
			t.Fatalf("%s: %d, ETag %q, Cache-Control %q", path, r.Status, etag, r.Header.Get("Cache-Control"))
		}
		nm := do(t, "GET", s.URL+path, "", "If-None-Match", etag)
		if nm.Status != http.StatusNotModified || len(nm.Body) != 0 {
			t.Errorf("%s with If-None-Match: %d (%d bytes), want 304 empty", path, nm.Status, len(nm.Body))
		}
		other := do(t, "GET", s.URL+path, "", "If-None-Match", `"other"`)
		if other.Status != 200 {
			t.Errorf("%s with a stale ETag: %d, want 200", path, other.Status)
		}
	}
}

func TestPingAndMetrics(t *testing.T) {
	s := startServer(t, nil)
	r := do(t, "GET", s.URL+"/ping", "")
	if r.Status != 200 || string(r.Body) != "pong\n" {
		t.Fatalf("/ping: %d %q", r.Status, r.Body)
	}
	do(t, "GET", s.URL+"/api/games/1", "")
	m := do(t, "GET", s.URL+"/metrics", "")
	for _, want := range []string{
		`podium_origin_http_requests_total{code="200",method="GET",route="GET /api/games/{id}"}`,
		`podium_origin_db_up{addr=`,
		`podium_origin_db_reads_total{target="replica"}`,
		`podium_origin_db_query_duration_seconds_count{op="get_game"}`,
		`go_sql_open_connections{db_name="primary"}`,
		`go_sql_in_use_connections{db_name="replica1"}`,
	} {
		if !strings.Contains(string(m.Body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestRetryClassification(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&mysql.MySQLError{Number: 1213, Message: "Deadlock found"}, "deadlock"},
		{fmt.Errorf("wrapped: %w", &mysql.MySQLError{Number: 1205}), "lock_wait_timeout"},
		{mysql.ErrInvalidConn, "connection"},
		{&mysql.MySQLError{Number: 1927, Message: "Connection was killed"}, "connection"},
		{&mysql.MySQLError{Number: 1062, Message: "Duplicate entry"}, ""},
		{&mysql.MySQLError{Number: 3819, Message: "Check constraint failed"}, ""},
		{context.DeadlineExceeded, ""},
	} {
		if got := retryReason(tt.err); got != tt.want {
			t.Errorf("retryReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestValidGTID(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"0-1-42", true}, {"0-1-42,1-2-7", true}, {"", false}, {"0-1", false}, {"0-1-42;", false},
		{"0-1-42, 1-2-7", false}, {"a-b-c", false}, {strings.Repeat("0-1-1,", 20) + "0-1-1", false},
	} {
		if got := validGTID(tt.in); got != tt.want {
			t.Errorf("validGTID(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestAccessLogSampling(t *testing.T) {
	tests := []struct {
		name   string
		all    bool
		sample float64
		status int
		path   string
		roll   float64
		want   bool
	}{
		{"5xx always", false, 0, 503, "/api/games", 0.99, true},
		{"503 ping is the drain, logged on its transition", false, 1, 503, "/ping", 0, false},
		{"success, no sampling", false, 0, 200, "/api/games", 0, false},
		{"success, -access-log", true, 0, 200, "/api/games", 0.99, true},
		{"success inside the sample", false, 0.1, 200, "/api/games", 0.05, true},
		{"success outside the sample", false, 0.1, 200, "/api/games", 0.5, false},
		{"4xx sampled like success", false, 0.1, 404, "/api/games/0", 0.5, false},
	}
	for _, tt := range tests {
		s := &Server{cfg: Config{AccessLog: tt.all, AccessLogSample: tt.sample}}
		if got := s.logRequest(tt.status, tt.path, tt.roll); got != tt.want {
			t.Errorf("%s: logRequest = %v, want %v", tt.name, got, tt.want)
		}
	}
}
