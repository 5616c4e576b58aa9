package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// rawRoundTrip writes raw bytes to the edge and reads one response.
func rawRoundTrip(t *testing.T, addr, raw string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// After a rejected request the edge must close the connection: nothing
	// further on it can be framed safely.
	if resp.StatusCode >= 400 {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := br.Read(make([]byte, 1)); err == nil || n > 0 {
			t.Errorf("connection left open after %d", resp.StatusCode)
		}
	}
	return resp, string(body)
}

func TestMalformedRequestsNeverReachUpstream(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) { c.Limits.MaxHeaderBytes = 4096 })
	h := "POST /api/games/1/buy HTTP/1.1\r\nHost: edge\r\n"
	cases := []struct {
		name string
		raw  string
		want int
	}{
		{"CL then TE", h + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE then CL", h + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400},
		{"TE chunked, chunked", h + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE gzip, chunked", h + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE identity", h + "Transfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nhi", 400},
		{"space before colon", h + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400},
		{"two TE headers", h + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"duplicate conflicting CL", h + "Content-Length: 2\r\nContent-Length: 3\r\n\r\nhey", 400},
		// RFC 9110 §8.6 lets a recipient either merge identical repeats or
		// reject them; the edge rejects, the stricter and safer choice.
		{"duplicate identical CL", h + "Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi", 400},
		{"CL list conflicting", h + "Content-Length: 2, 3\r\n\r\nhey", 400},
		{"non-numeric CL", h + "Content-Length: abc\r\n\r\nhey", 400},
		{"negative CL", h + "Content-Length: -1\r\n\r\n", 400},
		{"bad chunk size", h + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400},
		{"oversized header", "GET /api/games HTTP/1.1\r\nHost: edge\r\nX-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n", 431},
		{"garbage request line", "HELLO\r\n\r\n", 400},
		{"bare LF in header name", "GET / HTTP/1.1\r\nHost: edge\r\nX\nY: z\r\n\r\n", 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := u.count.Load()
			resp, body := rawRoundTrip(t, e.addr, tc.raw)
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d (body %q)", resp.StatusCode, tc.want, body)
			}
			if got := u.count.Load(); got != before {
				t.Errorf("upstream received %d requests, want 0", got-before)
			}
			if strings.Contains(strings.ToLower(body), "fasthttp") {
				t.Errorf("body leaks the library's own text: %q", body)
			}
		})
	}
}

func TestValidFramingIsForwarded(t *testing.T) {
	// The checks above must not reject what is legal: chunked alone (any
	// case, with surrounding whitespace), a plain Content-Length.
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil)
	h := "POST /api/games/1/buy HTTP/1.1\r\nHost: edge\r\n"
	for _, raw := range []string{
		h + "Transfer-Encoding:  CHUNKED \r\n\r\n2\r\nhi\r\n0\r\n\r\n",
		h + "Content-Length: 2\r\n\r\nhi",
	} {
		resp, body := rawRoundTrip(t, e.addr, raw)
		if resp.StatusCode != 200 {
			t.Errorf("%q: status %d %q, want 200", raw, resp.StatusCode, body)
		}
	}
	if u.count.Load() != 2 {
		t.Errorf("upstream got %d requests, want 2", u.count.Load())
	}
}

func TestHopByHopHeadersStripped(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Up-Secret")
		w.Header().Set("X-Up-Secret", "internal")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Kept", "yes")
		io.WriteString(w, "ok")
	}
	e := startEdge(t, []*testUpstream{u}, nil)
	resp, _ := rawRoundTrip(t, e.addr, "GET /x HTTP/1.1\r\nHost: edge\r\nConnection: close, X-Secret\r\nX-Secret: s3cret\r\nKeep-Alive: 300\r\nProxy-Authorization: Basic Zm9v\r\nTE: trailers\r\nX-Other: kept\r\n\r\n")
	got := u.lastHeader()
	for _, name := range []string{"X-Secret", "Keep-Alive", "Proxy-Authorization", "Te"} {
		if v := got.Get(name); v != "" {
			t.Errorf("upstream received hop-by-hop %s: %q", name, v)
		}
	}
	if got.Get("X-Other") != "kept" {
		t.Errorf("end-to-end header X-Other lost: %v", got)
	}
	for _, name := range []string{"X-Up-Secret", "Keep-Alive"} {
		if v := resp.Header.Get(name); v != "" {
			t.Errorf("client received hop-by-hop %s: %q", name, v)
		}
	}
	if resp.Header.Get("X-Kept") != "yes" {
		t.Errorf("end-to-end response header X-Kept lost: %v", resp.Header)
	}
	if !resp.Close {
		t.Error("the client asked for Connection: close and the edge kept the connection open")
	}
}

