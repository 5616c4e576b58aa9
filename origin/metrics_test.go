package origin

import (
	"fmt"
	"strings"
	"testing"
)

// Issue 22: the request counter was labelled with the raw method, which a
// client chooses freely, so one client could mint a series per request.
func TestRequestMetricMethodLabelIsBounded(t *testing.T) {
	s := startServer(t, nil)
	for i := range 20 {
		for _, path := range []string{"/api/games", "/games/1", "/nowhere"} {
			do(t, fmt.Sprintf("X%dMETHOD", i), s.URL+path, "")
		}
	}
	do(t, "GET", s.URL+"/api/games/1", "")
	do(t, "DELETE", s.URL+"/api/games/1", "")
	m := string(do(t, "GET", s.URL+"/metrics", "").Body)
	var requests []string
	for _, line := range strings.Split(m, "\n") {
		if strings.HasPrefix(line, "podium_origin_http_requests_total{") {
			requests = append(requests, line)
		}
	}
	for _, l := range requests {
		if strings.Contains(l, "METHOD") {
			t.Errorf("a client-chosen method became a label value: %s", l)
		}
	}
	for _, want := range []string{
		`podium_origin_http_requests_total{code="405",method="other",route="/api/games"} 20`,
		`podium_origin_http_requests_total{code="404",method="other",route="/"} 40`,
		`method="GET",route="GET /api/games/{id}"`,
		`method="DELETE",route="/api/games/{id}"`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s; request series:\n%s", want, strings.Join(requests, "\n"))
		}
	}
}

func TestMethodLabel(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"GET", "GET"}, {"HEAD", "HEAD"}, {"POST", "POST"}, {"PUT", "PUT"}, {"DELETE", "DELETE"},
		{"PATCH", "PATCH"}, {"OPTIONS", "OPTIONS"}, {"CONNECT", "CONNECT"}, {"TRACE", "TRACE"},
		{"get", "other"}, {"PROPFIND", "other"}, {"", "other"}, {strings.Repeat("A", 1000), "other"},
	} {
		if got := methodLabel(tt.in); got != tt.want {
			t.Errorf("methodLabel(%.20q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
