package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// logSink collects an edge's JSON log, as cmd/podium writes it to stdout.
// Safe for concurrent use.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// accessLines returns the access-log lines so far, each a JSON object,
// failing the test on a line that is not one.
func (s *logSink) accessLines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	b := append([]byte(nil), s.buf.Bytes()...)
	s.mu.Unlock()
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not one JSON object: %q: %v", sc.Text(), err)
		}
		if m["msg"] == "request" {
			lines = append(lines, m)
		}
	}
	return lines
}

// loggingEdge is an edge whose log is JSON into the returned sink.
func loggingEdge(t *testing.T, ups []*testUpstream, opts ...edgeOption) (*testEdge, *logSink) {
	t.Helper()
	sink := &logSink{}
	log := slog.New(slog.NewJSONHandler(sink, nil))
	return startEdgeLogging(t, ups, nil, log, opts...), sink
}

func withAccessLog(sample float64) edgeOption {
	return func(c *config.Edge) { c.AccessLog.Enabled, c.AccessLog.Sample = true, sample }
}

// The access log: one JSON line per request with the fields README names
// (request ID, route, upstream, status, duration, upstream time, retries,
// cache status), the request ID the one the origin got.
func TestAccessLogLine(t *testing.T) {
	const delay = 20 * time.Millisecond
	u := newUpstream(t)
	u.delay.Store(int64(delay))
	e, sink := loggingEdge(t, []*testUpstream{u}, withAccessLog(1), func(c *config.Edge) {
		c.Routes = []config.Route{
			{Name: "listing", Match: config.Match{Path: "/api/games", Methods: []string{"GET", "HEAD"}},
				Cache: &config.RouteCache{TTL: config.Duration(time.Minute)}},
			{Name: "rest", Match: config.Match{PathPrefix: "/"}},
		}
	})
	type sent struct {
		method, path, route, cache string
		upstream                   bool // answered by the upstream, not the cache
	}
	var want []sent
	var ids []string // the X-Request-ID each upstream request carried
	for _, s := range []sent{
		{"GET", "/x", "rest", "", true},
		{"POST", "/api/games/1/buy", "rest", "", true},
		{"GET", "/api/games", "listing", "MISS", true},
		{"GET", "/api/games", "listing", "HIT", false},
	} {
		before := u.count.Load()
		if r := do(t, s.method, e.url(s.path)); r.code != 200 {
			t.Fatalf("%s %s: %d %q", s.method, s.path, r.code, r.body)
		}
		if got := u.count.Load() - before; got != map[bool]int64{true: 1, false: 0}[s.upstream] {
			t.Fatalf("%s %s reached the upstream %d times", s.method, s.path, got)
		}
		id := ""
		if s.upstream {
			id = u.lastHeader().Get("X-Request-ID")
		}
		want, ids = append(want, s), append(ids, id)
	}

	lines := sink.accessLines(t)
	if len(lines) != len(want) {
		t.Fatalf("%d requests, %d access-log lines, want one each:\n%v", len(want), len(lines), lines)
	}
	for i, l := range lines {
		w := want[i]
		str := func(k string) string { s, _ := l[k].(string); return s }
		num := func(k string) float64 {
			v, ok := l[k].(float64)
			if !ok {
				t.Errorf("line %d: %s = %v, want a number", i, k, l[k])
			}
			return v
		}
		id := str("request_id")
		if len(id) != 32 || (w.upstream && id != ids[i]) {
			t.Errorf("line %d: request_id %q, want the 32-digit ID the upstream got (%q)", i, id, ids[i])
		}
		if str("method") != w.method || str("path") != w.path || str("route") != w.route || str("cache") != w.cache {
			t.Errorf("line %d: method %q path %q route %q cache %q, want %q %q %q %q", i,
				str("method"), str("path"), str("route"), str("cache"), w.method, w.path, w.route, w.cache)
		}
		if num("status") != 200 || num("retries") != 0 || str("client") != "127.0.0.1" {
			t.Errorf("line %d: status %v retries %v client %q, want 200, 0, 127.0.0.1", i, l["status"], l["retries"], l["client"])
		}
		wantUp := ""
		if w.upstream {
			wantUp = u.addr
		}
		if str("upstream") != wantUp {
			t.Errorf("line %d: upstream %q, want %q", i, str("upstream"), wantUp)
		}
		// The upstream sleeps 20 ms before answering: its time is at
		// least that, and the request's at least its upstream's.
		d, ut := num("duration_ms"), num("upstream_ms")
		if w.upstream && (ut < float64(delay.Milliseconds()) || d < ut) {
			t.Errorf("line %d: duration_ms %v, upstream_ms %v; want upstream_ms >= 20 and duration_ms >= upstream_ms", i, d, ut)
		}
		if !w.upstream && ut != 0 {
			t.Errorf("line %d: a cache hit with upstream_ms %v, want 0", i, ut)
		}
	}
}

