package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/internal/testport"

	"github.com/podium-edge/podium/config"
)

// TestMain lets the test binary double as a real upstream process, so a
// test can SIGKILL an origin rather than close a listener in-process.
func TestMain(m *testing.M) {
	if addr := os.Getenv("PODIUM_TEST_UPSTREAM"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("ready")
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(2 * time.Millisecond)
			io.WriteString(w, "from "+addr)
		}))
		return
	}
	os.Exit(m.Run())
}

// processUpstream is the test binary serving on addr in its own process.
func processUpstream(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	// A port the child binds after the test released it: drawn where no
	// other process takes it in between (internal/testport).
	ports, err := testport.Free(1, false)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "PODIUM_TEST_UPSTREAM="+addr)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("upstream process did not start: %q", line)
	}
	return cmd, addr
}

// steadyLoad sends GETs at about rate per second until stop is closed, and
// counts what was sent, what is still waiting for its answer, and what
// failed at the client.
type steadyLoad struct {
	sent, outstanding, failed atomic.Int64
	done                      sync.WaitGroup
}

func startSteadyLoad(url string, rate int, stop <-chan struct{}) *steadyLoad {
	ld := &steadyLoad{}
	client := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	ld.done.Add(1)
	go func() {
		defer ld.done.Done()
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ld.done.Add(1)
			ld.outstanding.Add(1)
			ld.sent.Add(1)
			go func() {
				defer ld.done.Done()
				defer ld.outstanding.Add(-1)
				resp, err := client.Get(url)
				if err != nil {
					ld.failed.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					ld.failed.Add(1)
				}
			}()
		}
	}()
	return ld
}

// waitFor polls cond every 5 ms until it holds. The bound only ends a
// test whose edge never gets there.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i == 12000 {
			t.Fatalf("%s: not after 60 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSIGKILLedOriginNoClientErrors(t *testing.T) {
	var ups []*testUpstream
	var cmds []*exec.Cmd
	for range 3 {
		cmd, addr := processUpstream(t)
		cmds = append(cmds, cmd)
		ups = append(ups, &testUpstream{addr: addr})
	}
	e := startEdge(t, ups, nil, func(c *config.Edge) {
		c.HealthCheck.Interval = config.Duration(time.Second) // slow on purpose: retries and ejection must cover
		// Every request that meets the dead origin must be retried. Least
		// connections sends a burst of them there at once (refused at
		// once, it never looks busy): the default retry budget must not
		// hold those back (TestRefusedRetriesOutsideTheBudget).
	})
	victim := e.p.Pool().Hosts()[1]
	if victim.Addr != ups[1].addr {
		t.Fatalf("host order changed")
	}
	retried := func() float64 {
		return testCounter(e.p.metrics.retries[kindRefused]) + testCounter(e.p.metrics.retries[kindUpstream])
	}
	stop := make(chan struct{})
	ld := startSteadyLoad(e.url("/api/games"), 400, stop)
	defer func() { close(stop); ld.done.Wait() }()
	// Each step waits for what it needs, whatever the machine's pace: some
	// traffic over all three, the kill, the outlier ejection, the prober's
	// verdict, and 1,000 more requests after the kill.
	waitFor(t, "300 requests before the kill", func() bool { return ld.sent.Load() >= 300 })
	cmds[1].Process.Kill() // SIGKILL, mid-run
	killedAt := ld.sent.Load()

	// Requests that meet the dead origin fail there and are retried on
	// another; the fifth failure in a row ejects it (outlier.
	// consecutive_failures), seconds before the prober could say down.
	waitFor(t, "the killed origin ejected", func() bool { return victim.Ejections() > 0 })
	// From here no request is sent to it: only requests that picked it
	// before the ejection, still waiting for their answers now, can yet
	// fail there and be retried.
	waiting := ld.outstanding.Load()
	// The fifth failure ejects it, and the request that met it is retried
	// just after (a retry is counted when it is sent): all five failures
	// are retried.
	waitFor(t, "the 5 failures that ejected it retried", func() bool { return retried() >= 5 })
	retriedAtEjection := retried()
	if pr := e.waitChange(t, victim.Addr, false); pr.Fails != e.p.Config().HealthCheck.Fall {
		t.Errorf("killed origin marked down after %d failed probes, want fall", pr.Fails)
	}
	waitFor(t, "1,000 requests after the kill", func() bool { return ld.sent.Load() >= killedAt+1000 })
	close(stop)
	ld.done.Wait()
	stop = make(chan struct{}) // for the deferred close

	t.Logf("sent %d GETs, killed %s after %d; retries: refused %v, upstream %v (%v just after the ejection, %d requests waiting at it); budget refused %v",
		ld.sent.Load(), ups[1].addr, killedAt, testCounter(e.p.metrics.retries[kindRefused]),
		testCounter(e.p.metrics.retries[kindUpstream]), retriedAtEjection, waiting, testCounter(e.p.metrics.retryBudgetExhausted))
	if ld.failed.Load() != 0 {
		t.Errorf("%d of %d GETs failed at the client after an origin was SIGKILLed, want 0", ld.failed.Load(), ld.sent.Load())
	}
	if n := victim.Ejections(); n != 1 {
		t.Errorf("killed origin ejected %d times, want once (for base_ejection, 30 s)", n)
	}
	if after := retried() - retriedAtEjection; after > float64(waiting) {
		t.Errorf("%v retries after the ejection with %d requests then waiting: the ejected origin kept getting traffic", after, waiting)
	}
	if got := testCounter(e.p.metrics.ejections); got != 1 {
		t.Errorf("podium_edge_upstream_ejections_total = %v, want 1", got)
	}
	if got := testCounter(e.p.metrics.retryBudgetExhausted); got != 0 {
		t.Errorf("the retry budget refused %v retries, want none", got)
	}
}

