package origin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// buyWithKey posts a keyed purchase of quantity seats of game as email.
func buyWithKey(t *testing.T, base string, game int64, quantity int, email, key string) response {
	t.Helper()
	return do(t, "POST", fmt.Sprintf("%s/api/games/%d/buy", base, game), fmt.Sprintf(`{"quantity": %d, "email": %q}`, quantity, email),
		"Content-Type", "application/json", "Idempotency-Key", key)
}

// Issue 22.7: Idempotency-Keys shared one namespace, so a key another buyer
// had used answered 422 (telling the prober the key exists) and two buyers
// whose clients picked the same key could not both buy. A key is scoped to
// the buyer (the email), as Stripe scopes keys to an account: another
// buyer's use of the same key is a purchase of their own, which neither
// reveals nor touches the first buyer's order.
func TestIdempotencyKeysAreScopedPerBuyer(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 20)
	key := fmt.Sprintf("g%d-shared-key", game)
	alice := buyWithKey(t, s.URL, game, 2, "alice@example.com", key)
	if alice.Status != http.StatusCreated {
		t.Fatalf("alice: %d %s", alice.Status, alice.Body)
	}
	// Bob's client picks the same key (or Bob probes for Alice's order).
	bob := buyWithKey(t, s.URL, game, 2, "bob@example.com", key)
	if bob.Status != http.StatusCreated || bob.Header.Get("Idempotency-Replayed") != "" {
		t.Fatalf("bob with alice's key: %d %s replayed=%q; want his own new order", bob.Status, bob.Body, bob.Header.Get("Idempotency-Replayed"))
	}
	var a, b Order
	if json.Unmarshal(alice.Body, &a) != nil || json.Unmarshal(bob.Body, &b) != nil || a.OrderID == b.OrderID || b.Email != "bob@example.com" ||
		bytes.Contains(bob.Body, []byte("alice")) {
		t.Errorf("bob's answer %s must be his own order, not alice's %s", bob.Body, alice.Body)
	}
	// Each replays their own answer, byte for byte.
	for _, tt := range []struct {
		email string
		first response
	}{{"alice@example.com", alice}, {"bob@example.com", bob}} {
		r := buyWithKey(t, s.URL, game, 2, tt.email, key)
		if r.Status != http.StatusCreated || !bytes.Equal(r.Body, tt.first.Body) || r.Header.Get("Idempotency-Replayed") != "true" {
			t.Errorf("%s's replay: %d %s, want their first answer replayed", tt.email, r.Status, r.Body)
		}
	}
	// Within one buyer the rules hold: another body is refused, and the
	// address compares case-insensitively (the buyer is the same).
	if r := buyWithKey(t, s.URL, game, 1, "alice@example.com", key); r.Status != http.StatusUnprocessableEntity {
		t.Errorf("alice, same key, other quantity: %d %s, want 422", r.Status, r.Body)
	}
	if r := buyWithKey(t, s.URL, game, 2, "Alice@Example.com", key); r.Status != http.StatusUnprocessableEntity {
		t.Errorf("alice in capitals, same key: %d %s, want 422 (same buyer, other body)", r.Status, r.Body)
	}
	// Two buyers with one key at once: two orders.
	var wg sync.WaitGroup
	answers := make([]response, 2)
	for i, email := range []string{"carol@example.com", "dave@example.com"} {
		wg.Go(func() { answers[i] = buyWithKey(t, s.URL, game, 1, email, key+"-2") })
	}
	wg.Wait()
	for i, r := range answers {
		if r.Status != http.StatusCreated || r.Header.Get("Idempotency-Replayed") != "" {
			t.Errorf("concurrent buyer %d: %d %s", i, r.Status, r.Body)
		}
	}
	if remaining, sold, orders, _ := gameState(t, game); sold != 6 || orders != 4 || remaining != 14 {
		t.Errorf("remaining %d, sold %d in %d orders; want 14, 6 in 4", remaining, sold, orders)
	}
}