func TestForwardedHeaders(t *testing.T) {
	u := newUpstream(t)
	untrusted := startEdge(t, []*testUpstream{u}, nil)
	req, _ := http.NewRequest("GET", untrusted.url("/x"), nil)
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Request-ID", "spoofed-id")
	req.Header.Set("X-Forwarded-Proto", "https")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := u.lastHeader()
	if xff := got.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "127.0.0.1" {
		t.Errorf("untrusted peer: X-Forwarded-For = %q, want [127.0.0.1]", xff)
	}
	if id := got.Get("X-Request-ID"); id == "spoofed-id" || len(id) != 32 {
		t.Errorf("untrusted peer: X-Request-ID = %q, want a fresh 32-digit id", id)
	}
	if p := got.Get("X-Forwarded-Proto"); p != "http" {
		t.Errorf("X-Forwarded-Proto = %q, want http", p)
	}
	if h := got.Get("X-Forwarded-Host"); h != untrusted.addr {
		t.Errorf("X-Forwarded-Host = %q, want %q", h, untrusted.addr)
	}

	// Two X-Forwarded-For lines from an untrusted peer: neither survives.
	rawRoundTrip(t, untrusted.addr, "GET /x HTTP/1.1\r\nHost: edge\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7\r\nConnection: close\r\n\r\n")
	if xff := u.lastHeader().Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "127.0.0.1" {
		t.Errorf("two spoofed lines: X-Forwarded-For = %q, want [127.0.0.1]", xff)
	}

	trusted := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) { c.TrustedProxies = []string{"127.0.0.0/8"} })
	rawRoundTrip(t, trusted.addr, "GET /x HTTP/1.1\r\nHost: edge\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n")
	if xff := u.lastHeader().Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "198.51.100.1, 203.0.113.9, 127.0.0.1" {
		t.Errorf("trusted, two lines: X-Forwarded-For = %q, want one list of all three", xff)
	}
	req, _ = http.NewRequest("GET", trusted.url("/x"), nil)
	req.Header.Set("x-forwarded-for", "203.0.113.7") // lower case must be found too
	req.Header.Set("X-Request-ID", "abc-123")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got = u.lastHeader()
	if xff := got.Get("X-Forwarded-For"); xff != "203.0.113.7, 127.0.0.1" {
		t.Errorf("trusted peer: X-Forwarded-For = %q, want the chain extended", xff)
	}
	if id := got.Get("X-Request-ID"); id != "abc-123" {
		t.Errorf("trusted peer: X-Request-ID = %q, want it kept", id)
	}
}

