package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// httpUpstream is a real upstream on loopback.
func httpUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// startEdgeProcess runs `podium edge` and waits until it proxies.
func startEdgeProcess(t *testing.T, bin string, args ...string) (*exec.Cmd, *logBuffer) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"edge"}, args...)...)
	logs := &logBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, logs
}

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func waitOK(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a hang guard
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(30 * time.Millisecond)
	}
	t.Fatalf("%s not answering 200 within 30s", url)
}

// loadUntil sends GETs at rate per second until stop closes; it counts
// connection refusals apart from other failures, and hands each 200's body
// to onBody when that is set.
type loadStats struct {
	sent, refused, failed atomic.Int64

	mu      sync.Mutex
	reasons map[string]int // why requests failed: an error or a status and body, counted
}

// fail counts a failed request under its reason.
func (st *loadStats) fail(reason string) {
	st.failed.Add(1)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.reasons == nil {
		st.reasons = map[string]int{}
	}
	if len(st.reasons) < 20 {
		st.reasons[reason]++
	} else {
		st.reasons["(other reasons)"]++
	}
}

// why says why requests failed, for a failing test's message.
func (st *loadStats) why() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return fmt.Sprint(st.reasons)
}

// failures is every request that did not get a 200.
func (st *loadStats) failures() int64 { return st.refused.Load() + st.failed.Load() }

func loadUntil(url string, rate int, stop <-chan struct{}, wg *sync.WaitGroup, onBody func([]byte)) *loadStats {
	st := &loadStats{}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			st.sent.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := client.Get(url)
				if err != nil {
					if strings.Contains(err.Error(), "connection refused") {
						st.refused.Add(1)
					} else {
						st.fail(err.Error())
					}
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					st.fail(fmt.Sprintf("%d %.120s", resp.StatusCode, body))
					return
				}
				if onBody != nil {
					onBody(body)
				}
			}()
		}
	}()
	return st
}

func edgeConfig(listen, admin string, weights []int, ups ...string) string {
	return edgeConfigRoute(listen, admin, "all", weights, ups...)
}

// edgeConfigRoute is edgeConfig with its one route named route.
func edgeConfigRoute(listen, admin, route string, weights []int, ups ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %q\nadmin: %q\naccess_log: {enabled: false}\ndiscovery:\n  static:\n", listen, admin)
	for i, u := range ups {
		fmt.Fprintf(&b, "    - {addr: %q, weight: %d}\n", u, weights[i%len(weights)])
	}
	// One test client at 200 req/s: no per-client limit here.
	fmt.Fprintf(&b, "healthcheck: {interval: 500ms, timeout: 250ms}\nroutes:\n  - {name: %s, match: {path_prefix: /}}\nratelimits: {}\n", route)
	return b.String()
}

func metric(t *testing.T, admin, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, name+" ") {
			return strings.TrimPrefix(line, name+" ")
		}
	}
	return ""
}

