package origin

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// buyerHolds reads from the primary how many seats of game an email holds
// (compared as the tickets table compares emails: case-insensitively).
func buyerHolds(t *testing.T, game int64, email string) int64 {
	t.Helper()
	var n int64
	if err := tc.primaryDB.QueryRow("SELECT COALESCE(SUM(quantity), 0) FROM tickets WHERE game_id = ? AND email = ?", game, email).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// concurrentBuys sends one purchase per email in emails, all at once,
// quantity seats each, and returns the answers in order.
func concurrentBuys(t *testing.T, url string, game int64, quantity int, emails []string) []response {
	t.Helper()
	out := make([]response, len(emails))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, email := range emails {
		wg.Go(func() {
			<-start
			r, err := doErr("POST", fmt.Sprintf("%s/api/games/%d/buy", url, game),
				fmt.Sprintf(`{"quantity": %d, "email": %q}`, quantity, email), "Content-Type", "application/json")
			if err != nil {
				r = response{Status: -1, Body: []byte(err.Error())}
			}
			out[i] = r
		})
	}
	close(start)
	wg.Wait()
	return out
}

// Issue 22.2d: nothing stopped one buyer from emptying a game. An email may
// hold at most MaxPerBuyer seats of one game over all its orders, checked
// in the purchase's own transaction: concurrent purchases by one email,
// against the real database, never exceed it.
func TestPerBuyerLimitHoldsUnderConcurrency(t *testing.T) {
	s := startServer(t, nil) // the default limit
	limit := int64(DefaultMaxPerBuyer)
	game := createGame(t, 100)

	// 40 one-seat orders at once by one buyer, in two spellings of the
	// same address.
	emails := make([]string, 40)
	for i := range emails {
		emails[i] = "greedy@example.com"
		if i%2 == 1 {
			emails[i] = "Greedy@Example.COM"
		}
	}
	var sold, refused int64
	for i, r := range concurrentBuys(t, s.URL, game, 1, emails) {
		switch r.Status {
		case http.StatusCreated:
			sold++
		case http.StatusConflict:
			refused++
			var e errorBody
			if err := jsonStrict(r.Body, &e); err != nil || e.Code != "limit_per_buyer" || !strings.Contains(e.Error, fmt.Sprintf("at most %d", limit)) {
				t.Errorf("order %d refused with %s, want code limit_per_buyer naming the limit", i, r.Body)
			}
		default:
			t.Fatalf("order %d: %d %s", i, r.Status, r.Body)
		}
	}
	if sold != limit || refused != 40-limit {
		t.Errorf("one buyer's 40 concurrent orders: %d sold, %d refused; want %d and %d", sold, refused, limit, 40-limit)
	}
	if got := buyerHolds(t, game, "greedy@example.com"); got != limit {
		t.Errorf("the buyer holds %d seats, want %d", got, limit)
	}

	// Bigger orders: the one that would cross the limit is refused, the
	// rest fits exactly, and the seats of a refusal are not taken.
	answers := concurrentBuys(t, s.URL, game, 3, []string{"trio@example.com", "trio@example.com", "trio@example.com"})
	created := 0
	for _, r := range answers {
		if r.Status == http.StatusCreated {
			created++
		} else if r.Status != http.StatusConflict || !bytes.Contains(r.Body, []byte("limit_per_buyer")) {
			t.Fatalf("3-seat order: %d %s", r.Status, r.Body)
		}
	}
	if created != int(limit/3) {
		t.Errorf("%d of three 3-seat orders sold, want %d", created, limit/3)
	}
	rest := limit - int64(created)*3
	if r := buyAPIAs(t, s.URL, game, int(rest), "trio@example.com"); r.Status != http.StatusCreated {
		t.Errorf("the rest of the limit (%d): %d %s", rest, r.Status, r.Body)
	}
	if r := buyAPIAs(t, s.URL, game, 1, "trio@example.com"); r.Status != http.StatusConflict {
		t.Errorf("one past the limit: %d %s, want 409", r.Status, r.Body)
	}
	// Others are not affected.
	if r := buyAPIAs(t, s.URL, game, int(limit), "someone.else@example.com"); r.Status != http.StatusCreated {
		t.Errorf("another buyer: %d %s", r.Status, r.Body)
	}
	remaining, total, _, _ := gameState(t, game)
	if total != 3*limit || remaining != 100-3*limit {
		t.Errorf("remaining %d, sold %d; want %d and %d", remaining, total, 100-3*limit, 3*limit)
	}

	// A refusal with an Idempotency-Key is stored and replayed like any.
	key := fmt.Sprintf("g%d-limit", game)
	first := do(t, "POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, game), `{"quantity": 1, "email": "greedy@example.com"}`,
		"Content-Type", "application/json", "Idempotency-Key", key)
	again := do(t, "POST", fmt.Sprintf("%s/api/games/%d/buy", s.URL, game), `{"quantity": 1, "email": "greedy@example.com"}`,
		"Content-Type", "application/json", "Idempotency-Key", key)
	if first.Status != http.StatusConflict || again.Status != first.Status || !bytes.Equal(again.Body, first.Body) || again.Header.Get("Idempotency-Replayed") != "true" {
		t.Errorf("keyed refusal %d %s, replay %d %s; want the 409 stored and replayed", first.Status, first.Body, again.Status, again.Body)
	}
	if remaining2, _, _, _ := gameState(t, game); remaining2 != remaining {
		t.Errorf("refusals moved seats: remaining %d, want %d", remaining2, remaining)
	}
}

// An order can never be larger than what one buyer may hold, so the per
// order maximum is the smaller of the two, on the API and the form; and the
// limit can be turned off.
func TestPerBuyerLimitConfig(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxPerBuyer = 4 })
	game := createGame(t, 50)
	r := buyAPIAs(t, s.URL, game, 5, "a@example.com")
	if r.Status != http.StatusUnprocessableEntity || !strings.Contains(string(r.Body), "1..4") {
		t.Errorf("5 seats with a limit of 4: %d %s, want 422 saying 1..4", r.Status, r.Body)
	}
	if page := do(t, "GET", fmt.Sprintf("%s/games/%d/buy", s.URL, game), ""); !strings.Contains(string(page.Body), "Tickets (1–4)") {
		t.Errorf("the form does not offer 1–4 tickets:\n%s", page.Body)
	}
	// The form says so in words.
	formURL := fmt.Sprintf("%s/games/%d/buy", s.URL, game)
	form := openBuyForm(t, formURL, "")
	for i, want := range []int{http.StatusCreated, http.StatusConflict} {
		r := form.submit(t, formURL, url.Values{"quantity": {"3"}, "email": {"form@example.com"}})
		if r.Status != want {
			t.Fatalf("form order %d: %d, want %d\n%s", i, r.Status, want, r.Body)
		}
		if want == http.StatusConflict && !strings.Contains(string(r.Body), "One buyer may hold at most 4 tickets for this session") {
			t.Errorf("the form's refusal does not explain the limit:\n%s", r.Body)
		}
	}
	off := startServer(t, func(c *Config) { c.MaxPerBuyer = -1 })
	for i := range 3 {
		if r := buyAPIAs(t, off.URL, game, 10, "bulk@example.com"); r.Status != http.StatusCreated {
			t.Fatalf("order %d with the limit off: %d %s", i, r.Status, r.Body)
		}
	}
	if got := buyerHolds(t, game, "bulk@example.com"); got != 30 {
		t.Errorf("with the limit off one buyer holds %d, want 30", got)
	}
}

