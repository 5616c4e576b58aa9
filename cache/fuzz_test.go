package cache

import (
	"bytes"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The cache parses what origins send (Cache-Control, Age, Expires, Vary)
// and builds keys from what clients send; each parser has a Fuzz test
// (STYLE habit 15). They run on their seeds under plain `go test`.

const maxDelta = time.Duration(1<<31) * time.Second

func validDelta(d time.Duration) bool { return d == -1 || 0 <= d && d <= maxDelta }

// FuzzParseControl: never panics; every duration is absent (-1) or within
// RFC 9111's delta-seconds; the field split over two lines at a comma reads
// the same (RFC 9110 §5.3); and adding a directive can only make the
// response less storable or shorter-lived, never more.
func FuzzParseControl(f *testing.F) {
	for _, s := range []string{
		"public, max-age=2", "no-store", "private, max-age=60", "max-age=60, max-age=0", "s-maxage=5, max-age=30",
		`no-cache="Set-Cookie, X-Id"`, "max-age=abc", "max-age=99999999999999999999", "MAX-AGE = 7 ,PUBLIC",
		"stale-if-error=60, stale-while-revalidate=30", "must-revalidate, proxy-revalidate, immutable", ",,,=,",
		`max-age="3"`, "max-age=-1", "max-age=", "s-maxage=0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		c := ParseControl([]byte(v))
		for _, d := range []time.Duration{c.MaxAge, c.SMaxAge, c.StaleWhileRevalidate, c.StaleIfError} {
			if !validDelta(d) {
				t.Fatalf("ParseControl(%q) = %+v: a duration outside delta-seconds", v, c)
			}
		}
		if i := strings.IndexByte(v, ','); i >= 0 {
			two := controlOf([]Field{{Key: []byte("Cache-Control"), Value: []byte(v[:i])}, {Key: []byte("cache-control"), Value: []byte(v[i+1:])}})
			if two != c {
				t.Fatalf("%q on two lines reads %+v, on one %+v", v, two, c)
			}
		}
		if c2 := ParseControl([]byte(v + ", no-store")); !c2.NoStore {
			t.Fatalf("%q + no-store is not no-store", v)
		}
		if c2 := ParseControl([]byte(v + ",private")); !c2.Private {
			t.Fatalf("%q + private is not private", v)
		}
		if c2 := ParseControl([]byte(v + ", max-age=0")); c2.MaxAge != 0 {
			t.Fatalf("%q + max-age=0 has max-age %v, want 0 (stale)", v, c2.MaxAge)
		}
	})
}

// FuzzAge: the Age field is a delta-seconds or nothing (0); never negative.
func FuzzAge(f *testing.F) {
	for _, s := range []string{"0", "2", " 60 ", "-1", "1e3", "99999999999999999999", "", "3, 4", "+5", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, a string) {
		got := ageOf([]Field{{Key: []byte("Age"), Value: []byte(a)}})
		if got < 0 || got > maxDelta {
			t.Fatalf("Age %q = %v", a, got)
		}
		s := strings.TrimSpace(a)
		if n, err := strconv.ParseUint(s, 10, 64); err == nil && n <= 1<<31 && s[0] != '+' && got != time.Duration(n)*time.Second {
			t.Fatalf("Age %q = %v, want %ds", a, got, n)
		}
	})
}

// FuzzExpires: Expires and Date give an explicit lifetime, never negative;
// an Expires that is not an HTTP-date means already expired (RFC 9111
// §5.3); a stored entry never lives past MaxTTL.
func FuzzExpires(f *testing.F) {
	date := t0.Format(http.TimeFormat)
	for _, s := range [][2]string{
		{t0.Add(90 * time.Second).Format(http.TimeFormat), date},
		{"0", date}, {"-1", ""}, {t0.Add(-time.Hour).Format(http.TimeFormat), date},
		{"Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"},
		{"Fri, 31 Dec 9999 23:59:59 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"},
	} {
		f.Add(s[0], s[1], 404)
	}
	f.Fuzz(func(t *testing.T, exp, date string, status int) {
		h := []Field{{Key: []byte("Expires"), Value: []byte(exp)}, {Key: []byte("Date"), Value: []byte(date)}}
		cc := controlOf(nil)
		d, explicit := explicitLifetime(cc, h, parseHTTPDate([]byte(date)))
		if !explicit || d < 0 {
			t.Fatalf("Expires %q Date %q: lifetime %v explicit %v", exp, date, d, explicit)
		}
		if _, err := http.ParseTime(exp); err != nil && d != 0 {
			t.Fatalf("invalid Expires %q gave %v, want expired", exp, d)
		}
		p := Policy{TTL: time.Hour, MaxTTL: time.Minute}
		e, _ := p.Entry([]byte("k"), 1, Response{Status: status, Header: h, RequestTime: t0, ResponseTime: t0}, false)
		if e != nil && (e.Lifetime < 0 || e.Lifetime > p.MaxTTL || e.Age(t0) < 0) {
			t.Fatalf("Expires %q Date %q: entry lifetime %v age %v", exp, date, e.Lifetime, e.Age(t0))
		}
	})
}

