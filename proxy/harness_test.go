package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/healthcheck"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// testUpstream is a real HTTP server on loopback that counts what reaches
// it and records the last request's headers. It can be stopped and started
// again on the same port.
type testUpstream struct {
	t       testing.TB
	addr    string
	delay   atomic.Int64 // nanoseconds each non-ping request sleeps
	count   atomic.Int64 // non-ping requests received
	mu      sync.Mutex
	last    http.Header
	handler http.HandlerFunc // optional override for non-ping requests
	srv     *http.Server
}

func newUpstream(t testing.TB) *testUpstream {
	t.Helper()
	u := &testUpstream{t: t}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	u.serve(ln)
	t.Cleanup(u.stop)
	return u
}

func (u *testUpstream) serve(ln net.Listener) {
	u.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ping" {
			io.WriteString(w, "pong")
			return
		}
		u.count.Add(1)
		u.mu.Lock()
		u.last = r.Header.Clone()
		u.mu.Unlock()
		if d := u.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		if u.handler != nil {
			u.handler(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello from "+u.addr)
	})}
	go u.srv.Serve(ln)
}

func (u *testUpstream) stop() { u.srv.Close() }

func (u *testUpstream) restart() {
	u.t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port may linger briefly
		if ln, err = net.Listen("tcp", u.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		u.t.Fatalf("restarting upstream on %s: %v", u.addr, err)
	}
	u.serve(ln)
}

func (u *testUpstream) lastHeader() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

// testEdge runs a real edge on a loopback port in front of upstreams.
type testEdge struct {
	p      *Proxy
	addr   string
	prober *healthcheck.Prober
	// changes receives every up/down transition the prober makes, with
	// the probe that made it, so a test waits on the event rather than
	// polling against a wall-clock bound. Sends never block: a test that
	// does not read it loses nothing but the events past its buffer.
	changes chan healthChange
}

// healthChange is one transition the edge's prober made.
type healthChange struct {
	addr  string
	up    bool
	probe balancer.Probe // the probe that decided it (consecutive passes or failures)
}

type edgeOption func(*config.Edge)

func startEdge(t testing.TB, ups []*testUpstream, weights []int, opts ...edgeOption) *testEdge {
	t.Helper()
	return startEdgeLogging(t, ups, weights, nil, opts...)
}

// startEdgeLogging is startEdge with the edge's log (its access log
// included) going to log; nil logs nowhere, or to the test log with -v.
func startEdgeLogging(t testing.TB, ups []*testUpstream, weights []int, log *slog.Logger, opts ...edgeOption) *testEdge {
	t.Helper()
	return startEdgeWith(t, ups, weights, log, New, opts...)
}