// One buyer may store at most IdempotencyKeysPerHour keys an hour: a new key
// past that is a 429 (stored nowhere, nothing sold) with Retry-After, while
// replays of stored keys, other buyers, and purchases without a key go on.
func TestIdempotencyKeysPerBuyerPerHour(t *testing.T) {
	const perHour = 3
	s := startServer(t, func(c *Config) { c.IdempotencyKeysPerHour = perHour })
	game := createGame(t, 30)
	email := fmt.Sprintf("keys-%d@example.com", game)
	var first response
	for i := range perHour {
		r := buyWithKey(t, s.URL, game, 1, email, fmt.Sprintf("k%d", i))
		if r.Status != http.StatusCreated {
			t.Fatalf("key %d: %d %s", i, r.Status, r.Body)
		}
		if i == 0 {
			first = r
		}
	}
	over := buyWithKey(t, s.URL, game, 1, email, "k-over")
	var e errorBody
	if over.Status != http.StatusTooManyRequests || jsonStrict(over.Body, &e) != nil || e.Code != "idempotency_keys_per_hour" {
		t.Fatalf("key %d in the hour: %d %s, want 429 with code idempotency_keys_per_hour", perHour+1, over.Status, over.Body)
	}
	if ra, err := strconv.Atoi(over.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 3600 {
		t.Errorf("Retry-After %q, want 1..3600 seconds", over.Header.Get("Retry-After"))
	}
	// Bursts of new keys from one buyer cannot get past the bound either.
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() { buyWithKey(t, s.URL, game, 1, email, fmt.Sprintf("burst-%d", i)) })
	}
	wg.Wait()
	if r := buyWithKey(t, s.URL, game, 1, email, "k0"); r.Status != http.StatusCreated || !bytes.Equal(r.Body, first.Body) {
		t.Errorf("replay of a stored key past the bound: %d %s, want the first answer", r.Status, r.Body)
	}
	if r := buyWithKey(t, s.URL, game, 1, "other-"+email, "k-over"); r.Status != http.StatusCreated {
		t.Errorf("another buyer: %d %s", r.Status, r.Body)
	}
	if r := buyAPIAs(t, s.URL, game, 1, email); r.Status != http.StatusCreated {
		t.Errorf("a purchase without a key: %d %s", r.Status, r.Body)
	}
	var stored int
	if err := tc.primaryDB.QueryRow("SELECT COUNT(*) FROM idempotency_keys WHERE buyer = ?", email).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != perHour {
		t.Errorf("%d keys stored for the buyer, want %d", stored, perHour)
	}
	if _, sold, _, _ := gameState(t, game); sold != perHour+2 {
		t.Errorf("sold %d, want %d", sold, perHour+2)
	}
}

// A sale's key is kept IdempotencyTTL; a refusal's, which protects no sale,
// only IdempotencyRefusalTTL. The sweep deletes each when its time is up.
func TestRefusedKeysExpireSooner(t *testing.T) {
	s := startServer(t, func(c *Config) { c.IdempotencyTTL = 24 * time.Hour; c.IdempotencyRefusalTTL = time.Hour })
	game := createGame(t, 1)
	email := fmt.Sprintf("ttl-%d@example.com", game)
	if r := buyWithKey(t, s.URL, game, 1, email, "sold"); r.Status != http.StatusCreated {
		t.Fatalf("sale: %d %s", r.Status, r.Body)
	}
	if r := buyWithKey(t, s.URL, game, 1, email, "refused"); r.Status != http.StatusConflict {
		t.Fatalf("sold out: %d %s", r.Status, r.Body)
	}
	kept := map[string]time.Duration{}
	rows, err := tc.primaryDB.Query("SELECT idem_key, TIMESTAMPDIFF(SECOND, created_at, expires_at) FROM idempotency_keys WHERE buyer = ?", email)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		var sec int64
		if err := rows.Scan(&k, &sec); err != nil {
			t.Fatal(err)
		}
		kept[k] = time.Duration(sec) * time.Second
	}
	rows.Close()
	if kept["sold"] != 24*time.Hour || kept["refused"] != time.Hour {
		t.Fatalf("keys kept %v, want sold 24h and refused 1h", kept)
	}
	n, err := s.db.sweepKeys(t.Context(), time.Now().Add(2*time.Hour))
	if err != nil || n < 1 {
		t.Fatalf("sweep 2h later deleted %d: %v", n, err)
	}
	var left []string
	rows, err = tc.primaryDB.Query("SELECT idem_key FROM idempotency_keys WHERE buyer = ?", email)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		rows.Scan(&k) //nolint:errcheck
		left = append(left, k)
	}
	rows.Close()
	if strings.Join(left, ",") != "sold" {
		t.Errorf("keys left 2h later: %v, want [sold]", left)
	}
}