// FuzzVary: Vary names are lower-case header names, trimmed, never empty;
// "*" anywhere means the response is not stored; the variant key of two
// requests that differ in a named header differs.
func FuzzVary(f *testing.F) {
	for _, s := range [][2]string{
		{"Accept-Encoding", ""}, {"accept-encoding, Accept-Language", "Cookie"}, {"*", ""}, {"Accept, *", ""},
		{" , ,", "X-Id"}, {"ACCEPT\t", ""}, {"", ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		h := []Field{{Key: []byte("Vary"), Value: []byte(v1)}, {Key: []byte("vary"), Value: []byte(v2)}}
		names, star := varyOf(h)
		tokens := strings.Split(v1+","+v2, ",")
		wantStar := slices.ContainsFunc(tokens, func(s string) bool { return strings.TrimSpace(s) == "*" })
		if star != wantStar || star && names != nil {
			t.Fatalf("Vary %q, %q: names %q star %v", v1, v2, names, star)
		}
		for _, n := range names {
			if n == "" || n != strings.ToLower(n) || n != strings.TrimSpace(n) || strings.Contains(n, ",") {
				t.Fatalf("Vary %q, %q: name %q", v1, v2, n)
			}
		}
		if e, _ := (Policy{TTL: time.Second}).Entry([]byte("k"), 1, Response{Status: 200, Header: h}, false); (e == nil) != star {
			t.Fatalf("Vary %q, %q: stored %v, star %v", v1, v2, e != nil, star)
		}
		if len(names) > 0 {
			a := AppendVariant([]byte("base"), names, func(string) []byte { return []byte("a") })
			b := AppendVariant([]byte("base"), names, func(string) []byte { return []byte("b") })
			if bytes.Equal(a, b) {
				t.Fatalf("Vary %q: the variants of two requests mix", names)
			}
		}
	})
}

// FuzzKey: a key is its own normal form (built again from its parts it is
// the same bytes), its Target is the path and normalised query, its
// KeyPath the path; and reordering parameters of different names, or
// adding empty ones, changes nothing.
func FuzzKey(f *testing.F) {
	for _, s := range [][3]string{
		{"/api/games", "", "Edge.Example"}, {"/api/games", "b=2&a=1", "h"}, {"/api/games", "a=1&&b=2&", "h"},
		{"/api/games", "&&", "h"}, {"/api/games", "sport=x&sport=a", "h"}, {"/api/games/7%3B", "x=%00", "h:8080"},
		{"/p", "q=1&p=1&o=1&n=1&m=1&l=1&k=1&j=1&i=1&h=1&g=1&f=1&e=1&d=1&c=1&b=1&a=1", "h"},
		{"/api/games", "a&b=&=c", "H"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, path, query, host string) {
		if strings.ContainsAny(path, "?\x00") || strings.ContainsRune(query, 0) {
			t.Skip("not a normalised path or a query fasthttp accepts")
		}
		key := AppendKey(nil, []byte(path), []byte(query), []byte(host))
		target := Target(key)
		if string(KeyPath(key)) != path || !bytes.HasPrefix(target, []byte(path)) {
			t.Fatalf("key %q: path %q target %q, want path %q", key, KeyPath(key), target, path)
		}
		lower := []byte(host)
		for i, c := range lower {
			if 'A' <= c && c <= 'Z' {
				lower[i] = c + 'a' - 'A'
			}
		}
		if !bytes.Equal(key[len(target)+1:], lower) {
			t.Fatalf("key %q does not end in the lower-cased host %q", key, host)
		}
		_, q, _ := bytes.Cut(target, []byte{'?'})
		if again := AppendKey(nil, []byte(path), q, key[len(target)+1:]); !bytes.Equal(again, key) {
			t.Fatalf("key %q rebuilt from its parts is %q", key, again)
		}
		var params []string
		for _, p := range strings.Split(query, "&") {
			if p != "" {
				params = append(params, p)
			}
		}
		if len(params) == 0 || len(params) > maxQueryParams {
			return
		}
		// Parameters of distinct names in reverse order, with empty ones
		// around them: the same key.
		name := func(p string) string { n, _, _ := strings.Cut(p, "="); return n }
		names := map[string]bool{}
		for _, p := range params {
			if names[name(p)] {
				return // repeated names keep their order; reversing changes the request
			}
			names[name(p)] = true
		}
		rev := slices.Clone(params)
		slices.Reverse(rev)
		if k2 := AppendKey(nil, []byte(path), []byte("&"+strings.Join(rev, "&&")+"&"), []byte(host)); !bytes.Equal(k2, key) {
			t.Fatalf("query %q and %q: keys %q and %q", query, strings.Join(rev, "&"), key, k2)
		}
	})
}