func TestFailingOriginEjectedWithBackoff(t *testing.T) {
	const base = 2 * time.Second
	good, bad := newUpstream(t), newUpstream(t)
	bad.handler = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }
	e := startEdge(t, []*testUpstream{good, bad}, nil, func(c *config.Edge) {
		c.Outlier = config.Outlier{ConsecutiveFailures: 5, BaseEjection: config.Duration(base),
			MaxEjection: config.Duration(10 * base), MaxEjectedPercent: 50, UnejectOnActivePass: false}
		c.Retries.OnStatus = nil // see the 500s at the client: this test is about ejection
	})
	h := e.p.Pool().Hosts()[1]
	if h.Addr != bad.addr {
		t.Fatal("host order changed")
	}
	// served sends one GET and says whether the failing origin answered it.
	served := func() (byBad bool) {
		t.Helper()
		before := bad.count.Load()
		r := do(t, "GET", e.url("/x"))
		byBad = bad.count.Load() != before
		if want := map[bool]int{true: 500, false: 200}[byBad]; r.code != want {
			t.Fatalf("GET answered %d by the %s upstream", r.code, map[bool]string{true: "failing", false: "good"}[byBad])
		}
		return byBad
	}

	// eject sends requests until the failing origin has answered five in
	// a row since its last ejection (streak of them already), and wants it
	// ejected for the n-th time on the fifth, not before, for n × base. Requests
	// go one at a time, so both upstreams have none in flight at each pick
	// and least connections picks either at random.
	eject := func(n int, streak int64) {
		t.Helper()
		target := bad.count.Load() + 5 - streak
		for i := 0; bad.count.Load() < target; i++ {
			if i == 1000 || h.Ejections() != n-1 {
				t.Fatalf("ejection %d: after %d requests, %d of 5 failures, ejected %d times; want ejected on the 5th", n, i, 5-(target-bad.count.Load()), h.Ejections())
			}
			served()
		}
		if h.Ejections() != n || h.LastEjection() != time.Duration(n)*base {
			t.Fatalf("after 5 more failures: ejected %d times, the last for %v; want %d times, the last for %v", h.Ejections(), h.LastEjection(), n, time.Duration(n)*base)
		}
		if got := testCounter(e.p.metrics.ejections); got != float64(n) {
			t.Errorf("podium_edge_upstream_ejections_total = %v, want %d", got, n)
		}
	}
	eject(1, 0)

	// While ejected it gets nothing: every request answered before the
	// ejection ends was picked while it lasted, and must not reach it.
	until, inWindow, straddled := h.EjectedUntil(), 0, int64(0)
	for time.Now().Before(until) {
		byBad := served()
		if !time.Now().Before(until) {
			if byBad { // picked after the ejection ended: its streak's first
				straddled = 1
			}
			break
		}
		inWindow++
		if byBad {
			t.Fatalf("the ejected origin got request %d of its ejection", inWindow)
		}
	}
	if inWindow == 0 {
		t.Fatalf("no request answered within the %v ejection", base)
	}

	// Re-admitted once it ends, and ejected again after five more
	// failures, for twice the base.
	eject(2, straddled)
	t.Logf("%d requests answered by the good origin during the %v ejection", inWindow, base)
}

