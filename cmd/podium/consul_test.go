package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/discovery/consul"
	"github.com/podium-edge/podium/discovery/consul/consultest"
)

// TestMain lets the test binary double as a small origin process that
// registers itself in Consul and, on SIGTERM, leaves the way the origin
// does: critical in Consul first, then drain, then stop.
func TestMain(m *testing.M) {
	if agent := os.Getenv("PODIUM_TEST_CONSUL_ORIGIN"); agent != "" {
		os.Exit(consulOrigin(agent))
	}
	os.Exit(m.Run())
}

func consulOrigin(agent string) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	addr := ln.Addr().(*net.TCPAddr)
	// PODIUM_TEST_CONSUL_ORIGIN_FAIL names a path answered 503: an edge
	// prober sent there sees the origin down while Consul's check, on
	// /ping, passes.
	failPath := os.Getenv("PODIUM_TEST_CONSUL_ORIGIN_FAIL")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failPath != "" && r.URL.Path == failPath {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		io.WriteString(w, addr.String())
	})}
	go srv.Serve(ln)
	client, err := consul.Config{Address: agent}.NewClient()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, err := consul.Register(ctx, client, consul.Registration{Name: "podium-origin", Addr: "127.0.0.1", Port: addr.Port,
		CheckInterval: time.Second, CheckTimeout: 500 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%s %s\n", svc.ID(), addr)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	<-term
	svc.MarkCritical(context.Background())
	time.Sleep(1500 * time.Millisecond) // drain: edges stop sending
	srv.Shutdown(context.Background())
	svc.Deregister(context.Background())
	return 0
}

type consulOriginProc struct {
	cmd      *exec.Cmd
	id, addr string
}

func startConsulOrigin(t *testing.T, agent string) *consulOriginProc {
	t.Helper()
	return startConsulOriginEnv(t, agent)
}

// startConsulOriginEnv is startConsulOrigin with env (KEY=value) added to
// the origin process's environment.
func startConsulOriginEnv(t *testing.T, agent string, env ...string) *consulOriginProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "PODIUM_TEST_CONSUL_ORIGIN="+agent), env...)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 2 {
		t.Fatalf("origin process did not register: %q %v", line, err)
	}
	return &consulOriginProc{cmd: cmd, id: f[0], addr: f[1]}
}

// tally counts which origin answered each request of a steady load.
type tally struct {
	mu     sync.Mutex
	byAddr map[string]int
	first  map[string]time.Time
	last   map[string]time.Time
}

func (tl *tally) hit(addr string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	now := time.Now()
	tl.byAddr[addr]++
	if _, ok := tl.first[addr]; !ok {
		tl.first[addr] = now
	}
	tl.last[addr] = now
}

func (tl *tally) snapshot(addr string) (n int, first, last time.Time) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.byAddr[addr], tl.first[addr], tl.last[addr]
}

func steadyTally(url string, rate int, stop <-chan struct{}, wg *sync.WaitGroup) (*tally, *loadStats) {
	tl := &tally{byAddr: map[string]int{}, first: map[string]time.Time{}, last: map[string]time.Time{}}
	return tl, loadUntil(url, rate, stop, wg, func(body []byte) { tl.hit(string(body)) })
}

