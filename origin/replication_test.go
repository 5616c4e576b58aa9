package origin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// These tests stop and pause nodes of the shared cluster; each restores
// what it changed in t.Cleanup, and none runs in parallel.

func restoreNode(t *testing.T, node string) {
	t.Cleanup(func() {
		clusterCmd(t, "start-node", node)
		clusterCmd(t, "wait")
	})
}

func getGameAPI(t *testing.T, url string, id int64, headers ...string) (Game, response) {
	t.Helper()
	r := do(t, "GET", fmt.Sprintf("%s/api/games/%d", url, id), "", headers...)
	var g Game
	if r.Status == 200 {
		if err := json.Unmarshal(r.Body, &g); err != nil {
			t.Fatalf("game body %s: %v", r.Body, err)
		}
	}
	return g, r
}

// fan is the buyer of a test's purchases of game: an email of the game's
// own, because what a buyer may do is counted across games (the keys per
// hour), and across runs of the suite under -count.
func fan(game int64) string { return fmt.Sprintf("fan-g%d@example.com", game) }

func buyAPI(t *testing.T, url string, id int64, qty int, headers ...string) response {
	t.Helper()
	headers = append(headers, "Content-Type", "application/json")
	return do(t, "POST", fmt.Sprintf("%s/api/games/%d/buy", url, id), fmt.Sprintf(`{"quantity": %d, "email": %q}`, qty, fan(id)), headers...)
}

func TestReadsSurviveAStoppedReplica(t *testing.T) {
	s := startServer(t, nil)
	game := createGame(t, 50)
	restoreNode(t, "replica1")
	clusterCmd(t, "stop-node", "replica1")

	for i := range 20 {
		for _, path := range []string{fmt.Sprintf("/api/games/%d", game), "/api/games?limit=5", "/games/1"} {
			if r := do(t, "GET", s.URL+path, ""); r.Status != 200 {
				t.Fatalf("read %d of %s with a replica stopped: %d %s", i, path, r.Status, r.Body)
			}
		}
	}
	s.CheckDatabases(context.Background())
	if r := do(t, "GET", s.URL+"/ping", ""); r.Status != 200 {
		t.Errorf("/ping with one replica stopped: %d %s", r.Status, r.Body)
	}
	if got := metricValue(t, s.m.reads.WithLabelValues("replica")); got == 0 {
		t.Error("no read was answered by the remaining replica")
	}
	if r := buyAPI(t, s.URL, game, 1); r.Status != http.StatusCreated {
		t.Errorf("purchase with a replica stopped: %d %s", r.Status, r.Body)
	}
}

