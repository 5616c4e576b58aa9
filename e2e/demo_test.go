package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/internal/testport"
)

// TestDemo runs scripts/demo.sh, the stack of `make demo`, on free ports and
// a temporary state dir, drives steady load through its edge, and does to
// it what a user watching failures does:
//
//   - kill -9 an origin: the demo keeps running and names it, no request
//     fails once the edge holds the origin down, and the restarted origin
//     passes in Consul again within 30 s;
//   - scripts/demo.sh scale 4, then scale 2: no request fails, and Consul
//     shows exactly 4, then 2 passing origins;
//   - SIGINT to the demo's process group (a Ctrl-C in its terminal): it
//     stops, and no process it started is left.
func TestDemo(t *testing.T) {
	d := startDemo(t)
	game := d.pickGame(t)
	ld := startDemoLoad(t, d.edgeURL, game)

	// Baseline: the stack serves the load, and the edge holds all three
	// origins up (each passed its health check rise after its first pass).
	ld.waitDone(t, 300, 30*time.Second)
	d.waitUpstreams(t, "all three origins up at the edge", 30*time.Second, func(up map[string]float64) bool {
		return up[d.originAddr(1)] == 1 && up[d.originAddr(2)] == 1 && up[d.originAddr(3)] == 1
	})

	// The dashboard the banner links: the demo's Prometheus serves Podium's
	// console pages (their content is TestConsoles' job).
	if !strings.Contains(d.out.String(), d.promURL+"/consoles/podium.html") {
		t.Errorf("the banner does not link the dashboard %s/consoles/podium.html", d.promURL)
	}
	for _, page := range []string{"podium.html", "podium-edge.html", "podium-sale.html"} {
		resp, err := d.client.Get(d.promURL + "/consoles/" + page)
		if err != nil {
			t.Fatalf("dashboard %s: %v", page, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Podium") || strings.Contains(string(body), "error executing template") {
			t.Errorf("dashboard %s: %d\n%.500s", page, resp.StatusCode, body)
		}
	}

	// The waiting room the banner tells of: on the buy paths, watched at
	// the admin listener's /rooms, with a key of this demo's own.
	d.checkRoom(t)

	// (a) kill -9 origin 2.
	// Found as a user would (pgrep -f), not through the demo's bookkeeping.
	victim := demoOrigin{addr: d.originAddr(2), pid: d.originPid(t, d.originAddr(2))}
	if v, err := d.readView(); err != nil {
		t.Errorf("the demo's view of its origins: %v", err)
	} else if o := v.origins[2]; o.pid != victim.pid || o.state != "running" {
		t.Errorf("the demo's view has origin 2 as %+v; the process listening on %s is pid %d", o, victim.addr, victim.pid)
	}
	killAt := time.Now()
	if err := syscall.Kill(victim.pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 origin 2 (pid %d): %v", victim.pid, err)
	}
	// One poll every 50 ms of the edge's admin /metrics and of Consul:
	//   caughtAt: the edge no longer holds the upstream up (its health
	//     check took it down, or Consul marked it critical and discovery
	//     dropped it from the pool). It ends the discounted window.
	//   criticalAt: Consul no longer lists it passing.
	//   backAt: Consul lists it passing again, as the restarted process.
	var caughtAt, criticalAt, backAt time.Time
	for deadline := killAt.Add(30 * time.Second); caughtAt.IsZero() || backAt.IsZero(); {
		now := time.Now()
		if now.After(deadline) {
			t.Fatalf("30 s after kill -9 of origin 2 (%s): edge caught it %v, Consul critical %v, Consul passing again %v; Consul passing: %v; demo view:\n%s",
				victim.addr, !caughtAt.IsZero(), !criticalAt.IsZero(), !backAt.IsZero(), d.consulPassing(t), d.viewDump())
		}
		if caughtAt.IsZero() && d.upstreamUp(t)[victim.addr] != 1 {
			caughtAt = now
		}
		passing := slices.Contains(d.consulPassing(t), victim.addr)
		if criticalAt.IsZero() && !passing {
			criticalAt = now
		}
		if !criticalAt.IsZero() && backAt.IsZero() && passing {
			if p := d.originPid(t, victim.addr); p > 0 && p != victim.pid {
				backAt = now
			}
		}
		d.mustRun(t)
		time.Sleep(50 * time.Millisecond)
	}
	d.waitOutput(t, fmt.Sprintf("origin 2 (%s, pid %d) exited with signal KILL; restarting in", victim.addr, victim.pid), 15*time.Second)
	// The restarted origin serves again through the edge (slow start).
	d.waitUpstreams(t, "the edge to hold origin 2 up again", 30*time.Second, func(up map[string]float64) bool {
		return up[victim.addr] == 1
	})
	d.mustRun(t)
	endA := time.Now()
	t.Logf("kill -9 origin 2 (pid %d): the edge held it down after %v, Consul critical after %v, passing again after %v (new pid %d)",
		victim.pid, caughtAt.Sub(killAt).Round(time.Millisecond), criticalAt.Sub(killAt).Round(time.Millisecond),
		backAt.Sub(killAt).Round(time.Millisecond), d.originPid(t, victim.addr))

	// (b) scale 4, then 2, under the same load.
	if out, err := d.scale("0"); err == nil || !strings.Contains(out, "from 1 to 9") {
		t.Errorf("scale 0: want a refusal naming 1..9, got %v:\n%s", err, out)
	}
	if out, err := d.scale("10"); err == nil || !strings.Contains(out, "from 1 to 9") {
		t.Errorf("scale 10: want a refusal naming 1..9, got %v:\n%s", err, out)
	}
	startB := time.Now()
	d.scaleTo(t, 4)
	// Origin 4 takes traffic before the scale-down, so that it drains
	// requests, not an idle listener.
	d.waitUpstreams(t, "the edge to hold 4 origins up", 30*time.Second, func(up map[string]float64) bool {
		return len(upAddrs(up)) == 4
	})
	d.scaleTo(t, 2)
	d.waitUpstreams(t, "the edge to route to origins 1 and 2 only", 30*time.Second, func(up map[string]float64) bool {
		return slices.Equal(upAddrs(up), []string{d.originAddr(1), d.originAddr(2)})
	})
	// A further ~2 s of load on the two that are left.
	ld.waitDone(t, ld.count()+300, 30*time.Second)
	ld.stop(t)
	endB := time.Now()

	// What the load saw.
	all := ld.results()
	var discounted, discountedFailed, failed []demoResult
	var inA, inB int
	for _, r := range all {
		// Discounted: requests in flight at some moment between the kill
		// and the first /metrics poll that showed the edge holding the
		// origin down (polled every 50 ms, so the window ends at most one
		// poll and one scrape after the real transition).
		// A purchase's times are those of its last try; the waiting
		// room's own failures are never discounted.
		if r.start.Before(caughtAt) && r.end.After(killAt) && !r.roomFailure {
			discounted = append(discounted, r)
			if !r.ok() {
				discountedFailed = append(discountedFailed, r)
			}
			continue
		}
		switch {
		case !r.start.Before(killAt) && r.start.Before(endA):
			inA++
		case !r.start.Before(startB) && r.start.Before(endB):
			inB++
		}
		if !r.ok() {
			failed = append(failed, r)
		}
	}
	t.Logf("load: %d requests (%d purchases) at %d/s, %d ticks skipped because all workers were busy; "+
		"after kill -9: %d requests, %d in flight during the discounted %v window (%d of them failed); "+
		"during scale 4 and 2: %d requests; failed outside the window: %d",
		len(all), ld.purchases(), demoLoadRate, ld.skipped.Load(), inA, len(discounted),
		caughtAt.Sub(killAt).Round(time.Millisecond), len(discountedFailed), inB, len(failed))
	for _, r := range discountedFailed {
		t.Logf("  discounted failure: %s", r)
	}
	for i, r := range failed {
		if i == 20 {
			t.Errorf("  ... and %d more", len(failed)-20)
			break
		}
		t.Errorf("failed request: %s", r)
	}
	if inA == 0 || inB == 0 {
		t.Errorf("no load measured after the kill (%d) or during the scaling (%d)", inA, inB)
	}
	// Every client's first purchase waits in the room (a new arrival
	// always does, for the settle time), and is let in on its return.
	t.Logf("waiting room: %d of %d purchases queued (%d answers 429 from the room), %d of them then let in and sold",
		ld.queued.Load(), ld.purchases(), ld.roomAnswers.Load(), ld.letIn.Load())
	if ld.queued.Load() == 0 || ld.letIn.Load() == 0 {
		t.Errorf("no purchase waited in the demo's waiting room and then bought: does deploy/edge/demo.yaml still guard /api/games/*/buy?")
	}

	// (c) Ctrl-C: SIGINT to the demo's process group, as a terminal sends.
	d.stopAndCheck(t)
	if out, err := d.scale("3"); err == nil || !strings.Contains(out, "no demo is running") {
		t.Errorf("scale with no demo running: want a refusal, got %v:\n%s", err, out)
	}
}

// demoLoadRate is the load's request rate; demoLoadWorkers bound its
// concurrency.
const (
	demoLoadRate    = 150
	demoLoadWorkers = 24
)

// demo is one run of scripts/demo.sh.
type demo struct {
	cmd                                   *exec.Cmd
	state, viewFile                       string
	env                                   []string
	edgeURL, adminURL, consulURL, promURL string
	originPort, consulPort                int
	out                                   *demoOutput
	done                                  chan struct{}
	client                                *http.Client

	mu   sync.Mutex
	pids map[int]bool // every pid the demo reported or its state files named
}

// startDemo runs scripts/demo.sh on free ports and a temporary state dir
// and waits for "Podium is up".
func startDemo(t *testing.T) *demo {
	t.Helper()
	// Not t.TempDir: the cleanup below stops what runs in it first.
	state, err := os.MkdirTemp("", "podium-e2e-demo-")
	if err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 10)
	d := &demo{
		state:      state,
		viewFile:   filepath.Join(state, "demo", "origins"),
		edgeURL:    "http://127.0.0.1:" + strconv.Itoa(ports[0]),
		adminURL:   "http://127.0.0.1:" + strconv.Itoa(ports[1]),
		promURL:    "http://127.0.0.1:" + strconv.Itoa(ports[2]),
		consulURL:  "http://127.0.0.1:" + strconv.Itoa(ports[3]),
		consulPort: ports[3],
		originPort: demoPortRun(t, 9),
		out:        &demoOutput{},
		done:       make(chan struct{}),
		client:     &http.Client{Timeout: 5 * time.Second},
		pids:       map[int]bool{},
	}
	for _, kv := range os.Environ() {
		// Nothing of the caller's own demo or cluster settings.
		if !strings.HasPrefix(kv, "PODIUM_") || strings.HasPrefix(kv, "PODIUM_CACHE=") {
			d.env = append(d.env, kv)
		}
	}
	d.env = append(d.env,
		"PODIUM_STATE="+state,
		"PODIUM_DEMO_BIN="+podiumBin,
		"PODIUM_DEMO_EDGE_PORT="+strconv.Itoa(ports[0]),
		"PODIUM_DEMO_ADMIN_PORT="+strconv.Itoa(ports[1]),
		"PODIUM_DEMO_PROMETHEUS_PORT="+strconv.Itoa(ports[2]),
		"PODIUM_DEMO_ORIGIN_PORT="+strconv.Itoa(d.originPort),
		"PODIUM_CONSUL_HTTP_PORT="+strconv.Itoa(ports[3]),
		"PODIUM_CONSUL_SERVER_PORT="+strconv.Itoa(ports[4]),
		"PODIUM_CONSUL_SERF_LAN_PORT="+strconv.Itoa(ports[5]),
		"PODIUM_CONSUL_SERF_WAN_PORT="+strconv.Itoa(ports[6]),
		"PODIUM_DB_PRIMARY_PORT="+strconv.Itoa(ports[7]),
		"PODIUM_DB_REPLICA1_PORT="+strconv.Itoa(ports[8]),
		"PODIUM_DB_REPLICA2_PORT="+strconv.Itoa(ports[9]),
	)
	d.cmd = exec.Command(filepath.Join(repoRoot, "scripts", "demo.sh"))
	d.cmd.Dir = repoRoot
	d.cmd.Env = d.env
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	// A process group of its own, as a shell gives a foreground job: the
	// test sends SIGINT to the group as a terminal's Ctrl-C does. If this
	// binary dies, the demo gets SIGTERM and stops what it started.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting scripts/demo.sh: %v", err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() { d.cleanup(t) })

	// A fresh MariaDB cluster and Consul on a busy 2-core machine: allow
	// minutes, fail at once if the demo exits.
	d.waitOutput(t, "Podium is up.", 5*time.Minute)
	d.collectPids(t)
	for deadline := time.Now().Add(15 * time.Second); ; {
		resp, err := d.client.Get(d.edgeURL + "/api/games?limit=1")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo is up but its edge does not answer on PODIUM_DEMO_EDGE_PORT (%s): %v", d.edgeURL, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return d
}

// checkRoom checks the demo's waiting room: the banner's hint to watch
// it, the room open in the admin listener's /rooms, and the key file the
// demo generated (0600, not the public key checked in beside demo.yaml).
func (d *demo) checkRoom(t *testing.T) {
	t.Helper()
	admin := strings.TrimPrefix(d.adminURL, "http://")
	for _, hint := range []string{"curl -s " + admin + "/rooms", "curl -s -X POST " + admin + "/rooms/sale/pause",
		"curl -s -X POST " + admin + "/rooms/sale/close", "'" + admin + "/rooms/sale/rate?admit_per_second="} {
		if !strings.Contains(d.out.String(), hint) {
			t.Errorf("the banner lacks the waiting room hint %q", hint)
		}
	}
	resp, err := d.client.Get(d.adminURL + "/rooms")
	if err != nil {
		t.Fatalf("GET /rooms: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var v struct {
		Rooms []struct{ Name, Status string } `json:"rooms"`
	}
	if err := json.Unmarshal(body, &v); err != nil || resp.StatusCode != http.StatusOK || len(v.Rooms) != 1 ||
		v.Rooms[0].Name != "sale" || v.Rooms[0].Status != "open" {
		t.Errorf("GET %s/rooms: %d %v %.300s; want the room sale, open", d.adminURL, resp.StatusCode, err, body)
	}
	keys := filepath.Join(d.state, "demo", "demo-waitroom.keys")
	fi, err := os.Stat(keys)
	if err != nil {
		t.Fatalf("the demo's waiting room keys: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", keys, fi.Mode().Perm())
	}
	mine, _ := os.ReadFile(keys)
	public, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "edge", "demo-waitroom.keys"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(mine, public) || !bytes.Contains(mine, []byte("\nid ")) || !bytes.Contains(mine, []byte("\nsign 1 ")) {
		t.Errorf("the demo's key file %s is the public one, or not a key file:\n%s", keys, mine)
	}
}

// demoPortRun finds n consecutive free loopback ports (internal/testport):
// origin N listens on the first + N - 1.
func demoPortRun(t *testing.T, n int) int {
	t.Helper()
	base, err := testport.Run(n)
	if err != nil {
		t.Fatal(err)
	}
	return base
}

func (d *demo) originAddr(i int) string { return "127.0.0.1:" + strconv.Itoa(d.originPort+i-1) }

// demoOutput collects the demo's stdout and stderr.
type demoOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *demoOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *demoOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func (d *demo) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// mustRun fails the test if the demo has exited.
func (d *demo) mustRun(t *testing.T) {
	t.Helper()
	if !d.running() {
		t.Fatalf("the demo exited (%v); its output:\n%s", d.cmd.ProcessState, d.out)
	}
}

// broken fails the test for a component that stopped answering, saying
// whether the demo is the reason: it stops them all when it exits, which
// takes seconds (the edge drains first).
func (d *demo) broken(t *testing.T, what string, err error) {
	t.Helper()
	select {
	case <-d.done:
		t.Fatalf("%s: %v: the demo exited (%v) and stopped the stack", what, err, d.cmd.ProcessState)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: %v (the demo still runs)", what, err)
	}
}

// waitOutput waits until the demo has printed s.
func (d *demo) waitOutput(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !strings.Contains(d.out.String(), s); {
		d.mustRun(t)
		if time.Now().After(deadline) {
			t.Fatalf("the demo did not print %q within %v; its output:\n%s", s, timeout, d.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// demoView is the demo's <state>/demo/origins file.
type demoView struct {
	want    int
	origins map[int]demoOrigin
}

type demoOrigin struct {
	addr, state string
	pid         int
}

// viewDump is the view file's text, for messages.
func (d *demo) viewDump() string {
	b, err := os.ReadFile(d.viewFile)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b)
}

func (d *demo) view(t *testing.T) demoView {
	t.Helper()
	v, err := d.readView()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// readView parses the view, and records the pids it names.
func (d *demo) readView() (demoView, error) {
	v := demoView{origins: map[int]demoOrigin{}}
	text, err := os.ReadFile(d.viewFile)
	if err != nil {
		return v, err
	}
	for line := range strings.Lines(string(text)) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "want":
			v.want, _ = strconv.Atoi(f[1])
		case len(f) == 4:
			i, err := strconv.Atoi(f[0])
			if err != nil {
				return v, fmt.Errorf("bad line in %s: %q", d.viewFile, line)
			}
			pid, _ := strconv.Atoi(f[2]) // "-" while restarting
			v.origins[i] = demoOrigin{addr: f[1], pid: pid, state: f[3]}
			if pid > 0 {
				d.mu.Lock()
				d.pids[pid] = true
				d.mu.Unlock()
			}
		default:
			return v, fmt.Errorf("bad line in %s: %q", d.viewFile, line)
		}
	}
	return v, nil
}

// originPid returns the pid of the podium origin listening on addr, 0 if
// none runs.
func (d *demo) originPid(t *testing.T, addr string) int {
	t.Helper()
	mark := []byte("origin\x00-listen\x00" + addr + "\x00")
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && bytes.Contains(cmd, mark) {
			if found != 0 {
				t.Fatalf("two origins listen on %s: pids %d and %d", addr, found, pid)
			}
			found = pid
		}
	}
	return found
}

// collectPids records every pid the demo printed, and those of Consul and
// MariaDB from their pid files, for the check that none outlives it.
func (d *demo) collectPids(t *testing.T) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range regexp.MustCompile(`\bpid (\d+)`).FindAllStringSubmatch(d.out.String(), -1) {
		if p, err := strconv.Atoi(m[1]); err == nil {
			d.pids[p] = true
		}
	}
	for _, f := range []string{"consul/consul.pid", "mariadb/primary/mysqld.pid", "mariadb/replica1/mysqld.pid", "mariadb/replica2/mysqld.pid"} {
		b, err := os.ReadFile(filepath.Join(d.state, f))
		if err != nil {
			t.Fatalf("reading the demo's %s: %v", f, err)
		}
		p, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: %q", f, b)
		}
		d.pids[p] = true
	}
}

// consulPassing returns the addresses of the passing podium-origin
// instances, sorted, from Consul's HTTP API.
func (d *demo) consulPassing(t *testing.T) []string {
	t.Helper()
	resp, err := d.client.Get(d.consulURL + "/v1/health/service/podium-origin?passing")
	if err != nil {
		d.broken(t, "asking Consul", err)
	}
	defer resp.Body.Close()
	var entries []struct {
		Service struct {
			Address string
			Port    int
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&entries); err != nil {
		t.Fatalf("Consul's /v1/health/service answer: %v", err)
	}
	var addrs []string
	for _, e := range entries {
		addrs = append(addrs, net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port)))
	}
	slices.Sort(addrs)
	return addrs
}

