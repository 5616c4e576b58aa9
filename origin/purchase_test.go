package origin

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// storm sends n purchase attempts for game from workers goroutines and
// returns every answer. quantity(i) gives attempt i's quantity.
func storm(t *testing.T, url string, game int64, n, workers int, quantity func(i int) int) []response {
	t.Helper()
	out := make([]response, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				body := fmt.Sprintf(`{"quantity": %d, "email": "fan%d@example.com"}`, quantity(i), i)
				r, err := doErr("POST", fmt.Sprintf("%s/api/games/%d/buy", url, game), body, "Content-Type", "application/json")
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				out[i] = r
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		t.Fatalf("purchase request failed: %v", err)
	}
	return out
}

func TestPurchasesNeverOversell(t *testing.T) {
	s := startServer(t, nil)
	const seats, attempts, workers = 500, 10000, 200
	game := createGame(t, seats)

	answers := storm(t, s.URL, game, attempts, workers, func(int) int { return 1 })

	var created, conflict int
	tickets := map[string]bool{}
	for i, r := range answers {
		switch r.Status {
		case http.StatusCreated:
			created++
			var o Order
			if err := json.Unmarshal(r.Body, &o); err != nil {
				t.Fatalf("attempt %d: 201 body %q: %v", i, r.Body, err)
			}
			for _, n := range o.Tickets {
				if tickets[n] {
					t.Fatalf("ticket number %s sold twice", n)
				}
				tickets[n] = true
			}
		case http.StatusConflict:
			conflict++
			var e errorBody
			if err := json.Unmarshal(r.Body, &e); err != nil || e.Remaining == nil || *e.Remaining != 0 {
				t.Fatalf("attempt %d: 409 body %q should say 0 seats remain", i, r.Body)
			}
		default:
			t.Fatalf("attempt %d: status %d, body %s", i, r.Status, r.Body)
		}
	}
	if created != seats || conflict != attempts-seats {
		t.Errorf("got %d created and %d conflicts, want %d and %d", created, conflict, seats, attempts-seats)
	}
	if len(tickets) != seats {
		t.Errorf("got %d distinct ticket numbers, want %d", len(tickets), seats)
	}
	remaining, sold, orders, distinct := gameState(t, game)
	if remaining != 0 || sold != seats || orders != seats || distinct != orders {
		t.Errorf("database: remaining %d, sold %d in %d orders (%d distinct ids); want 0, %d in %d", remaining, sold, orders, distinct, seats, seats)
	}
}