func TestEdgeErrors(t *testing.T) {
	slow := newUpstream(t)
	// The upstream never answers (until the test ends), so the 504 owes
	// nothing to how late a timer fires on a busy machine.
	never := newGate(t)
	slow.handler = func(w http.ResponseWriter, r *http.Request) { <-never.ch }
	e := startEdge(t, []*testUpstream{slow}, nil, func(c *config.Edge) {
		c.Timeouts.Upstream = config.Duration(200 * time.Millisecond)
		c.Limits.MaxBodyBytes = 1024
		c.Routes = []config.Route{{Name: "api", Match: config.Match{PathPrefix: "/api"}}, {Name: "games", Match: config.Match{PathPrefix: "/games"}}}
		// One probe, at the start: the stopped upstream below stays up for
		// the 502 until the test itself takes it down for the 503, so no
		// probe can race the request (the prober is tested on its own).
		c.HealthCheck.Interval = config.Duration(time.Hour)
		c.HealthCheck.Timeout = config.Duration(time.Second)
	})

	type errBody struct {
		Error     string `json:"error"`
		RequestID string `json:"request_id"`
	}
	check := func(name string, resp *http.Response, wantStatus int, wantJSON bool, wantText string) {
		t.Helper()
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != wantStatus {
			t.Errorf("%s: status %d, want %d (%s)", name, resp.StatusCode, wantStatus, body)
			return
		}
		if wantJSON {
			var eb errBody
			if err := json.Unmarshal(body, &eb); err != nil || eb.RequestID == "" || !strings.Contains(eb.Error, wantText) {
				t.Errorf("%s: body %s, want JSON error containing %q with a request_id", name, body, wantText)
			}
			if eb.RequestID != resp.Header.Get("X-Request-ID") {
				t.Errorf("%s: request_id %q differs from the X-Request-ID header %q", name, eb.RequestID, resp.Header.Get("X-Request-ID"))
			}
		} else if !strings.Contains(string(body), "<html") || !strings.Contains(strings.ToLower(string(body)), wantText) {
			// (a page capitalises the message as a sentence)
			t.Errorf("%s: body %s, want an HTML page containing %q", name, body, wantText)
		}
	}
	get := func(path, accept string) *http.Response {
		req, _ := http.NewRequest("GET", e.url(path), nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	check("504 api", get("/api/games", ""), 504, true, "did not answer in time")
	check("504 page", get("/games", "text/html"), 504, false, "did not answer in time")
	check("404 no route page", get("/nowhere", "text/html,*/*"), 404, false, "no route")
	check("404 no route json", get("/nowhere", "application/json"), 404, true, "no route")

	resp, err := http.Post(e.url("/api/games/1/buy"), "application/json", strings.NewReader(strings.Repeat("x", 4096)))
	if err != nil {
		t.Fatal(err)
	}
	check("413", resp, 413, true, "larger than the edge accepts")

	slow.stop() // connection refused
	check("502 refused", get("/api/games", ""), 502, true, "could not connect")
	// Once it is down, no healthy upstream is left: 503.
	e.p.Pool().Hosts()[0].SetHealthy(false, time.Now())
	check("503 none healthy", get("/games", "text/html"), 503, false, "no healthy")
}

func TestSlowClientHeadersTimeOut(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) { c.Timeouts.ReadHeader = config.Duration(300 * time.Millisecond) })
	b, took := stall(t, e.addr, "GET /x HTTP/1.1\r\nHost: edge\r\n")
	// The request line never got parsed, so the answer is the page a
	// browser gets (no /api/ path to ask for JSON).
	want408(t, "headers never finished", b, took, 300*time.Millisecond, errorHTML)
	if u.count.Load() != 0 {
		t.Error("a half-sent request reached the upstream")
	}
	if got := testCounterVec(t, e, `podium_edge_errors_total{kind="client_timeout"}`); got != "1" {
		t.Errorf(`podium_edge_errors_total{kind="client_timeout"} = %q, want 1`, got)
	}
	// A request fasthttp never finished parsing has no start time; its
	// duration must not be read as 292 years since the zero time.
	sum := testCounterVec(t, e, `podium_edge_request_duration_seconds_sum{route="none"}`)
	if v, err := strconv.ParseFloat(sum, 64); err != nil || v > 60 {
		t.Errorf("request duration sum for the timed-out request = %q, want a few seconds at most", sum)
	}
}

