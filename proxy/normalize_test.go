package proxy

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// pathAttacks are request paths that read differently to fasthttp (which
// decodes every escape, then removes dot segments) and to the origin's Go
// ServeMux (which splits on raw slashes, unescapes each segment, and
// redirects a path with dot segments or "//"): project issue 22. Each
// either has one normal form, which the edge routes, keys and forwards,
// or is refused with 400.
var pathAttacks = []struct {
	raw  string
	want string // the normal form; "" when refused
	err  error
}{
	{"/api%2Fgames", "", errPathEncodedSlash},
	{"/api%2fgames", "", errPathEncodedSlash},
	{"/api%5Cgames", "", errPathEncodedSlash},
	{"/api%5cgames", "", errPathEncodedSlash},
	{"/api/games%3F", "", errPathEncodedDelim},
	{"/api/games%3f/../games", "", errPathEncodedDelim},
	{"/api/games%23", "", errPathEncodedDelim},
	{"/api/games%00", "", errPathControl},
	{"/api/games%0d%0aX-Injected:%201", "", errPathControl},
	{"/api/games%7F", "", errPathControl},
	{`/api\games`, "", errPathBackslash},
	{`/api/games\..\games`, "", errPathBackslash},
	{"/api/games/1%2F..%2F2", "", errPathEncodedSlash},
	{"/api/games/%", "", errPathBadEscape},
	{"/api/games/%4", "", errPathBadEscape},
	{"/api/games/%zz", "", errPathBadEscape},
	{"/api/games/%%32%46", "", errPathBadEscape},
	{"api/games", "", errPathNotAbsolute},
	{"/api/./games", "/api/games", nil},
	{"/api/x/../games", "/api/games", nil},
	{"/api/games/%2e%2e/games", "/api/games", nil},
	{"/api/games/%2E%2e/games", "/api/games", nil},
	{"/api/games/.%2e/games", "/api/games", nil},
	{"/api/games/./", "/api/games/", nil},
	{"/api/games/..", "/api/", nil},
	{"/../../api/games", "/api/games", nil},
	{"//api/games", "/api/games", nil},
	{"/api//games", "/api/games", nil},
	{"///api///games///", "/api/games/", nil},
	{"/api/games/", "/api/games/", nil},
	{"/%61pi/games", "/api/games", nil},
	{"/%61%70%69/%67ames", "/api/games", nil},
	{"/api/games/%37", "/api/games/7", nil},
	{"/api/games/7%3b", "/api/games/7%3B", nil},
	{"/api/games/7;x", "/api/games/7;x", nil},
	{"/api/games%252F", "/api/games%252F", nil},
	{"/games/caf\xc3\xa9", "/games/caf%C3%A9", nil},
	{"/games/caf%c3%a9", "/games/caf%C3%A9", nil},
	{"/games/{x}|<y>", "/games/%7Bx%7D%7C%3Cy%3E", nil},
	{"/games/a%20b", "/games/a%20b", nil},
	{"/static/app.3f2a.css", "/static/app.3f2a.css", nil},
	{"/...", "/...", nil},
	{"/.", "/", nil},
	{"/..", "/", nil},
	{"/", "/", nil},
	{"", "/", nil},
	{"/api/games", "/api/games", nil},
}

func TestNormalizePath(t *testing.T) {
	for _, tt := range pathAttacks {
		got, err := normalizePath(nil, []byte(tt.raw))
		if !errors.Is(err, tt.err) || err == nil && string(got) != tt.want {
			t.Errorf("normalizePath(%q) = %q, %v; want %q, %v", tt.raw, got, err, tt.want, tt.err)
		}
	}
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() {
		buf, _ = normalizePath(buf[:0], []byte("/api/games/%37/../7"))
	}); n != 0 {
		t.Errorf("normalizePath allocates %v times", n)
	}
}