func TestPurchasesNeverOversellMixedQuantities(t *testing.T) {
	s := startServer(t, nil)
	const seats, attempts, workers = 500, 3000, 150
	game := createGame(t, seats)
	// Deterministic mix of 1..4 seats per order.
	rng := rand.New(rand.NewPCG(1, 2))
	qty := make([]int, attempts)
	for i := range qty {
		qty[i] = 1 + rng.IntN(4)
	}

	answers := storm(t, s.URL, game, attempts, workers, func(i int) int { return qty[i] })

	var soldByAnswers int64
	for i, r := range answers {
		switch r.Status {
		case http.StatusCreated:
			soldByAnswers += int64(qty[i])
		case http.StatusConflict:
			// A refusal is only right when fewer seats than asked were left.
			var e errorBody
			if err := json.Unmarshal(r.Body, &e); err != nil || e.Remaining == nil || *e.Remaining >= int64(qty[i]) {
				t.Fatalf("attempt %d for %d seats: 409 body %q", i, qty[i], r.Body)
			}
		default:
			t.Fatalf("attempt %d: status %d, body %s", i, r.Status, r.Body)
		}
	}
	remaining, sold, _, _ := gameState(t, game)
	if sold != soldByAnswers || sold+remaining != seats || remaining < 0 {
		t.Fatalf("database sold %d + remaining %d, answers sold %d; want sold+remaining = %d", sold, remaining, soldByAnswers, seats)
	}
	// The storm may leave fewer seats than its smallest late order; buying
	// exactly what is left must succeed and empty the game.
	if remaining > 0 {
		r := do(t, "POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, game), fmt.Sprintf(`{"quantity": %d, "email": "last@example.com"}`, remaining), "Content-Type", "application/json")
		if r.Status != http.StatusCreated {
			t.Fatalf("buying the last %d seats: %d %s", remaining, r.Status, r.Body)
		}
	}
	remaining, sold, _, _ = gameState(t, game)
	if remaining != 0 || sold != seats {
		t.Errorf("after the last order: remaining %d, sold %d; want 0, %d", remaining, sold, seats)
	}
}

func TestIdempotencyKeysConcurrentReplays(t *testing.T) {
	s := startServer(t, nil)
	const keys, copies = 1000, 3
	game := createGame(t, 5000)
	answers := make([][copies]response, keys)
	var wg sync.WaitGroup
	work := make(chan [2]int)
	var failed atomic.Value
	for range 150 {
		wg.Go(func() {
			for w := range work {
				k, c := w[0], w[1]
				body := fmt.Sprintf(`{"quantity": %d, "email": "key%d@example.com"}`, 1+k%3, k)
				r, err := doErr("POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, game), body,
					"Content-Type", "application/json", "Idempotency-Key", fmt.Sprintf("g%d-key-%d", game, k))
				if err != nil {
					failed.CompareAndSwap(nil, err)
					continue
				}
				answers[k][c] = r
			}
		})
	}
	// The copies of one key go out back to back so they are in flight
	// together.
	for k := range keys {
		for c := range copies {
			work <- [2]int{k, c}
		}
	}
	close(work)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}

	var wantSold int64
	for k := range keys {
		first := answers[k][0]
		if first.Status != http.StatusCreated {
			t.Fatalf("key %d: status %d %s", k, first.Status, first.Body)
		}
		replays := 0
		for c := 1; c < copies; c++ {
			a := answers[k][c]
			if a.Status != first.Status || !bytes.Equal(a.Body, first.Body) {
				t.Fatalf("key %d copy %d: %d %s, want byte-identical %d %s", k, c, a.Status, a.Body, first.Status, first.Body)
			}
		}
		for c := range copies {
			if answers[k][c].Header.Get("Idempotency-Replayed") == "true" {
				replays++
			}
		}
		if replays != copies-1 {
			t.Errorf("key %d: %d answers marked replayed, want %d", k, replays, copies-1)
		}
		wantSold += int64(1 + k%3)
	}
	remaining, sold, orders, _ := gameState(t, game)
	if orders != keys || sold != wantSold || remaining != 5000-wantSold {
		t.Errorf("database: %d orders, %d sold, %d remaining; want %d orders, %d sold, %d remaining",
			orders, sold, remaining, keys, wantSold, 5000-wantSold)
	}
}