// want408 checks what a stalled client got: the edge's 408, as JSON or as
// its HTML page, with a request ID, and then the connection closed, not
// before the timeout ran out (the timeout counts from the connection's
// start at the latest, which stall's clock starts before).
func want408(t *testing.T, what string, b []byte, took, timeout time.Duration, form errorForm) {
	t.Helper()
	if took < timeout {
		t.Errorf("%s: connection closed after %v, before the %v timeout", what, took, timeout)
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		t.Fatalf("%s: the edge sent %q before closing, want a 408 response: %v", what, b, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("%s: status %d %q, want 408", what, resp.StatusCode, body)
	}
	id := resp.Header.Get("X-Request-ID")
	if len(id) != 32 || !strings.Contains(string(body), id) {
		t.Errorf("%s: X-Request-ID %q, body %q: want a request ID, in the body too", what, id, body)
	}
	if !resp.Close {
		t.Errorf("%s: the 408 does not close the connection", what)
	}
	var eb struct{ Error, RequestID string }
	isJSON := json.Unmarshal(body, &eb) == nil && eb.Error == "the request was not received in time"
	isHTML := strings.Contains(string(body), "<html") && strings.Contains(string(body), "Request timeout") &&
		strings.Contains(string(body), "The request was not received in time.")
	if (form == errorJSON && !isJSON) || (form == errorHTML && !isHTML) || (form == errorEither && !isJSON && !isHTML) {
		t.Errorf("%s: body %q, want the edge's own error (%s) saying the request was not received in time", what, body, form)
	}
}

// errorForm is which of its two forms the edge's own error takes.
type errorForm string

const (
	errorJSON   errorForm = "JSON"
	errorHTML   errorForm = "HTML page"
	errorEither errorForm = "JSON or HTML page"
)

func TestEdgePing(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil)
	for _, tc := range []struct {
		draining bool
		code     int
		body     string
	}{{false, 200, "pong\n"}, {true, 503, "draining\n"}} {
		e.p.SetDraining(tc.draining)
		resp, err := http.Get(e.url("/ping"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || string(body) != tc.body {
			t.Errorf("draining=%v: /ping = %d %q, want %d %q", tc.draining, resp.StatusCode, body, tc.code, tc.body)
		}
	}
	if u.count.Load() != 0 {
		t.Error("the edge's own /ping was forwarded")
	}
}

func TestSlowClientBodyTimesOut(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) { c.Timeouts.ReadBody = config.Duration(300 * time.Millisecond) })
	b, took := stall(t, e.addr, "POST /api/games/1/buy HTTP/1.1\r\nHost: edge\r\nContent-Length: 100\r\n\r\n{\"qu")
	// The edge answers this with its HTML page, not JSON, though the path
	// is /api/: when the body read fails, fasthttp's Request.ReadBody
	// calls req.Reset() (http.go:1751 in v1.78.0), wiping the request line
	// and headers (Accept too) before serveConn calls the ErrorHandler
	// (server.go:2737). HeaderReceived, the one hook that saw the path, is
	// given only the *RequestHeader (server.go:192), not the ctx or the
	// connection, so nothing it learns reaches the ErrorHandler without a
	// side table keyed by that pointer or unsafe. Either form passes here;
	// README states the exception (issue 23).
	want408(t, "body stalled", b, took, 300*time.Millisecond, errorEither)
	if u.count.Load() != 0 {
		t.Error("a half-sent body reached the upstream")
	}
}

func TestPanicAnswers500AndEdgeServesOn(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil)
	h := e.p.Pool().Hosts()[0]
	good := h.Transport
	h.Transport = nil // forward panics on the nil transport
	r := do(t, "GET", e.url("/api/games"))
	if r.code != 500 || !strings.Contains(r.body, `"request_id"`) {
		t.Errorf("a panicking request got %d %q, want the edge's JSON 500", r.code, r.body)
	}
	h.Transport = good
	if r := do(t, "GET", e.url("/x")); r.code != 200 {
		t.Errorf("after a recovered panic the edge answered %d, want 200", r.code)
	}
}

// stall sends a request that never finishes and reads until the edge
// closes the connection; it returns what the edge answered and how long
// the connection stayed open. The 30 s bound only ends a test whose edge
// never closes.
func stall(t *testing.T, addr, partial string) ([]byte, time.Duration) {
	t.Helper()
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, partial)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the edge kept a stalled request's connection open 30 s; got %q", b)
	}
	return b, time.Since(start)
}
