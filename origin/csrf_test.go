package origin

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Issue 22.2: a form POST from another site bought tickets. Browsers say
// where a request comes from (Sec-Fetch-Site, and Origin on every
// cross-origin POST); a purchase from another site is refused before it is
// read, on the pages and on the API, and nothing is sold.
func TestCrossSitePurchaseIsRefused(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 10)
	pageURL := fmt.Sprintf("%s/games/%d/buy", s.URL, game)
	apiURL := fmt.Sprintf("%s/api/games/%d/buy", s.URL, game)
	form := "quantity=2&email=victim%40example.com"
	order := `{"quantity": 2, "email": "victim@example.com"}`
	for _, tt := range []struct {
		name    string
		url     string
		body    string
		headers []string
	}{
		{"form from another site", pageURL, form, []string{"Content-Type", "application/x-www-form-urlencoded", "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"}},
		{"form from a sibling site", pageURL, form, []string{"Content-Type", "application/x-www-form-urlencoded", "Origin", "https://shop.evil.example", "Sec-Fetch-Site", "same-site"}},
		{"form from an old browser on another site", pageURL, form, []string{"Content-Type", "application/x-www-form-urlencoded", "Origin", "https://evil.example"}},
		{"text/plain form from another site", pageURL, form, []string{"Content-Type", "text/plain", "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"}},
		{"API from another site", apiURL, order, []string{"Content-Type", "application/json", "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"}},
		{"API from an old browser on another site", apiURL, order, []string{"Content-Type", "application/json", "Origin", "https://evil.example"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, "POST", tt.url, tt.body, append(tt.headers, "X-Request-ID", "csrf-1")...)
			if r.Status != http.StatusForbidden {
				t.Fatalf("status %d, want 403:\n%s", r.Status, r.Body)
			}
			if strings.Contains(tt.url, "/api/") {
				var e errorBody
				if jsonStrict(r.Body, &e) != nil || !strings.Contains(e.Error, "another site") || e.RequestID != "csrf-1" {
					t.Errorf("API refusal %s, want a JSON error naming another site", r.Body)
				}
			} else if ct := r.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" || !strings.Contains(string(r.Body), "another site") {
				t.Errorf("page refusal %q:\n%s", ct, r.Body)
			}
		})
	}
	if remaining, sold, _, _ := gameState(t, game); remaining != 10 || sold != 0 {
		t.Fatalf("after cross-site purchases: remaining %d, sold %d; want 10 and 0", remaining, sold)
	}
	// The site's own pages and API clients (which send neither header)
	// still buy.
	if r := do(t, "POST", apiURL, order, "Content-Type", "application/json"); r.Status != http.StatusCreated {
		t.Errorf("API client: %d %s", r.Status, r.Body)
	}
	u, _ := url.Parse(s.URL)
	if r := do(t, "POST", apiURL, order, "Content-Type", "application/json", "Origin", "http://"+u.Host); r.Status != http.StatusCreated {
		t.Errorf("API from the same origin: %d %s", r.Status, r.Body)
	}
	if r := do(t, "POST", apiURL, order, "Content-Type", "application/json", "Sec-Fetch-Site", "same-origin", "Origin", "http://"+u.Host); r.Status != http.StatusCreated {
		t.Errorf("API from this site's page: %d %s", r.Status, r.Body)
	}
}

// A browser can POST JSON-looking bytes to another site without a CORS
// preflight only as text/plain, form types, or no Content-Type at all (a
// fetch with a Blob body). The API takes application/json alone.
func TestBuyAPIRequiresJSONContentType(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 10)
	apiURL := fmt.Sprintf("%s/api/games/%d/buy", s.URL, game)
	order := fmt.Sprintf(`{"quantity": 1, "email": %q}`, fan(game))
	for _, ct := range []string{"", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx", "application/json;;"} {
		headers := []string{}
		if ct != "" {
			headers = append(headers, "Content-Type", ct)
		}
		r := do(t, "POST", apiURL, order, headers...)
		var e errorBody
		if r.Status != http.StatusUnsupportedMediaType || jsonStrict(r.Body, &e) != nil || !strings.Contains(e.Error, "application/json") {
			t.Errorf("Content-Type %q: %d %s, want 415 asking for application/json", ct, r.Status, r.Body)
		}
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON"} {
		if r := do(t, "POST", apiURL, order, "Content-Type", ct); r.Status != http.StatusCreated {
			t.Errorf("Content-Type %q: %d %s, want 201", ct, r.Status, r.Body)
		}
	}
	if remaining, sold, _, _ := gameState(t, game); remaining != 7 || sold != 3 {
		t.Errorf("remaining %d, sold %d; want 7 and 3", remaining, sold)
	}
}

