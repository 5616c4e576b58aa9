package origin

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// queued is how many purchases of game wait in s's lanes for a batch.
func queued(s *testServer, game int64) int {
	l := s.db.sale.lane(game)
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.pending {
		if r.p.GameID == game {
			n++
		}
	}
	return n
}

// waitQueued waits until n purchases of game wait for a batch. The batch
// before them is stuck on a row lock the test holds, so the count only
// grows: the wait ends on that event, or fails after 30 s.
func waitQueued(t *testing.T, s *testServer, game int64, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for queued(s, game) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d purchases of game %d queued, want %d", queued(s, game), game, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// holdGame locks game's row in a transaction of the test's own, so that the
// batch that reaches it waits and the next batch gathers behind it.
func holdGame(t *testing.T, game int64) *sql.Tx {
	t.Helper()
	lock, err := tc.primaryDB.Begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Rollback() }) //nolint:errcheck
	if _, err := lock.Exec("SELECT remaining FROM games WHERE id = ? FOR UPDATE", game); err != nil {
		t.Fatal(err)
	}
	return lock
}

// histogramCounts returns the sample count of h and how many samples were
// at least min.
func histogramCounts(t *testing.T, h prometheus.Histogram, min float64) (total, atLeast uint64) {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	total = m.GetHistogram().GetSampleCount()
	var below uint64
	for _, b := range m.GetHistogram().GetBucket() {
		if b.GetUpperBound() < min {
			below = b.GetCumulativeCount()
		}
	}
	return total, total - below
}