// TestReloadsUnderLoad: 20 reloads under 200 req/s, half by rewriting the
// file, half by SIGHUP, each changing the route's name and the upstream
// list: odd ones list b first, and each upstream takes the weight of its
// place in the list. Then a broken config, then one that needs a restart.
// After each reload the test waits until the new config is in force (each
// upstream's weight in the metrics, the order in /upstreams, which shows
// discovery's order, requests counted under the new route), so a reload
// that is counted but not applied fails it. The order changes nothing in
// routing (the balancer picks the least loaded); /upstreams is where an
// operator sees it.
func TestReloadsUnderLoad(t *testing.T) {
	bin := buildPodium(t)
	a, b := httpUpstream(t), httpUpstream(t)
	listen, admin := freePort(t), freePort(t)
	path := filepath.Join(t.TempDir(), "edge.yaml")
	os.WriteFile(path, []byte(edgeConfig(listen, admin, []int{1}, a, b)), 0o644)
	cmd, logs := startEdgeProcess(t, bin, "-config", path)
	waitOK(t, "http://"+listen+"/x")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	st := loadUntil("http://"+listen+"/x", 200, stop, &wg, nil)
	inForce := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !ok(); {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not in force 15 s after the reload\n%s", what, logs)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for i := range 20 {
		ups, weights := []string{a, b}, []int{1 + i%3, 2}
		if i%2 == 1 {
			ups = []string{b, a}
		}
		want := map[string]int{ups[0]: weights[0], ups[1]: weights[1]}
		route := fmt.Sprintf("all%d", i)
		os.WriteFile(path, []byte(edgeConfigRoute(listen, admin, route, weights, ups...)), 0o644)
		if i%2 == 1 {
			cmd.Process.Signal(syscall.SIGHUP)
		}
		inForce(fmt.Sprintf("reload %d (route %s, upstreams in order %v, weights %v)", i, route, ups, want), func() bool {
			for up, w := range want {
				if metric(t, admin, fmt.Sprintf(`podium_edge_upstream_weight{upstream=%q}`, up)) != strconv.Itoa(w) {
					return false
				}
			}
			return slices.Equal(upstreamOrder(t, admin), ups) &&
				atoiOr(metric(t, admin, fmt.Sprintf(`podium_edge_requests_total{code="200",method="GET",route=%q}`, route))) > 0
		})
	}
	reloads := metric(t, admin, `podium_edge_config_reloads_total{result="success"}`)
	if got := metric(t, admin, "podium_edge_config_restart_required"); got != "0" {
		t.Errorf("after reloads that need no restart, podium_edge_config_restart_required = %q, want 0", got)
	}

	// A broken config mid-load: rejected, the old one keeps serving.
	os.WriteFile(path, []byte("listen: [broken\n"), 0o644)
	inForce("the broken config's rejection", func() bool {
		return metric(t, admin, "podium_edge_config_last_reload_successful") == "0"
	})
	before := atoiOr(metric(t, admin, `podium_edge_requests_total{code="200",method="GET",route="all19"}`))
	inForce("the last good config still serving", func() bool {
		return atoiOr(metric(t, admin, `podium_edge_requests_total{code="200",method="GET",route="all19"}`)) > before+20
	})

	// A change only a restart applies: said in the metric and the log, and
	// the rest of the file still takes effect.
	os.WriteFile(path, []byte(edgeConfigRoute(listen, admin, "after", []int{1}, a, b)+"limits: {max_header_bytes: 8192}\n"), 0o644)
	inForce("the restart-only change", func() bool {
		return metric(t, admin, "podium_edge_config_restart_required") == "1" &&
			atoiOr(metric(t, admin, `podium_edge_requests_total{code="200",method="GET",route="after"}`)) > 0
	})
	close(stop)
	wg.Wait()

	t.Logf("%d requests, %s successful reloads", st.sent.Load(), reloads)
	if st.failed.Load()+st.refused.Load() != 0 {
		t.Errorf("%d requests failed and %d were refused during 20 reloads and a broken config, want 0; failed: %s\n%s", st.failed.Load(), st.refused.Load(), st.why(), logs)
	}
	if st.sent.Load() < 100 {
		t.Errorf("only %d requests sent: the load did not run", st.sent.Load())
	}
	if n := atoiOr(reloads); n < 20 {
		t.Errorf("%d successful reloads, want at least 20 (one per change)\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "config reload rejected; the running config stays") {
		t.Errorf("the rejected reload was not logged:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "some changes need a restart") || !strings.Contains(logs.String(), "limits") {
		t.Errorf("the restart-only change was not logged with what needs the restart:\n%s", logs)
	}
	waitOK(t, "http://"+listen+"/x")
}

// upstreamOrder is the upstreams' addresses as the admin /upstreams lists
// them: in discovery's order.
func upstreamOrder(t *testing.T, admin string) []string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/upstreams")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Upstreams []struct {
			Address string `json:"address"`
		} `json:"upstreams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("admin /upstreams: %v", err)
	}
	var out []string
	for _, u := range body.Upstreams {
		out = append(out, u.Address)
	}
	return out
}

func atoiOr(s string) int {
	var n int
	fmt.Sscanf(s, "%d", &n)
	return n
}

// TestZeroDowntimeRestart follows README's procedure: a second edge binds
// the same port (SO_REUSEPORT), then the first gets SIGTERM and drains.
func TestZeroDowntimeRestart(t *testing.T) {
	const migrate = "/proc/sys/net/ipv4/tcp_migrate_req"
	old, err := os.ReadFile(migrate)
	if err != nil {
		t.Fatalf("reading %s: %v (kernel 5.14 or later is required for a zero-loss handover)", migrate, err)
	}
	if err := os.WriteFile(migrate, []byte("1"), 0o644); err != nil {
		t.Fatalf("setting %s (as README's procedure does): %v", migrate, err)
	}
	t.Cleanup(func() { os.WriteFile(migrate, old, 0o644) })

	bin := buildPodium(t)
	up := httpUpstream(t)
	listen := freePort(t)
	adminA, adminB := freePort(t), freePort(t)
	cfgA := filepath.Join(t.TempDir(), "a.yaml")
	cfgB := filepath.Join(t.TempDir(), "b.yaml")
	os.WriteFile(cfgA, []byte(edgeConfig(listen, adminA, []int{1}, up)), 0o644)
	os.WriteFile(cfgB, []byte(edgeConfig(listen, adminB, []int{1}, up)), 0o644)
	a, _ := startEdgeProcess(t, bin, "-config", cfgA, "-drain", "2s")
	waitOK(t, "http://"+listen+"/x")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	st := loadUntil("http://"+listen+"/x", 300, stop, &wg, nil)
	// Counted in requests, not seconds: 500 on the old edge alone, then
	// the handover, then 500 on the new one alone.
	waitSent := func(n int64) {
		t.Helper()
		for i := 0; st.sent.Load() < n; i++ {
			if i == 6000 {
				t.Fatalf("%d requests sent in 60 s, want %d: the load does not run", st.sent.Load(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitSent(500)
	startEdgeProcess(t, bin, "-config", cfgB)
	waitOK(t, "http://"+adminB+"/ping")
	a.Process.Signal(syscall.SIGTERM)
	waitExit(t, a, 30*time.Second, "old edge")
	waitSent(st.sent.Load() + 500) // the new edge alone
	close(stop)
	wg.Wait()
	t.Logf("%d requests across the handover", st.sent.Load())
	if st.refused.Load() != 0 || st.failed.Load() != 0 {
		t.Errorf("%d refused and %d failed across the handover, want 0 and 0; failed: %s", st.refused.Load(), st.failed.Load(), st.why())
	}
}

// TestReloadRefusesAnEmptyFile: a reload that finds the file empty, or with
// only comments, keeps the running config. Taken as is it would be the
// embedded defaults (other upstreams, other listeners): TestReloadsUnderLoad
// got 503s when a debounced reload read the file between the next save's
// truncation and its write.
func TestReloadRefusesAnEmptyFile(t *testing.T) {
	bin := buildPodium(t)
	a := httpUpstream(t)
	listen, admin := freePort(t), freePort(t)
	path := filepath.Join(t.TempDir(), "edge.yaml")
	os.WriteFile(path, []byte(edgeConfigRoute(listen, admin, "kept", []int{3}, a)), 0o644)
	cmd, logs := startEdgeProcess(t, bin, "-config", path)
	waitOK(t, "http://"+listen+"/x")
	failures := func() int {
		n, _ := strconv.Atoi(metric(t, admin, `podium_edge_config_reloads_total{result="failure"}`))
		return n
	}
	for _, content := range []string{"", "\n  \n", "# only a comment\n\n   # and another\n"} {
		// The write itself and the SIGHUP each start a reload (the file
		// watcher and the signal): at least one more refusal, and no
		// reload that succeeds.
		before := failures()
		os.WriteFile(path, []byte(content), 0o644)
		cmd.Process.Signal(syscall.SIGHUP)
		for deadline := time.Now().Add(15 * time.Second); failures() <= before; {
			if time.Now().After(deadline) {
				t.Fatalf("content %q: reload failures %d, want more than %d\n%s", content, failures(), before, logs)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if got := metric(t, admin, `podium_edge_config_reloads_total{result="success"}`); got != "0" {
			t.Errorf("content %q: %s reloads succeeded, want 0", content, got)
		}
		if got := metric(t, admin, "podium_edge_config_last_reload_successful"); got != "0" {
			t.Errorf("content %q: last reload successful = %q, want 0", content, got)
		}
		resp, err := http.Get("http://" + listen + "/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("content %q: GET /x = %d after the refused reload, want 200 from the running config", content, resp.StatusCode)
		}
		if got := metric(t, admin, fmt.Sprintf(`podium_edge_upstream_weight{upstream=%q}`, a)); got != "3" {
			t.Errorf("content %q: upstream weight %q, want the running 3", content, got)
		}
	}
	if !strings.Contains(logs.String(), "the file has no settings") {
		t.Errorf("the log does not say why the reload was refused:\n%s", logs)
	}
}

// An edge opens its public listener only once an upstream has passed its
// health check (Envoy's cluster warming): with SO_REUSEPORT the kernel
// hands a bound listener its share of a running edge's new connections at
// once, and an edge that had no healthy upstream yet answered them 503.
// Meanwhile the admin /ping says it is warming up.
func TestEdgeWarmsUpBeforeTakingTraffic(t *testing.T) {
	var healthy atomic.Bool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ping" && !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	bin := buildPodium(t)
	listen, admin := freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "edge.yaml")
	// The warm-up waits at most interval × (rise + 1) + timeout: 6.5 s.
	os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %q
admin: %q
access_log: {enabled: false}
discovery: {static: [%q]}
healthcheck: {interval: 2s, timeout: 500ms, rise: 2}
routes: [{name: all, match: {path_prefix: /}}]
ratelimits: {}
`, listen, admin, ln.Addr().String())), 0o644)
	_, logs := startEdgeProcess(t, bin, "-config", cfg)

	// Warming up: the admin listener says so, the public one is not open.
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + admin + "/ping")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "warming up") {
				t.Fatalf("admin /ping while the only upstream fails its checks: %d %q, want 503 warming up\n%s", resp.StatusCode, body, logs)
			}
			break
		}
		if i == 1000 {
			t.Fatalf("the admin listener does not answer after 10 s\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c, err := net.Dial("tcp", listen); err == nil {
		c.Close()
		t.Fatalf("the public listener %s accepts connections before any upstream is healthy\n%s", listen, logs)
	}

	healthy.Store(true)
	waitOK(t, "http://"+admin+"/ping")
	resp, err := http.Get("http://" + listen + "/x")
	if err != nil {
		t.Fatalf("after the warm-up: %v\n%s", err, logs)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("first request after the warm-up: %d, want 200 from the upstream\n%s", resp.StatusCode, logs)
	}
}