func TestIdempotencyKeyRules(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 3)
	buy := func(key, body string) response {
		// Keys are scoped to this run's game, so that -count=N passes too.
		key = fmt.Sprintf("g%d-%s", game, key)
		return do(t, "POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, game), body, "Content-Type", "application/json", "Idempotency-Key", key)
	}
	first := buy("rules-1", `{"quantity": 2, "email": "a@example.com"}`)
	if first.Status != http.StatusCreated {
		t.Fatalf("first purchase: %d %s", first.Status, first.Body)
	}
	for _, tt := range []struct {
		name, key, body string
		status          int
		same            bool
	}{
		{"replay", "rules-1", `{"quantity": 2, "email": "a@example.com"}`, http.StatusCreated, true},
		{"replay with other spacing", "rules-1", `{"email":"a@example.com","quantity":2}`, http.StatusCreated, true},
		{"other quantity", "rules-1", `{"quantity": 1, "email": "a@example.com"}`, http.StatusUnprocessableEntity, false},
		// Keys are scoped to the buyer (issue 22.7): another email's use
		// of the key is its own new purchase (here refused for lack of
		// seats), not a mismatch with a@'s; the same buyer spelled
		// otherwise is the same scope, and another body.
		{"other email", "rules-1", `{"quantity": 2, "email": "b@example.com"}`, http.StatusConflict, false},
		{"same email in capitals", "rules-1", `{"quantity": 2, "email": "A@example.com"}`, http.StatusUnprocessableEntity, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := buy(tt.key, tt.body)
			if r.Status != tt.status {
				t.Fatalf("status %d %s, want %d", r.Status, r.Body, tt.status)
			}
			if got := bytes.Equal(r.Body, first.Body); got != tt.same {
				t.Errorf("body identical to the first answer: %v, want %v (%s)", got, tt.same, r.Body)
			}
		})
	}
	// A refusal is stored too: its replay is identical even after seats
	// come back into play, and no seat moves.
	soldOut := buy("rules-2", `{"quantity": 2, "email": "c@example.com"}`)
	if soldOut.Status != http.StatusConflict || !bytes.Contains(soldOut.Body, []byte(`"remaining":1`)) {
		t.Fatalf("over-asking: %d %s, want 409 naming 1 seat left", soldOut.Status, soldOut.Body)
	}
	again := buy("rules-2", `{"quantity": 2, "email": "c@example.com"}`)
	if again.Status != http.StatusConflict || !bytes.Equal(again.Body, soldOut.Body) {
		t.Errorf("replayed refusal: %d %s, want %d %s", again.Status, again.Body, soldOut.Status, soldOut.Body)
	}
	if remaining, sold, _, _ := gameState(t, game); remaining != 1 || sold != 2 {
		t.Errorf("remaining %d sold %d, want 1 and 2", remaining, sold)
	}
}

func TestExpiredIdempotencyKeysAreSwept(t *testing.T) {
	s := startServer(t, func(c *Config) { c.IdempotencyTTL = time.Hour })
	game := createGame(t, 10)
	// Keys unique to this run, so that -count=N passes too.
	oldKey, newKey := fmt.Sprintf("sweep-old-%d", game), fmt.Sprintf("sweep-new-%d", game)
	buy := func(key string) response {
		return do(t, "POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, game), `{"quantity": 1, "email": "a@example.com"}`,
			"Content-Type", "application/json", "Idempotency-Key", key)
	}
	for _, k := range []string{oldKey, newKey} {
		if r := buy(k); r.Status != http.StatusCreated {
			t.Fatalf("%s: %d %s", k, r.Status, r.Body)
		}
	}
	// Each key carries its expiry since issue 22.7: age it with its row.
	if _, err := tc.primaryDB.Exec("UPDATE idempotency_keys SET created_at = created_at - INTERVAL 2 HOUR, expires_at = expires_at - INTERVAL 2 HOUR WHERE idem_key = ?", oldKey); err != nil {
		t.Fatal(err)
	}
	n, err := s.db.sweepKeys(context.Background(), time.Now())
	if err != nil || n < 1 {
		t.Fatalf("sweep deleted %d keys: %v", n, err)
	}
	var left []string
	rows, err := tc.primaryDB.Query("SELECT idem_key FROM idempotency_keys WHERE idem_key IN (?, ?)", oldKey, newKey)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		rows.Scan(&k) //nolint:errcheck
		left = append(left, k)
	}
	rows.Close()
	if len(left) != 1 || left[0] != newKey {
		t.Errorf("keys left after the sweep: %v, want [%s]", left, newKey)
	}
	// The expired key is forgotten: reusing it is a new purchase.
	if r := buy(oldKey); r.Status != http.StatusCreated || r.Header.Get("Idempotency-Replayed") != "" {
		t.Errorf("reused expired key: %d replayed=%q", r.Status, r.Header.Get("Idempotency-Replayed"))
	}
	if _, sold, _, _ := gameState(t, game); sold != 3 {
		t.Errorf("sold %d, want 3", sold)
	}
}

