package origin

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// readPrimaryPosition reads the primary's GTID position and its first domain.
func readPrimaryPosition(t *testing.T) (pos string, domain uint32, seq uint64) {
	t.Helper()
	if err := tc.primaryDB.QueryRow("SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		t.Fatal(err)
	}
	p, err := parseGTID(pos)
	if err != nil || len(p) == 0 {
		t.Fatalf("primary position %q: %v", pos, err)
	}
	return pos, p[0].Domain, p[0].Seq
}

func gtidWaitsTotal(t *testing.T, s *testServer) float64 {
	t.Helper()
	var n float64
	for _, r := range []string{"reached", "timeout", "busy"} {
		n += metricValue(t, s.m.gtidWaits.WithLabelValues(r))
	}
	return n
}

// Issue 22.4: any well-formed X-Podium-GTID, such as 99-1-1 (a domain this
// cluster has never written), held a replica connection for the whole
// GTIDWait. A GTID of a domain the cluster does not have, or beyond the
// primary's position, is refused before any replica is asked.
func TestGTIDHeaderOutsideTheClusterIsRefused(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.GTIDWait = 3 * time.Second
		c.QueryTimeout = time.Minute
	})
	game := createGame(t, 10)
	_, domain, seq := readPrimaryPosition(t)
	for _, tt := range []struct{ name, gtid, want string }{
		{"unknown domain", "99-1-1", "domain 99"},
		{"unknown domain beside a known one", fmt.Sprintf("%d-1-1,99-1-1", domain), "domain 99"},
		{"from the future", fmt.Sprintf("%d-1-%d", domain, seq+1_000_000), "not reached"},
		{"largest sequence", fmt.Sprintf("%d-1-18446744073709551615", domain), "not reached"},
		{"sequence past uint64", fmt.Sprintf("%d-1-18446744073709551616", domain), "not a GTID position"},
		{"domain past uint32", "4294967296-1-1", "GTID position"},
		{"one domain twice", fmt.Sprintf("%d-1-1,%d-1-2", domain, domain), "GTID position"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := gtidWaitsTotal(t, s)
			start := time.Now()
			_, r := getGameAPI(t, s.URL, game, GTIDHeader, tt.gtid)
			var e errorBody
			if r.Status != http.StatusBadRequest || jsonStrict(r.Body, &e) != nil || !strings.Contains(e.Error, tt.want) {
				t.Fatalf("GTID %s: %d %s after %s, want 400 saying %q", tt.gtid, r.Status, r.Body, time.Since(start), tt.want)
			}
			if n := gtidWaitsTotal(t, s) - before; n != 0 {
				t.Errorf("GTID %s: %v GTID waits ran, want none", tt.gtid, n)
			}
			// A browser cannot fix a cookie: the page ignores it and
			// answers like one without it.
			page := do(t, "GET", fmt.Sprintf("%s/games/%d", s.URL, game), "", "Cookie", GTIDCookie+"="+tt.gtid)
			if page.Status != 200 || page.Header.Get("Cache-Control") != "public, max-age=2" {
				t.Errorf("page with GTID cookie %s: %d, Cache-Control %q; want it ignored", tt.gtid, page.Status, page.Header.Get("Cache-Control"))
			}
			if n := gtidWaitsTotal(t, s) - before; n != 0 {
				t.Errorf("GTID cookie %s: %v GTID waits ran, want none", tt.gtid, n)
			}
		})
	}
}

// A GTID that another origin just handed out is ahead of what this origin
// last saw of the primary: it asks the primary again, and accepts it.
func TestGTIDFromAnotherOriginIsAccepted(t *testing.T) {
	seller := startServer(t, nil)
	reader := startServer(t, func(c *Config) { c.HealthInterval = time.Hour })
	reader.CheckDatabases(context.Background()) // its last look at the primary, before the sale
	game := createGame(t, 10)
	r := buyAPI(t, seller.URL, game, 2)
	gtid := r.Header.Get(GTIDHeader)
	if r.Status != http.StatusCreated || gtid == "" {
		t.Fatalf("purchase: %d %s, GTID %q", r.Status, r.Body, gtid)
	}
	g, gr := getGameAPI(t, reader.URL, game, GTIDHeader, gtid)
	if gr.Status != 200 || g.Remaining != 8 {
		t.Fatalf("read of another origin's GTID %s: %d %s, want 200 with 8 left", gtid, gr.Status, gr.Body)
	}
	// Several positions at once, as a client that bought on two games
	// through two origins might hold, in any order.
	_, domain, _ := readPrimaryPosition(t)
	if _, gr := getGameAPI(t, reader.URL, game, GTIDHeader, fmt.Sprintf("%s,%d-7-1", gtid, domain+1)); gr.Status != http.StatusBadRequest {
		t.Errorf("a second, unknown domain: %d %s, want 400", gr.Status, gr.Body)
	}
}

