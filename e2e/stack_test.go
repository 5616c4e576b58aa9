package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/internal/testport"

	"github.com/podium-edge/podium/discovery/consul/consultest"
)

// The end-to-end tests run the real stack on free loopback ports: a Consul
// agent, a MariaDB primary with two GTID replicas, three `podium origin`
// processes registered in Consul, and one `podium edge` discovering them.
// TestMain builds the binary once; TestStack starts the stack once and runs
// every end-to-end check against it, in an order that ends with the outage.

var (
	repoRoot  string // the module root
	podiumBin string // the binary under test
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	repoRoot, err = filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// PODIUM_E2E_BIN reuses a binary built already (CI builds bin/podium
	// before the tests); otherwise build the tree under test.
	if podiumBin = os.Getenv("PODIUM_E2E_BIN"); podiumBin == "" {
		dir, err := os.MkdirTemp("", "podium-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		podiumBin = filepath.Join(dir, "podium")
		build := exec.Command("go", "build", "-o", podiumBin, "./cmd/podium")
		build.Dir = repoRoot
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: building ./cmd/podium:", err)
			return 1
		}
	}
	return m.Run()
}

// stack is one running Podium stack. Its fields are set by startStack and
// read-only afterwards; stopOrigins is the only mutation.
type stack struct {
	consul *consultest.Agent
	dbDir  string // mariadb-cluster.sh state dir
	script string // scripts/mariadb-cluster.sh

	primaryDSN, replicaDSNs string
	origins                 []*proc
	originURLs              []string
	edge                    *proc
	edgeURL, adminURL       string
	client                  *http.Client
}

// proc is a child process whose output goes to a log file, shown when the
// test fails.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// freePorts picks n free loopback ports for the processes a test starts
// (internal/testport says why not ":0").
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := testport.Free(n, false)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// startStack starts everything and stops it in t.Cleanup. originArgs are
// added to every `podium origin` command line.
func startStack(t *testing.T, originArgs ...string) *stack {
	t.Helper()
	s := &stack{script: filepath.Join(repoRoot, "scripts", "mariadb-cluster.sh")}
	s.client = &http.Client{
		Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}

	// MariaDB starts in the background while Consul starts here (consultest
	// must run on the test goroutine): together about 10 s instead of 15.
	dbDone := make(chan error, 1)
	s.startDB(t, dbDone)
	s.consul = consultest.Start(t)
	if err := <-dbDone; err != nil {
		t.Fatalf("starting the MariaDB cluster: %v", err)
	}
	s.loadDBEnv(t)

	migrate := exec.Command(podiumBin, "origin", "migrate")
	migrate.Env = append(os.Environ(), "PODIUM_DB_MIGRATE="+s.dbEnv(t, "PODIUM_DB_MIGRATE"))
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("podium origin migrate: %v\n%s", err, out)
	}
	if out, err := exec.Command(s.script, "wait", s.dbDir).CombinedOutput(); err != nil {
		t.Fatalf("waiting for the replicas: %v\n%s", err, out)
	}

	ports := freePorts(t, 5)
	for i := range 3 {
		addr := "127.0.0.1:" + strconv.Itoa(ports[i])
		args := append([]string{"origin",
			"-listen", addr, "-consul", s.consul.Addr,
			"-primary", s.primaryDSN, "-replicas", s.replicaDSNs,
			// The sold-out fixture buys a whole session through the API,
			// as one buyer.
			"-max-per-order", "100", "-max-per-buyer", "0",
			// Short drain: the outage check stops all three at once.
			"-drain", "200ms", "-shutdown-timeout", "3s"}, originArgs...)
		p := s.start(t, fmt.Sprintf("origin%d", i+1), podiumBin, args...)
		s.origins = append(s.origins, p)
		s.originURLs = append(s.originURLs, "http://"+addr)
	}

	s.edgeURL = "http://127.0.0.1:" + strconv.Itoa(ports[3])
	s.adminURL = "http://127.0.0.1:" + strconv.Itoa(ports[4])
	cfg := filepath.Join(t.TempDir(), "edge.yaml")
	// The embedded default routes (cache, purge on purchase, stale-if-error)
	// with the origins found in Consul. Every client of this test is
	// 127.0.0.1, so the per-client limits are raised: one IP here stands for
	// the browser, the contract checks and the smoke at once.
	yaml := fmt.Sprintf(`listen: "127.0.0.1:%d"
admin: "127.0.0.1:%d"
discovery:
  consul:
    address: %q
    service: podium-origin
ratelimits:
  default: {rate: 1000, burst: 2000}
  buy: {rate: 100, burst: 200}
`, ports[3], ports[4], s.consul.Addr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	s.edge = s.start(t, "edge", podiumBin, "edge", "-config", cfg, "-drain", "100ms", "-shutdown-timeout", "3s")

	for i, u := range s.originURLs {
		s.waitFor(t, s.origins[i], u+"/ping", 60*time.Second)
	}
	// Through the edge: Consul has the origins and the edge's prober
	// found them healthy.
	s.waitFor(t, s.edge, s.edgeURL+"/api/games?limit=1", 60*time.Second)
	return s
}