// A batch holds every kind of request at once: bad input, each
// Idempotency-Key rule, the limits, and good buys. Each gets the answer it
// would get alone, and no bad one fails a good one.
func TestBatchAnswersEachBuyerOnItsOwn(t *testing.T) {
	const keysPerHour = 3
	s := startServer(t, func(c *Config) { c.IdempotencyKeysPerHour = keysPerHour })
	game := createGame(t, 40)
	buyURL := fmt.Sprintf("%s/api/games/%d/buy", s.URL, game)
	key := func(k string) string { return fmt.Sprintf("g%d-%s", game, k) }
	// The buyers are this run's own: the keys-per-hour bound counts an
	// email's keys across games, and across runs under -count.
	at := fmt.Sprintf("@g%d.example.com", game)

	// Stored before the batch: a sale to replay, a buyer at the key bound,
	// a buyer at the seat limit.
	stored := buyWithKey(t, s.URL, game, 2, "stored"+at, key("stored"))
	if stored.Status != http.StatusCreated {
		t.Fatalf("stored sale: %d %s", stored.Status, stored.Body)
	}
	for i := range keysPerHour {
		if r := buyWithKey(t, s.URL, game, 1, "busy"+at, key(fmt.Sprintf("busy-%d", i))); r.Status != http.StatusCreated {
			t.Fatalf("busy key %d: %d %s", i, r.Status, r.Body)
		}
	}
	if r := buyAPIAs(t, s.URL, game, int(DefaultMaxPerBuyer), "full"+at); r.Status != http.StatusCreated {
		t.Fatalf("buyer to the limit: %d %s", r.Status, r.Body)
	}
	for i := range keysPerHour - 1 {
		if r := buyWithKey(t, s.URL, game, 1, "some"+at, key(fmt.Sprintf("some-%d", i))); r.Status != http.StatusCreated {
			t.Fatalf("some key %d: %d %s", i, r.Status, r.Body)
		}
	}
	// 40 - 2 - 3 - 8 - 2 = 25 seats left.

	lock, blocker := startBlocker(t, s, game)

	type req struct {
		name, body, key string
		ctype           string
		status          int
		want            string // substring of the body
		replayOf        *response
	}
	// The first 19 are refused before they join a batch.
	const early = 19
	json := "application/json"
	reqs := []req{
		// Every case of TestBuyBadInput that reaches the buy handler.
		{"invalid JSON", `{"quantity": 1,`, "", json, 400, "invalid JSON", nil},
		{"not an object", `[1, 2]`, "", json, 400, "invalid JSON", nil},
		{"empty body", ``, "", json, 400, "empty body", nil},
		{"two objects", `{"quantity": 1, "email": "a@example.com"} {}`, "", json, 400, "exactly one object", nil},
		{"unknown field", `{"quantity": 1, "email": "a@example.com", "seat": "A1"}`, "", json, 400, `unknown field`, nil},
		{"quantity as string", `{"quantity": "1", "email": "a@example.com"}`, "", json, 400, `must be an integer`, nil},
		{"quantity fractional", `{"quantity": 1.5, "email": "a@example.com"}`, "", json, 400, `must be an integer`, nil},
		{"quantity missing", `{"email": "a@example.com"}`, "", json, 422, "quantity: required", nil},
		{"quantity zero", `{"quantity": 0, "email": "a@example.com"}`, "", json, 422, "1..8", nil},
		{"quantity negative", `{"quantity": -3, "email": "a@example.com"}`, "", json, 422, "1..8", nil},
		{"quantity above the per-order maximum", `{"quantity": 9, "email": "a@example.com"}`, "", json, 422, "1..8", nil},
		{"email missing", `{"quantity": 1}`, "", json, 422, "email: required", nil},
		{"email without at", `{"quantity": 1, "email": "fan.example.com"}`, "", json, 422, "not an email address", nil},
		{"email with display name", `{"quantity": 1, "email": "Fan <fan@example.com>"}`, "", json, 422, "not an email address", nil},
		{"email without domain dot", `{"quantity": 1, "email": "fan@localhost"}`, "", json, 422, "domain name", nil},
		{"email too long", `{"quantity": 1, "email": "` + strings.Repeat("a", 250) + `@example.com"}`, "", json, 422, "254", nil},
		{"body too large", `{"quantity": 1, "email": "a@example.com", "x": "` + strings.Repeat("x", 5000) + `"}`, "", json, 413, "too large", nil},
		{"form content type", `quantity=1&email=a@example.com`, "", "application/x-www-form-urlencoded", 415, "application/json", nil},
		{"bad idempotency key", `{"quantity": 1, "email": "a@example.com"}`, "has space", json, 400, "Idempotency-Key", nil},
		// Every Idempotency-Key rule.
		// The mismatched use first: the genuine retry after it in the same
		// batch is still answered from the stored row, not refused as a
		// duplicate of the mismatch.
		{"stored key, other quantity", `{"quantity": 1, "email": "stored@example.com"}`, key("stored"), json, 422, "different request", nil},
		{"replay of a stored key", `{"quantity": 2, "email": "stored@example.com"}`, key("stored"), json, 201, "", &stored},
		{"stored key, same email in capitals", `{"quantity": 2, "email": "STORED@example.com"}`, key("stored"), json, 422, "different request", nil},
		{"stored key, other email", `{"quantity": 1, "email": "other@example.com"}`, key("stored"), json, 201, `"email":"other@example.com"`, nil},
		{"new key", `{"quantity": 1, "email": "dup@example.com"}`, key("dup"), json, 201, `"email":"dup@example.com"`, nil},
		{"new key again in the same batch", `{"quantity": 1, "email": "dup@example.com"}`, key("dup"), json, 201, "", nil}, // replay of the one above
		{"new key again, other body", `{"quantity": 2, "email": "dup@example.com"}`, key("dup"), json, 422, "different request", nil},
		{"key past the hourly bound", `{"quantity": 1, "email": "busy@example.com"}`, key("busy-new"), json, 429, "too many Idempotency-Keys", nil},
		{"the last key under the bound", `{"quantity": 1, "email": "some@example.com"}`, key("some-new-1"), json, 201, "", nil},
		{"a key past the bound within the batch", `{"quantity": 1, "email": "some@example.com"}`, key("some-new-2"), json, 429, "too many Idempotency-Keys", nil},
		// The limits.
		{"buyer at the seat limit", `{"quantity": 1, "email": "full@example.com"}`, "", json, 409, "limit per buyer", nil},
		{"buyer past the seat limit within the batch", `{"quantity": 5, "email": "Twice@example.com"}`, "", json, 201, "", nil},
		{"same buyer otherwise spelled", `{"quantity": 5, "email": "twice@EXAMPLE.com"}`, "", json, 409, "limit per buyer", nil},
		{"more than is left", `{"quantity": 8, "email": "big@example.com"}`, "", json, 201, "", nil},
	}
	// Good buys around them: 25 - 1 (blocker) - 1 (other) - 1 (dup) - 1 (some) - 5 - 8 = 8 left for them, 4 asked.
	for i := range 4 {
		reqs = append(reqs, req{fmt.Sprintf("good %d", i), fmt.Sprintf(`{"quantity": 1, "email": "good%d@example.com"}`, i), "", json, 201, `"quantity":1`, nil})
	}
	// Last in the batch, so the seats left are known: 8 - 4 = 4.
	reqs = append(reqs, req{"over-asking at the end", `{"quantity": 5, "email": "late@example.com"}`, key("late"), json, 409, "5 requested, 4 left", nil})

	for i := range reqs {
		for _, f := range []*string{&reqs[i].body, &reqs[i].want} {
			*f = strings.ReplaceAll(*f, "@example.com", at)
			*f = strings.ReplaceAll(*f, "@EXAMPLE.com", strings.ToUpper(at))
		}
	}

	answers := make([]response, len(reqs))
	var wg sync.WaitGroup
	joined := 0
	for i, rq := range reqs {
		headers := []string{"X-Request-ID", fmt.Sprintf("batch-%d", i)}
		if rq.ctype != "" {
			headers = append(headers, "Content-Type", rq.ctype)
		}
		if rq.key != "" {
			headers = append(headers, "Idempotency-Key", rq.key)
		}
		if i < early {
			// Refused before it joins a batch: its answer is its event.
			answers[i] = do(t, "POST", buyURL, rq.body, headers...)
			continue
		}
		wg.Go(func() { answers[i] = do(t, "POST", buyURL, rq.body, headers...) })
		// In arrival order: each joins the queue before the next is sent.
		joined++
		waitQueued(t, s, game, joined)
	}
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if r := <-blocker; r.Status != http.StatusCreated {
		t.Fatalf("the first buyer: %d %s", r.Status, r.Body)
	}
	for i, rq := range reqs {
		r := answers[i]
		if r.Status != rq.status || !bytes.Contains(r.Body, []byte(rq.want)) {
			t.Errorf("%s: %d %s, want %d containing %q", rq.name, r.Status, r.Body, rq.status, rq.want)
		}
		if rq.replayOf != nil && (!bytes.Equal(r.Body, rq.replayOf.Body) || r.Header.Get("Idempotency-Replayed") != "true") {
			t.Errorf("%s: %s replayed=%q, want %s replayed", rq.name, r.Body, r.Header.Get("Idempotency-Replayed"), rq.replayOf.Body)
		}
	}
	// The in-batch duplicate is a replay of the first use of its key.
	first, dup := answers[23], answers[24]
	if !bytes.Equal(first.Body, dup.Body) || dup.Header.Get("Idempotency-Replayed") != "true" || first.Header.Get("Idempotency-Replayed") != "" {
		t.Errorf("duplicate key in one batch: %s and %s (replayed %q), want the second a replay of the first",
			first.Body, dup.Body, dup.Header.Get("Idempotency-Replayed"))
	}
	if n := metricValue(t, s.m.batchSplits); n != 0 {
		t.Errorf("%v batches split: no request here is one the database refuses", n)
	}
	total, big := histogramCounts(t, s.m.batchSize, float64(joined))
	if big < 1 {
		t.Errorf("batch sizes: %d batches, none of %d or more requests", total, joined)
	}
	// 2 + 3 + 8 + 2 before; 1 + 1 + 1 + 1 + 5 + 8 + 4 in the batches.
	const wantSold = 2 + 3 + 8 + 2 + 1 + 1 + 1 + 1 + 5 + 8 + 4
	if remaining, sold, _, _ := gameState(t, game); sold != wantSold || remaining != 40-wantSold {
		t.Errorf("remaining %d sold %d, want %d and %d", remaining, sold, 40-wantSold, wantSold)
	}
	if got := buyerHolds(t, game, "twice"+at); got != 5 {
		t.Errorf("twice@ holds %d, want 5", got)
	}
	for _, buyer := range []string{"busy" + at, "some" + at} {
		var keys int
		if err := tc.primaryDB.QueryRow("SELECT COUNT(*) FROM idempotency_keys WHERE buyer = ?", buyer).Scan(&keys); err != nil || keys != keysPerHour {
			t.Errorf("%s has %d keys stored (%v), want %d: a 429 stores none", buyer, keys, err, keysPerHour)
		}
	}
}