// upstreamUp reads podium_edge_upstream_up from the edge's admin /metrics:
// upstream address → 1 or 0. An upstream discovery dropped is absent.
func (d *demo) upstreamUp(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := d.client.Get(d.adminURL + "/metrics")
	if err != nil {
		d.broken(t, "the edge's admin /metrics", err)
	}
	defer resp.Body.Close()
	up := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `podium_edge_upstream_up{upstream="`)
		if !ok {
			continue
		}
		addr, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("podium_edge_upstream_up: %q", sc.Text())
		}
		up[addr] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading the edge's /metrics: %v", err)
	}
	return up
}

func upAddrs(up map[string]float64) []string {
	var addrs []string
	for a, v := range up {
		if v == 1 {
			addrs = append(addrs, a)
		}
	}
	slices.Sort(addrs)
	return addrs
}

// waitUpstreams polls the edge's metrics every 50 ms until cond holds, and
// returns when it first did.
func (d *demo) waitUpstreams(t *testing.T, what string, timeout time.Duration, cond func(map[string]float64) bool) time.Time {
	t.Helper()
	var up map[string]float64
	for deadline := time.Now().Add(timeout); ; {
		up = d.upstreamUp(t)
		if cond(up) {
			return time.Now()
		}
		d.mustRun(t)
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; podium_edge_upstream_up: %v; Consul passing: %v; demo view:\n%s",
				timeout, what, up, d.consulPassing(t), d.viewDump())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scale runs `scripts/demo.sh scale N` as from another terminal: only the
// state dir in its environment (the demo tells it the rest).
func (d *demo) scale(n string) (string, error) {
	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "demo.sh"), "scale", n)
	cmd.Dir = repoRoot
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "PODIUM_STATE=" + d.state}
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
		return string(out), err
	case <-time.After(150 * time.Second): // scale itself gives up after 2 × 60 s
		_ = cmd.Process.Kill()
		<-done
		return string(out), errors.New("scale did not return within 150 s")
	}
}