func (s *stack) startDB(t *testing.T, done chan<- error) {
	t.Helper()
	// Not t.TempDir: the watchdog below removes it if this binary dies.
	dir, err := os.MkdirTemp("", "podium-e2e-db-")
	if err != nil {
		t.Fatal(err)
	}
	s.dbDir = dir
	ports := freePorts(t, 3)
	// If this binary dies without running Cleanup (a -timeout panic, a
	// kill), a watchdog in its own session stops the cluster and removes
	// its state dir, so no mariadbd outlives the run (as origin's tests do).
	watchdog := exec.Command("sh", "-c",
		`while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3" >/dev/null 2>&1; rm -rf "$3"`,
		"watchdog", strconv.Itoa(os.Getpid()), s.script, dir)
	watchdog.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := watchdog.Start(); err != nil {
		t.Fatalf("starting the cluster watchdog: %v", err)
	}
	go watchdog.Wait() //nolint:errcheck // reaps it if it ends first
	t.Cleanup(func() {
		out, err := exec.Command(s.script, "stop", dir).CombinedOutput()
		if err != nil {
			t.Errorf("stopping the MariaDB cluster: %v\n%s", err, out)
		}
		os.RemoveAll(dir)
	})
	start := exec.Command(s.script, "start", dir)
	start.Env = append(os.Environ(),
		"PODIUM_DB_PRIMARY_PORT="+strconv.Itoa(ports[0]),
		"PODIUM_DB_REPLICA1_PORT="+strconv.Itoa(ports[1]),
		"PODIUM_DB_REPLICA2_PORT="+strconv.Itoa(ports[2]))
	go func() {
		out, err := start.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		done <- err
	}()
}

// dbEnv returns one variable of `mariadb-cluster.sh env`.
func (s *stack) dbEnv(t testing.TB, name string) string {
	t.Helper()
	out, err := exec.Command(s.script, "env", s.dbDir).Output()
	if err != nil {
		t.Fatalf("mariadb-cluster.sh env: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if ok && k == name {
			return strings.Trim(v, "'")
		}
	}
	t.Fatalf("mariadb-cluster.sh env has no %s:\n%s", name, out)
	return ""
}

func (s *stack) loadDBEnv(t testing.TB) {
	s.primaryDSN = s.dbEnv(t, "PODIUM_DB_PRIMARY")
	s.replicaDSNs = s.dbEnv(t, "PODIUM_DB_REPLICAS")
}

// start runs a child process until the test ends. It gets SIGTERM, then
// SIGKILL after 10 s; Pdeathsig kills it if the test binary dies first.
func (s *stack) start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// Own process group, so a ^C at `go test` does not reach it before
	// Cleanup stops it in order.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			p.tail(t, 30)
		}
	})
	return p
}

// stop sends SIGTERM and waits (bounded) for the process to exit.
func (p *proc) stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not exit 10 s after SIGTERM; killing it", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) tail(t testing.TB, n int) {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	t.Logf("last lines of %s (%s):\n%s", p.name, p.log, strings.Join(lines, "\n"))
}

// waitFor polls url until it answers 200, the process exits, or timeout.
func (s *stack) waitFor(t *testing.T, p *proc, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			p.tail(t, 30)
			t.Fatalf("%s exited while waiting for %s", p.name, url)
		default:
		}
		resp, err := s.client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %.200s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	p.tail(t, 30)
	t.Fatalf("%s not ready after %v (last answer: %s)", url, timeout, last)
}

// pauseReplication stops the SQL thread on both replicas, as
// origin/replication_test.go does: from here a write reaches a replica
// only once resume runs, so a read shows it only if it waited for its
// GTID and fell back to the primary. resume (idempotent, and run at
// cleanup too) restarts the threads and waits for the replicas to catch up.
func (s *stack) pauseReplication(t *testing.T) (resume func()) {
	t.Helper()
	var once sync.Once
	resume = func() {
		once.Do(func() {
			for _, node := range []string{"replica1", "replica2"} {
				if out, err := exec.Command(s.script, "sql", node, "START SLAVE SQL_THREAD", s.dbDir).CombinedOutput(); err != nil {
					t.Errorf("restarting replication on %s: %v\n%s", node, err, out)
				}
			}
			if out, err := exec.Command(s.script, "wait", s.dbDir).CombinedOutput(); err != nil {
				t.Errorf("waiting for the replicas to catch up: %v\n%s", err, out)
			}
		})
	}
	t.Cleanup(resume)
	for _, node := range []string{"replica1", "replica2"} {
		if out, err := exec.Command(s.script, "sql", node, "STOP SLAVE SQL_THREAD", s.dbDir).CombinedOutput(); err != nil {
			t.Fatalf("pausing replication on %s: %v\n%s", node, err, out)
		}
	}
	return resume
}

// stopOrigins stops every origin (SIGTERM: they leave Consul and drain).
func (s *stack) stopOrigins(t testing.TB) {
	for _, p := range s.origins {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range s.origins {
		p.stop(t)
	}
}

// get fetches url with optional headers.
func (s *stack) get(t testing.TB, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return s.do(t, http.MethodGet, url, "", hdr...)
}

func (s *stack) do(t testing.TB, method, url, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, b
}
