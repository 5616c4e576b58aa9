package waitroom

import (
	"bytes"
	"strings"
	"testing"
)

func mustPattern(t testing.TB, s string) Pattern {
	t.Helper()
	p, err := ParsePattern(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPatternMatch(t *testing.T) {
	buy := mustPattern(t, "/games/*/buy")
	tests := []struct {
		path string
		want bool
	}{
		{"/games/1/buy", true},
		{"/games/1/buy/", true},
		{"/games/1;x/buy", true},
		{"/GAMES/1/BUY", true},
		{"//games/1/buy", true},
		{"/games//1///buy//", true},
		{"/games/1/buy;jsessionid=abc", true},
		{"/games/;x/1/buy", true}, // ";x" cuts to nothing, dropped
		{"games/1/buy", true},
		{"/games/1/buyer", false},
		{"/games/1/2/buy", false},
		{"/games/buy", false},
		{"/games/1/bu", false},
		{"/games/1", false},
		{"/games/1/buy/x", false},
		{"/api/games/1/buy", false},
		{"/games/;/buy", false}, // the "*" segment is empty in room form
		{"/", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := buy.Match([]byte(tt.path)); got != tt.want {
			t.Errorf("%s matches %q = %v, want %v", buy, tt.path, got, tt.want)
		}
	}
}

func TestParsePattern(t *testing.T) {
	for _, tt := range []struct {
		pattern, want string // want: room form of the segments, or an error substring
	}{
		{"/games/*/buy", "games,*,buy"},
		{"/API//Games/*/buy/", "api,games,*,buy"},
		{"games/*/buy", "must begin with /"},
		{"/", "has no segment"},
		{"//", "has no segment"},
		{"/games/1*/buy", "* must be a whole segment"},
		{"/games/1;x/buy", `"/games/1;x/buy": ";" is not allowed`},
		{"/games/1 /buy", `" " is not allowed`},
		{"/games/café", `"\xc3" is not allowed`},
		{"/games?x", `"?" is not allowed`},
	} {
		p, err := ParsePattern(tt.pattern)
		got := strings.Join(p.segs, ",")
		if err != nil {
			got = err.Error()
		} else if rf, want := p.RoomForm(), "/"+strings.ReplaceAll(got, ",", "/"); rf != want {
			t.Errorf("ParsePattern(%q).RoomForm() = %q, want %q", tt.pattern, rf, want)
		}
		if !strings.Contains(got, tt.want) {
			t.Errorf("ParsePattern(%q) = %q, want %q", tt.pattern, got, tt.want)
		}
	}
}

func TestAppendRoomForm(t *testing.T) {
	for path, want := range map[string]string{
		"/Games//1;x/BUY/": "/games/1/buy",
		"":                 "/",
		"//;a/":            "/",
		"/a%3Bb":           "/a%3bb",
	} {
		if got := AppendRoomForm([]byte("x"), []byte(path)); string(got) != "x"+want {
			t.Errorf("AppendRoomForm(%q) = %q, want %q", path, got[1:], want)
		}
	}
}

// refRoomForm is the room form written plainly.
func refRoomForm(path string) []string {
	var segs []string
	for _, s := range strings.Split(path, "/") {
		s, _, _ = strings.Cut(s, ";")
		if s != "" {
			segs = append(segs, asciiLower(s))
		}
	}
	return segs
}

// asciiLower lower-cases ASCII letters only, byte by byte: bytes.Map
// would decode UTF-8 and replace invalid bytes.
func asciiLower(s string) string {
	out := []byte(s)
	for i, c := range out {
		if 'A' <= c && c <= 'Z' {
			out[i] = c + 'a' - 'A'
		}
	}
	return string(out)
}

// asciiUpper upper-cases ASCII letters only; bytes.ToUpper would also map
// non-ASCII letters (ſ to S), which the room form does not.
func asciiUpper(b []byte) []byte {
	out := bytes.Clone(b)
	for i, c := range out {
		if 'a' <= c && c <= 'z' {
			out[i] = c - 'a' + 'A'
		}
	}
	return out
}

// FuzzRoomForm: matching any bytes against any pattern never panics,
// agrees with refRoomForm compared segment by segment, and does not change
// when the path gains a trailing slash or is upper-cased.
func FuzzRoomForm(f *testing.F) {
	for _, path := range []string{"/games/1/buy", "/games/1/buy/", "/games/1;x/buy", "/GAMES/1/BUY", "//games/1/buy", "/games/1/buyer", "/games/;/buy", "", ";", "/ſ/1/buy"} {
		f.Add("/games/*/buy", path)
	}
	f.Add("/api/games/*/buy", "/api/games/7/buy")
	f.Fuzz(func(t *testing.T, pattern, path string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			return
		}
		got := p.Match([]byte(path))
		segs := refRoomForm(path)
		want := len(segs) == len(p.segs)
		for i := 0; want && i < len(segs); i++ {
			want = p.segs[i] == "*" || p.segs[i] == segs[i]
		}
		if got != want {
			t.Fatalf("%q matches %q = %v, want %v (room form %q)", pattern, path, got, want, segs)
		}
		if form, want := AppendRoomForm(nil, []byte(path)), "/"+strings.Join(segs, "/"); string(form) != want {
			t.Fatalf("AppendRoomForm(%q) = %q, want %q", path, form, want)
		}
		if m := p.Match([]byte(path + "/")); m != got {
			t.Fatalf("%q matches %q = %v but %q = %v", pattern, path, got, path+"/", m)
		}
		if up := asciiUpper([]byte(path)); p.Match(up) != got {
			t.Fatalf("%q matches %q = %v but %q = %v", pattern, path, got, up, !got)
		}
	})
}

// AppendWild agrees with Match on every path, and gives the paths of one
// game the same key whichever pattern and spelling they come by.
func TestPatternAppendWild(t *testing.T) {
	buy, api, lit := mustPattern(t, "/games/*/buy"), mustPattern(t, "/api/games/*/buy"), mustPattern(t, "/final")
	for _, tt := range []struct {
		p    Pattern
		path string
		want string // "-": no match
	}{
		{buy, "/games/45/buy", "45/"},
		{buy, "/GAMES/45;x/buy/", "45/"},
		{api, "/api/games/45/buy", "45/"},
		{api, "/API/Games/AbC/buy", "abc/"},
		{mustPattern(t, "/a/*/b/*"), "/a/1/b/2", "1/2/"},
		{lit, "/final", ""},
		{buy, "/games/45/buyer", "-"},
		{buy, "/games/45/buy/x", "-"},
		{api, "/games/45/buy", "-"},
		{lit, "/final/x", "-"},
	} {
		got, ok := tt.p.AppendWild([]byte("pre:"), []byte(tt.path))
		if ok != tt.p.Match([]byte(tt.path)) {
			t.Errorf("%s on %q: AppendWild ok %v, Match disagrees", tt.p, tt.path, ok)
		}
		want := "pre:" + tt.want
		if tt.want == "-" {
			want = "pre:"
			if ok {
				t.Errorf("%s on %q: ok, want no match", tt.p, tt.path)
			}
		}
		if string(got) != want {
			t.Errorf("%s on %q: %q, want %q", tt.p, tt.path, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		var b [32]byte
		buy.AppendWild(b[:0], []byte("/games/45/buy"))
	}); n != 0 {
		t.Errorf("AppendWild allocates %v times, want 0", n)
	}
}