// Buyers of one game are served in arrival order: with fewer seats than
// buyers, the first to arrive get them.
func TestBatchServesInArrivalOrder(t *testing.T) {
	s := startServer(t, nil)
	const seats, buyers = 6, 15
	game := createGame(t, seats+1)
	buys := make([]saleBuy, buyers)
	for i := range buys {
		buys[i] = saleBuy{game, 1, fmt.Sprintf("fan%02d@example.com", i), http.StatusConflict}
		if i < seats {
			buys[i].want = http.StatusCreated
		}
	}
	buyBehindBlocker(t, s, game, buys)
}

// buyBehindBlocker sends buys one after another, each once the one before
// has joined its lane, behind a blocker on game's row (startBlocker), so
// that they gather into one batch; then lets the blocker go and checks
// each answer's status, and each sale's order row.
func buyBehindBlocker(t *testing.T, s *testServer, game int64, buys []saleBuy) []response {
	t.Helper()
	lock, blocker := startBlocker(t, s, game)
	answers := make([]response, len(buys))
	var wg sync.WaitGroup
	for i, b := range buys {
		wg.Go(func() { answers[i] = buyAPIAs(t, s.URL, b.game, b.qty, b.email) })
		waitQueued(t, s, b.game, countGame(buys[:i+1], b.game))
	}
	lock.Rollback() //nolint:errcheck
	wg.Wait()
	if r := <-blocker; r.Status != http.StatusCreated {
		t.Fatalf("first buyer: %d %s", r.Status, r.Body)
	}
	for i, r := range answers {
		b := buys[i]
		if r.Status != b.want {
			t.Errorf("buy %d in arrival order (%d × game %d by %s): %d %s, want %d", i, b.qty, b.game, b.email, r.Status, r.Body, b.want)
		}
		if r.Status == http.StatusCreated {
			checkOrder(t, r.Body)
		}
	}
	return answers
}