func TestAllOriginsFailingOneStaysInRotation(t *testing.T) {
	a, b := newUpstream(t), newUpstream(t)
	for _, u := range []*testUpstream{a, b} {
		u.handler = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }
	}
	e := startEdge(t, []*testUpstream{a, b}, nil, func(c *config.Edge) {
		c.Outlier = config.Outlier{ConsecutiveFailures: 2, BaseEjection: config.Duration(time.Minute), MaxEjection: config.Duration(time.Minute), MaxEjectedPercent: 100}
	})
	for range 20 {
		r := do(t, "GET", e.url("/x"))
		if r.code != 503 {
			t.Fatalf("status %d, want the origins' own 503 passed through", r.code)
		}
	}
	out := 0
	for _, h := range e.p.Pool().Hosts() {
		if h.Ejected(time.Now()) {
			out++
		}
	}
	if out != 1 {
		t.Errorf("%d of 2 failing origins ejected, want exactly 1: one always stays", out)
	}
}

// halfOrigin reads a request and then drops the connection without a byte
// of answer: an origin killed after reading a purchase, before replying.
type halfOrigin struct {
	addr string
	got  atomic.Int64
}

func newHalfOrigin(t *testing.T) *halfOrigin {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &halfOrigin{addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				if req.URL.Path == "/ping" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong")
					return
				}
				o.got.Add(1)
				c.(*net.TCPConn).SetLinger(0) // reset, as a killed process's socket would be
			}()
		}
	}()
	return o
}

func TestPostRetriedOnlyWithIdempotencyKey(t *testing.T) {
	half := newHalfOrigin(t)
	good := newUpstream(t)
	e := startEdge(t, []*testUpstream{{addr: half.addr}, good}, nil)
	// Make the half origin the one picked first: keep the good one busy.
	keepBusy(t, e, good.addr)

	r := do(t, "POST", e.url("/api/games/1/buy"))
	if r.code != 502 || half.got.Load() != 1 || good.count.Load() != 0 {
		t.Errorf("POST without key: %d, half origin got %d, good got %d; want 502 and no resend", r.code, half.got.Load(), good.count.Load())
	}
	r = do(t, "POST", e.url("/api/games/1/buy"), "Idempotency-Key", "k-1")
	if r.code != 200 || half.got.Load() != 2 || good.count.Load() != 1 {
		t.Errorf("POST with key: %d, half %d, good %d; want 200 from the retry on the other origin", r.code, half.got.Load(), good.count.Load())
	}
	if r.header.Get("X-Podium-Retries") != "1" {
		t.Errorf("X-Podium-Retries %q, want 1", r.header.Get("X-Podium-Retries"))
	}
	// A GET to a dead-after-read origin is retried: it is idempotent.
	r = do(t, "GET", e.url("/x"))
	if r.code != 200 || !strings.Contains(r.body, "hello") {
		t.Errorf("GET: %d %q, want 200 after a retry", r.code, r.body)
	}
}

