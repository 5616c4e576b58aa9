package proxy

import (
	"slices"
	"strings"
	"testing"

	"github.com/podium-edge/podium/config"
)

// refMatch is the route matcher written plainly: an exact path matches
// segment by segment, "*" standing for one non-empty segment; a prefix
// matches on a segment boundary.
func refMatch(pattern string, isPrefix bool, path string) bool {
	if isPrefix {
		if !strings.HasPrefix(path, pattern) {
			return false
		}
		rest := path[len(pattern):]
		return rest == "" || rest[0] == '/' || strings.HasSuffix(pattern, "/")
	}
	ps, qs := strings.Split(pattern, "/"), strings.Split(path, "/")
	if len(ps) != len(qs) {
		return false
	}
	for i := range ps {
		if ps[i] == "*" && qs[i] == "" || ps[i] != "*" && ps[i] != qs[i] {
			return false
		}
	}
	return true
}

// FuzzRouteMatch: the route matcher, which reads the client's path (in its
// normal form, but fuzzed here with any bytes), never panics and agrees
// with refMatch; segment, which gives a purge its "$1", agrees with
// strings.Split. Its seeds are the default routes and issue 22's attacks,
// raw and normalised.
func FuzzRouteMatch(f *testing.F) {
	var patterns []config.Match
	for _, r := range config.DefaultRoutes() {
		patterns = append(patterns, r.Match)
	}
	for _, a := range pathAttacks {
		norm, err := normalizePath(nil, []byte(a.raw))
		for _, m := range patterns {
			pat, isPrefix := m.Path, false
			if m.PathPrefix != "" {
				pat, isPrefix = m.PathPrefix, true
			}
			f.Add(pat, isPrefix, "GET", a.raw)
			if err == nil {
				f.Add(pat, isPrefix, "POST", string(norm))
			}
		}
	}
	f.Add("/api/games/*/buy", false, "POST", "/api/games/7/buy")
	f.Add("/api/games/*/buy", false, "POST", "/api/games//buy")
	f.Add("/static/", true, "GET", "/static/app.css")
	f.Fuzz(func(t *testing.T, pattern string, isPrefix bool, method, path string) {
		var m config.Match
		if isPrefix {
			m.PathPrefix = pattern
		} else {
			m.Path = pattern
		}
		m.Methods = []string{"GET", "HEAD"}
		rt := newRoute(config.Route{Name: "fuzz", Match: m})
		got := rt.matches([]byte(method), []byte(path))
		want := refMatch(pattern, isPrefix && pattern != "", path) && slices.Contains(m.Methods, method)
		if got != want {
			t.Fatalf("route %q (prefix %v) on %s %q: matches %v, want %v", pattern, isPrefix, method, path, got, want)
		}
		segs := strings.Split(path, "/")
		for i := range len(segs) + 1 {
			s := segment([]byte(path), i)
			if i < len(segs) && string(s) != segs[i] || i == len(segs) && s != nil {
				t.Fatalf("segment(%q, %d) = %q, want %q", path, i, s, segs[min(i, len(segs)-1)])
			}
		}
	})
}