// startBlocker locks game's row, then buys one seat of it, and returns
// once that purchase's batch waits on the lock: every purchase of the game
// after it gathers into the next batch until the test lets go of the lock.
func startBlocker(t *testing.T, s *testServer, game int64) (*sql.Tx, <-chan response) {
	t.Helper()
	lock := holdGame(t, game)
	blocker := make(chan response, 1)
	go func() {
		r, err := doErr("POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, game), `{"quantity": 1, "email": "first@example.com"}`, "Content-Type", "application/json")
		if err != nil {
			r = response{Status: -1, Body: []byte(err.Error())}
		}
		blocker <- r
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		tc.primaryDB.QueryRow(`SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE games SET remaining%' AND INFO LIKE ?`,
			fmt.Sprintf("%%WHERE id = %d %%", game)).Scan(&n) //nolint:errcheck // 0 on error: asked again
		if n > 0 {
			return lock, blocker
		}
		if time.Now().After(deadline) {
			t.Fatal("the first purchase never reached the game's row lock")
		}
		time.Sleep(time.Millisecond)
	}
}

// primaryStatus reads counters of the primary's SHOW GLOBAL STATUS.
func primaryStatus(t *testing.T, names ...string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	rows, err := tc.primaryDB.Query("SHOW GLOBAL STATUS WHERE Variable_name IN ('" + strings.Join(names, "','") + "')")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var v int64
		if err := rows.Scan(&name, &v); err != nil {
			t.Fatal(err)
		}
		out[name] = v
	}
	return out
}

