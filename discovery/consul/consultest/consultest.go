// Package consultest runs a real Consul agent for tests: `consul agent -dev`
// on free loopback ports in a temporary directory, stopped when the test
// ends. Tests of any package get one with
//
//	agent := consultest.Start(t)
//	client := agent.Client()           // or dial agent.Addr yourself
//	agent.Stop(); agent.Start()        // an outage, same ports and state
//
// The binary is the one scripts/consul.sh builds into $PODIUM_CACHE/bin
// (default <repo>/.cache/bin/consul); if it is missing, Start runs
// `scripts/consul.sh build` first, which takes minutes on a cold cache, so
// CI runs that ahead of the tests. PODIUM_CONSUL_LOG_LEVEL=debug makes the
// agent log (shown when a test fails) verbose.
package consultest

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/internal/testport"

	"github.com/hashicorp/consul/api"
)

// StartTimeout bounds the wait for the agent to elect itself leader and to
// sync promptly. Here a -dev agent elects itself in about 0.2 s and is ready
// within 4 s; the rest is headroom for a loaded CI.
const StartTimeout = 30 * time.Second

// Agent is one running (or stopped) agent. Its methods are safe for
// concurrent use, but Start and Restart may fail the test and so belong on
// the test's goroutine. An Agent must not be copied.
type Agent struct {
	// Addr is the HTTP API as 127.0.0.1:port. It stays the same across
	// Stop and Start.
	Addr string
	// Token is the management token when the agent runs with ACLs
	// (Options.ACLs); empty otherwise. Client sends it.
	Token string

	t       testing.TB
	bin     string
	dir     string
	logPath string
	ports   ports

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

type ports struct{ http, server, serfLAN, serfWAN int }

// Options change how StartWith runs the agent. The zero value is Start's.
type Options struct {
	// ACLs turns on ACLs with default policy deny. Agent.Token is then the
	// management token; a query without a token sees nothing.
	ACLs bool
}

// Start builds the agent if needed, starts it, waits until it has a leader
// and syncs promptly, and stops it in t.Cleanup. It fails the test when any
// of that fails.
func Start(t testing.TB) *Agent {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, opts Options) *Agent {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	dir := t.TempDir()
	a := &Agent{t: t, bin: bin, dir: dir, logPath: filepath.Join(dir, "consul.log")}
	if opts.ACLs {
		a.Token = "11111111-2222-3333-4444-555555555555" // a UUID, as Consul requires
	}
	a.ports, err = freePorts()
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	a.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.http))
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			a.logTail(40)
		}
	})
	a.Start()
	return a
}