// scaleTo scales to n and checks what scale said and what Consul says.
func (d *demo) scaleTo(t *testing.T, n int) {
	t.Helper()
	start := time.Now()
	out, err := d.scale(strconv.Itoa(n))
	t.Logf("scripts/demo.sh scale %d (%v):\n%s", n, time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("scale %d: %v; the demo's output:\n%s", n, err, d.out)
	}
	if want := fmt.Sprintf("Consul: %d passing", n); !strings.Contains(out, want) {
		t.Errorf("scale %d printed no %q", n, want)
	}
	var want []string
	for i := 1; i <= n; i++ {
		want = append(want, d.originAddr(i))
	}
	slices.Sort(want)
	for deadline := time.Now().Add(30 * time.Second); ; {
		got := d.consulPassing(t)
		if slices.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after scale %d Consul shows %v passing, want %v", n, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	v := d.view(t)
	if v.want != n || len(v.origins) != n {
		t.Errorf("after scale %d the demo's view says:\n%s", n, d.viewDump())
	}
	d.collectPids(t)
}

// pickGame returns a game with seats enough for the load's purchases.
func (d *demo) pickGame(t *testing.T) int64 {
	t.Helper()
	resp, err := d.client.Get(d.edgeURL + "/api/games?limit=100")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Games []struct{ ID, Remaining int64 } `json:"games"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatalf("the listing: %v", err)
	}
	for _, g := range page.Games {
		if g.Remaining >= 5000 {
			return g.ID
		}
	}
	t.Fatalf("no game with 5000 seats left in the first 100")
	return 0
}

// stopAndCheck sends SIGINT to the demo's process group and checks that it
// stops everything: every pid it reported, and any process whose command
// line names its state dir or its Consul port.
func (d *demo) stopAndCheck(t *testing.T) {
	t.Helper()
	d.collectPids(t)
	_, _ = d.readView() // the pids it names
	start := time.Now()
	if err := syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatalf("SIGINT to the demo: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the demo did not stop within 2 minutes of SIGINT; its output:\n%s", d.out)
	}
	t.Logf("SIGINT: the demo stopped in %v (%v)", time.Since(start).Round(time.Millisecond), d.cmd.ProcessState)
	if !d.cmd.ProcessState.Success() {
		t.Errorf("the demo exited with %v after SIGINT, want 0", d.cmd.ProcessState)
	}
	if out := d.out.String(); !strings.Contains(out, "stopped; state kept in") {
		t.Errorf("the demo did not say it stopped; its output:\n%s", out)
	}
	d.mu.Lock()
	pids := slices.Sorted(maps.Keys(d.pids))
	d.mu.Unlock()
	for _, p := range pids {
		if err := syscall.Kill(p, 0); errors.Is(err, syscall.ESRCH) {
			continue
		}
		// Alive: ours, unless the pid was recycled for something else.
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if demoProcess.Match(cmd) {
			t.Errorf("pid %d is still there after the demo stopped: %q", p, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
		}
	}
	for _, p := range d.leftovers() {
		t.Errorf("left behind after the demo stopped: %s", p)
	}
	t.Logf("checked %d pids the demo started: none left", len(pids))
}

// demoProcess matches the command line of a process the demo starts.
var demoProcess = regexp.MustCompile(`podium|consul|mariadbd|prometheus`)

// leftovers lists processes whose command line names this demo's state dir
// or Consul port, or an origin port of it.
func (d *demo) leftovers() []string {
	marks := [][]byte{[]byte(d.state), []byte("127.0.0.1:" + strconv.Itoa(d.consulPort))}
	for i := 1; i <= 9; i++ {
		marks = append(marks, []byte(d.originAddr(i)+"\x00"))
	}
	entries, _ := os.ReadDir("/proc")
	var left []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, m := range marks {
			if bytes.Contains(cmd, m) {
				left = append(left, fmt.Sprintf("pid %d: %s", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
				break
			}
		}
	}
	return left
}

// cleanup stops a demo the test left running, and anything it left.
func (d *demo) cleanup(t *testing.T) {
	if d.running() {
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-d.done:
		case <-time.After(90 * time.Second):
			t.Errorf("the demo ignored SIGINT for 90 s; killing its process group")
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
	}
	if t.Failed() {
		t.Logf("the demo's output:\n%s", d.out)
		for _, name := range []string{"edge.log", "origin1.log", "origin2.log", "origin3.log", "origin4.log"} {
			if b, err := os.ReadFile(filepath.Join(d.state, "demo", name)); err == nil {
				lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
				t.Logf("last lines of %s:\n%s", name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
	}
	env := append(slices.Clone(d.env), "PODIUM_CONSUL_STATE="+filepath.Join(d.state, "consul"))
	for _, args := range [][]string{{"mariadb-cluster.sh", "stop", filepath.Join(d.state, "mariadb")}, {"consul.sh", "stop"}} {
		cmd := exec.Command(filepath.Join(repoRoot, "scripts", args[0]), args[1:]...)
		cmd.Env = env
		_ = cmd.Run()
	}
	for _, p := range d.leftovers() {
		if pid, err := strconv.Atoi(strings.TrimPrefix(strings.SplitN(p, ":", 2)[0], "pid ")); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	os.RemoveAll(d.state)
}

// demoLoad is steady load through the edge: demoLoadRate requests a
// second, each with its start and end times and outcome. GETs carry a
// query parameter no other request has, so none is a cache hit: every one
// reaches an origin. One request in 40 is a purchase with an
// Idempotency-Key. Clients vary by X-Forwarded-For (the demo trusts
// loopback), so the per-client rate limits never refuse one.
type demoLoad struct {
	mu      sync.Mutex
	res     []demoResult
	tokens  map[string]string // the waiting room's token of each client (X-Forwarded-For)
	done    atomic.Int64
	skipped atomic.Int64
	buys    atomic.Int64
	// queued counts the purchases the waiting room answered 429 at least
	// once, letIn those of them that then went through, roomAnswers all
	// its 429s.
	queued, letIn, roomAnswers atomic.Int64
	quit                       chan struct{}
	wg                         sync.WaitGroup
}

type demoResult struct {
	start, end time.Time
	what       string
	status     int
	body       string // the start of a failed answer's body
	err        error
	// roomFailure: the waiting room did not let a purchase in, or broke
	// its protocol (a 429 without Retry-After), which no origin's death
	// explains.
	roomFailure bool
	tries       int // purchases: requests sent, the room's 429s included
}

func (r demoResult) ok() bool {
	if r.err != nil {
		return false
	}
	if strings.HasPrefix(r.what, "POST") {
		return r.status == http.StatusCreated
	}
	return r.status == http.StatusOK
}

func (r demoResult) String() string {
	outcome := strconv.Itoa(r.status) + " " + r.body
	if r.err != nil {
		outcome = r.err.Error()
	}
	tries := ""
	if r.tries > 1 {
		tries = fmt.Sprintf(" (try %d; the room answered the ones before 429)", r.tries)
	}
	return fmt.Sprintf("%s at %s took %v%s: %s", r.what, r.start.Format("15:04:05.000"), r.end.Sub(r.start).Round(time.Millisecond), tries, outcome)
}

func startDemoLoad(t *testing.T, edgeURL string, game int64) *demoLoad {
	t.Helper()
	ld := &demoLoad{quit: make(chan struct{}), tokens: map[string]string{}}
	client := &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: demoLoadWorkers},
	}
	run := rand.Int64()
	jobs := make(chan int64, demoLoadWorkers)
	for range demoLoadWorkers {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for seq := range jobs {
				ld.one(client, edgeURL, game, run, seq)
			}
		}()
	}
	ld.wg.Add(1)
	go func() {
		defer ld.wg.Done()
		defer close(jobs)
		tick := time.NewTicker(time.Second / demoLoadRate)
		defer tick.Stop()
		// Bounded: 10 minutes of load at most, whatever the test does.
		for seq := int64(1); seq <= 10*60*demoLoadRate; seq++ {
			select {
			case <-ld.quit:
				return
			case <-tick.C:
			}
			select {
			case jobs <- seq:
			default:
				ld.skipped.Add(1)
			}
		}
	}()
	t.Cleanup(func() { ld.stop(t) })
	return ld
}

func (ld *demoLoad) one(client *http.Client, edgeURL string, game, run, seq int64) {
	xff := fmt.Sprintf("10.77.0.%d", seq%64+1)
	var r demoResult
	switch {
	case seq%40 == 0:
		ld.buys.Add(1)
		var ok bool
		if r, ok = ld.purchase(client, edgeURL, game, run, seq, xff); !ok {
			return // the load stopped while it waited in the room
		}
	case seq%3 == 0:
		r = ld.get(client, fmt.Sprintf("%s/api/games/%d?n=%d", edgeURL, game, seq), xff)
	default:
		r = ld.get(client, fmt.Sprintf("%s/api/games?limit=5&n=%d", edgeURL, seq), xff)
	}
	ld.mu.Lock()
	ld.res = append(ld.res, r)
	ld.mu.Unlock()
	ld.done.Add(1)
}

func (ld *demoLoad) get(client *http.Client, url, xff string) demoResult {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("X-Forwarded-For", xff)
	r := demoResult{start: time.Now(), what: req.Method + " " + req.URL.RequestURI()}
	resp, err := client.Do(req)
	if err == nil {
		var body []byte
		body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		r.status = resp.StatusCode
		if !r.ok() {
			r.body = string(body[:min(len(body), 200)])
		}
	}
	r.end, r.err = time.Now(), err
	return r
}

// demoRoomTries bounds the answers one purchase may get from the
// waiting room: a new fan waits the settle time (2 s) and is let in on
// its first return (Retry-After, the room's 3 s refresh) unless a queue
// has formed, which this load's 4 purchases a second do not make.
const demoRoomTries = 10

// purchase buys one ticket as a real API client of the demo's waiting
// room does: it sends the room's token it holds for its client (the
// Podium-Waiting-Room header of the last answer), and on 429 waits
// Retry-After and tries again with the token it was given. The result
// spans every try. ok is false when the load stopped while it waited.
func (ld *demoLoad) purchase(client *http.Client, edgeURL string, game, run, seq int64, xff string) (r demoResult, ok bool) {
	// One fan per purchase: the origin caps the seats one email may hold.
	body := fmt.Sprintf(`{"quantity":1,"email":"fan%d-%x@demo-e2e.example"}`, seq, run)
	url := fmt.Sprintf("%s/api/games/%d/buy", edgeURL, game)
	r = demoResult{what: "POST " + strings.TrimPrefix(url, edgeURL)}
	defer func() { r.end = time.Now() }()
	for try := 1; ; try++ {
		r.start, r.tries = time.Now(), try
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", fmt.Sprintf("demo-e2e-%x-%d", run, seq))
		req.Header.Set("X-Forwarded-For", xff)
		ld.mu.Lock()
		tok := ld.tokens[xff]
		ld.mu.Unlock()
		if tok != "" {
			req.Header.Set("Podium-Waiting-Room", tok)
		}
		resp, err := client.Do(req)
		if err != nil {
			r.err = err
			return r, true
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		r.status, r.err = resp.StatusCode, err
		if !r.ok() {
			r.body = string(b[:min(len(b), 200)])
		}
		// A place token (429) or an admission (the purchase went on).
		room := resp.Header.Get("Podium-Waiting-Room")
		if room != "" {
			ld.mu.Lock()
			ld.tokens[xff] = room
			ld.mu.Unlock()
		}
		if err != nil || resp.StatusCode != http.StatusTooManyRequests || room == "" {
			// The rate limiter's 429 has no room token: a failure here.
			if try > 1 && r.ok() {
				ld.letIn.Add(1)
			}
			return r, true
		}
		ld.roomAnswers.Add(1)
		if try == 1 {
			ld.queued.Add(1)
		}
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || ra < 1 || ra > 60 {
			r.err = fmt.Errorf("the waiting room's 429 has Retry-After %q, want 1..60 seconds", resp.Header.Get("Retry-After"))
			r.roomFailure = true
			return r, true
		}
		if try == demoRoomTries {
			r.err = fmt.Errorf("still waiting in the room after %d tries: %s", try, r.body)
			r.roomFailure = true
			return r, true
		}
		select {
		case <-ld.quit:
			return r, false
		case <-time.After(time.Duration(ra) * time.Second): // what Retry-After asks of a client
		}
	}
}

func (ld *demoLoad) count() int64     { return ld.done.Load() }
func (ld *demoLoad) purchases() int64 { return ld.buys.Load() }

// waitDone waits until n requests have completed.
func (ld *demoLoad) waitDone(t *testing.T, n int64, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ld.count() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("the load completed %d requests in %v, want %d", ld.count(), timeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the load and waits for the requests in flight (each bounded
// by the client's 15 s timeout).
func (ld *demoLoad) stop(t *testing.T) {
	select {
	case <-ld.quit:
		return
	default:
		close(ld.quit)
	}
	ld.wg.Wait()
}

func (ld *demoLoad) results() []demoResult {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return slices.Clone(ld.res)
}
