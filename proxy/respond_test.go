package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// originMux stands for the origin's router: Go's ServeMux with the
// origin's own patterns, its metrics among them (secret stands for what
// they show: database addresses, seats sold, pool statistics).
const secret = "go_sql_open_connections{db=\"primary 10.0.0.5:3306\"} 12"

func originLike(t *testing.T) *testUpstream {
	u := newUpstream(t)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, secret) })
	mux.HandleFunc("GET /debug/pprof/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "goroutine profile: "+secret) })
	mux.HandleFunc("GET /games", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<h1>Games</h1>") })
	mux.HandleFunc("GET /api/games", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"games":[]}`) })
	mux.HandleFunc("GET /static/{name}", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "body{}") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "the origin's own 404 page", 404) })
	u.handler = mux.ServeHTTP
	return u
}

// Issue 22.5: the origin's /metrics was public through the edge, because
// the default catch-all route forwarded it. The default routes now answer
// the origins' internal endpoints with the edge's own 404 (JSON for /api/
// and clients that accept JSON, HTML otherwise), and forward nothing;
// the public pages still route.
func TestInternalPathsNotForwarded(t *testing.T) {
	u := originLike(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.Routes = config.DefaultRoutes()
		c.RateLimits = map[string]config.RateLimit{"default": {Rate: 1e6, Burst: 1e6}, "buy": {Rate: 1e6, Burst: 1e6}}
	})
	hidden := []struct {
		method, target, accept string
		json                   bool
		spelling               bool // another spelling of an internal path
	}{
		{"GET", "/metrics", "", false, false},
		{"GET", "/metrics/", "", false, false},
		{"GET", "/metrics/anything", "", false, false},
		{"GET", "/metrics?format=text", "text/plain", false, false},
		{"HEAD", "/metrics", "", false, false},
		{"POST", "/metrics", "", false, false},
		{"PURGE", "/metrics", "", false, false},
		{"GET", "/metrics", "application/json", true, false},
		{"GET", "/metrics", "text/html,application/xhtml+xml", false, false},
		{"GET", "/debug/pprof/", "", false, false},
		{"GET", "/debug/pprof/goroutine?debug=2", "", false, false},
		{"GET", "/debug", "", false, false},
		// Other spellings of the same path, as the edge routes them.
		{"GET", "/%6detrics", "", false, true},
		{"GET", "//metrics", "", false, true},
		{"GET", "/./metrics", "", false, true},
		{"GET", "/static/../metrics", "", false, true},
		{"GET", "/api/../debug/pprof/", "", false, true},
		{"GET", "http://edge.example/metrics", "", false, false},
	}
	for _, tc := range hidden {
		t.Run(tc.method+" "+tc.target+" "+tc.accept, func(t *testing.T) {
			before := u.count.Load()
			raw := tc.method + " " + tc.target + " HTTP/1.1\r\nHost: edge.example\r\n"
			if tc.accept != "" {
				raw += "Accept: " + tc.accept + "\r\n"
			}
			resp, body := rawExchange(t, e.addr, raw+"\r\n", tc.method == "HEAD")
			if tc.spelling && resp.StatusCode == 400 {
				// The edge's path normaliser may refuse a spelling
				// outright rather than route it: as safe.
			} else if resp.StatusCode != 404 {
				t.Errorf("status %d, want the edge's 404 (body %q)", resp.StatusCode, body)
			}
			if got := u.count.Load() - before; got != 0 {
				t.Errorf("the upstream received %d requests, want none", got)
			}
			if strings.Contains(body, "10.0.0.5") || strings.Contains(body, "origin's own") {
				t.Errorf("the body comes from the origin: %q", body)
			}
			if resp.Header.Get("X-Request-ID") == "" || resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("headers %v, want the edge's error (X-Request-ID, no-store)", resp.Header)
			}
			if tc.method == "HEAD" {
				return
			}
			if tc.json {
				var eb struct {
					Error     string `json:"error"`
					RequestID string `json:"request_id"`
				}
				if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error != "not found" || eb.RequestID == "" {
					t.Errorf("body %q, want the edge's JSON error", body)
				}
			} else if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(body, "</html>") {
				t.Errorf("Content-Type %q body %q, want the edge's HTML 404 page", resp.Header.Get("Content-Type"), body)
			}
		})
	}

	// Paths are case-sensitive (RFC 3986 §6.2.2.1) at the edge as at the
	// origin's router: /METRICS is not the metrics endpoint, it reaches
	// the origin's 404 page. Nor is /metricsx, on a segment boundary.
	for _, target := range []string{"/METRICS", "/Metrics/", "/metricsx", "/debugger"} {
		before := u.count.Load()
		resp, body := rawExchange(t, e.addr, "GET "+target+" HTTP/1.1\r\nHost: edge.example\r\n\r\n", false)
		if resp.StatusCode != 404 || strings.Contains(body, "10.0.0.5") || u.count.Load() != before+1 {
			t.Errorf("%s: status %d body %q (upstream saw %d): want the origin's own 404, without its metrics", target, resp.StatusCode, body, u.count.Load()-before)
		}
	}

	// The public pages still route; the edge's /ping is its own.
	for _, tc := range []struct{ target, want string }{
		{"/games", "<h1>Games</h1>"},
		{"/api/games", `{"games":[]}`},
		{"/static/app.css", "body{}"},
	} {
		before := u.count.Load()
		resp, body := rawExchange(t, e.addr, "GET "+tc.target+" HTTP/1.1\r\nHost: edge.example\r\n\r\n", false)
		if resp.StatusCode != 200 || body != tc.want || u.count.Load() != before+1 {
			t.Errorf("%s: status %d body %q (upstream saw %d), want 200 %q from the origin", tc.target, resp.StatusCode, body, u.count.Load()-before, tc.want)
		}
	}
	before := u.count.Load()
	if resp, body := rawExchange(t, e.addr, "GET /ping HTTP/1.1\r\nHost: edge.example\r\n\r\n", false); resp.StatusCode != 200 || body != "pong\n" || u.count.Load() != before {
		t.Errorf("/ping: %d %q, upstream saw %d; want the edge's own pong", resp.StatusCode, body, u.count.Load()-before)
	}

	// Counted as the edge's own answers on their routes, by method, an
	// unknown method as OTHER: a client cannot mint label values.
	canonical := 0
	for _, tc := range hidden {
		if !tc.spelling {
			canonical++
		}
	}
	if got := testCounter(e.p.metrics.errors[kindDirect]); got < float64(canonical) || got > float64(len(hidden)) {
		t.Errorf("errors{kind=direct_response} = %v, want %d..%d", got, canonical, len(hidden))
	}
	rc := e.p.metrics.routeCounts("internal_metrics")
	for _, m := range []struct {
		method string
		want   uint64
	}{{"HEAD", 1}, {"POST", 1}, {"OTHER", 1}} {
		if got := rc.counts[methodIndex([]byte(m.method))*codeSlots+404-100].Load(); got != m.want {
			t.Errorf("requests{route=internal_metrics,method=%s,code=404} = %d, want %d", m.method, got, m.want)
		}
	}
	mfs, _ := e.p.metrics.Registry.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == "PURGE" {
					t.Errorf("%s has a series for the client's own method PURGE", mf.GetName())
				}
			}
		}
	}
}

// rawExchange sends raw on a fresh connection and reads one response
// (without a body for HEAD).
func rawExchange(t *testing.T, addr, raw string, head bool) (*http.Response, string) {
	t.Helper()
	method := "GET"
	if head {
		method = "HEAD"
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}