func TestEdgeWithConsul(t *testing.T) {
	agent := consultest.Start(t)
	bin := buildPodium(t)
	var origins []*consulOriginProc
	for range 3 {
		origins = append(origins, startConsulOrigin(t, agent.Addr))
	}
	listen, admin := freePort(t), freePort(t)
	path := filepath.Join(t.TempDir(), "edge.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf(`listen: %q
admin: %q
access_log: {enabled: false}
discovery:
  consul: {address: %q, service: podium-origin, register: {check_interval: 1s}}
healthcheck: {interval: 500ms, timeout: 250ms}
routes: [{name: all, match: {path_prefix: /}}]
ratelimits: {}
`, listen, admin, agent.Addr)), 0o644)
	edgeCmd, logs := startEdgeProcess(t, bin, "-config", path, "-drain", "1s")
	defer func() {
		if t.Failed() {
			t.Logf("edge log:\n%s", logs)
		}
	}()
	waitOK(t, "http://"+admin+"/ping")

	ids := []string{origins[0].id, origins[1].id, origins[2].id}
	consultest.WaitPassing(t, agent.Client(), "podium-origin", 30*time.Second, ids...)
	passing := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	tl, load := steadyTally("http://"+listen+"/x", 200, stop, &wg)
	defer func() { close(stop); wg.Wait() }()

	// All three get traffic once their checks pass. How soon is logged,
	// not asserted: a busy machine stretches it (the bound is a hang
	// guard).
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		all := true
		for _, o := range origins {
			if n, _, _ := tl.snapshot(o.addr); n == 0 {
				all = false
			}
		}
		if all {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, o := range origins {
		n, first, _ := tl.snapshot(o.addr)
		if n == 0 {
			t.Errorf("origin %s: no proxied request 30 s after its check passed", o.addr)
			continue
		}
		t.Logf("origin %s: first proxied request %v after its check was seen passing", o.addr, first.Sub(passing).Round(time.Millisecond))
	}

	// The edge registered itself, with a check on its own /ping.
	_, edgePort, _ := net.SplitHostPort(listen)
	consultest.WaitPassing(t, agent.Client(), "podium-edge", 30*time.Second, "podium-edge-127.0.0.1-"+edgePort)

	// A fourth joins under load.
	fourth := startConsulOrigin(t, agent.Addr)
	consultest.WaitPassing(t, agent.Client(), "podium-origin", 30*time.Second, append(ids, fourth.id)...)
	joined := time.Now()
	for time.Now().Before(joined.Add(30 * time.Second)) {
		if n, _, _ := tl.snapshot(fourth.addr); n > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, first, _ := tl.snapshot(fourth.addr)
	if first.IsZero() {
		t.Fatalf("fourth origin: no proxied request 30 s after its check passed")
	}
	t.Logf("registration (check passing) to first proxied request: %v", first.Sub(joined).Round(time.Millisecond))

	// It leaves with SIGTERM under load: no failed request.
	failedBefore := load.failures()
	fourth.cmd.Process.Signal(syscall.SIGTERM)
	fourth.cmd.Wait()
	time.Sleep(500 * time.Millisecond)
	failedLeave := load.failures() - failedBefore
	if failedLeave != 0 {
		t.Errorf("%d requests failed while an origin left with SIGTERM, want 0; all failures so far: %s", failedLeave, load.why())
	}

	// One origin is SIGKILLed under load.
	victim := origins[1]
	failedBefore = load.failures()
	victim.cmd.Process.Kill()
	killed := time.Now()
	var gone time.Duration
	for time.Since(killed) < 30*time.Second { // a hang guard
		if up := metric(t, admin, fmt.Sprintf(`podium_edge_upstream_up{upstream=%q}`, victim.addr)); up != "1" {
			gone = time.Since(killed)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second)
	failedKill := load.failures() - failedBefore
	t.Logf("SIGKILL to out of rotation: %v; client requests failed meanwhile: %d (retries on another origin cover them)", gone.Round(time.Millisecond), failedKill)
	if gone == 0 {
		t.Errorf("killed origin still in rotation 30s later")
	}
	// README says 0: a GET that meets the dead origin (refused, reset, or a
	// pooled connection found closed) is retried on another one.
	if failedKill != 0 {
		t.Errorf("%d requests failed after a SIGKILL, want 0 (a GET that meets the dead origin is retried on another); all failures so far: %s", failedKill, load.why())
	}

	// The agent goes away for 10 s: the edge serves the last known set.
	failedBefore = load.failures()
	agent.Stop()
	time.Sleep(10 * time.Second)
	failedOutage := load.failures() - failedBefore
	if failedOutage != 0 {
		t.Errorf("%d requests failed while the Consul agent was down, want 0; all failures so far: %s", failedOutage, load.why())
	}
	agent.Start()
	// And picks up changes afterwards.
	fifth := startConsulOrigin(t, agent.Addr)
	consultest.WaitPassing(t, agent.Client(), "podium-origin", 30*time.Second, origins[0].id, origins[2].id, fifth.id)
	back := time.Now()
	for time.Since(back) < 30*time.Second { // a hang guard
		if n, _, _ := tl.snapshot(fifth.addr); n > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n, _, _ := tl.snapshot(fifth.addr); n == 0 {
		t.Errorf("an origin registered after the agent came back got no traffic")
	}

	// SIGTERM on the edge marks it critical in Consul at once.
	edgeCmd.Process.Signal(syscall.SIGTERM)
	deadline = time.Now().Add(10 * time.Second) // a hang guard
	for time.Now().Before(deadline) {
		entries, _, err := agent.Client().Health().Service("podium-edge", "", true, nil)
		if err == nil && len(entries) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if entries, _, _ := agent.Client().Health().Service("podium-edge", "", true, nil); len(entries) != 0 {
		t.Errorf("a draining edge still passing in consul")
	}
}