// Waits are bounded: with the replicas paused, at most GTIDWaitConns reads
// per replica wait for a GTID at once; the others read from the primary at
// once, and every answer is current.
func TestGTIDWaitsAreBounded(t *testing.T) {
	const perReplica, reads = 2, 12
	s := startServer(t, func(c *Config) {
		c.HealthInterval = time.Hour // the paused replicas stay in rotation
		c.GTIDWait = 30 * time.Second
		c.QueryTimeout = time.Minute
		c.GTIDWaitConns = perReplica
	})
	game := createGame(t, 10)       // both replicas have it, so neither lags now
	do(t, "GET", s.URL+"/ping", "") // Run's own first check is over
	s.CheckDatabases(context.Background())
	for _, r := range s.db.replicas {
		if !r.healthy.Load() {
			t.Fatalf("replica %s not in rotation before the test", r.name)
		}
	}
	t.Cleanup(func() { clusterCmd(t, "wait") })
	for _, node := range []string{"replica1", "replica2"} {
		t.Cleanup(func() { clusterCmd(t, "sql", node, "START SLAVE SQL_THREAD") })
		clusterCmd(t, "sql", node, "STOP SLAVE SQL_THREAD")
	}
	b := buyAPI(t, s.URL, game, 3)
	gtid := b.Header.Get(GTIDHeader)
	if b.Status != http.StatusCreated || gtid == "" {
		t.Fatalf("purchase: %d %s", b.Status, b.Body)
	}

	answers := make(chan response, reads)
	var wg sync.WaitGroup
	for range reads {
		wg.Go(func() {
			r, err := doErr("GET", fmt.Sprintf("%s/api/games/%d", s.URL, game), "", GTIDHeader, gtid)
			if err != nil {
				r = response{Status: -1, Body: []byte(err.Error())}
			}
			answers <- r
		})
	}
	// The reads beyond the replicas' slots go to the primary and answer
	// now, while the others wait for the paused replicas.
	early := reads - 2*perReplica
	for i := range early {
		select {
		case r := <-answers:
			if r.Status != 200 || !strings.Contains(string(r.Body), `"remaining":7`) {
				t.Fatalf("read %d: %d %s, want 200 with 7 left", i, r.Status, r.Body)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of %d reads answered while the replicas are paused; GTID waits are not bounded (busy: %v)",
				i, early, metricValue(t, s.m.gtidWaits.WithLabelValues("busy")))
		}
	}
	if got := metricValue(t, s.m.gtidWaits.WithLabelValues("busy")); got != float64(early) {
		t.Errorf("%v reads found every wait slot taken, want %d", got, early)
	}
	for i, r := range s.db.replicas {
		if inUse := r.db.Stats().InUse; inUse > perReplica {
			t.Errorf("replica %d has %d connections in use, want at most %d", i+1, inUse, perReplica)
		}
	}
	// Let the replicas catch up: the waiting reads answer, current too.
	for _, node := range []string{"replica1", "replica2"} {
		clusterCmd(t, "sql", node, "START SLAVE SQL_THREAD")
	}
	wg.Wait()
	close(answers)
	for r := range answers {
		if r.Status != 200 || !strings.Contains(string(r.Body), `"remaining":7`) {
			t.Errorf("waiting read: %d %s, want 200 with 7 left", r.Status, r.Body)
		}
	}
	if got := metricValue(t, s.m.gtidWaits.WithLabelValues("reached")); got != 2*perReplica {
		t.Errorf("%v waits reached their GTID, want %d", got, 2*perReplica)
	}
}

func TestParseGTID(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // canonical form; "" for an error
	}{
		{"0-1-42", "0-1-42"},
		{"0-1-42,1-2-7", "0-1-42,1-2-7"},
		{"007-01-0042", "7-1-42"},
		{"4294967295-4294967295-18446744073709551615", "4294967295-4294967295-18446744073709551615"},
		{"4294967296-1-1", ""},
		{"0-4294967296-1", ""},
		{"0-1-18446744073709551616", ""},
		{"0-1-1,0-2-2", ""},
		{"", ""}, {"0-1", ""}, {"0-1-42;", ""}, {"0-1-42, 1-2-7", ""}, {"a-b-c", ""}, {"-1-1-1", ""},
		{"0-1-+1", ""}, {"0-1-1,", ""}, {",0-1-1", ""},
		{strings.Repeat("0-1-1,", 20) + "0-1-1", ""},
	} {
		p, err := parseGTID(tt.in)
		got := ""
		if err == nil {
			got = p.String()
		}
		if got != tt.want {
			t.Errorf("parseGTID(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// However many requests present GTIDs the origin has not seen, the primary
// answers one position query at a time: callers that arrived before a
// query began share it, and a caller waits only for a query begun after it
// arrived.
func TestPrimaryPositionRefreshIsShared(t *testing.T) {
	// No health check may refresh the position in the middle: the first
	// is over once the server answers (Run checks before it serves).
	s := startServer(t, func(c *Config) { c.HealthInterval = time.Hour })
	do(t, "GET", s.URL+"/ping", "")
	var running, most, queries atomic.Int32
	gate := make(chan struct{})
	query := func(ctx context.Context) (gtidPos, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		queries.Add(1)
		<-gate
		return s.db.queryPrimaryPosition(ctx)
	}
	const callers = 50
	for phase := 1; phase <= 2; phase++ {
		since := time.Now()
		var started sync.WaitGroup
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for range callers {
			started.Add(1)
			wg.Go(func() {
				started.Done()
				errs <- s.db.pos.refresh(context.Background(), since, query)
			})
		}
		started.Wait()
		gate <- struct{}{} // let the one query of this phase finish
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := queries.Load(); got != int32(phase) {
			t.Fatalf("after phase %d: %d position queries, want %d (one per phase)", phase, got, phase)
		}
	}
	if most.Load() != 1 {
		t.Errorf("%d position queries ran at once, want 1", most.Load())
	}
}