// refNormal is the normal form written plainly, as a check on
// normalizePath: unescape the path (%2F and the other refused escapes
// aside, unescaping and then splitting on "/" is splitting and then
// unescaping), split it into segments, drop the empty ones, apply "." and
// "..", and keep a trailing "/".
func refNormal(decoded string) string {
	segs := strings.Split(decoded, "/")[1:]
	var out []string
	trailing := false
	for _, s := range segs {
		switch s {
		case "", ".":
			trailing = true
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = true
		default:
			out = append(out, s)
			trailing = false
		}
	}
	p := "/" + strings.Join(out, "/")
	if trailing && len(out) > 0 {
		p += "/"
	}
	return p
}

// goCleanPath is net/http's cleanPath: what the origin's ServeMux redirects
// (301) a path to when the path is not already in that form.
func goCleanPath(p string) string {
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		if len(p) == len(np)+1 && strings.HasPrefix(p, np) {
			np = p
		} else {
			np += "/"
		}
	}
	return np
}

// FuzzNormalizePath: the path normaliser, a parser of untrusted bytes,
// never panics; what it accepts it maps to a form that is its own normal
// form, that fasthttp, Go's net/http and the reference above all read as
// the same segments, and that the origin's ServeMux will not redirect.
// Its seeds are the attacks of issue 22.
func FuzzNormalizePath(f *testing.F) {
	for _, tt := range pathAttacks {
		f.Add(tt.raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		out, err := normalizePath(nil, []byte(raw))
		if err != nil {
			if len(out) != 0 {
				t.Fatalf("normalizePath(%q) refused it (%v) but returned %q", raw, err, out)
			}
			return
		}
		norm := string(out)
		if norm == "" || norm[0] != '/' || strings.Contains(norm, "//") {
			t.Fatalf("normalizePath(%q) = %q: not one absolute path with no empty segment", raw, norm)
		}
		for _, seg := range strings.Split(norm, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("normalizePath(%q) = %q keeps a dot segment", raw, norm)
			}
		}
		for _, c := range []byte(norm) {
			if pathClass[c] != pcRaw && c != '%' {
				t.Fatalf("normalizePath(%q) = %q holds the raw byte %q", raw, norm, c)
			}
		}
		again, err := normalizePath(nil, out)
		if err != nil || string(again) != norm {
			t.Fatalf("normalizePath(%q) = %q, which normalises again to %q, %v", raw, norm, again, err)
		}
		// The origin (Go) reads the normal form as the reference reads
		// the client's path, and never redirects it.
		decodedOut, err := url.PathUnescape(norm)
		if err != nil {
			t.Fatalf("normalizePath(%q) = %q, which Go cannot unescape: %v", raw, norm, err)
		}
		decodedIn, err := url.PathUnescape(raw)
		if err != nil {
			t.Fatalf("normalizePath accepted %q, which Go refuses: %v", raw, err)
		}
		if raw == "" {
			decodedIn = "/"
		}
		if ref := refNormal(decodedIn); decodedOut != ref {
			t.Fatalf("normalizePath(%q) = %q, read by Go as %q; the reference reads the request as %q", raw, norm, decodedOut, ref)
		}
		if c := goCleanPath(decodedOut); c != decodedOut {
			t.Fatalf("normalizePath(%q) = %q, which Go's ServeMux would redirect to %q", raw, norm, c)
		}
		// fasthttp's own reading of the normal form has the same segments.
		var u fasthttp.URI
		u.SetPathBytes(out)
		if string(u.Path()) != decodedOut {
			t.Fatalf("normalizePath(%q) = %q, which fasthttp reads as %q, Go as %q", raw, norm, u.Path(), decodedOut)
		}
	})
}

// BenchmarkNormalizePath is what normalising costs a request whose path is
// in normal form already, as clients send it, and one that is not.
func BenchmarkNormalizePath(b *testing.B) {
	for _, p := range []string{"/api/games", "/api/games/1234", "/%61pi/./games//1234"} {
		b.Run(p, func(b *testing.B) {
			buf := make([]byte, 0, 128)
			raw := []byte(p)
			b.ReportAllocs()
			for range b.N {
				buf, _ = normalizePath(buf[:0], raw)
			}
		})
	}
}
