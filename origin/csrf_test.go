package origin

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
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
	order := `{"quantity": 1, "email": "fan@example.com"}`
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
