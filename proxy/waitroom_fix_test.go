package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/podium-edge/podium/config"
	"html/template"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestWaitingRoomReplayAdmitsOnce: a place token shown again and again
// during its claim window (tabs, a script replaying the cookie) gets the
// identity's one admission back; it takes one max_active slot and counts
// once, so the next visitor still gets in and the one after waits.
func TestWaitingRoomReplayAdmitsOnce(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 1000, 2)
	who := []string{"198.51.100.1", "198.51.100.2", "198.51.100.3"}
	var toks []string
	for _, w := range who {
		toks = append(toks, e.visit(t, "GET", "/games/1/buy", w, "", false).token)
		clock.ms.Add(1)
	}
	e.advance(5_000)   // all three places passed
	for i := range 3 { // the first visitor and two replays of its place token
		v := e.visit(t, "GET", "/games/1/buy", who[0], toks[0], false)
		if v.status != 200 || !strings.Contains(v.body, "hello from") {
			t.Fatalf("visitor A, request %d with its place token: status %d, want admitted\n%s", i, v.status, v.body)
		}
	}
	if v := e.visit(t, "GET", "/games/1/buy", who[1], toks[1], false); !strings.Contains(v.body, "hello from") {
		t.Fatalf("visitor B: not admitted with max_active 2 and A inside once\n%s", v.body)
	}
	if v := e.visit(t, "GET", "/games/1/buy", who[2], toks[2], false); strings.Contains(v.body, "hello from") {
		t.Fatal("visitor C admitted past max_active 2")
	}
	if got := testCounter(e.p.metrics.roomAdmittedTotal.WithLabelValues("final")); got != 2 {
		t.Errorf("admitted_total = %v after A (3 requests) and B, want 2", got)
	}
	if got := e.p.state.Load().rooms[0].rt.inside(clock.NowMs()); got != 2 {
		t.Errorf("inside = %d, want 2", got)
	}
}

// TestWaitingRoomResumeNoBurst: after a ten-minute pause, resuming admits
// at the room's rate, not the pause's budget at once.
func TestWaitingRoomResumeNoBurst(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 1, 0)
	for i := range 20 {
		e.visit(t, "GET", "/games/1/buy", fmt.Sprintf("198.51.100.%d", i+1), "", false)
		clock.ms.Add(1)
	}
	rt := e.p.state.Load().rooms[0].rt
	rt.status.Store(roomPaused)
	e.advance(10 * 60_000)
	rt.status.Store(roomOpen)
	before := rt.gate.Passed()
	e.advance(1_000)
	if got := rt.gate.Passed() - before; got > 2 {
		t.Errorf("1 s after a 10 min pause at 1/s, %.1f places passed, want at most 2", got)
	}
}

// TestWaitingRoomClosedMetrics: a closed room reports no queue and no
// estimated wait, so the long-wait alert clears after a sell-out.
func TestWaitingRoomClosedMetrics(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 0.01, 0)
	for i := range 5 {
		e.visit(t, "GET", "/games/1/buy", fmt.Sprintf("198.51.100.%d", i+1), "", false)
		clock.ms.Add(1)
	}
	queue := `podium_edge_waitroom_queue_length{room="final"}`
	wait := `podium_edge_waitroom_estimated_wait_seconds{room="final"}`
	if q, w := testCounterVec(t, e.testEdge, queue), testCounterVec(t, e.testEdge, wait); q != "5" || w != "500" {
		t.Fatalf("open room: queue %q, wait %q; want 5 and 500 (5 at 0.01/s)", q, w)
	}
	e.p.state.Load().rooms[0].rt.status.Store(roomClosed)
	if q, w := testCounterVec(t, e.testEdge, queue), testCounterVec(t, e.testEdge, wait); q != "0" || w != "0" {
		t.Errorf("closed room: queue %q, wait %q; want 0 and 0", q, w)
	}
}