func buyAPIAs(t *testing.T, url string, game int64, qty int, email string) response {
	t.Helper()
	return do(t, "POST", fmt.Sprintf("%s/api/games/%d/buy", url, game), fmt.Sprintf(`{"quantity": %d, "email": %q}`, qty, email),
		"Content-Type", "application/json")
}

// An attempt that committed but whose answer was lost is retried with the
// same order token; when that order brought the buyer to the limit, the
// retry must still return the order, not a refusal.
func TestRetryAfterLostCommitAtTheBuyerLimit(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxPerBuyer = 4 })
	game := createGame(t, 10)
	if r := buyAPIAs(t, s.URL, game, 2, "edge@example.com"); r.Status != http.StatusCreated {
		t.Fatalf("first order: %d %s", r.Status, r.Body)
	}
	p := purchaseRequest{GameID: game, Quantity: 2, Email: "edge@example.com"}
	token := orderToken()
	first, err := s.db.purchaseOnce(context.Background(), p, token, p.hash())
	if err != nil || first.Status != http.StatusCreated {
		t.Fatalf("order to the limit: %+v %v", first, err)
	}
	again, err := s.db.purchaseOnce(context.Background(), p, token, p.hash())
	if err != nil || again.Status != http.StatusCreated || !bytes.Equal(again.Body, first.Body) {
		t.Fatalf("retried attempt: %d %s %v, want the committed order %s", again.Status, again.Body, err, first.Body)
	}
	if remaining, sold, orders, _ := gameState(t, game); remaining != 6 || sold != 4 || orders != 2 {
		t.Errorf("remaining %d, sold %d in %d orders; want 6, 4 in 2", remaining, sold, orders)
	}
}