func TestRetryBudget(t *testing.T) {
	// One attempt in flight may retry (min_concurrent 1); a second retry
	// while it runs is over budget.
	half := newHalfOrigin(t)
	slow := newUpstream(t)
	slow.delay.Store(int64(300 * time.Millisecond))
	e := startEdge(t, []*testUpstream{{addr: half.addr}, slow}, nil, func(c *config.Edge) {
		c.Retries.MinConcurrent = 1
		c.Retries.BudgetPercent = 0
	})
	// Every request goes to the half origin first (least connections,
	// the slow one looking busy), fails there, and wants a retry.
	keepBusy(t, e, slow.addr)
	e.p.activeRetries.Store(1) // a retry is already under way
	before := testCounter(e.p.metrics.retryBudgetExhausted)
	for range 4 { // under outlier ejection's 5 failures in a row
		if r := do(t, "GET", e.url("/x")); r.code != 502 {
			t.Errorf("GET: %d, want 502 (no retry left in the budget)", r.code)
		}
	}
	if got := testCounter(e.p.metrics.retryBudgetExhausted) - before; got != 4 {
		t.Errorf("%v retries refused for a spent budget, want all 4", got)
	}
	e.p.activeRetries.Store(0)
}

// A refused connection is retried whatever the budget: it reached no
// upstream. With the budget spent, GETs that meet a dead origin still get
// their answer from the other.
func TestRefusedRetriesOutsideTheBudget(t *testing.T) {
	dead, live := newUpstream(t), newUpstream(t)
	e := startEdge(t, []*testUpstream{dead, live}, nil, func(c *config.Edge) {
		c.HealthCheck.Interval = config.Duration(time.Hour) // the dead one stays in the pool
		c.Retries.MinConcurrent = 1
		c.Retries.BudgetPercent = 0
	})
	dead.stop()                // connect refused
	keepBusy(t, e, live.addr)  // every pick goes to the dead one first
	e.p.activeRetries.Store(1) // the budget is spent
	defer e.p.activeRetries.Store(0)
	before := testCounter(e.p.metrics.retryBudgetExhausted)
	for range 4 { // under outlier ejection's 5 failures in a row
		if r := do(t, "GET", e.url("/x")); r.code != 200 || r.header.Get("X-Podium-Retries") != "1" {
			t.Errorf("GET: %d, X-Podium-Retries %q; want 200 after one retry on the live upstream", r.code, r.header.Get("X-Podium-Retries"))
		}
	}
	if got := testCounter(e.p.metrics.retryBudgetExhausted) - before; got != 0 {
		t.Errorf("%v refused connections held back by the budget, want 0", got)
	}
}

// keepBusy makes the upstream at addr look one request busier to least
// connections until the test ends, so that a pick prefers the others.
func keepBusy(t *testing.T, e *testEdge, addr string) {
	t.Helper()
	for _, h := range e.p.Pool().Hosts() {
		if h.Addr == addr {
			h.Acquire()
			t.Cleanup(h.Release)
			return
		}
	}
	t.Fatalf("no upstream %s in the pool", addr)
}

// podium_edge_retries_total counts requests sent again, to another
// upstream. With one upstream there is none to send to: a failure that
// retryable allows is still no retry, as X-Podium-Retries says (issue 14's
// 502s were logged "retries 0" while the counter grew).
func TestRetriesCountedOnlyWhenSent(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.HealthCheck.Interval = config.Duration(time.Hour) // keep it up in the pool once it is
		c.HealthCheck.Timeout = config.Duration(time.Second)
	})
	u.stop() // connect refused: retryable for any method
	r := do(t, "GET", e.url("/x"))
	if r.code != 502 || r.header.Get("X-Podium-Retries") != "" {
		t.Errorf("GET to the one upstream, refused: %d, X-Podium-Retries %q; want 502 and none", r.code, r.header.Get("X-Podium-Retries"))
	}
	total := 0.0
	for _, c := range e.p.metrics.retries {
		total += testCounter(c)
	}
	if total != 0 {
		t.Errorf("podium_edge_retries_total = %v with one upstream, want 0", total)
	}
}