// TestWaitingRoomFailedReloadChangesNothing: a reload whose second room
// cannot be built (its history cannot be read) is rejected whole: the
// first room keeps its rate, the rate limits keep theirs, and no new
// room runs.
func TestWaitingRoomFailedReloadChangesNothing(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	e := startRoomEdge(t, newUpstream(t), dir, keys, clock, 2, 0)
	// A directory where room semi's history file should be: Load fails.
	if err := os.Mkdir(filepath.Join(dir, "semi.1.log"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := *e.p.Config()
	cfg.RateLimits = maps.Clone(cfg.RateLimits)
	if cfg.RateLimits == nil {
		cfg.RateLimits = map[string]config.RateLimit{}
	}
	cfg.RateLimits["wr_fix"] = config.RateLimit{Rate: 3, Burst: 3}
	cfg.WaitingRooms = []config.WaitingRoom{cfg.WaitingRooms[0],
		{Name: "semi", Paths: []string{"/games/*/semi"}, AdmitPerSecond: 5, KeyFile: keys}}
	cfg.WaitingRooms[0].AdmitPerSecond = 50
	if err := cfg.Validate("reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Reload(&cfg); err == nil || !strings.Contains(err.Error(), "semi") {
		t.Fatalf("Reload = %v, want an error naming room semi", err)
	}
	if got := e.p.state.Load().rooms[0].rt.gate.Rate(); got != 2 {
		t.Errorf("room final's rate after the failed reload = %v, want 2", got)
	}
	if e.p.limits.Limiter("wr_fix") != nil {
		t.Error("the failed reload's new rate limit policy is in force")
	}
	e.p.roomsMu.Lock()
	defer e.p.roomsMu.Unlock()
	if len(e.p.rooms) != 1 || e.p.rooms["semi"] != nil {
		t.Errorf("rooms after the failed reload: %v, want final only", e.p.rooms)
	}
}

// stallClock is a room clock that, once armed, stalls the next reader
// (the ticker, inside a tick) until released.
type stallClock struct {
	roomClock
	armed            atomic.Bool
	entered, release chan struct{}
}

func (c *stallClock) NowMs() int64 {
	if c.armed.CompareAndSwap(true, false) {
		close(c.entered)
		<-c.release
	}
	return c.roomClock.NowMs()
}

// TestWaitingRoomCloseWaitsForTick: Close does not return while a tick
// is under way, and once it has, no history file is open (a tick that
// ended after Close appended, reopening the file and leaking it).
func TestWaitingRoomCloseWaitsForTick(t *testing.T) {
	clock := &stallClock{entered: make(chan struct{}), release: make(chan struct{})}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	build := func(cfg *config.Edge, log *slog.Logger) (*Proxy, error) {
		return newProxy(cfg, log, clock, time.Millisecond)
	}
	e := startEdgeWith(t, []*testUpstream{newUpstream(t)}, nil, nil, build, func(cfg *config.Edge) {
		cfg.WaitingRoomStateDir = dir
		cfg.WaitingRooms = []config.WaitingRoom{{Name: "final", Paths: []string{"/games/*/buy"}, AdmitPerSecond: 5, KeyFile: keys, Refresh: config.Duration(time.Second)}}
	})
	// Past the hold: the stalled tick moves the watermark and appends.
	clock.ms.Add(10_000)
	clock.armed.Store(true)
	<-clock.entered
	closed := make(chan struct{})
	go func() { e.p.Close(); close(closed) }()
	select {
	case <-closed:
		t.Error("Close returned while a tick was under way")
	case <-time.After(300 * time.Millisecond): // Close, fixed, waits for ever here
	}
	close(clock.release)
	<-closed
	if open := openFiles(t, filepath.Join(dir, "final.1.log")); open != 0 {
		t.Errorf("%d descriptors of the history file open after Close", open)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "final.1.log")); err != nil || len(data) == 0 {
		t.Errorf("the tick under way at Close recorded nothing: %q, %v", data, err)
	}
}

// openFiles counts this process's descriptors open on path (Linux's
// /proc/self/fd; elsewhere the check is not made).
func openFiles(t *testing.T, path string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Logf("no /proc/self/fd (%v): open descriptors not counted", err)
		return 0
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && l == path {
			n++
		}
	}
	return n
}

