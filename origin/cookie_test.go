package origin

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// cookiesOf returns the cookies an answer sets, by name.
func cookiesOf(h http.Header) map[string]*http.Cookie {
	out := map[string]*http.Cookie{}
	for _, c := range (&http.Response{Header: h}).Cookies() {
		out[c.Name] = c
	}
	return out
}

// Issue 22.2c: the podium_gtid cookie lacked Secure even when the fan came
// over TLS, so a browser would also send it over plain HTTP. Behind the edge
// TLS is the edge's (X-Forwarded-Proto: https); on a TLS listener it is the
// origin's own. Both cookies the pages set are Secure then, and only then
// (a browser drops a Secure cookie set over plain HTTP).
func TestCookiesAreSecureOverTLS(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 10)
	path := fmt.Sprintf("/games/%d/buy", game)
	order := url.Values{"quantity": {"1"}, "email": {fan(game)}}
	for _, tt := range []struct {
		name   string
		proto  string
		secure bool
	}{
		{"plain HTTP", "", false},
		{"TLS at the edge", "https", true},
		{"TLS at the first of two proxies", "https, http", true},
		{"plain HTTP at the edge", "http", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var headers []string
			if tt.proto != "" {
				headers = []string{"X-Forwarded-Proto", tt.proto}
			}
			r := do(t, "GET", s.URL+path, "", headers...)
			v := cookiesOf(r.Header)[VisitorCookie]
			if v == nil {
				t.Fatal("the form set no visitor cookie")
			}
			if v.Secure != tt.secure || !v.HttpOnly {
				t.Errorf("form's visitor cookie %+v, want HttpOnly and Secure=%v", v, tt.secure)
			}
			form := buyForm{Token: formField(t, r.Body, "form_token"), Cookie: v.Name + "=" + v.Value}
			b := form.submit(t, s.URL+path, url.Values{"quantity": order["quantity"], "email": order["email"]}, headers...)
			g := cookiesOf(b.Header)[GTIDCookie]
			if b.Status != http.StatusCreated || g == nil || g.Secure != tt.secure || !g.HttpOnly {
				t.Fatalf("purchase %d sets %s %+v, want HttpOnly and Secure=%v", b.Status, GTIDCookie, g, tt.secure)
			}
		})
	}

	// The origin's own TLS listener.
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.StartTLS()
	defer ts.Close()
	client := ts.Client()
	resp, err := client.Get(ts.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	v := cookiesOf(resp.Header)[VisitorCookie]
	if v == nil {
		t.Fatal("the form set no visitor cookie")
	}
	if !v.Secure {
		t.Errorf("visitor cookie over TLS: %+v, want Secure", v)
	}
	fields := url.Values{"quantity": order["quantity"], "email": order["email"], "form_token": {formField(t, body, "form_token")}}
	req, _ := http.NewRequest("POST", ts.URL+path, strings.NewReader(fields.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(v)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if g := cookiesOf(resp.Header)[GTIDCookie]; resp.StatusCode != http.StatusCreated || g == nil || !g.Secure {
		t.Fatalf("purchase over TLS: %d, %s %+v; want 201 and Secure", resp.StatusCode, GTIDCookie, g)
	}
}