// A retried request is still one line, which says how many retries it
// took and which upstream answered.
func TestAccessLogRetriedRequestOneLine(t *testing.T) {
	good, bad := newUpstream(t), newUpstream(t)
	bad.handler = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }
	e, sink := loggingEdge(t, []*testUpstream{good, bad}, withAccessLog(1))
	keepBusy(t, e, good.addr) // the failing upstream is picked first
	if r := do(t, "GET", e.url("/x")); r.code != 200 || r.header.Get("X-Podium-Retries") != "1" {
		t.Fatalf("GET: %d, X-Podium-Retries %q; want 200 after one retry", r.code, r.header.Get("X-Podium-Retries"))
	}
	lines := sink.accessLines(t)
	if len(lines) != 1 {
		t.Fatalf("a retried request logged %d lines, want 1: %v", len(lines), lines)
	}
	if l := lines[0]; l["retries"] != 1.0 || l["upstream"] != good.addr || l["status"] != 200.0 {
		t.Errorf("retried request's line: retries %v upstream %v status %v; want 1, %s, 200", l["retries"], l["upstream"], l["status"], good.addr)
	}
}

// access_log.sample 0 logs no success, and still every error: a 400 and
// the 5xx answers, the edge's own and an upstream's.
func TestAccessLogErrorsAlwaysLogged(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "ok")
	}
	e, sink := loggingEdge(t, []*testUpstream{u}, withAccessLog(0))
	for range 20 {
		if r := do(t, "GET", e.url("/x")); r.code != 200 {
			t.Fatalf("GET /x: %d", r.code)
		}
	}
	if r := do(t, "GET", e.url("/fail")); r.code != 503 {
		t.Fatalf("GET /fail: %d, want the upstream's 503", r.code)
	}
	if resp, _ := rawRoundTrip(t, e.addr, "HELLO\r\n\r\n"); resp.StatusCode != 400 {
		t.Fatalf("garbage request line: %d, want 400", resp.StatusCode)
	}
	u.stop() // connect refused: the edge's own 502
	if r := do(t, "GET", e.url("/x")); r.code != 502 {
		t.Fatalf("GET /x with the upstream stopped: %d, want 502", r.code)
	}

	var got []float64
	for _, l := range sink.accessLines(t) {
		got = append(got, l["status"].(float64))
	}
	if len(got) != 3 || got[0] != 503 || got[1] != 400 || got[2] != 502 {
		t.Errorf("access log at sample 0 after 20 successes, a 503, a 400 and a 502: statuses %v, want [503 400 502]", got)
	}
}

// access_log.sample is the share of successes logged: 0.5 of 1,000 is
// 500 ± 95 (six standard deviations of the binomial: a false alarm about
// once in 500 million runs); off logs nothing.
func TestAccessLogSampleAndOff(t *testing.T) {
	u := newUpstream(t)
	e, sink := loggingEdge(t, []*testUpstream{u}, withAccessLog(0.5))
	const n = 1000
	if failed := load(t, e.url("/x"), 8, n); failed != 0 {
		t.Fatalf("%d of %d requests failed", failed, n)
	}
	if got := len(sink.accessLines(t)); got < 405 || got > 595 {
		t.Errorf("sample 0.5: %d of %d requests logged, want 500 ± 95", got, n)
	}

	off, offSink := loggingEdge(t, []*testUpstream{u}, func(c *config.Edge) { c.AccessLog.Enabled, c.AccessLog.Sample = false, 1 })
	do(t, "GET", off.url("/x"))
	u.stop()
	if r := do(t, "GET", off.url("/x")); r.code != 502 {
		t.Fatalf("GET with the upstream stopped: %d, want 502", r.code)
	}
	if got := len(offSink.accessLines(t)); got != 0 {
		t.Errorf("access_log.enabled false: %d lines, want none", got)
	}
}