// TestWaitingRoomHygiene: the room's cookie is Secure when a trusted
// proxy says the client came over HTTPS (and not otherwise); the room's
// cookie and header never reach the origin, while other cookies do; a
// CORS preflight on a guarded path is not queued.
func TestWaitingRoomHygiene(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 1000, 0)
	send := func(method, who string, h map[string]string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, e.url("/games/1/buy"), nil)
		req.Header.Set("X-Forwarded-For", who)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	secure := func(resp *http.Response) bool {
		for _, c := range resp.Cookies() {
			if c.Name == "podium_wr_final" {
				return c.Secure
			}
		}
		t.Fatal("no podium_wr_final cookie")
		return false
	}
	if secure(send("GET", "192.0.2.1", nil)) {
		t.Error("plain HTTP: the room cookie is Secure")
	}
	resp := send("GET", "192.0.2.2", map[string]string{"X-Forwarded-Proto": "https"})
	if !secure(resp) {
		t.Error("X-Forwarded-Proto: https from a trusted peer: the room cookie is not Secure")
	}
	tok := resp.Header.Get(waitRoomHeader)
	e.advance(5_000)
	// Admitted, with the token as cookie and header beside another cookie.
	resp = send("GET", "192.0.2.2", map[string]string{"Cookie": "theme=dark; podium_wr_final=" + tok + "; lang=fr", waitRoomHeader: tok})
	if resp.StatusCode != 200 || e.up.count.Load() != 1 {
		t.Fatalf("admitted visitor: status %d, origin requests %d", resp.StatusCode, e.up.count.Load())
	}
	h := e.up.lastHeader()
	if c := h.Get("Cookie"); strings.Contains(c, "podium_wr_") || !strings.Contains(c, "theme=dark") || !strings.Contains(c, "lang=fr") {
		t.Errorf("the origin got Cookie %q; want theme and lang without podium_wr_final", c)
	}
	if v := h.Get(waitRoomHeader); v != "" {
		t.Errorf("the origin got %s: %q", waitRoomHeader, v)
	}
	// A preflight has no cookie: it goes on, not to the queue.
	resp = send("OPTIONS", "192.0.2.3", map[string]string{"Origin": "https://tickets.example", "Access-Control-Request-Method": "POST"})
	if resp.StatusCode == 429 || resp.Header.Get(waitRoomHeader) != "" || e.up.count.Load() != 2 {
		t.Errorf("preflight: status %d, token %q, origin requests %d; want it passed to the origin", resp.StatusCode, resp.Header.Get(waitRoomHeader), e.up.count.Load())
	}
}