// startEdgeWith is startEdgeLogging with the Proxy built by build (the
// waiting room tests' fake clock).
func startEdgeWith(t testing.TB, ups []*testUpstream, weights []int, log *slog.Logger, build func(*config.Edge, *slog.Logger) (*Proxy, error), opts ...edgeOption) *testEdge {
	t.Helper()
	cfg := config.DefaultEdge()
	cfg.Listen, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Discovery.Static = nil
	for i, u := range ups {
		w := 1
		if weights != nil {
			w = weights[i]
		}
		cfg.Discovery.Static = append(cfg.Discovery.Static, config.StaticUpstream{Addr: u.addr, Weight: w})
	}
	cfg.HealthCheck.Interval = config.Duration(100 * time.Millisecond)
	cfg.HealthCheck.Timeout = config.Duration(100 * time.Millisecond)
	cfg.TrustedProxies = nil
	cfg.AccessLog.Enabled = false
	// Plain proxying unless a test asks for routes (the default routes cache).
	cfg.Routes = []config.Route{{Name: "default", Match: config.Match{PathPrefix: "/"}}}
	cfg.RateLimits = nil // every test client is 127.0.0.1: limits only where a test asks
	for _, o := range opts {
		o(cfg)
	}
	if err := cfg.Validate("test"); err != nil {
		t.Fatal(err)
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
		if testing.Verbose() {
			log = slog.New(slog.NewTextHandler(&testWriter{t}, nil))
		}
	}
	p, err := build(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	var cfgs []balancer.Config
	for _, s := range cfg.Discovery.Static {
		cfgs = append(cfgs, balancer.Config{Addr: s.Addr, Weight: s.Weight})
	}
	p.Pool().Update(cfgs)
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan healthChange, 64)
	pr := &healthcheck.Prober{
		Pool: p.Pool(), Path: "/ping",
		Interval: cfg.HealthCheck.Interval.D(), Timeout: cfg.HealthCheck.Timeout.D(),
		Rise: cfg.HealthCheck.Rise, Fall: cfg.HealthCheck.Fall, Logger: log,
		OnProbe: p.ObserveProbe,
		OnChange: func(h *balancer.Host, up bool) {
			p.Metrics().ObserveChange(h, up)
			// Called on the probing goroutine, right after the probe
			// that decided it was published.
			ev := healthChange{addr: h.Addr, up: up}
			if pr := h.LastProbe(); pr != nil {
				ev.probe = *pr
			}
			select {
			case changes <- ev:
			default:
			}
		},
	}
	go pr.Run(ctx)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Server().Serve(p.WrapListener(ln)); close(done) }()
	// Shutdown closes only the listeners Serve has registered: one called
	// before the Serve goroutine got that far (a test that never sent the
	// edge a request, under -race) returned at once and Serve then
	// accepted forever (TestWaitingRoomControlSurvivesRestart hung 1 in
	// ~10 -race runs). Closing ln as well ends Serve either way.
	t.Cleanup(func() { cancel(); p.Server().Shutdown(); ln.Close(); <-done; p.Close() })
	e := &testEdge{p: p, addr: ln.Addr().String(), prober: pr, changes: changes}
	e.waitHealthy(t, len(ups))
	return e
}

// healthyWait bounds the wait for the first probes to pass. It stops a
// hang and asserts no speed: on a loaded two-core machine a test with a
// probe a second and rise 2 took over 3 s to see its upstream up.
const healthyWait = 30 * time.Second

func (e *testEdge) waitHealthy(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(healthyWait)
	var down []string
	for time.Now().Before(deadline) {
		up := 0
		down = down[:0]
		for _, h := range e.p.Pool().Hosts() {
			if h.Healthy() {
				up++
				continue
			}
			why := "no probe yet"
			if pr := h.LastProbe(); pr != nil {
				why = fmt.Sprintf("last probe %+v", *pr)
			}
			down = append(down, h.Addr+": "+why)
		}
		if up == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("upstreams did not all come up within %v: %v", healthyWait, down)
}

// waitChange waits for the prober to take the upstream at addr up or
// down, skipping other transitions, and returns the probe that did it.
// Transitions from before the call are in the channel too (the ones that
// brought every upstream up at the start, for one): wait only for one
// that can follow nothing but what the test did. The bound only keeps a
// broken edge from hanging the test.
func (e *testEdge) waitChange(t testing.TB, addr string, up bool) balancer.Probe {
	t.Helper()
	hang := time.NewTimer(30 * time.Second)
	defer hang.Stop()
	for {
		select {
		case ev := <-e.changes:
			if ev.addr == addr && ev.up == up {
				return ev.probe
			}
		case <-hang.C:
			t.Fatalf("upstream %s never went up=%v (30 s)", addr, up)
		}
	}
}

func (e *testEdge) url(path string) string { return "http://" + e.addr + path }

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

// load sends n GETs from c concurrent clients and returns how many failed.
func load(t testing.TB, url string, c, n int) (failed int64) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: c}}
	var wg sync.WaitGroup
	var next, bad atomic.Int64
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				resp, err := client.Get(url)
				if err != nil {
					bad.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return bad.Load()
}

// testCounter reads a Prometheus counter's value.
func testCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}