// Every way a request ends is counted once in podium_edge_requests_total
// and logged once: proxied, a cache miss and a hit, a stale copy served
// while it revalidates, a rate-limited request, a route the edge answers
// itself, no route, and the upstream gone. The edge's own /ping is
// counted and not logged. (Stale-while-revalidate once counted its
// request and never logged it.)
func TestEveryPathCountedAndLoggedOnce(t *testing.T) {
	u := newUpstream(t)
	var swrFetches atomic.Int64
	revalidated := make(chan struct{}, 1)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/swr":
			// Stale when stored (Age equal to max-age), with a minute of
			// stale-while-revalidate left.
			w.Header().Set("Cache-Control", "public, max-age=60, stale-while-revalidate=60")
			if swrFetches.Add(1) == 1 {
				w.Header().Set("Age", "60")
			} else {
				defer func() { revalidated <- struct{}{} }()
			}
		case "/cached":
			w.Header().Set("Cache-Control", "public, max-age=60")
		}
		io.WriteString(w, "ok")
	}
	cached := &config.RouteCache{TTL: config.Duration(time.Minute)}
	e, sink := loggingEdge(t, []*testUpstream{u}, withAccessLog(1), func(c *config.Edge) {
		c.RateLimits = map[string]config.RateLimit{"tight": {Rate: 0.001, Burst: 1}}
		c.Routes = []config.Route{
			{Name: "swr", Match: config.Match{Path: "/swr", Methods: []string{"GET"}}, Cache: cached},
			{Name: "cached", Match: config.Match{Path: "/cached", Methods: []string{"GET"}}, Cache: cached},
			{Name: "tight", Match: config.Match{Path: "/tight"}, RateLimit: "tight"},
			{Name: "gone", Match: config.Match{Path: "/gone"}, Respond: &config.Respond{Status: 410}},
			{Name: "rest", Match: config.Match{PathPrefix: "/x"}},
		}
	})
	for _, tc := range []struct {
		name, path string
		code       int
		cache      string // the X-Cache answer; "" for none
		logged     bool
		before     func()
	}{
		{"proxied", "/x", 200, "", true, nil},
		{"cache miss", "/cached", 200, "MISS", true, nil},
		{"cache hit", "/cached", 200, "HIT", true, nil},
		{"stored stale", "/swr", 200, "MISS", true, nil},
		{"stale while revalidating", "/swr", 200, "STALE", true, nil},
		{"within the rate", "/tight", 200, "", true, func() {
			// The revalidation has reached the origin: nothing it does
			// later is counted or logged as a request.
			select {
			case <-revalidated:
			case <-time.After(30 * time.Second):
				t.Fatal("the stale copy was never revalidated")
			}
		}},
		{"rate limited", "/tight", 429, "", true, nil},
		{"respond route", "/gone", 410, "", true, nil},
		{"no route", "/nowhere", 404, "", true, nil},
		{"ping", "/ping", 200, "", false, nil},
		{"upstream gone", "/x", 502, "", true, u.stop},
	} {
		if tc.before != nil {
			tc.before()
		}
		counted, lines := gathered(t, e, "podium_edge_requests_total"), len(sink.accessLines(t))
		r := do(t, "GET", e.url(tc.path))
		if r.code != tc.code || r.header.Get("X-Cache") != tc.cache {
			t.Fatalf("%s: GET %s answered %d X-Cache %q, want %d %q", tc.name, tc.path, r.code, r.header.Get("X-Cache"), tc.code, tc.cache)
		}
		if got := gathered(t, e, "podium_edge_requests_total") - counted; got != 1 {
			t.Errorf("%s: counted %v times, want once", tc.name, got)
		}
		want := map[bool]int{true: 1, false: 0}[tc.logged]
		if got := len(sink.accessLines(t)) - lines; got != want {
			t.Errorf("%s: %d access-log lines, want %d", tc.name, got, want)
		}
	}
}