// TestWaitingRoomIdentity: a room knows a visitor by address whatever
// the route's rate limit keys on: a header chosen per request gets no
// second place, the page and API paths of one room agree (a visitor's
// own token from one is not refused as copied on the other), and the
// addresses of one IPv6 /64 share a place while another /64 has its own.
func TestWaitingRoomIdentity(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	build := func(cfg *config.Edge, log *slog.Logger) (*Proxy, error) { return newProxy(cfg, log, clock, 0) }
	te := startEdgeWith(t, []*testUpstream{newUpstream(t)}, nil, nil, build, func(cfg *config.Edge) {
		cfg.TrustedProxies = []string{"127.0.0.0/8"}
		cfg.Routes = config.DefaultRoutes() // buy and buy_page limited by policy buy
		cfg.RateLimits = map[string]config.RateLimit{
			"default": {Rate: 1000, Burst: 1000},
			"buy":     {Rate: 1000, Burst: 1000, Key: "header:X-Api-Key"},
		}
		cfg.WaitingRoomStateDir = dir
		cfg.WaitingRooms = []config.WaitingRoom{{Name: "final", Paths: []string{"/games/*/buy", "/api/games/*/buy"},
			AdmitPerSecond: 1, KeyFile: keys, Refresh: config.Duration(time.Second)}}
	})
	e := &roomEdge{testEdge: te, clock: clock, dir: dir, keys: keys}
	post := func(path, who, key, token string) visit {
		t.Helper()
		req, _ := http.NewRequest("POST", e.url(path), nil)
		req.Header.Set("X-Forwarded-For", who)
		req.Header.Set("X-Api-Key", key)
		req.Header.Set("Accept", "application/json")
		if token != "" {
			req.Header.Set(waitRoomHeader, token)
		}
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return visit{status: resp.StatusCode, body: string(b), token: resp.Header.Get(waitRoomHeader)}
	}
	position := func(v visit) int {
		t.Helper()
		var info waitInfo
		if err := json.Unmarshal([]byte(v.body), &info); err != nil {
			t.Fatalf("status %d: %s (%v)", v.status, v.body, err)
		}
		return int(info.Position)
	}
	first := post("/api/games/1/buy", "203.0.113.7", "key-1", "")
	for i := range 5 {
		clock.ms.Add(1)
		if p := position(post("/api/games/1/buy", "203.0.113.7", fmt.Sprintf("key-%d", i+2), "")); p != 1 {
			t.Fatalf("API key %d from the same address: position %d, want the first place again", i+2, p)
		}
	}
	// The page path of the same room, with the API's token: the same
	// visitor, not a copy.
	before := e.refused("copied")
	if v := e.visit(t, "POST", "/games/1/buy", "203.0.113.7", first.token, false); v.position(t) != 1 || e.refused("copied") != before {
		t.Errorf("the API's token on the page path: position %d, copied %v -> %v", v.position(t), before, e.refused("copied"))
	}
	clock.ms.Add(1)
	if p := position(post("/api/games/1/buy", "2001:db8:1:2::1", "k", "")); p != 2 {
		t.Fatalf("an IPv6 visitor: position %d, want 2", p)
	}
	clock.ms.Add(1)
	if p := position(post("/api/games/1/buy", "2001:db8:1:2:ffff::9", "k", "")); p != 2 {
		t.Errorf("another address of the same /64: position %d, want its place, 2", p)
	}
	clock.ms.Add(1)
	if p := position(post("/api/games/1/buy", "2001:db8:1:3::1", "k", "")); p != 3 {
		t.Errorf("another /64: position %d, want 3", p)
	}
}

// TestWaitingRoomControlSurvivesRestart: a room closed (sold out) and
// given a rate through the admin API stays closed, at that rate, on an
// edge restarted on the same state dir; resumed, it stays open; with the
// config's admit_per_second edited, the config's rate wins.
func TestWaitingRoomControlSurvivesRestart(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	up := newUpstream(t)
	post := func(e *roomEdge, path string) {
		t.Helper()
		resp, err := http.Post(startAdmin(t, e.testEdge)+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
		}
	}
	restart := func(e *roomEdge, rate float64) *roomEdge {
		e.p.Server().Shutdown()
		e.p.Close()
		return startRoomEdge(t, up, dir, keys, clock, rate, 0)
	}
	e := startRoomEdge(t, up, dir, keys, clock, 2, 0)
	post(e, "/rooms/final/rate?admit_per_second=7.5")
	post(e, "/rooms/final/close")

	e = restart(e, 2)
	if v := e.visit(t, "GET", "/games/1/buy", "192.0.2.1", "", false); v.status != 409 {
		t.Errorf("after a restart, a closed room answers %d, want 409 sold out", v.status)
	}
	if r := e.p.state.Load().rooms[0].rt.gate.Rate(); r != 7.5 {
		t.Errorf("after a restart, rate %v, want the admin's 7.5", r)
	}
	post(e, "/rooms/final/resume")

	e = restart(e, 2)
	if v := e.visit(t, "GET", "/games/1/buy", "192.0.2.1", "", false); v.status != 200 || !strings.Contains(v.body, "in the queue") {
		t.Errorf("after resume and a restart: status %d, want the waiting page", v.status)
	}
	e = restart(e, 3)
	if r := e.p.state.Load().rooms[0].rt.gate.Rate(); r != 3 {
		t.Errorf("after the config's rate changed to 3, rate %v, want 3", r)
	}
}

