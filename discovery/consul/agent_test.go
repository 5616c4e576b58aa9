package consul_test

// Tests against a real `consul agent -dev` on loopback (consultest).

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podium-edge/podium/discovery"
	"github.com/podium-edge/podium/discovery/consul"
	"github.com/podium-edge/podium/discovery/consul/consultest"
)

// settleWait bounds waits for a state the test needs before it goes on. It
// is not an assertion on speed: it only stops a hang. 15 s was too short
// once, in a CI run at a load average of 13 on two cores, for the agent to
// run a re-registered service's first check.
const settleWait = 45 * time.Second

// origin is a real HTTP server on loopback whose /ping the agent checks.
type origin struct {
	srv      *httptest.Server
	healthy  atomic.Bool
	firstOK  atomic.Int64 // unix nanos of the first 200 on /ping
	pings    atomic.Int64 // /ping requests answered or stalled
	failed   atomic.Int64 // /ping answered 503
	stallFor atomic.Int64 // the next /ping stalls this many ns, once
}

func newOrigin(t *testing.T) *origin {
	t.Helper()
	o := &origin{}
	o.healthy.Store(true)
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ping" {
			http.NotFound(w, r)
			return
		}
		o.pings.Add(1)
		if d := o.stallFor.Swap(0); d > 0 {
			select { // past the check's timeout: the agent gives up first
			case <-time.After(time.Duration(d)):
			case <-r.Context().Done():
			}
			return
		}
		if !o.healthy.Load() {
			o.failed.Add(1)
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		o.firstOK.CompareAndSwap(0, time.Now().UnixNano())
		_, _ = w.Write([]byte("pong"))
	}))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origin) port(t *testing.T) int {
	t.Helper()
	_, p, err := net.SplitHostPort(o.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

func (o *origin) register(t *testing.T, c *api.Client, name, id string, tags []string, meta map[string]string) *consul.Service {
	t.Helper()
	svc, err := consul.Register(t.Context(), c, consul.Registration{
		Name: name, ID: id, Addr: "127.0.0.1", Port: o.port(t),
		Tags: tags, Meta: meta,
		// Consul's floor: it runs shorter intervals every 1 s anyway.
		CheckInterval: time.Second,
		Logger:        testLogger(t),
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return svc
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// recorder keeps every snapshot a watcher pushed, with its arrival time.
type recorder struct {
	mu    sync.Mutex
	snaps []snapshot
	wake  chan struct{}
}

type snapshot struct {
	at      time.Time
	targets []discovery.Target
}

func (s snapshot) has(id string) bool {
	return slices.ContainsFunc(s.targets, func(t discovery.Target) bool { return t.ID == id })
}

func (s snapshot) ids() []string {
	var ids []string
	for _, t := range s.targets {
		ids = append(ids, t.ID)
	}
	return ids
}

func (r *recorder) push(ts []discovery.Target) {
	r.mu.Lock()
	r.snaps = append(r.snaps, snapshot{at: time.Now(), targets: ts})
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *recorder) all() []snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.snaps)
}

// waitFor returns the first snapshot, at or after index from, that
// satisfies ok, and its index. It fails the test after settleWait.
func (r *recorder) waitFor(t *testing.T, from int, what string, ok func(snapshot) bool) (snapshot, int) {
	t.Helper()
	deadline := time.NewTimer(settleWait)
	defer deadline.Stop()
	for {
		snaps := r.all()
		for i := from; i < len(snaps); i++ {
			if ok(snaps[i]) {
				return snaps[i], i
			}
		}
		select {
		case <-r.wake:
		case <-time.After(50 * time.Millisecond):
		case <-deadline.C:
			var last []string
			if len(snaps) > 0 {
				last = snaps[len(snaps)-1].ids()
			}
			t.Fatalf("no snapshot with %s within %v; last pushed %v", what, settleWait, last)
		}
	}
}

// watch runs w until the test ends and returns what it pushes.
func watch(t *testing.T, w *consul.Watcher) *recorder {
	t.Helper()
	r := &recorder{wake: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, r.push) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
	return r
}

func newWatcher(t *testing.T, agent *consultest.Agent, cfg consul.Config) *consul.Watcher {
	t.Helper()
	cfg.Address = agent.Addr
	w, err := consul.NewWatcher(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestWatcherSeesPassingWithinOneSecond: the acceptance bound — an
// origin is in the pushed set within 1 s of its check passing, measured from
// the origin's first 200 on /ping.
func TestWatcherSeesPassingWithinOneSecond(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	c := agent.Client()
	rec := watch(t, newWatcher(t, agent, consul.Config{Service: "web"}))
	rec.waitFor(t, 0, "the initial (empty) set", func(s snapshot) bool { return len(s.targets) == 0 })
	origins := make([]*origin, 3)
	for i := range origins {
		origins[i] = newOrigin(t)
		origins[i].register(t, c, "web", fmt.Sprintf("web-%d", i), nil, nil)
	}
	for i, o := range origins {
		id := fmt.Sprintf("web-%d", i)
		s, _ := rec.waitFor(t, 0, id, func(s snapshot) bool { return s.has(id) })
		passed := time.Unix(0, o.firstOK.Load())
		lag := s.at.Sub(passed)
		t.Logf("%s: first passing /ping → pushed in %v", id, lag.Round(time.Millisecond))
		if lag > time.Second {
			t.Errorf("%s pushed %v after its check passed, want within 1s", id, lag)
		}
	}
}

// TestWatcherStaysOffTheStreamingBackend: the watcher's blocking queries are
// answered by Consul's RPC blocking-query backend, never by the streaming
// view, which answers from a stale copy for up to a minute when its
// subscription fails (see Watcher.Run). A proxy in front of the agent reads
// Consul's X-Consul-Query-Backend on every answer to a blocking query.
func TestWatcherStaysOffTheStreamingBackend(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	target, err := url.Parse("http://" + agent.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		backends = map[string]int{} // backend of each blocking answer
	)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path == "/v1/health/service/web" && resp.Request.URL.Query().Get("index") != "" {
			mu.Lock()
			backends[resp.Header.Get("X-Consul-Query-Backend")]++
			mu.Unlock()
		}
		return nil
	}
	front := httptest.NewServer(rp)
	t.Cleanup(front.Close)

	w, err := consul.NewWatcher(consul.Config{Address: front.Listener.Addr().String(), Service: "web"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	rec := watch(t, w)
	_, from := rec.waitFor(t, 0, "the initial (empty) set", func(s snapshot) bool { return len(s.targets) == 0 })
	o := newOrigin(t)
	o.register(t, agent.Client(), "web", "web-0", nil, nil)
	// Pushed only after a blocking query came back with web-0 passing.
	rec.waitFor(t, from, "web-0", func(s snapshot) bool { return s.has("web-0") })

	mu.Lock()
	defer mu.Unlock()
	if backends[api.QueryBackendBlockingQuery] == 0 || len(backends) != 1 {
		t.Errorf("blocking answers by X-Consul-Query-Backend = %v, want all %q", backends, api.QueryBackendBlockingQuery)
	}
}

// TestOneSlowCheckIsNotAnOutage: an instance goes critical only after
// DefaultCheckFall failed checks in a row. One check that times out (a busy
// host) leaves it passing, so no edge drops it; a /ping that keeps failing
// takes it out at the third failure, not before.
func TestOneSlowCheckIsNotAnOutage(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	c := agent.Client()
	rec := watch(t, newWatcher(t, agent, consul.Config{Service: "web"}))
	o := newOrigin(t)
	o.register(t, c, "web", "s", nil, nil)
	_, from := rec.waitFor(t, 0, "s", func(s snapshot) bool { return s.has("s") })

	// One check stalls past its 500 ms timeout; wait until the agent has
	// run two more after it, so that its verdict on the slow one is in.
	stalled := o.pings.Load() + 1
	o.stallFor.Store(int64(2 * consul.DefaultCheckTimeout))
	for deadline := time.Now().Add(settleWait); o.pings.Load() < stalled+2; {
		if time.Now().After(deadline) {
			t.Fatalf("the agent ran %d checks in %v after the stalled one, want 2", o.pings.Load()-stalled, settleWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range rec.all()[from:] {
		if !s.has("s") {
			t.Fatalf("one check timed out and the watcher pushed %v without s at %v: one slow check took it out", s.ids(), s.at.Format(time.StampMilli))
		}
	}

	// A /ping that keeps failing: out at the DefaultCheckFall-th failure.
	o.healthy.Store(false)
	rec.waitFor(t, from, "s gone", func(s snapshot) bool { return !s.has("s") })
	if n := o.failed.Load(); n < consul.DefaultCheckFall {
		t.Errorf("s went critical after %d failed checks, want %d in a row", n, consul.DefaultCheckFall)
	}
}

// TestRemoval: MarkCritical (maintenance), a failing check and Deregister
// each take an instance out of the passing set; the latency of MarkCritical
// is the drain signal the origin waits on before it stops serving.
func TestRemoval(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	c := agent.Client()
	rec := watch(t, newWatcher(t, agent, consul.Config{Service: "web"}))
	a, b, d := newOrigin(t), newOrigin(t), newOrigin(t)
	sa := a.register(t, c, "web", "a", nil, nil)
	sb := b.register(t, c, "web", "b", nil, nil)
	sd := d.register(t, c, "web", "d", nil, nil)
	_, from := rec.waitFor(t, 0, "a, b and d", func(s snapshot) bool { return s.has("a") && s.has("b") && s.has("d") })

	start := time.Now()
	if err := sa.MarkCritical(t.Context()); err != nil {
		t.Fatal(err)
	}
	s, from := rec.waitFor(t, from, "a gone", func(s snapshot) bool { return !s.has("a") })
	t.Logf("MarkCritical → watcher push without it: %v", s.at.Sub(start).Round(time.Millisecond))
	if !s.has("b") || !s.has("d") {
		t.Errorf("after MarkCritical(a) got %v, want b and d kept", s.ids())
	}
	// Drained, not gone: still registered, with the maintenance check.
	checks, err := c.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := checks["_service_maintenance:a"]; !ok || m.Status != api.HealthCritical {
		t.Errorf("maintenance check of a = %+v, want a critical _service_maintenance:a", m)
	}
	if _, ok := checks["service:a"]; !ok {
		t.Error("a's own /ping check is gone after MarkCritical, want it kept (drained, not deregistered)")
	}

	start = time.Now()
	b.healthy.Store(false)
	s, from = rec.waitFor(t, from, "b gone", func(s snapshot) bool { return !s.has("b") })
	t.Logf("/ping turned 503 (check interval 1s) → watcher push without it: %v", s.at.Sub(start).Round(time.Millisecond))

	start = time.Now()
	if err := sd.Deregister(t.Context()); err != nil {
		t.Fatal(err)
	}
	s, _ = rec.waitFor(t, from, "d gone", func(s snapshot) bool { return !s.has("d") })
	t.Logf("Deregister → watcher push without it: %v", s.at.Sub(start).Round(time.Millisecond))
	if len(s.targets) != 0 {
		t.Errorf("final set %v, want empty", s.ids())
	}
	services, err := c.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := services["d"]; ok {
		t.Error("d still registered with the agent after Deregister")
	}
	// Deregister after MarkCritical, and twice, both succeed.
	for _, svc := range []*consul.Service{sa, sa, sb, sd} {
		if err := svc.Deregister(t.Context()); err != nil {
			t.Errorf("Deregister %s: %v", svc.ID(), err)
		}
	}
}

func TestWatcherWeightsMetaAndTagFilter(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	c := agent.Client()
	all := watch(t, newWatcher(t, agent, consul.Config{Service: "web"}))
	blue := watch(t, newWatcher(t, agent, consul.Config{Service: "web", Tag: "blue", AllowStale: true, Datacenter: "dc1"}))
	newOrigin(t).register(t, c, "web", "heavy", []string{"blue"}, map[string]string{"weight": "5", "version": "1.2.3"})
	newOrigin(t).register(t, c, "web", "typo", []string{"green"}, map[string]string{"weight": "five"})
	newOrigin(t).register(t, c, "web", "plain", nil, nil)
	newOrigin(t).register(t, c, "other", "elsewhere", []string{"blue"}, nil)

	s, _ := all.waitFor(t, 0, "heavy, typo and plain", func(s snapshot) bool { return len(s.targets) == 3 })
	want := map[string]int{"heavy": 5, "typo": 1, "plain": 1}
	for _, tg := range s.targets {
		if w, ok := want[tg.ID]; !ok || tg.Weight != w {
			t.Errorf("target %s weight %d, want %d (known: %v)", tg.ID, tg.Weight, w, ok)
		}
		if tg.ID == "heavy" && (tg.Meta["version"] != "1.2.3" || tg.Meta[consul.MetaTags] != "blue") {
			t.Errorf("heavy meta = %v, want version 1.2.3 and tags blue", tg.Meta)
		}
	}
	bs, _ := blue.waitFor(t, 0, "heavy", func(s snapshot) bool { return s.has("heavy") })
	if got := bs.ids(); !slices.Equal(got, []string{"heavy"}) {
		t.Errorf("tag blue watcher got %v, want [heavy]", got)
	}
}

// TestAgentOutage: the agent stops for 10 s and comes back. The watcher
// pushes nothing meanwhile (the consumer keeps the last set), never pushes a
// set without the instances that were passing before, and then follows new
// changes.
func TestAgentOutage(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	c := agent.Client()
	w := newWatcher(t, agent, consul.Config{Service: "web"})
	w.RetryMax = time.Second
	rec := watch(t, w)
	newOrigin(t).register(t, c, "web", "a", nil, nil)
	newOrigin(t).register(t, c, "web", "b", nil, nil)
	_, from := rec.waitFor(t, 0, "a and b", func(s snapshot) bool { return s.has("a") && s.has("b") })
	before := len(rec.all())

	agent.Stop()
	time.Sleep(10 * time.Second)
	if n := len(rec.all()); n != before {
		t.Errorf("watcher pushed %d snapshots while the agent was down, want none: %v", n-before, rec.all()[before:])
	}
	agent.Start()
	// What a naive watcher would have pushed: right after the restart the
	// agent's restored checks have not run yet.
	if entries, _, err := c.Health().Service("web", "", true, nil); err == nil {
		t.Logf("passing right after restart: %d instances", len(entries))
	}

	newOrigin(t).register(t, c, "web", "c", nil, nil)
	rec.waitFor(t, from, "a, b and c", func(s snapshot) bool { return s.has("a") && s.has("b") && s.has("c") })
	for _, s := range rec.all()[from:] {
		if !s.has("a") || !s.has("b") {
			t.Errorf("pushed %v at %v: lost an instance that stayed healthy across the restart", s.ids(), s.at.Format(time.StampMilli))
		}
	}
}

// TestKeepAliveRegistersAgain: an agent that lost the registration (here
// removed behind the handle's back) gets it back, still passing.
func TestKeepAliveRegistersAgain(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	c := agent.Client()
	o := newOrigin(t)
	svc := o.register(t, c, "web", "a", nil, nil)
	consultest.WaitPassing(t, c, "web", settleWait, "a")
	// Let the keep-alive observe "passing" once.
	time.Sleep(2 * consul.DefaultKeepAliveInterval)
	if err := c.Agent().ServiceDeregister("a"); err != nil {
		t.Fatal(err)
	}
	consultest.WaitPassing(t, c, "web", settleWait, "a")
	if err := svc.Deregister(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Stopped keep-alive: it stays gone.
	time.Sleep(2 * consul.DefaultKeepAliveInterval)
	consultest.WaitPassing(t, c, "web", settleWait)
}

func TestRegisterRejectsBadInput(t *testing.T) {
	agent := consultest.Start(t)
	c := agent.Client()
	tests := []struct {
		name string
		reg  consul.Registration
	}{
		{"no name", consul.Registration{Addr: "127.0.0.1", Port: 80}},
		{"no addr", consul.Registration{Name: "web", Port: 80}},
		{"wildcard addr", consul.Registration{Name: "web", Addr: "0.0.0.0", Port: 80}},
		{"port out of range", consul.Registration{Name: "web", Addr: "127.0.0.1", Port: 70000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := consul.Register(t.Context(), c, tt.reg); err == nil {
				t.Error("Register succeeded, want an error")
			}
		})
	}
	agent.Stop()
	if _, err := consul.Register(t.Context(), c, consul.Registration{Name: "web", Addr: "127.0.0.1", Port: 80}); err == nil {
		t.Error("Register with the agent down succeeded, want an error")
	}
}

// TestWatcherToken: with ACLs on and default deny, the token is what lets
// the watcher see the service; without it Consul filters the answer empty.
func TestWatcherToken(t *testing.T) {
	t.Parallel()
	agent := consultest.StartWith(t, consultest.Options{ACLs: true})
	c := agent.Client()
	anon := watch(t, newWatcher(t, agent, consul.Config{Service: "web"}))
	authed := watch(t, newWatcher(t, agent, consul.Config{Service: "web", Token: agent.Token}))
	newOrigin(t).register(t, c, "web", "a", nil, nil)

	s, _ := authed.waitFor(t, 0, "a", func(s snapshot) bool { return s.has("a") })
	if len(s.targets) != 1 {
		t.Errorf("with token got %v, want [a]", s.ids())
	}
	// The anonymous watcher answered (an empty set) and never saw a, even
	// after the token watcher did and a few more queries went by.
	anon.waitFor(t, 0, "the initial (empty) set", func(s snapshot) bool { return len(s.targets) == 0 })
	time.Sleep(500 * time.Millisecond)
	for _, s := range anon.all() {
		if len(s.targets) != 0 {
			t.Errorf("without token got %v, want nothing (ACL default deny)", s.ids())
		}
	}
}

// TestWatcherDatacenter: the datacenter is sent with the query. An unknown
// one is an error from the start, so the watcher never pushes (the set is
// not known) and keeps retrying, while the agent's own datacenter answers.
func TestWatcherDatacenter(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	newOrigin(t).register(t, agent.Client(), "web", "a", nil, nil)
	here := watch(t, newWatcher(t, agent, consul.Config{Service: "web", Datacenter: "dc1"}))
	nowhere := watch(t, newWatcher(t, agent, consul.Config{Service: "web", Datacenter: "nowhere"}))
	here.waitFor(t, 0, "a", func(s snapshot) bool { return s.has("a") })
	time.Sleep(time.Second)
	if n := len(nowhere.all()); n != 0 {
		t.Errorf("watcher of datacenter nowhere pushed %d snapshots, want none: %v", n, nowhere.all())
	}
}
