package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
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
// counts what failed at the client.
func steadyLoad(url string, rate int, stop <-chan struct{}) (sent, failed *atomic.Int64, done *sync.WaitGroup) {
	sent, failed, done = new(atomic.Int64), new(atomic.Int64), new(sync.WaitGroup)
	client := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	done.Add(1)
	go func() {
		defer done.Done()
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			done.Add(1)
			sent.Add(1)
			go func() {
				defer done.Done()
				resp, err := client.Get(url)
				if err != nil {
					failed.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}()
		}
	}()
	return sent, failed, done
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
	})
	stop := make(chan struct{})
	sent, failed, done := steadyLoad(e.url("/api/games"), 400, stop)
	time.Sleep(3 * time.Second)
	cmds[1].Process.Kill() // SIGKILL, mid-run
	killed := time.Now()
	time.Sleep(7 * time.Second)
	close(stop)
	done.Wait()
	t.Logf("sent %d GETs over 10s, killed %s at 3s", sent.Load(), ups[1].addr)
	if sent.Load() < 1000 { // 100/s at the very least, even on a loaded 2-core machine
		t.Errorf("sent only %d requests; the load did not run", sent.Load())
	}
	if failed.Load() != 0 {
		t.Errorf("%d of %d GETs failed at the client after an origin was SIGKILLed, want 0", failed.Load(), sent.Load())
	}
	victim := e.p.Pool().Hosts()[1]
	if victim.Addr != ups[1].addr {
		t.Fatalf("host order changed")
	}
	if victim.Ejections() != 1 && victim.Healthy() {
		t.Errorf("killed origin neither ejected (%d) nor marked down", victim.Ejections())
	}
	t.Logf("retries: refused %v, upstream %v; ejected %d times; down %v after %v",
		testCounter(e.p.metrics.retries[errRefused]), testCounter(e.p.metrics.retries[errUpstream]),
		victim.Ejections(), !victim.Healthy(), time.Since(killed).Round(time.Millisecond))
	if r := testCounter(e.p.metrics.retries[errRefused]) + testCounter(e.p.metrics.retries[errUpstream]); r > 5+300 {
		t.Errorf("%v retries: the dead origin kept getting traffic instead of being ejected after 5 failures", r)
	}
}

func TestFailingOriginEjectedWithBackoff(t *testing.T) {
	good, bad := newUpstream(t), newUpstream(t)
	bad.handler = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }
	e := startEdge(t, []*testUpstream{good, bad}, nil, func(c *config.Edge) {
		c.Outlier = config.Outlier{ConsecutiveFailures: 5, BaseEjection: config.Duration(500 * time.Millisecond),
			MaxEjection: config.Duration(10 * time.Second), MaxEjectedPercent: 50}
		c.Retries.OnStatus = nil // see the 500s at the client: this test is about ejection
	})
	h := e.p.Pool().Hosts()[1]
	eject := func() {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !h.Ejected(time.Now()) && time.Now().Before(deadline) {
			load(t, e.url("/x"), 1, 4)
		}
		if !h.Ejected(time.Now()) {
			t.Fatal("an origin answering 500 to everything was not ejected")
		}
	}
	eject()
	if d := h.LastEjection(); d != 500*time.Millisecond {
		t.Errorf("first ejection set for %v, want the base 500ms", d)
	}
	// While ejected (with time to spare), it gets nothing.
	if time.Until(h.EjectedUntil()) > 250*time.Millisecond {
		before := bad.count.Load()
		load(t, e.url("/x"), 4, 20)
		if got := bad.count.Load() - before; got != 0 && h.Ejected(time.Now()) {
			t.Errorf("ejected origin received %d requests", got)
		}
	}
	// Re-admitted after the base time.
	for h.Ejected(time.Now()) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := bad.count.Load(); load(t, e.url("/x"), 2, 10) >= 0 && bad.count.Load() == n {
		t.Error("origin not re-admitted after its ejection ended")
	}
	eject()
	if d := h.LastEjection(); d != time.Second {
		t.Errorf("second ejection set for %v, want twice the base (1s)", d)
	}
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
