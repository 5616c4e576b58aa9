package bench

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A short comparison against the real HAProxy and nginx (and the upstream
// directly), with children started the way `make bench` starts them, must
// produce a report whose figures are sane, and must report a target that
// cannot start as failed instead of stopping.
func TestCompareAgainstHAProxyAndNginx(t *testing.T) {
	for _, bin := range []string{"haproxy", "nginx", "taskset", "wrk"} {
		if _, err := exec.LookPath(lookBin("", bin)); err != nil {
			t.Fatalf("%s not installed (%v): run scripts/deps.sh peers", bin, err)
		}
	}
	// The origin scenario runs only with a database; keep this test to
	// the synthetic upstream whatever the caller's environment holds.
	t.Setenv("PODIUM_DB_PRIMARY", "")
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts := CompareOptions{
		Exe: []string{self, "bench"},
		Env: []string{childEnv + "=1"},
		// /bin/false stands for an edge binary that exits at once.
		Podium:      "/bin/false",
		ResultsDir:  dir,
		Targets:     []string{TargetDirect, TargetHAProxy, TargetNginx, TargetPodium},
		Scenarios:   []string{"proxied-get-wrk", "cached-listing-wrk", "proxied-get", "proxied-get-paced", "cached-listing"},
		Duration:    2 * time.Second,
		Warmup:      500 * time.Millisecond,
		Connections: 16,
		PacedRate:   1000,
		Rounds:      1,
		// Not realtime: under `go test ./...` other packages' tests run
		// beside this one and must not be starved by SCHED_FIFO load.
		Priority: PriorityNormal,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Compare(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	// The files on disk are the report; check the JSON round-trips.
	data, err := os.ReadFile(filepath.Join(dir, "compare.json"))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk CompareReport
	if err := json.Unmarshal(data, &onDisk); err != nil {
		t.Fatalf("compare.json: %v", err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "compare.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(onDisk.Scenarios) != len(rep.Scenarios) {
		t.Fatalf("compare.json has %d scenarios, report %d", len(onDisk.Scenarios), len(rep.Scenarios))
	}
	if !strings.HasPrefix(rep.Machine.Versions[TargetHAProxy], "HAProxy version 2.") || !strings.Contains(rep.Machine.Versions[TargetNginx], "nginx/1.") {
		t.Errorf("peer versions = %v", rep.Machine.Versions)
	}
	// A cache in front of the synthetic upstream (max-age=2) refreshes the
	// listing at most once per lifetime in the measured window (a lifetime
	// as short as 1 s, with the Age header's whole seconds), one more at
	// its edge; and a cache that does not hold back concurrent misses (as
	// HAProxy's does not) lets one through per connection at each refresh.
	// That bounds what reaches the upstream whatever the machine's pace.
	// Runs must then hold well more requests than the bound, or a cache
	// could not be told from none.
	cacheBound := int64(opts.Duration/time.Second+1) * int64(opts.Connections)
	minRequests := 2 * cacheBound
	var unavailable int
	for _, s := range onDisk.Scenarios {
		if s.Unavailable != "" {
			unavailable++
			if len(s.Targets) != 0 || !strings.Contains(string(md), "Not measured here: "+s.Unavailable) {
				t.Errorf("unavailable scenario %s: targets %v, or its reason is missing from compare.md", s.Name, s.Targets)
			}
			continue
		}
		if len(s.Targets) != 4 {
			t.Fatalf("%s: %d targets, want 4", s.Name, len(s.Targets))
		}
		for _, tr := range s.Targets {
			name := s.Name + "/" + tr.Target
			if tr.Target == TargetPodium {
				if tr.OK || !strings.Contains(tr.Error, "exited") {
					t.Errorf("%s: ok=%v error=%q, want a failure saying the process exited", name, tr.OK, tr.Error)
				}
				continue
			}
			if !tr.OK {
				t.Errorf("%s failed: %s", name, tr.Error)
				continue
			}
			l := tr.Latency
			switch {
			case tr.Requests < minRequests:
				t.Errorf("%s: %d requests in 2 s, want at least %d (for the cache check below to mean something)", name, tr.Requests, minRequests)
			case tr.ErrorCount != 0:
				t.Errorf("%s: errors %v", name, tr.Errors)
			case !(l.P50 > 0 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max):
				t.Errorf("%s: percentiles out of order: %+v", name, l)
			case tr.GeneratorCPUMicrosPerRequest <= 0:
				t.Errorf("%s: generator CPU per request %v", name, tr.GeneratorCPUMicrosPerRequest)
			case len(tr.Rounds) != 1:
				t.Errorf("%s: %d rounds recorded, want 1", name, len(tr.Rounds))
			}
			// The synthetic upstream's own counter: without a cache every
			// request reaches it; behind a cache with a 2 s lifetime, a
			// 2 s run lets through at most cacheBound.
			switch {
			case tr.UpstreamRequests < 0:
				t.Errorf("%s: upstream request count unknown", name)
			case !strings.HasPrefix(s.Name, "cached-listing") || tr.Target == TargetDirect:
				// wrk stops with up to one request per connection in
				// flight and does not count those; the upstream may have
				// answered them. That happens at both ends of the
				// measured window: the warm-up's wrk stops just before
				// the upstream's counter is read, and a proxy may still
				// be delivering its last requests then (a CI run under
				// load saw nginx deliver 26 of them, with 16 connections).
				inFlight := int64(0)
				if strings.HasSuffix(s.Name, "-wrk") {
					inFlight = 2 * int64(opts.Connections)
				}
				if tr.UpstreamRequests < tr.Requests || tr.UpstreamRequests > tr.Requests+inFlight {
					t.Errorf("%s: %d requests reached the upstream, want all %d (+%d in flight at the end)", name, tr.UpstreamRequests, tr.Requests, inFlight)
				}
			case tr.UpstreamRequests > cacheBound:
				t.Errorf("%s: %d of %d requests reached the upstream through the cache, want at most %d (a refresh a second, one per connection)", name, tr.UpstreamRequests, tr.Requests, cacheBound)
			}
			if s.Name == "proxied-get-paced" {
				if got := tr.Throughput; got < 950 || got > 1050 {
					t.Errorf("%s: %.0f req/s at a paced 1000/s", name, got)
				}
			}
			if tr.Target == TargetDirect {
				if tr.ProxyCPUMicrosPerRequest != 0 {
					t.Errorf("%s: proxy CPU %v for no proxy", name, tr.ProxyCPUMicrosPerRequest)
				}
				continue
			}
			// A proxy spends microseconds per request, not nothing and not
			// milliseconds; and holds a few MiB, not zero.
			if c := tr.ProxyCPUMicrosPerRequest; c < 1 || c > 2000 {
				t.Errorf("%s: proxy CPU %.1f µs/request, want 1..2000", name, c)
			}
			if rss := tr.ProxyPeakRSSKiB; rss < 1024 || rss > 1<<20 {
				t.Errorf("%s: peak RSS %d KiB, want 1 MiB..1 GiB", name, rss)
			}
			if _, err := os.Stat(tr.Config); err != nil {
				t.Errorf("%s: generated config: %v", name, err)
			}
		}
		if len(s.Ratios) != 2 {
			t.Errorf("%s: %d ratios, want podium/haproxy and podium/nginx", s.Name, len(s.Ratios))
		}
		for _, r := range s.Ratios {
			if r.PodiumAvailable || r.Note != "podium failed in this run" {
				t.Errorf("%s: ratio %+v, want unavailable because podium failed", s.Name, r)
			}
		}
	}
	if unavailable != 1 {
		t.Errorf("%d scenarios reported unavailable, want 1 (ticket-drop-origin)", unavailable)
	}
	for _, want := range []string{"| haproxy |", "| nginx |", "| direct |", "podium failed:"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("compare.md lacks %q", want)
		}
	}
}

// HAProxy and nginx, as the comparison configures them, add the
// forwarding headers Podium adds to every proxied request, so the three
// do the same work per request.
func TestPeersAddPodiumsForwardingHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		select {
		case got <- h:
		default:
		}
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := CompareOptions{ResultsDir: dir, Connections: 4, Priority: PriorityNormal}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	c := &comparison{opts: o, dir: dir}
	for _, target := range []string{TargetHAProxy, TargetNginx} {
		base, ch, _, err := c.startProxy("headers-"+target, target, []string{strings.TrimPrefix(up.URL, "http://")}, false)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		if err := waitReady(context.Background(), ch, base+"/x", 2, 10*time.Second); err != nil {
			ch.stop()
			t.Fatalf("%s: %v", target, err)
		}
		for len(got) > 0 { // the readiness probes
			<-got
		}
		req, _ := http.NewRequest("GET", base+"/x", nil)
		req.Host = "tickets.example"
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		ch.stop()
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		h := <-got
		for k, want := range map[string]string{
			"X-Forwarded-For":   "127.0.0.1",
			"X-Forwarded-Proto": "http",
			"X-Forwarded-Host":  "tickets.example",
			"Host":              "tickets.example",
		} {
			if h.Get(k) != want {
				t.Errorf("%s sent %s %q, want %q", target, k, h.Get(k), want)
			}
		}
		if id := h.Get("X-Request-ID"); len(id) < 16 {
			t.Errorf("%s sent X-Request-ID %q, want a generated ID", target, id)
		}
	}
}