// buyBehindLock holds game's row in a transaction of its own (rolled back
// when the test ends, or earlier by the caller), then starts a purchase of
// quantity seats at base, which waits on that row. The purchase's answer
// arrives on the channel; a transport failure as Status -1.
func buyBehindLock(t *testing.T, base string, game int64, quantity int) (*sql.Tx, <-chan response) {
	t.Helper()
	lock := holdGame(t, game)
	bought := make(chan response, 1)
	go func() {
		body := fmt.Sprintf(`{"quantity": %d, "email": "a@example.com"}`, quantity)
		r, err := doErr("POST", fmt.Sprintf("%s/api/games/%d/buy", base, game), body, "Content-Type", "application/json")
		if err != nil {
			r = response{Status: -1, Body: []byte(err.Error())}
		}
		bought <- r
	}()
	return lock, bought
}

// A purchase whose connection is killed mid-transaction is retried on a new
// connection, and sells once.
func TestPurchaseRetriedAfterLostConnection(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 5)
	// Hold the game's row so that the purchase waits inside its UPDATE.
	lock, bought := buyBehindLock(t, s.URL, game, 2)
	// Find the purchase's session waiting in its UPDATE, and kill it (a
	// user may kill its own sessions).
	var victim int64
	for i := 0; victim == 0; i++ {
		if i > 500 {
			t.Fatal("the purchase never reached its UPDATE")
		}
		err := tc.primaryDB.QueryRow(`SELECT ID FROM information_schema.PROCESSLIST
			WHERE INFO LIKE 'UPDATE games SET remaining%' AND INFO LIKE ? LIMIT 1`, fmt.Sprintf("%%WHERE id = %d %%", game)).Scan(&victim)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if _, err := tc.primaryDB.Exec(fmt.Sprintf("KILL CONNECTION %d", victim)); err != nil {
		t.Fatal(err)
	}
	// The retry queues on the lock again; wait until it does, then let go.
	for i := 0; metricValue(t, s.m.retries.WithLabelValues("connection")) < 1; i++ {
		if i > 500 {
			t.Fatal("the killed purchase was not retried")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	if r := <-bought; r.Status != http.StatusCreated {
		t.Fatalf("purchase after its connection was killed: %d %s", r.Status, r.Body)
	}
	if remaining, sold, orders, _ := gameState(t, game); remaining != 3 || sold != 2 || orders != 1 {
		t.Errorf("remaining %d, sold %d in %d orders; want 3, 2 in 1", remaining, sold, orders)
	}
}

// An attempt whose COMMIT succeeded but whose answer was lost is retried
// with the same order token: the retry returns the committed order and
// takes no more seats.
// orderToken is a fresh order token, as purchase draws one: an order
// token is unique in the database, so a fixed one would find the order of
// an earlier run of the test (-count) instead of selling.
func orderToken() []byte {
	b := make([]byte, 16)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

func TestRetryAfterLostCommitSellsOnce(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 5)
	p := purchaseRequest{GameID: game, Quantity: 2, Email: "a@example.com"}
	token := orderToken()
	first, err := s.db.purchaseOnce(context.Background(), p, token, p.hash())
	if err != nil || first.Status != http.StatusCreated {
		t.Fatalf("first attempt: %+v %v", first, err)
	}
	again, err := s.db.purchaseOnce(context.Background(), p, token, p.hash())
	if err != nil || again.Status != http.StatusCreated || !bytes.Equal(again.Body, first.Body) {
		t.Fatalf("retried attempt: %d %s %v, want the first answer %s", again.Status, again.Body, err, first.Body)
	}
	if remaining, sold, orders, _ := gameState(t, game); remaining != 3 || sold != 2 || orders != 1 {
		t.Errorf("remaining %d, sold %d in %d orders; want 3, 2 in 1", remaining, sold, orders)
	}
}
