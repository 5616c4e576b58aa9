package proxy

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// roomClock is the waiting rooms' clock in these tests, moved by hand.
type roomClock struct{ ms atomic.Int64 }

func (c *roomClock) NowMs() int64 { return c.ms.Load() }

const roomT0 = 1_790_000_000_000 // a Unix ms well after any opens_at here

// roomEdge is a real edge on loopback with one waiting room "final" on
// /games/*/buy and /api/games/*/buy, admitting rate a second, on a fake
// clock that only the test moves; nothing ticks but tick.
type roomEdge struct {
	*testEdge
	up    *testUpstream
	clock *roomClock
	dir   string // the state dir
	keys  string // the key file
}

func writeRoomKeys(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "final.keys")
	keys := "id " + strings.Repeat("1a", 32) + "\nsign 1 " + strings.Repeat("2b", 32) + "\n"
	if err := os.WriteFile(path, []byte(keys), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startRoomEdge(t *testing.T, up *testUpstream, dir, keys string, clock *roomClock, rate float64, maxActive int) *roomEdge {
	t.Helper()
	build := func(cfg *config.Edge, log *slog.Logger) (*Proxy, error) { return newProxy(cfg, log, clock, 0) }
	e := startEdgeWith(t, []*testUpstream{up}, nil, nil, build, func(cfg *config.Edge) {
		// Each test visitor is an X-Forwarded-For address: the identity.
		cfg.TrustedProxies = []string{"127.0.0.0/8"}
		cfg.WaitingRoomStateDir = dir
		wr := config.WaitingRoom{Name: "final", Paths: []string{"/games/*/buy", "/api/games/*/buy"},
			AdmitPerSecond: rate, KeyFile: keys, Refresh: config.Duration(time.Second), MaxActive: maxActive}
		if maxActive > 0 {
			wr.Session = config.Duration(time.Minute)
		}
		cfg.WaitingRooms = []config.WaitingRoom{wr}
	})
	return &roomEdge{testEdge: e, up: up, clock: clock, dir: dir, keys: keys}
}

// advance moves the clock on by ms in 50 ms ticks.
func (e *roomEdge) advance(ms int64) {
	for end := e.clock.NowMs() + ms; e.clock.NowMs() < end; {
		e.clock.ms.Store(min(e.clock.NowMs()+50, end))
		e.p.tickRooms()
	}
}

// visit is one request's answer.
type visit struct {
	status int
	body   string
	token  string // the Podium-Waiting-Room header of the answer
	cookie string // the podium_wr_final cookie line
	header http.Header
}

// visit sends method path as the visitor at address who, carrying token
// (as the cookie, or with api as the header and asking for JSON).
func (e *roomEdge) visit(t *testing.T, method, path, who, token string, api bool) visit {
	t.Helper()
	req, err := http.NewRequest(method, e.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Forwarded-For", who)
	if api {
		req.Header.Set("Accept", "application/json")
		if token != "" {
			req.Header.Set(waitRoomHeader, token)
		}
	} else if token != "" {
		req.Header.Set("Cookie", "podium_wr_final="+token)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	v := visit{status: resp.StatusCode, body: string(b), token: resp.Header.Get(waitRoomHeader), header: resp.Header}
	for _, c := range resp.Header.Values("Set-Cookie") {
		if strings.HasPrefix(c, "podium_wr_final=") {
			v.cookie = c
		}
	}
	return v
}

var positionRE = regexp.MustCompile(`id="position">(\d+)<`)

func (v visit) position(t *testing.T) int {
	t.Helper()
	m := positionRE.FindStringSubmatch(v.body)
	if m == nil {
		t.Fatalf("no position on the page (status %d):\n%s", v.status, v.body)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func (e *roomEdge) refused(reason string) float64 {
	return testCounter(e.p.metrics.roomRefusedTotal.WithLabelValues("final", reason))
}

// TestWaitingRoomQueue: visitors get the waiting page in arrival order,
// one place per identity however often it asks; positions fall as the
// watermark moves; an admitted visitor's request reaches the origin with
// an admission token that then lets it through.
func TestWaitingRoomQueue(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 2, 0)

	tokens := make([]string, 20)
	for i := range tokens {
		v := e.visit(t, "GET", "/games/7/buy", fmt.Sprintf("203.0.113.%d", i+1), "", false)
		if v.status != 200 || v.position(t) != i+1 || v.token == "" {
			t.Fatalf("visitor %d: status %d, token %q, body:\n%s", i, v.status, v.token, v.body)
		}
		for _, want := range []string{`<meta http-equiv="refresh" content="1">`, `id="ahead">` + strconv.Itoa(i) + "<", "Estimated wait"} {
			if !strings.Contains(v.body, want) {
				t.Errorf("visitor %d: page lacks %q", i, want)
			}
		}
		for _, want := range []string{"HttpOnly", "SameSite=Lax", "path=/", "max-age=21600", "podium_wr_final=" + v.token} {
			if !strings.Contains(strings.ToLower(v.cookie), strings.ToLower(want)) {
				t.Errorf("visitor %d: cookie %q lacks %q", i, v.cookie, want)
			}
		}
		if cc := v.header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("waiting page Cache-Control %q, want no-store", cc)
		}
		tokens[i] = v.token
		clock.ms.Add(1)
	}
	// 100 tabs of visitor 0 without the cookie: one place, the first.
	for i := range 100 {
		clock.ms.Add(1)
		if v := e.visit(t, "GET", "/games/7/buy", "203.0.113.1", "", false); v.position(t) != 1 {
			t.Fatalf("tab %d: position %d, want the first place back", i, v.position(t))
		}
	}
	if q := e.p.state.Load().rooms[0].rt.gate.Queued(); q < 19.5 || q > 20.5 {
		t.Fatalf("queue %v after 20 visitors and 100 tabs, want 20", q)
	}
	if n := e.up.count.Load(); n != 0 {
		t.Fatalf("%d requests reached the origin while everyone waits", n)
	}

	// Past the hold (refresh 1 s + 1 s) and the settle time (2 s), 2/s.
	e.advance(4_000)
	last := e.visit(t, "GET", "/games/7/buy", "203.0.113.20", tokens[19], false).position(t)
	admitted := -1
	for step := 0; step < 40 && admitted < 0; step++ {
		e.advance(250)
		v := e.visit(t, "GET", "/games/7/buy", "203.0.113.1", tokens[0], false)
		if v.status == 200 && strings.Contains(v.body, "hello from") {
			admitted = step
			if !strings.Contains(v.cookie, "max-age=600") || v.token == "" || v.token == tokens[0] {
				t.Fatalf("admission: cookie %q, token %q; want a new token for the 10 min session", v.cookie, v.token)
			}
			tokens[0] = v.token
		}
	}
	if admitted < 0 {
		t.Fatal("the first visitor was never admitted")
	}
	// The admission token passes, again and again, without a new token.
	for range 3 {
		if v := e.visit(t, "GET", "/games/7/buy", "203.0.113.1", tokens[0], false); v.status != 200 || !strings.Contains(v.body, "hello from") {
			t.Fatalf("admitted visitor: status %d\n%s", v.status, v.body)
		}
	}
	e.advance(1_000)
	if now := e.visit(t, "GET", "/games/7/buy", "203.0.113.20", tokens[19], false).position(t); now >= last {
		t.Errorf("the last visitor's position went from %d to %d as the watermark moved", last, now)
	}
	if got := testCounter(e.p.metrics.roomAdmittedTotal.WithLabelValues("final")); got != 1 {
		t.Errorf("admitted_total = %v, want 1", got)
	}
	// Unguarded paths never wait.
	if v := e.visit(t, "GET", "/games/7", "203.0.113.9", "", false); v.status != 200 || !strings.Contains(v.body, "hello from") {
		t.Errorf("an unguarded path: status %d", v.status)
	}
}

// TestWaitingRoomTokens: a forged token, another visitor's copied token
// and a tampered cookie are never admitted, are counted by reason, and
// place the visitor anew, behind the queue; an API client gets 429 JSON
// with Retry-After and the same facts.
func TestWaitingRoomTokens(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 1000, 0)
	a := e.visit(t, "GET", "/games/1/buy", "198.51.100.1", "", false).token
	clock.ms.Add(10)
	b := e.visit(t, "GET", "/games/1/buy", "198.51.100.2", "", false).token
	e.advance(5_000) // both admitted now
	// The attacker arrives late and tries A's token, a forged one (a MAC
	// byte changed), a tampered one (a place byte changed, moving it
	// ahead) and a malformed one. Each is changed in its decoded bytes
	// and encoded again: flipping a bit of a base64 character can make it
	// invalid base64, which is refused as malformed, not as forged.
	raw, err := base64.RawURLEncoding.DecodeString(a)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(i int) string {
		b := slices.Clone(raw)
		b[i] ^= 0x40
		return base64.RawURLEncoding.EncodeToString(b)
	}
	for _, tc := range []struct{ name, token, reason string }{
		{"copied", a, "copied"},
		{"forged", edit(len(raw) - 1), "bad_mac"},
		{"tampered", edit(len(raw) / 2), "bad_mac"},
		{"malformed", a[:len(a)-2] + "!!", "malformed"},
	} {
		before := e.refused(tc.reason)
		v := e.visit(t, "POST", "/api/games/1/buy", "198.51.100.66", tc.token, true)
		if v.status != 429 || v.header.Get("Retry-After") != "1" {
			t.Errorf("%s token: status %d, Retry-After %q; want 429 and 1", tc.name, v.status, v.header.Get("Retry-After"))
		}
		var info waitInfo
		if err := json.Unmarshal([]byte(v.body), &info); err != nil || info.Room != "final" || info.Status != "waiting" || info.Position < 1 || info.EstimatedWaitSeconds < 1 {
			t.Errorf("%s token: JSON %s (%v)", tc.name, v.body, err)
		}
		if got := e.refused(tc.reason); got != before+1 {
			t.Errorf("%s token: refused{reason=%s} went %v -> %v, want +1", tc.name, tc.reason, before, got)
		}
	}
	if n := e.up.count.Load(); n != 0 {
		t.Fatalf("%d requests with refused tokens reached the origin", n)
	}
	// B's own token, as the header, gets B in.
	if v := e.visit(t, "POST", "/api/games/1/buy", "198.51.100.2", b, true); v.status != 200 || v.token == "" {
		t.Errorf("B with its own token: status %d %s", v.status, v.body)
	}
}

// TestWaitingRoomAdmin: pause holds everyone, resume lets them in, close
// answers sold out (409) and admits nobody; a rate change applies; bad
// admin input is 400 and an unknown room 404.
func TestWaitingRoomAdmin(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	e := startRoomEdge(t, newUpstream(t), dir, writeRoomKeys(t, dir), clock, 100, 0)
	admin := startAdmin(t, e.testEdge)
	post := func(path string) (int, string) {
		resp, err := http.Post(admin+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tok := e.visit(t, "GET", "/games/1/buy", "192.0.2.1", "", false).token
	if code, body := post("/rooms/final/pause"); code != 200 || !strings.Contains(body, `"status":"paused"`) {
		t.Fatalf("pause: %d %s", code, body)
	}
	e.advance(6_000)
	v := e.visit(t, "GET", "/games/1/buy", "192.0.2.1", tok, false)
	if v.status != 200 || !strings.Contains(v.body, "paused") || strings.Contains(v.body, "hello from") {
		t.Fatalf("paused: status %d\n%s", v.status, v.body)
	}
	post("/rooms/final/resume")
	e.advance(200)
	if v := e.visit(t, "GET", "/games/1/buy", "192.0.2.1", tok, false); !strings.Contains(v.body, "hello from") {
		t.Fatalf("resumed: not admitted\n%s", v.body)
	}
	if code, body := post("/rooms/final/rate?admit_per_second=7.5"); code != 200 || !strings.Contains(body, `"admit_per_second":7.5`) {
		t.Errorf("rate: %d %s", code, body)
	}
	code, body := get(t, admin+"/rooms")
	if code != 200 || !strings.Contains(body, `"name":"final"`) || !strings.Contains(body, `"queue_length"`) || !strings.Contains(body, `"watermark_ms"`) {
		t.Errorf("GET /rooms: %d %s", code, body)
	}
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/rooms/final/rate?admit_per_second=0", 400},
		{"/rooms/final/rate?admit_per_second=abc", 400},
		{"/rooms/final/rate", 400},
		{"/rooms/final/rate?admit_per_second=NaN", 400},
		{"/rooms/nope/pause", 404},
		{"/rooms/final/explode", 404},
	} {
		if code, body := post(tc.path); code != tc.code || !strings.Contains(body, `"error"`) {
			t.Errorf("POST %s: %d %s, want %d with an error", tc.path, code, body, tc.code)
		}
	}
	if code, _ := get(t, admin+"/rooms/final/pause"); code != 405 {
		t.Errorf("GET on an action: %d, want 405", code)
	}
	post("/rooms/final/close")
	before := e.up.count.Load()
	v = e.visit(t, "GET", "/games/1/buy", "192.0.2.2", "", false)
	if v.status != 409 || !strings.Contains(v.body, "Sold out") {
		t.Errorf("closed, page: status %d\n%s", v.status, v.body)
	}
	if v := e.visit(t, "POST", "/api/games/1/buy", "192.0.2.3", "", true); v.status != 409 || !strings.Contains(v.body, `"status":"sold_out"`) {
		t.Errorf("closed, API: status %d %s", v.status, v.body)
	}
	if e.up.count.Load() != before {
		t.Error("a closed room let a request through")
	}
}

// TestWaitingRoomRestart: a new edge on the same state dir and keys keeps
// the order (the places admitted before stay admitted, the waiting stay
// waiting, behind) and holds its watermark until the visitors have come
// back; a place admitted longer ago than the claim window is spent.
func TestWaitingRoomRestart(t *testing.T) {
	clock := &roomClock{}
	clock.ms.Store(roomT0)
	dir := t.TempDir()
	keys := writeRoomKeys(t, dir)
	up := newUpstream(t)
	e := startRoomEdge(t, up, dir, keys, clock, 2, 0)
	tokens := make([]string, 20)
	for i := range tokens {
		tokens[i] = e.visit(t, "GET", "/games/1/buy", fmt.Sprintf("192.0.2.%d", i+1), "", false).token
		clock.ms.Add(1)
	}
	e.advance(4_000 + 2_000) // about four admitted
	status := func(e *roomEdge, i int) int {
		v := e.visit(t, "GET", "/games/1/buy", fmt.Sprintf("192.0.2.%d", i+1), tokens[i], false)
		if strings.Contains(v.body, "hello from") {
			return -1
		}
		return v.position(t)
	}
	if status(e, 0) != -1 || status(e, 19) == -1 {
		t.Fatal("before the restart: want the first admitted and the last waiting")
	}
	e.p.Server().Shutdown()
	e.p.Close()

	e2 := startRoomEdge(t, up, dir, keys, clock, 2, 0)
	// Visitor 1 was admitted before the restart: still admitted.
	if status(e2, 1) != -1 {
		t.Error("after the restart, a place admitted before is waiting again")
	}
	// The waiting come back in the hold; the watermark does not jump past them.
	for i := 5; i < 20; i++ {
		status(e2, i)
	}
	e2.advance(2_500)
	if status(e2, 19) == -1 {
		t.Error("the last visitor was admitted at once after the restart: the watermark jumped past the queue")
	}
	waiting := 0
	for i := 5; i < 20; i++ {
		if status(e2, i) != -1 {
			waiting++
		}
	}
	if waiting < 10 {
		t.Errorf("after the restart and hold, only %d of 15 still wait at 2/s", waiting)
	}
	// Long after: visitor 2's admission lapsed unclaimed; its place is spent.
	before := e2.refused("spent")
	clock.ms.Add(6 * 60_000)
	if status(e2, 2) == -1 || e2.refused("spent") != before+1 {
		t.Errorf("a place admitted 6 minutes ago (claim window 5 min) was not refused as spent")
	}
}