// Issue 16: a sold-out game's crowd does not reach the primary. Once a
// batch has seen the game without a seat, purchases of it are refused from
// memory (no key), or after a replica read of the key; the primary commits
// and updates nothing for them, and a key used before the sell-out still
// replays its sale.
func TestSoldOutCostsThePrimaryNothing(t *testing.T) {
	s := startServer(t, func(c *Config) { c.SoldOutTTL = time.Hour })
	game := createGame(t, 2)
	sale := buyWithKey(t, s.URL, game, 2, "early@example.com", fmt.Sprintf("g%d-early", game))
	if sale.Status != http.StatusCreated {
		t.Fatalf("sale: %d %s", sale.Status, sale.Body)
	}
	// The batch that finds the game empty marks it.
	if r := buyAPIAs(t, s.URL, game, 1, "late@example.com"); r.Status != http.StatusConflict {
		t.Fatalf("first refusal: %d %s", r.Status, r.Body)
	}
	counters := []string{"Com_update", "Com_commit", "Com_insert", "Com_rollback"}
	before := primaryStatus(t, counters...)
	const crowd, keyed = 2000, 200
	answers := make([]response, crowd)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 32 {
		wg.Go(func() {
			for i := range work {
				body := fmt.Sprintf(`{"quantity": 1, "email": "crowd%d@example.com"}`, i)
				h := []string{"Content-Type", "application/json"}
				if i < keyed {
					h = append(h, "Idempotency-Key", fmt.Sprintf("g%d-crowd-%d", game, i))
				}
				r, err := doErr("POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, game), body, h...)
				if err != nil {
					r = response{Status: -1, Body: []byte(err.Error())}
				}
				answers[i] = r
			}
		})
	}
	for i := range crowd {
		work <- i
	}
	close(work)
	wg.Wait()
	replay := buyWithKey(t, s.URL, game, 2, "early@example.com", fmt.Sprintf("g%d-early", game))
	mismatch := buyWithKey(t, s.URL, game, 1, "early@example.com", fmt.Sprintf("g%d-early", game))
	after := primaryStatus(t, counters...)

	for i, r := range answers {
		var e errorBody
		if r.Status != http.StatusConflict || json.Unmarshal(r.Body, &e) != nil || e.Remaining == nil || *e.Remaining != 0 || !strings.Contains(e.Error, "sold out") {
			t.Fatalf("crowd buyer %d: %d %s, want 409 sold out, 0 remaining", i, r.Status, r.Body)
		}
	}
	if replay.Status != http.StatusCreated || !bytes.Equal(replay.Body, sale.Body) || replay.Header.Get("Idempotency-Replayed") != "true" {
		t.Errorf("replay of a sale from before the sell-out: %d %s, want %s replayed", replay.Status, replay.Body, sale.Body)
	}
	if mismatch.Status != http.StatusUnprocessableEntity {
		t.Errorf("the key of a sale from before the sell-out, with another body: %d %s, want 422", mismatch.Status, mismatch.Body)
	}
	var lookups dto.Metric
	if err := s.m.keyLookupSize.Write(&lookups); err != nil {
		t.Fatal(err)
	}
	if got := lookups.GetHistogram().GetSampleSum(); got != keyed+2 {
		t.Errorf("%v keys looked up, want %d", got, keyed+2)
	}
	for _, c := range counters {
		if d := after[c] - before[c]; d*100 >= crowd {
			t.Errorf("%s on the primary rose by %d during a crowd of %d on a sold-out game, want under 1%%", c, d, crowd)
		}
	}
	for label, want := range map[string]float64{"no_key": crowd - keyed, "new_key": keyed, "stored_key": 2} {
		if got := metricValue(t, s.m.soldOutAnswers.WithLabelValues(label)); got != want {
			t.Errorf("sold-out short circuits with %s: %v, want %v", label, got, want)
		}
	}
	if remaining, sold, _, _ := gameState(t, game); remaining != 0 || sold != 2 {
		t.Errorf("remaining %d sold %d, want 0 and 2", remaining, sold)
	}
	m := do(t, "GET", s.URL+"/metrics", "")
	for _, want := range []string{
		fmt.Sprintf(`podium_origin_sold_out_short_circuits_total{key="no_key"} %d`, crowd-keyed),
		`podium_origin_purchase_batch_size_bucket{le="1"} 2`,
		`podium_origin_purchase_batch_size_count 2`,
		`podium_origin_purchase_batch_splits_total 0`,
		`podium_origin_db_query_duration_seconds_count{op="purchase_batch"} 2`,
	} {
		if !strings.Contains(string(m.Body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// The sold-out mark lapses: seats an operator adds by hand are sold again
// once SoldOutTTL has passed.
func TestSoldOutMarkLapses(t *testing.T) {
	s := startServer(t, func(c *Config) { c.SoldOutTTL = time.Hour })
	game := createGame(t, 1)
	if r := buyAPIAs(t, s.URL, game, 1, "a@example.com"); r.Status != http.StatusCreated {
		t.Fatalf("sale: %d %s", r.Status, r.Body)
	}
	if r := buyAPIAs(t, s.URL, game, 1, "b@example.com"); r.Status != http.StatusConflict {
		t.Fatalf("after the sell-out: %d %s", r.Status, r.Body)
	}
	v, ok := s.db.sale.soldOut.Load(game)
	if !ok {
		t.Fatal("the batch that found no seat did not mark the game")
	}
	mark := v.(soldOutMark)
	if left := time.Until(mark.until); left < 59*time.Minute || left > time.Hour {
		t.Errorf("the mark lasts %s more, want SoldOutTTL (1h)", left)
	}
	if _, err := tc.primaryDB.Exec("UPDATE games SET capacity = capacity + 1, remaining = remaining + 1 WHERE id = ?", game); err != nil {
		t.Fatal(err)
	}
	// Inside the mark the answer stays 409, from memory.
	if r := buyAPIAs(t, s.URL, game, 1, "c@example.com"); r.Status != http.StatusConflict {
		t.Fatalf("inside the mark: %d %s", r.Status, r.Body)
	}
	// The hour passes.
	mark.until = time.Now().Add(-time.Millisecond)
	s.db.sale.soldOut.Store(game, mark)
	if r := buyAPIAs(t, s.URL, game, 1, "d@example.com"); r.Status != http.StatusCreated {
		t.Fatalf("after the mark lapsed: %d %s, want the added seat sold", r.Status, r.Body)
	}
	if remaining, sold, _, _ := gameState(t, game); remaining != 0 || sold != 2 {
		t.Errorf("remaining %d sold %d, want 0 and 2", remaining, sold)
	}
}

// A request the database refuses (here a CHECK the test adds, standing for
// any value that passes validation but not the schema) fails its batch;
// the batch is then split, and only that request fails.
func TestBatchSplitsAroundARequestTheDatabaseRefuses(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 20)
	admin, _, err := openDB(tc.migrate, 1, Config{}.withDefaults(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	poison := fmt.Sprintf("poison%d@example.com", game)
	if _, err := admin.Exec(fmt.Sprintf("ALTER TABLE tickets ADD CONSTRAINT test_poison CHECK (email <> '%s')", poison)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec("ALTER TABLE tickets DROP CONSTRAINT test_poison"); err != nil {
			t.Errorf("dropping the test constraint: %v", err)
		}
	})
	buyBehindBlocker(t, s, game, []saleBuy{
		{game, 2, "good0@example.com", http.StatusCreated},
		{game, 2, poison, http.StatusServiceUnavailable},
		{game, 2, "good1@example.com", http.StatusCreated},
		{game, 2, "good2@example.com", http.StatusCreated},
	})
	if n := metricValue(t, s.m.batchSplits); n != 1 {
		t.Errorf("%v batches split, want 1", n)
	}
	if remaining, sold, orders, _ := gameState(t, game); sold != 7 || orders != 4 || remaining != 13 {
		t.Errorf("remaining %d, sold %d in %d orders; want 13, 7 in 4", remaining, sold, orders)
	}
}

// Games share a lane and so a batch: one transaction takes the seats of
// all, and when one of them has too few left, the batch reads every row
// under its lock and hands the seats out per game, in arrival order.
func TestBatchOfSeveralGames(t *testing.T) {
	s := startServer(t, func(c *Config) { c.PurchaseLanes = 1; c.MaxPerBuyer = 4; c.SoldOutTTL = time.Hour })
	plenty, scarce, other := createGame(t, 100), createGame(t, 3), createGame(t, 50)

	// Everything fits: one fast batch over two games, one buyer refused
	// for the limit (their seats are given back).
	type buy = saleBuy
	buyBehindBlocker(t, s, plenty, []buy{
		{plenty, 3, "a@example.com", 201},
		{other, 4, "b@example.com", 201},
		{plenty, 2, "A@example.com", 409}, // a@ would hold 5 > 4
		{other, 1, "c@example.com", 201},
	})
	for _, g := range []struct {
		id              int64
		remaining, sold int64
	}{{plenty, 96, 4}, {other, 45, 5}} {
		if remaining, sold, _, _ := gameState(t, g.id); remaining != g.remaining || sold != g.sold {
			t.Errorf("game %d: remaining %d sold %d, want %d and %d", g.id, remaining, sold, g.remaining, g.sold)
		}
	}

	// The scarce game cannot give what the batch asks: the slow path.
	// And the orders' ids are read back by token, as on a primary whose
	// multi-row INSERTs do not number rows consecutively.
	s.db.idsByToken.Store(true)
	buyBehindBlocker(t, s, plenty, []buy{
		{scarce, 1, "d@example.com", 201},
		{plenty, 2, "e@example.com", 201},
		{scarce, 2, "f@example.com", 201},
		{scarce, 1, "g@example.com", 409}, // none left
		{plenty, 4, "h@example.com", 201},
	})
	for _, g := range []struct {
		id              int64
		remaining, sold int64
	}{{plenty, 89, 11}, {scarce, 0, 3}, {other, 45, 5}} {
		if remaining, sold, _, _ := gameState(t, g.id); remaining != g.remaining || sold != g.sold {
			t.Errorf("game %d: remaining %d sold %d, want %d and %d", g.id, remaining, sold, g.remaining, g.sold)
		}
	}
	if _, ok := s.db.sale.soldOut.Load(scarce); !ok {
		t.Error("the scarce game, left without a seat, is not marked sold out")
	}
	if _, ok := s.db.sale.soldOut.Load(plenty); ok {
		t.Error("the plentiful game is marked sold out")
	}
	if total, big := histogramCounts(t, s.m.batchSize, 4); big != 2 {
		t.Errorf("%d batches, %d of 4 or more requests; want 2 such", total, big)
	}
}

// saleBuy is one purchase of a test batch and the status it should get.
type saleBuy struct {
	game  int64
	qty   int
	email string
	want  int
}

// countGame is how many of buys are of game.
func countGame(buys []saleBuy, game int64) int {
	n := 0
	for _, b := range buys {
		if b.game == game {
			n++
		}
	}
	return n
}

// checkOrder checks a 201 body against the order row its order_id names.
func checkOrder(t *testing.T, body []byte) {
	t.Helper()
	var o Order
	if err := json.Unmarshal(body, &o); err != nil {
		t.Fatalf("201 body %s: %v", body, err)
	}
	var game int64
	var email string
	var qty int
	if err := tc.primaryDB.QueryRow("SELECT game_id, email, quantity FROM tickets WHERE id = ?", o.OrderID).Scan(&game, &email, &qty); err != nil {
		t.Fatalf("order %d of answer %s: %v", o.OrderID, body, err)
	}
	if game != o.GameID || email != o.Email || qty != o.Quantity {
		t.Errorf("answer %s names order %d, which is %d × game %d for %s", body, o.OrderID, qty, game, email)
	}
}

// The facts query reads what each buyer holds, their keys and their
// earlier attempts by index. On the bench cluster (1,876 games, 88,000
// orders, statistics older than the hot game's orders) the optimizer alone
// took tickets_game for what a buyer holds, reading every order of the hot
// game for every request of every batch: a batch took 220 ms and the sale
// ran at 139 purchases/s instead of 4,751 (origin direct). This small
// database does not lead the optimizer astray on its own, so removing the
// hint alone passes here; the test holds the plan against any rewrite of
// the query (a function or a collation on email would lose the index).
func TestFactsQueryReadsByIndex(t *testing.T) {
	game := createGame(t, 1000)
	batch := []*saleReq{
		{p: purchaseRequest{GameID: game, Quantity: 1, Email: "a@example.com", IdempotencyKey: "k-a"}, token: []byte("0123456789abcdef")},
		{p: purchaseRequest{GameID: game, Quantity: 2, Email: "b@example.com"}, token: []byte("fedcba9876543210")},
	}
	q, args := factsQuery(batch, time.Now())
	rows, err := tc.primaryDB.Query("EXPLAIN "+q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	want := map[string]string{ // table alias: the index it must be read by
		"t": "tickets_game_email",
		"h": "idempotency_keys_buyer_created",
		"k": "PRIMARY",
		"o": "tickets_order_token",
	}
	got := map[string]string{}
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := map[string]string{}
		for i, c := range cols {
			row[c] = vals[i].String
		}
		if _, ok := want[row["table"]]; ok {
			got[row["table"]] = row["key"]
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for table, index := range want {
		if got[table] != index {
			t.Errorf("table %s read by index %q, want %q (EXPLAIN: %v)", table, got[table], index, got)
		}
	}
}

// A batch whose budget runs out is not answered 503 at once: whether its
// COMMIT went through is unknown then, so it gets one more attempt with the
// same order tokens. Here the first attempt waits on a row lock past the
// budget; the lock goes once the origin says it is settling, and the
// buyer gets their seat, sold once.
func TestBatchOutOfTimeIsSettled(t *testing.T) {
	s := startServer(t, func(c *Config) { c.PurchaseTimeout = time.Second })
	game := createGame(t, 10)
	lock := holdGame(t, game)
	answer := make(chan response, 1)
	go func() { answer <- buyAPIAs(t, s.URL, game, 2, "late@example.com") }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.logs.String(), "settling it with the same order tokens") {
		if time.Now().After(deadline) {
			lock.Rollback() //nolint:errcheck
			t.Fatalf("the batch never ran out of time behind the lock; logs:\n%s", s.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	r := <-answer
	if r.Status != http.StatusCreated {
		t.Fatalf("buy after settling: %d %s, want 201", r.Status, r.Body)
	}
	checkOrder(t, r.Body)
	if remaining, sold, orders, _ := gameState(t, game); sold != 2 || remaining != 8 || orders != 1 {
		t.Errorf("remaining %d, sold %d in %d orders; want 8, 2 in 1", remaining, sold, orders)
	}
}

// The ids of a batch's orders follow the step the primary numbers them by
// now, not the one it numbered them by when the origin started: an
// operator changes auto_increment_increment on the running primary, the
// batches' new sessions take it, and every answer still names its own
// order row.
func TestOrderIDsFollowAChangedStep(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 20)
	if r := buyAPIAs(t, s.URL, game, 1, fmt.Sprintf("before%d@example.com", game)); r.Status != http.StatusCreated {
		t.Fatalf("sale before the change: %d %s", r.Status, r.Body)
	}
	was := strings.TrimSpace(clusterCmd(t, "sql", "primary", "SELECT @@GLOBAL.auto_increment_increment"))
	clusterCmd(t, "sql", "primary", "SET GLOBAL auto_increment_increment = 3")
	t.Cleanup(func() { clusterCmd(t, "sql", "primary", "SET GLOBAL auto_increment_increment = "+was) })
	// The sessions the origin holds keep the step they began with; the
	// ones it opens next take the new one.
	s.db.sales.SetMaxIdleConns(0)
	s.db.sales.SetMaxIdleConns(2 * s.db.cfg.PurchaseLanes)
	var buys []saleBuy
	for i := range 4 {
		buys = append(buys, saleBuy{game, 1, fmt.Sprintf("after%d-%d@example.com", i, game), http.StatusCreated})
	}
	answers := buyBehindBlocker(t, s, game, buys) // checks each answer against its order row
	var ids []int64
	for _, r := range answers {
		var o Order
		if err := json.Unmarshal(r.Body, &o); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.OrderID)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i]-ids[i-1] != 3 {
			t.Errorf("order ids %v of one batch, want steps of 3", ids)
			break
		}
	}
}

// A batch that fails for a fault of the server, not of a request (here the
// app user loses INSERT on the database, as a botched grant would do), is
// answered 503 whole and at once: running its requests one by one would
// only multiply the load on a database that fails them all alike.
func TestBatchFailingOnTheServerIsNotSplit(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 20)
	app, err := mysql.ParseDSN(tc.primary)
	if err != nil {
		t.Fatal(err)
	}
	lock, blocker := startBlocker(t, s, game)
	user := fmt.Sprintf("'%s'@'127.0.0.1'", app.User)
	clusterCmd(t, "sql", "primary", "REVOKE INSERT ON "+app.DBName+".* FROM "+user)
	t.Cleanup(func() { clusterCmd(t, "sql", "primary", "GRANT INSERT ON "+app.DBName+".* TO "+user) })
	// A session keeps the database privileges it began with: the blocker's
	// batch still inserts, the batches after it run on new sessions.
	s.db.sales.SetMaxIdleConns(0)
	const buyers = 4
	answers := make([]response, buyers)
	var wg sync.WaitGroup
	for i := range buyers {
		wg.Go(func() { answers[i] = buyAPIAs(t, s.URL, game, 1, fmt.Sprintf("fan%d-%d@example.com", i, game)) })
		waitQueued(t, s, game, i+1)
	}
	lock.Rollback() //nolint:errcheck
	wg.Wait()
	if r := <-blocker; r.Status != http.StatusCreated {
		t.Fatalf("first buyer: %d %s", r.Status, r.Body)
	}
	for i, r := range answers {
		if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
			t.Errorf("buyer %d: %d %s, want 503 with Retry-After", i, r.Status, r.Body)
		}
	}
	if n := metricValue(t, s.m.batchSplits); n != 0 {
		t.Errorf("%v batches split on a fault of the server, want none", n)
	}
	if remaining, sold, orders, _ := gameState(t, game); sold != 1 || orders != 1 || remaining != 19 {
		t.Errorf("remaining %d, sold %d in %d orders; want 19, 1 in 1 (the first buyer's)", remaining, sold, orders)
	}
}