func TestPrimaryStoppedThenRestarted(t *testing.T) {
	s := startServer(t, func(c *Config) { c.HealthInterval = 200 * time.Millisecond })
	game := createGame(t, 10)
	if r := buyAPI(t, s.URL, game, 2); r.Status != http.StatusCreated {
		t.Fatalf("purchase before the outage: %d %s", r.Status, r.Body)
	}
	// Let the replicas have the purchase before the primary goes.
	var pos string
	if err := tc.primaryDB.QueryRow("SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, pos)

	// A fan opens the buy form before the outage and submits it during.
	formURL := fmt.Sprintf("%s/games/%d/buy", s.URL, game)
	form := openBuyForm(t, formURL, "")

	restoreNode(t, "primary")
	clusterCmd(t, "stop-node", "primary")
	s.CheckDatabases(context.Background())

	// Purchases answer 503 clearly, with the request id, and write nothing.
	outageKey := fmt.Sprintf("outage-%d", game)
	for _, key := range []string{"", outageKey} {
		headers := []string{"X-Request-ID", "outage-1"}
		if key != "" {
			headers = append(headers, "Idempotency-Key", key)
		}
		r := buyAPI(t, s.URL, game, 1, headers...)
		var e errorBody
		if r.Status != http.StatusServiceUnavailable || jsonStrict(r.Body, &e) != nil ||
			!strings.Contains(e.Error, "unavailable") || e.RequestID != "outage-1" || r.Header.Get("Retry-After") == "" {
			t.Fatalf("purchase with the primary down (key %q): %d %s, Retry-After %q", key, r.Status, r.Body, r.Header.Get("Retry-After"))
		}
	}
	page := form.submit(t, formURL, url.Values{"quantity": {"1"}, "email": {fan(game)}})
	if page.Status != http.StatusServiceUnavailable || !strings.Contains(string(page.Body), "Tickets are briefly unavailable") {
		t.Errorf("buy form with the primary down: %d\n%s", page.Status, page.Body)
	}

	// Reads keep coming from the replicas.
	before := metricValue(t, s.m.reads.WithLabelValues("replica"))
	for range 10 {
		g, r := getGameAPI(t, s.URL, game)
		if r.Status != 200 || g.Remaining != 8 {
			t.Fatalf("read with the primary down: %d %s, want 200 with 8 left", r.Status, r.Body)
		}
	}
	if r := do(t, "GET", s.URL+"/games", ""); r.Status != 200 {
		t.Errorf("/games with the primary down: %d", r.Status)
	}
	if got := metricValue(t, s.m.reads.WithLabelValues("replica")) - before; got < 11 {
		t.Errorf("%v reads answered by replicas, want all 11", got)
	}
	if r := do(t, "GET", s.URL+"/ping", ""); r.Status != 200 {
		t.Errorf("/ping with replicas up and the primary down: %d %s", r.Status, r.Body)
	}

	// The primary comes back; the same origin recovers on its own.
	clusterCmd(t, "start-node", "primary")
	deadline := time.Now().Add(30 * time.Second)
	var r response
	for time.Now().Before(deadline) {
		r = buyAPI(t, s.URL, game, 1, "Idempotency-Key", outageKey)
		if r.Status == http.StatusCreated {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.Status != http.StatusCreated {
		t.Fatalf("purchase after the primary restarted: %d %s", r.Status, r.Body)
	}
	remaining, sold, orders, _ := gameState(t, game)
	if remaining != 7 || sold != 3 || orders != 2 {
		t.Errorf("after the outage: remaining %d, sold %d in %d orders; want 7, 3 in 2 (nothing from the 503s)", remaining, sold, orders)
	}
}

func TestReadYourWritesWithReplicationPaused(t *testing.T) {
	// No periodic health check: the paused replicas stay in rotation, so
	// every read below meets a replica that lacks the write it asks for.
	s := startServer(t, func(c *Config) {
		c.HealthInterval = time.Hour
		c.GTIDWait = 200 * time.Millisecond
	})
	const seats = 100
	game := createGame(t, seats)
	// Cleanups run last-registered first: restart the SQL threads, then
	// wait for the replicas to catch up.
	t.Cleanup(func() { clusterCmd(t, "wait") })
	for _, node := range []string{"replica1", "replica2"} {
		t.Cleanup(func() { clusterCmd(t, "sql", node, "START SLAVE SQL_THREAD") })
		clusterCmd(t, "sql", node, "STOP SLAVE SQL_THREAD")
	}

	for i := 1; i <= 15; i++ {
		// 15 fans: one buyer may hold at most DefaultMaxPerBuyer seats.
		r := buyAPIAs(t, s.URL, game, 1, fmt.Sprintf("fan%d@example.com", i))
		gtid := r.Header.Get(GTIDHeader)
		if r.Status != http.StatusCreated || !validGTID(gtid) {
			t.Fatalf("purchase %d: %d %s, GTID %q", i, r.Status, r.Body, gtid)
		}
		g, gr := getGameAPI(t, s.URL, game, GTIDHeader, gtid)
		if gr.Status != 200 || g.Remaining != int64(seats-i) {
			t.Fatalf("read %d with GTID %s: %d, remaining %d, want %d (stale read)", i, gtid, gr.Status, g.Remaining, seats-i)
		}
		if cc := gr.Header.Get("Cache-Control"); cc != "private, no-cache" {
			t.Errorf("read with a GTID has Cache-Control %q", cc)
		}
		page := do(t, "GET", fmt.Sprintf("%s/games/%d", s.URL, game), "", "Cookie", GTIDCookie+"="+gtid)
		if want := fmt.Sprintf("<dd>%d of %d</dd>", seats-i, seats); !strings.Contains(string(page.Body), want) {
			t.Fatalf("page %d with the GTID cookie lacks %q (stale read)", i, want)
		}
	}
	if got := metricValue(t, s.m.gtidWaits.WithLabelValues("timeout")); got < 15 {
		t.Errorf("%v GTID waits timed out, want every one of the 30 reads to have met a paused replica", got)
	}
	// Without the GTID the same read is stale: the replicas really are
	// behind, so the checks above were not vacuous.
	if g, _ := getGameAPI(t, s.URL, game); g.Remaining != seats {
		t.Errorf("read without GTID from a paused replica: remaining %d, want the stale %d", g.Remaining, seats)
	}
	// Once a health check sees the stopped SQL threads, plain reads go to
	// the primary and are current too.
	s.CheckDatabases(context.Background())
	if g, _ := getGameAPI(t, s.URL, game); g.Remaining != seats-15 {
		t.Errorf("read after the health check: remaining %d, want %d", g.Remaining, seats-15)
	}
}

func TestGracefulShutdownFinishesInFlight(t *testing.T) {
	s, err := New(Config{PrimaryDSN: tc.primary, ReplicaDSNs: tc.replicas, DrainDelay: 300 * time.Millisecond}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, ln) }()
	game := createGame(t, 5)

	// Hold the game's row so that a purchase is in flight for as long as
	// the test wants.
	lock, bought := buyBehindLock(t, url, game, 1)
	for i := 0; metricValue(t, s.m.inFlight) < 1; i++ {
		if i > 500 {
			t.Fatal("the purchase never became in flight")
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel() // as SIGTERM does in podium origin
	var ping response
	for i := 0; ; i++ {
		ping, err = doErr("GET", url+"/ping", "")
		if err == nil && ping.Status == http.StatusServiceUnavailable {
			break
		}
		if i > 100 {
			t.Fatalf("/ping after shutdown began: %+v, %v; want 503 draining", ping, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if string(ping.Body) != "draining\n" {
		t.Errorf("/ping while draining: %q", ping.Body)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned with a purchase in flight: %v", err)
	case <-time.After(400 * time.Millisecond):
	}
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	if r := <-bought; r.Status != http.StatusCreated {
		t.Errorf("in-flight purchase across shutdown: %d %s", r.Status, r.Body)
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("the listener still accepts after shutdown")
	}
}

// metricValue reads a counter or gauge of the server's own registry.
func metricValue(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// A health check that times out once does not take a node out of use: a
// frozen primary (SIGSTOP: it holds its connections and answers nothing,
// as a host does under a storm) stays in use after one slow check, and
// is out after the second. A refused connection takes it out at once
// (TestPrimaryStoppedThenRestarted).
func TestOneSlowHealthCheckIsNotAnOutage(t *testing.T) {
	// The health loop's own checks wait an hour: the test runs each one.
	s := startServer(t, func(c *Config) { c.HealthInterval = time.Hour }) // returns after Run's first check
	b, err := os.ReadFile(filepath.Join(tc.stateDir, "primary", "mysqld.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// From a check that passed: on a busy machine Run's first check may
	// itself have timed out, and counts.
	for i := 0; ; i++ {
		s.CheckDatabases(context.Background())
		s.db.checkMu.Lock()
		n := s.db.primaryTimeouts
		s.db.checkMu.Unlock()
		if n == 0 {
			break
		}
		if i == 10 {
			t.Fatalf("the primary's check timed out 10 times before the test froze it")
		}
	}
	thaw := func() { syscall.Kill(pid, syscall.SIGCONT) }
	t.Cleanup(thaw)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// The stop is delivered asynchronously: wait until the kernel says so.
	for i := 0; ; i++ {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		// pid (comm) state ...: the state follows the last ')'.
		if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "T" {
			break
		}
		if i == 500 {
			t.Fatalf("primary (pid %d) not stopped 5 s after SIGSTOP: %s", pid, stat)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ping := func() int {
		r := do(t, "GET", s.URL+"/ping", "")
		return r.Status
	}
	s.CheckDatabases(context.Background())
	if !s.db.primaryUp.Load() || ping() != http.StatusOK {
		t.Fatalf("after one timed-out check: primary up %v, /ping %d; want still up, 200", s.db.primaryUp.Load(), ping())
	}
	if !strings.Contains(s.logs.String(), "primary health check timed out") {
		t.Errorf("the slow check is not logged:\n%s", s.logs.String())
	}
	s.CheckDatabases(context.Background())
	if s.db.primaryUp.Load() {
		t.Errorf("after two timed-out checks in a row the primary is still in use")
	}
	thaw()
	s.CheckDatabases(context.Background())
	if !s.db.primaryUp.Load() {
		t.Errorf("the primary answers again, but is still out of use")
	}
}
