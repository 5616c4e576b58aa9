package origin

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

func TestPages(t *testing.T) {
	s := startServer(t, nil)
	for _, tt := range []struct {
		path   string
		status int
		want   []string
	}{
		{"/games", 200, []string{"All sessions", "Athletics", "Stade de France", "Saturday 3 August", "Teahupo&#39;o", `href="/static/style.`}},
		{"/games?sport=Fencing", 200, []string{"Grand Palais", "Women&#39;s Épée Individual", `class="current">Fencing`}},
		{"/games/1", 200, []string{"Rugby Sevens", "Stade de France", "Saint-Denis", "Buy tickets", "24.00 EUR"}},
		{"/games/1/buy", 200, []string{`<form method="post" action="/games/1/buy">`, `name="idempotency_key"`, `name="form_token"`, `name="quantity"`, `name="email"`}},
		{"/games/999999999", 404, []string{"Page not found", "There is no session 999999999"}},
		{"/games/abc", 404, []string{"Page not found"}},
		{"/nowhere", 404, []string{"Page not found", "There is no page at /nowhere"}},
		{"/static/style.css", 404, []string{"fingerprint"}},
	} {
		r := do(t, "GET", s.URL+tt.path, "", "X-Request-ID", "page-req-1")
		if r.Status != tt.status {
			t.Errorf("GET %s: %d, want %d", tt.path, r.Status, tt.status)
			continue
		}
		if ct := r.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("GET %s: Content-Type %q", tt.path, ct)
		}
		for _, w := range tt.want {
			if !strings.Contains(string(r.Body), w) {
				t.Errorf("GET %s: page lacks %q", tt.path, w)
			}
		}
		if tt.status >= 400 && !strings.Contains(string(r.Body), "page-req-1") {
			t.Errorf("GET %s: error page does not show the request id", tt.path)
		}
	}
}

func TestStaticAssetsAreFingerprintedAndImmutable(t *testing.T) {
	s := startServer(t, nil)
	page := do(t, "GET", s.URL+"/games/1", "")
	links := regexp.MustCompile(`/static/[a-z]+\.[0-9a-f]{12}\.(css|svg)`).FindAllString(string(page.Body), -1)
	if len(links) < 2 {
		t.Fatalf("page links %v, want the fingerprinted stylesheet and logo", links)
	}
	for _, l := range links {
		r := do(t, "GET", s.URL+l, "")
		if r.Status != 200 || r.Header.Get("Cache-Control") != "public, max-age=31536000, immutable" || len(r.Body) == 0 {
			t.Errorf("GET %s: %d, Cache-Control %q, %d bytes", l, r.Status, r.Header.Get("Cache-Control"), len(r.Body))
		}
		if strings.HasSuffix(l, ".css") && r.Header.Get("Content-Type") != "text/css; charset=utf-8" {
			t.Errorf("GET %s: Content-Type %q", l, r.Header.Get("Content-Type"))
		}
	}
}

// formKey extracts the Idempotency-Key the buy form carries.
func formKey(t *testing.T, body []byte) string {
	t.Helper()
	return formField(t, body, "idempotency_key")
}

// formField extracts a hidden field of the buy form.
func formField(t *testing.T, body []byte, name string) string {
	t.Helper()
	m := regexp.MustCompile(`name="` + name + `" value="([^"]+)"`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in the form:\n%s", name, body)
	}
	return string(m[1])
}

// buyForm is what a browser holds after opening a buy form: its hidden
// fields and the visitor cookie its token is bound to.
type buyForm struct {
	Key, Token string
	Cookie     string // "podium_visitor=..."
}

// openBuyForm GETs the buy form at url, as a browser that sends cookie
// (none if empty) would.
func openBuyForm(t *testing.T, url, cookie string) buyForm {
	t.Helper()
	var headers []string
	if cookie != "" {
		headers = []string{"Cookie", cookie}
	}
	r := do(t, "GET", url, "", headers...)
	if r.Status != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", url, r.Status, r.Body)
	}
	f := buyForm{Key: formKey(t, r.Body), Token: formField(t, r.Body, "form_token"), Cookie: cookie}
	for _, c := range (&http.Response{Header: r.Header}).Cookies() {
		if c.Name == VisitorCookie {
			f.Cookie = c.Name + "=" + c.Value
		}
	}
	if f.Cookie == "" {
		t.Fatalf("GET %s set no %s cookie", url, VisitorCookie)
	}
	return f
}

// submit POSTs the form's fields to url with the visitor cookie, as the
// browser would from the page: form_token is the form's unless fields sets
// it.
func (f buyForm) submit(t *testing.T, url string, fields url.Values, headers ...string) response {
	t.Helper()
	if _, ok := fields["form_token"]; !ok {
		fields.Set("form_token", f.Token)
	}
	headers = append(headers, "Content-Type", "application/x-www-form-urlencoded", "Cookie", f.Cookie)
	return do(t, "POST", url, fields.Encode(), headers...)
}

