package proxy

import (
	"testing"

	"github.com/podium-edge/podium/config"
)

func TestRawScanSmuggling(t *testing.T) {
	// The edge's own framing checks, apart from fasthttp's parser: both
	// must refuse these, so a change in either cannot open a hole.
	tests := []struct {
		raw  string
		want string
	}{
		{"Host: a\r\nContent-Length: 3\r\n", ""},
		{"Host: a\r\nTransfer-Encoding: chunked\r\n", ""},
		{"Host: a\r\ntransfer-encoding:\tChunked \r\n", ""},
		{"Content-Length: 3\r\nContent-Length: 3\r\n", ""},
		{"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", "both Transfer-Encoding and Content-Length"},
		{"Transfer-Encoding: chunked\r\ncontent-length: 3\r\n", "both Transfer-Encoding and Content-Length"},
		{"Transfer-Encoding: chunked, chunked\r\n", "a Transfer-Encoding other than chunked"},
		{"Transfer-Encoding: gzip, chunked\r\n", "a Transfer-Encoding other than chunked"},
		{"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "more than one Transfer-Encoding header"},
		{"Transfer-Encoding : chunked\r\n", "whitespace between a header name and its colon"},
		{"Content-Length: 3\r\nContent-Length: 4\r\n", "conflicting Content-Length values"},
		{"Content-Length: 3, 4\r\n", "conflicting Content-Length values"},
		{"Content-Length: 3x\r\n", "a Content-Length that is not a number"},
		{"Content-Length: \r\n", "a Content-Length that is not a number"},
	}
	for _, tt := range tests {
		var s rawScan
		s.scan([]byte(tt.raw))
		if got := s.smuggling(); got != tt.want {
			t.Errorf("%q: smuggling() = %q, want %q", tt.raw, got, tt.want)
		}
	}
}

func TestRawScanConnectionTokens(t *testing.T) {
	var s rawScan
	s.scan([]byte("Host: a\r\nConnection: close, X-Secret\r\nconnection: x-other\r\n"))
	var got []string
	for _, tok := range s.connTokens[:s.nConnTokens] {
		got = append(got, string(tok))
	}
	if len(got) != 3 || got[0] != "close" || got[1] != "X-Secret" || got[2] != "x-other" {
		t.Errorf("tokens = %q, want [close X-Secret x-other]", got)
	}
}

func TestRouteMatch(t *testing.T) {
	st := &state{}
	for _, r := range []struct{ path, prefix string }{
		{path: "/api/games/*/buy"}, {path: "/api/games"}, {prefix: "/static"}, {prefix: "/"},
	} {
		cfg := routeConfig(r.path, r.prefix)
		st.routes = append(st.routes, newRoute(cfg))
	}
	tests := []struct {
		path string
		want int
	}{
		{"/api/games/12/buy", 0},
		{"/api/games//buy", 3},
		{"/api/games/12/buy/x", 3},
		{"/api/games", 1},
		{"/api/games/", 3},
		{"/static/app.css", 2},
		{"/static", 2},
		{"/staticx", 3},
		{"/", 3},
	}
	for _, tt := range tests {
		got := st.match([]byte("GET"), []byte(tt.path))
		if got != &st.routes[tt.want] {
			t.Errorf("match(%s) = %v, want route %d", tt.path, got, tt.want)
		}
	}
}

func routeConfig(path, prefix string) config.Route {
	return config.Route{Name: path + prefix, Match: config.Match{Path: path, PathPrefix: prefix}}
}