// oldWaitingTemplate is the page as html/template wrote it before the
// page was written by hand (review 18, 5): appendWaitingPage must write
// the same bytes.
var oldWaitingTemplate = template.Must(template.New("waiting").Funcs(template.FuncMap{"wait": func(s int64) string {
	switch m := (s + 59) / 60; {
	case s < 60:
		return fmt.Sprintf("%d s", s)
	case m < 60:
		return fmt.Sprintf("about %d min", m)
	default:
		return fmt.Sprintf("about %d h %02d min", m/60, m%60)
	}
}}).Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
{{- if ne .Status "sold_out"}}<meta http-equiv="refresh" content="{{.RefreshSeconds}}">{{end}}
<title>{{if eq .Status "sold_out"}}Sold out{{else}}You are in the queue{{end}} · Podium</title>
<style>body{font-family:system-ui,sans-serif;margin:0;color:#1d2433}header{background:#14213d;color:#fff;padding:1rem 1.5rem;font-weight:700;font-size:1.2rem}main{max-width:36rem;margin:3rem auto;padding:0 1rem}h1{font-size:1.6rem}.card{border:1px solid #d8dce6;border-radius:.5rem;padding:1rem 1.5rem}.big{font-size:2.2rem;font-weight:700;margin:.2rem 0}p.note{color:#667;font-size:.85rem}a{color:#0b57d0}</style></head>
<body><header>Podium · Paris 2024 tickets</header><main>
{{- if eq .Status "sold_out"}}
<h1>Sold out</h1><p class="error">Every ticket for this sale has been sold; the queue is closed.</p><p><a href="/games">Back to the games</a></p>
{{- else}}
<h1>You are in the queue</h1>
<div class="card" role="status">
<p>Your position</p><p class="big" id="position">{{.Position}}</p>
<p><span id="ahead">{{.Ahead}}</span> {{if eq .Ahead 1}}person is{{else}}people are{{end}} ahead of you.
{{- if eq .Status "paused"}} The sale is paused for a moment; your place is kept.{{else}} Estimated wait: <span id="wait">{{wait .EstimatedWaitSeconds}}</span>.{{end}}</p>
</div>
<p>This page refreshes itself in {{.RefreshSeconds}} second{{if ne .RefreshSeconds 1}}s{{end}}. Keep it open: reloading it or opening it in more tabs keeps your place but does not move you ahead.</p>
<p class="note">Queue {{.Room}}</p>
{{- end}}
</main></body></html>
`))

// TestWaitingPageAsTemplate: the hand-written page and JSON are byte for
// byte what html/template and encoding/json wrote, for each status and
// the singular "person is".
func TestWaitingPageAsTemplate(t *testing.T) {
	for _, info := range []waitInfo{
		{Room: "final", Status: "waiting", Position: 13, Ahead: 12, EstimatedWaitSeconds: 7, RefreshSeconds: 5},
		{Room: "final", Status: "waiting", Position: 9000, Ahead: 8999, EstimatedWaitSeconds: 61, RefreshSeconds: 5},
		{Room: "final", Status: "waiting", Position: 90000, Ahead: 89999, EstimatedWaitSeconds: 3900, RefreshSeconds: 30},
		{Room: "semi-2_b", Status: "waiting", Position: 2, Ahead: 1, EstimatedWaitSeconds: 1, RefreshSeconds: 60},
		{Room: "final", Status: "paused", Position: 1, Ahead: 0, EstimatedWaitSeconds: 3, RefreshSeconds: 1},
		{Room: "final", Status: "sold_out"},
	} {
		var want bytes.Buffer
		if err := oldWaitingTemplate.Execute(&want, info); err != nil {
			t.Fatal(err)
		}
		if got := appendWaitingPage(nil, &info); string(got) != want.String() {
			t.Errorf("%+v: page\n%s\nwant\n%s", info, got, want.String())
		}
		wantJSON, _ := json.Marshal(info)
		if got := appendWaitJSON(nil, &info); string(got) != string(wantJSON)+"\n" {
			t.Errorf("%+v: JSON %s, want %s", info, got, wantJSON)
		}
	}
}