func TestBuyFormFlow(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 3)
	buyURL := fmt.Sprintf("%s/games/%d/buy", s.URL, game)
	form := openBuyForm(t, buyURL, "")
	post := func(fields url.Values) response { return form.submit(t, buyURL, fields) }
	key := form.Key
	ok := post(url.Values{"quantity": {"2"}, "email": {fan(game)}, "idempotency_key": {key}})
	if ok.Status != http.StatusCreated || !strings.Contains(string(ok.Body), "Your tickets") {
		t.Fatalf("buying: %d\n%s", ok.Status, ok.Body)
	}
	tickets := regexp.MustCompile(`PAR24-\d{4}-\d{8}-\d{2}`).FindAllString(string(ok.Body), -1)
	if len(tickets) != 2 {
		t.Fatalf("confirmation shows tickets %v, want 2", tickets)
	}
	var gtidCookie *http.Cookie
	for _, c := range (&http.Response{Header: ok.Header}).Cookies() {
		if c.Name == GTIDCookie {
			gtidCookie = c
		}
	}
	if gtidCookie == nil || !validGTID(gtidCookie.Value) || !gtidCookie.HttpOnly {
		t.Fatalf("confirmation sets cookie %+v, want an HttpOnly %s with the commit's GTID", gtidCookie, GTIDCookie)
	}

	// A reload of the POST (same hidden key) shows the same tickets and
	// buys nothing more.
	again := post(url.Values{"quantity": {"2"}, "email": {fan(game)}, "idempotency_key": {key}})
	if again.Status != http.StatusCreated || strings.Join(regexp.MustCompile(`PAR24-\d{4}-\d{8}-\d{2}`).FindAllString(string(again.Body), -1), ",") != strings.Join(tickets, ",") {
		t.Errorf("reloaded POST: %d, want the same tickets %v", again.Status, tickets)
	}

	// The details page read with the cookie shows the seats taken.
	details := do(t, "GET", fmt.Sprintf("%s/games/%d", s.URL, game), "", "Cookie", GTIDCookie+"="+gtidCookie.Value)
	if !strings.Contains(string(details.Body), "<dd>1 of 3</dd>") {
		t.Errorf("details after buying 2 of 3 do not show 1 left:\n%s", details.Body)
	}
	if cc := details.Header.Get("Cache-Control"); cc != "private, no-cache" {
		t.Errorf("a read that waited for the reader's own write is cacheable: %q", cc)
	}

	for _, tt := range []struct {
		name   string
		form   url.Values
		status int
		want   string
	}{
		{"not a number", url.Values{"quantity": {"two"}, "email": {fan(game)}}, 422, "Enter how many tickets you want, 1 to 8"},
		{"too many", url.Values{"quantity": {"9"}, "email": {fan(game)}}, 422, "You can buy 1 to 8 tickets per order"},
		{"bad email", url.Values{"quantity": {"1"}, "email": {"fan"}}, 422, "Enter a valid email address"},
		{"more than left", url.Values{"quantity": {"2"}, "email": {fan(game)}, "idempotency_key": {fmt.Sprintf("g%d-form-k2", game)}}, 409, "Only 1 seat is left"},
		{"last seat", url.Values{"quantity": {"1"}, "email": {fan(game)}, "idempotency_key": {fmt.Sprintf("g%d-form-k3", game)}}, 201, "Your tickets"},
		{"sold out", url.Values{"quantity": {"1"}, "email": {fan(game)}, "idempotency_key": {fmt.Sprintf("g%d-form-k4", game)}}, 409, "sold out"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := post(tt.form)
			if r.Status != tt.status || !strings.Contains(string(r.Body), tt.want) {
				t.Fatalf("%d, want %d with %q:\n%s", r.Status, tt.status, tt.want, r.Body)
			}
			if tt.status == 422 && !strings.Contains(string(r.Body), `role="alert"`) {
				t.Error("the form error is not shown next to the form")
			}
			if got, want := r.Header.Get(SoldOutHeader), map[bool]string{true: "true"}[tt.name == "sold out"]; got != want {
				t.Errorf("%s %q, want %q", SoldOutHeader, got, want)
			}
		})
	}
	if remaining, sold, _, _ := gameState(t, game); remaining != 0 || sold != 3 {
		t.Errorf("remaining %d sold %d, want 0 and 3", remaining, sold)
	}
	// The buy form of a sold-out game says so to the edge; one with seats
	// left does not.
	for g, want := range map[int64]string{game: "true", createGame(t, 3): ""} {
		r := do(t, "GET", fmt.Sprintf("%s/games/%d/buy", s.URL, g), "")
		if got := r.Header.Get(SoldOutHeader); r.Status != http.StatusOK || got != want {
			t.Errorf("GET /games/%d/buy: %d %s %q, want 200 %q", g, r.Status, SoldOutHeader, got, want)
		}
	}
}

// The 500 page: a handler that panics behind the origin's middleware.
func TestPanicGivesCustom500(t *testing.T) {
	s := startServer(t, nil)
	h := s.middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }))
	for _, tt := range []struct{ path, ctype, want string }{
		{"/games/1", "text/html; charset=utf-8", "Something went wrong"},
		{"/api/games/1", "application/json", `"request_id":"panic-1"`},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", tt.path, nil)
		req.Header.Set("X-Request-ID", "panic-1")
		h.ServeHTTP(rec, req)
		if rec.Code != 500 || rec.Header().Get("Content-Type") != tt.ctype || !strings.Contains(rec.Body.String(), tt.want) {
			t.Errorf("%s: %d %q\n%s", tt.path, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
	}
	if !strings.Contains(s.logs.String(), "panic serving request") {
		t.Error("the panic was not logged")
	}
}