// Start starts a stopped agent again on the same ports and data dir, so
// what was registered before comes back (as it does for a real agent). It
// does nothing when the agent runs.
func (a *Agent) Start() {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return
	}
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		a.t.Fatalf("consultest: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(a.bin, "agent", "-dev",
		"-bind=127.0.0.1", "-client=127.0.0.1", "-advertise=127.0.0.1",
		"-data-dir="+filepath.Join(a.dir, "data"),
		"-http-port="+strconv.Itoa(a.ports.http),
		"-server-port="+strconv.Itoa(a.ports.server),
		"-serf-lan-port="+strconv.Itoa(a.ports.serfLAN),
		"-serf-wan-port="+strconv.Itoa(a.ports.serfWAN),
		"-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1",
		"-log-level="+cmp.Or(os.Getenv("PODIUM_CONSUL_LOG_LEVEL"), "info"),
	)
	if a.Token != "" {
		cmd.Args = append(cmd.Args, "-hcl", fmt.Sprintf(
			`acl { enabled = true, default_policy = "deny", tokens { initial_management = %q, agent = %q } }`,
			a.Token, a.Token))
	}
	// `consul agent -dev` refuses to start in a working directory that
	// holds a folder named mdb; the temp dir never does.
	cmd.Dir = a.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = agentProcAttr()
	if err := cmd.Start(); err != nil {
		a.t.Fatalf("consultest: start %s: %v", a.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	a.cmd, a.done = cmd, done

	client := a.Client()
	deadline := time.Now().Add(StartTimeout)
	for {
		leader, err := client.Status().Leader()
		if err == nil && leader != "" {
			err = a.waitSynced(client, deadline)
			if err == nil {
				return
			}
			a.logTail(40)
			a.t.Fatalf("consultest: %v", err)
		}
		select {
		case <-done:
			a.cmd = nil
			a.logTail(40)
			a.t.Fatalf("consultest: agent exited during start (log above)")
		default:
		}
		if time.Now().After(deadline) {
			a.logTail(40)
			a.t.Fatalf("consultest: no leader on %s after %v (last error: %v)", a.Addr, StartTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readyService is the canary that proves the agent syncs changes at once.
const readyService = "consultest-ready"

// waitSynced returns once the agent pushes local changes to the catalog at
// once. A leader is not enough. The new-leader event queues a full sync that
// the agent's state syncer (agent/ae) serves after a random 0–3 s stagger
// (serverUpInterval), and while it waits every partial sync — a
// registration, a check turning passing — waits too. Measured here: checks
// that passed in that window reached the catalog 0.4–2.6 s late instead of
// about 5 ms. So flip a canary TTL check every 50 ms and watch the catalog:
// ready after the stall has come and gone (two prompt flips after a late
// one), or after 3.5 s of prompt flips (any stall would have shown).
func (a *Agent) waitSynced(c *api.Client, deadline time.Time) error {
	const (
		late        = 150 * time.Millisecond // a flip slower than this met the stall
		quietWindow = 3500 * time.Millisecond
	)
	checkID := "service:" + readyService
	// With ACLs on, the leader initialises them just after it is elected;
	// a request in between is refused with 403 "ACL system must be
	// bootstrapped" (seen under load). The canary's registration is the
	// first authorised request, so it waits for that, not for a time.
	for {
		err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: readyService, Name: readyService,
			Check: &api.AgentServiceCheck{CheckID: checkID, TTL: "1h"},
		})
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "ACL system must be bootstrapped") || time.Now().After(deadline) {
			return fmt.Errorf("registering the readiness canary: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	start := time.Now()
	stalled, prompt := false, 0
	for flip := 0; ; flip++ {
		if time.Now().After(deadline) {
			return fmt.Errorf("agent on %s did not sync changes to the catalog promptly within %v", a.Addr, StartTimeout)
		}
		status := api.HealthPassing
		if flip%2 == 1 {
			status = api.HealthWarning
		}
		if err := c.Agent().UpdateTTL(checkID, "", status); err != nil {
			return fmt.Errorf("updating the readiness canary: %w", err)
		}
		if a.catalogShows(c, checkID, status, late) {
			prompt++
		} else {
			stalled, prompt = true, 0
		}
		if (stalled && prompt >= 2) || (!stalled && time.Since(start) > quietWindow) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Agent().ServiceDeregister(readyService); err != nil {
		return fmt.Errorf("removing the readiness canary: %w", err)
	}
	return nil
}

// catalogShows polls the catalog for the canary check's status for up to d.
func (a *Agent) catalogShows(c *api.Client, checkID, status string, d time.Duration) bool {
	until := time.Now().Add(d)
	for time.Now().Before(until) {
		checks, _, err := c.Health().Checks(readyService, nil)
		if err == nil {
			for _, ch := range checks {
				if ch.CheckID == checkID && ch.Status == status {
					return true
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// Stop stops the agent gracefully (SIGTERM, SIGKILL after 10 s) and waits
// for it to exit. The HTTP port is closed when Stop returns. It does
// nothing when the agent is stopped.
func (a *Agent) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	a.cmd = nil
}

// Restart is Stop then Start.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	a.Start()
}

// Client returns a new API client for the agent. It keeps working across
// Stop and Start.
func (a *Agent) Client() *api.Client {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.Addr
	cfg.Token = a.Token
	c, err := api.NewClient(cfg)
	if err != nil {
		// NewClient fails only on a malformed config; ours is fixed.
		panic(fmt.Sprintf("consultest: %v", err))
	}
	return c
}

// LogPath is the agent's log file (inside the test's temp dir, so gone
// after the test unless it failed and the tail was logged).
func (a *Agent) LogPath() string { return a.logPath }

// logTail writes the last n lines of the agent's log to the test log.
func (a *Agent) logTail(n int) {
	b, err := os.ReadFile(a.logPath)
	if err != nil {
		return
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	a.t.Logf("consultest: last %d lines of %s:\n%s", len(lines), a.logPath, bytes.Join(lines, []byte("\n")))
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary returns the path of the consul binary, building it with
// scripts/consul.sh when it is missing.
func Binary() (string, error) {
	buildOnce.Do(func() { binPath, buildErr = binary() })
	return binPath, buildErr
}

func binary() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cache := os.Getenv("PODIUM_CACHE")
	if cache == "" {
		cache = filepath.Join(root, ".cache")
	}
	bin := filepath.Join(cache, "bin", "consul")
	if fi, err := os.Stat(bin); err == nil && fi.Mode()&0o111 != 0 {
		return bin, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "consul.sh"), "build")
	cmd.Env = append(os.Environ(), "PODIUM_CACHE="+cache)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("scripts/consul.sh build: %w\n%s", err, out)
	}
	return bin, nil
}

// repoRoot walks up from the working directory (a package dir under go
// test) to the directory holding scripts/consul.sh.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "scripts", "consul.sh")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no scripts/consul.sh in %s or its parents; run the tests inside the podium repo or set PODIUM_CACHE to a dir holding bin/consul", dir)
		}
	}
}

// freePorts picks four free loopback ports (internal/testport says where
// from, and why not ":0"). Serf listens on TCP and UDP, so each port is
// free for both. The ports are released before the agent binds them, and a
// restarted agent binds them again after an outage: a port is handed out
// once per process, so no parallel test's agent takes a stopped one's.
func freePorts() (ports, error) {
	got, err := testport.Free(4, true)
	if err != nil {
		return ports{}, fmt.Errorf("picking free ports for the agent: %w", err)
	}
	return ports{http: got[0], server: got[1], serfLAN: got[2], serfWAN: got[3]}, nil
}

// WaitPassing polls the health endpoint until exactly the given service IDs
// are passing for name, or fails the test after timeout. It is a helper for
// tests that need a known starting state; it is not a timed assertion.
func WaitPassing(t testing.TB, c *api.Client, name string, timeout time.Duration, ids ...string) {
	t.Helper()
	want := strings.Join(slices.Sorted(slices.Values(ids)), ",")
	deadline := time.Now().Add(timeout)
	var got string
	for time.Now().Before(deadline) {
		entries, _, err := c.Health().Service(name, "", true, nil)
		if err == nil {
			var have []string
			for _, e := range entries {
				have = append(have, e.Service.ID)
			}
			got = strings.Join(slices.Sorted(slices.Values(have)), ",")
			if got == want {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("consultest: passing %s = [%s], want [%s] within %v", name, got, want, timeout)
}