// The buy form's token (formtoken.go): a POST to the form is honoured only
// with a token this site signed for this game and this browser's visitor
// cookie, recently. Anything else gets the form again, filled in, with a
// token that works, and buys nothing. A form rendered by one origin is
// honoured by another of the same cluster.
func TestBuyFormNeedsItsToken(t *testing.T) {
	s := startServer(t, nil)
	other := startServer(t, nil) // a second origin behind the same edge
	game, game2 := createGame(t, 10), createGame(t, 10)
	buyURL := fmt.Sprintf("%s/games/%d/buy", s.URL, game)
	form := openBuyForm(t, buyURL, "")
	visitorID := strings.TrimPrefix(form.Cookie, VisitorCookie+"=")
	someoneElse := openBuyForm(t, buyURL, "")
	sameVisitorOtherGame := openBuyForm(t, fmt.Sprintf("%s/games/%d/buy", s.URL, game2), form.Cookie)
	if sameVisitorOtherGame.Cookie != form.Cookie || someoneElse.Cookie == form.Cookie {
		t.Fatalf("visitor cookies: %q, %q, %q; want the first kept and a new one for a new browser", form.Cookie, sameVisitorOtherGame.Cookie, someoneElse.Cookie)
	}
	key, err := s.forms.keyFor(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tampered := []byte(form.Token)
	tampered[len(tampered)-2] ^= 1
	for _, tt := range []struct {
		name string
		form buyForm
	}{
		{"no token", buyForm{Token: "", Cookie: form.Cookie}},
		{"no visitor cookie", buyForm{Token: form.Token, Cookie: "other=1"}},
		{"another visitor's cookie", buyForm{Token: form.Token, Cookie: someoneElse.Cookie}},
		{"another visitor's token (an attacker's own form)", buyForm{Token: someoneElse.Token, Cookie: form.Cookie}},
		{"the token of another game", buyForm{Token: sameVisitorOtherGame.Token, Cookie: form.Cookie}},
		{"a tampered token", buyForm{Token: string(tampered), Cookie: form.Cookie}},
		{"an expired token", buyForm{Token: signFormToken(key, game, now.Add(-formTokenTTL-time.Minute), visitorID), Cookie: form.Cookie}},
		{"a token from the future", buyForm{Token: signFormToken(key, game, now.Add(time.Hour), visitorID), Cookie: form.Cookie}},
		{"a token signed with another key", buyForm{Token: signFormToken([]byte(strings.Repeat("k", 32)), game, now, visitorID), Cookie: form.Cookie}},
		{"garbage", buyForm{Token: "1.%%%%", Cookie: form.Cookie}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.form.submit(t, buyURL, url.Values{"quantity": {"2"}, "email": {fan(game)}, "form_token": {tt.form.Token}})
			if r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), "expired or did not come from this site") {
				t.Fatalf("%d, want 403 saying the form expired:\n%s", r.Status, r.Body)
			}
			if got := formField(t, r.Body, "form_token"); got == tt.form.Token || !strings.Contains(string(r.Body), `value="`+fan(game)+`"`) {
				t.Errorf("the refusal should give the form back, filled in, with a new token")
			}
			if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", cc)
			}
		})
	}
	if remaining, sold, _, _ := gameState(t, game); remaining != 10 || sold != 0 {
		t.Fatalf("after refused forms: remaining %d, sold %d; want 10 and 0", remaining, sold)
	}
	// The form rendered by one origin, posted to another.
	if r := form.submit(t, fmt.Sprintf("%s/games/%d/buy", other.URL, game), url.Values{"quantity": {"2"}, "email": {fan(game)}}); r.Status != http.StatusCreated {
		t.Fatalf("form from origin 1 posted to origin 2: %d\n%s", r.Status, r.Body)
	}
	// A fan whose form was refused submits the form they got back.
	refused := buyForm{Token: "", Cookie: form.Cookie}.submit(t, buyURL, url.Values{"quantity": {"1"}, "email": {fan(game)}, "form_token": {""}})
	again := buyForm{Token: formField(t, refused.Body, "form_token"), Cookie: form.Cookie}
	if r := again.submit(t, buyURL, url.Values{"quantity": {"1"}, "email": {fan(game)}}); r.Status != http.StatusCreated {
		t.Fatalf("resubmitting the form given back: %d\n%s", r.Status, r.Body)
	}
	if remaining, sold, _, _ := gameState(t, game); remaining != 7 || sold != 3 {
		t.Errorf("remaining %d, sold %d; want 7 and 3", remaining, sold)
	}
}

// With -form-secret, origins that share it honour each other's forms and
// an origin with another secret does not; a short secret is refused at
// start without being echoed.
func TestFormSecretFromConfig(t *testing.T) {
	shared := strings.Repeat("s", 40)
	a := startServer(t, func(c *Config) { c.FormSecret = shared })
	b := startServer(t, func(c *Config) { c.FormSecret = shared })
	c := startServer(t, func(c *Config) { c.FormSecret = strings.Repeat("x", 40) })
	game := createGame(t, 10)
	path := fmt.Sprintf("/games/%d/buy", game)
	order := func() url.Values { return url.Values{"quantity": {"1"}, "email": {fan(game)}} }
	form := openBuyForm(t, a.URL+path, "")
	if r := form.submit(t, b.URL+path, order()); r.Status != http.StatusCreated {
		t.Errorf("same secret: %d, want 201", r.Status)
	}
	if r := form.submit(t, c.URL+path, order()); r.Status != http.StatusForbidden {
		t.Errorf("another secret: %d, want 403", r.Status)
	}
	_, err := New(Config{PrimaryDSN: tc.primary, FormSecret: "short-S3cret"}, nil)
	if err == nil || !strings.Contains(err.Error(), "form secret") || strings.Contains(err.Error(), "S3cret") {
		t.Errorf("a short form secret: %v, want an error naming the setting, not its value", err)
	}
}
