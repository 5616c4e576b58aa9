package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// retriesCounted reads podium_edge_retries_total{reason}.
func retriesCounted(e *testEdge, reason string) float64 {
	return testCounter(e.p.metrics.retries[reason])
}

// gate holds requests until it is opened; it opens at the end of the test
// at the latest, so a stuck handler never outlives its test.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate(t *testing.T) *gate {
	g := &gate{ch: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// statusRetryCase is one request to an edge whose first pick (bad)
// answers status, and what the client should see.
type statusRetryCase struct {
	name        string
	status      int
	method      string
	hdr         []string
	wantCode    int
	wantRetried bool
}

// statusRetryEdge starts an edge over a good and a bad upstream, with
// least connections picking the bad one first every time, and runs each
// case against it: the bad upstream answers the case's status.
func statusRetryEdge(t *testing.T, opt edgeOption, cases []statusRetryCase) {
	t.Helper()
	good, bad := newUpstream(t), newUpstream(t)
	var status atomic.Int64
	bad.handler = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
		io.WriteString(w, "from the bad upstream")
	}
	e := startEdge(t, []*testUpstream{good, bad}, nil, func(c *config.Edge) {
		c.Outlier.ConsecutiveFailures = 0 // this test is about retries, not ejection
		if opt != nil {
			opt(c)
		}
	})
	// Least connections then picks the bad upstream first, every time.
	keepBusy(t, e, good.addr)

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status.Store(int64(tc.status))
			badBefore, goodBefore := bad.count.Load(), good.count.Load()
			counted := retriesCounted(e, retryStatus5xx)
			r := do(t, tc.method, e.url("/api/games/1"), tc.hdr...)
			if r.code != tc.wantCode {
				t.Errorf("status %d %q, want %d", r.code, r.body, tc.wantCode)
			}
			if got := bad.count.Load() - badBefore; got != 1 {
				t.Errorf("the bad upstream got %d requests, want 1 (it is picked first)", got)
			}
			wantGood, wantHeader, wantCounted := int64(0), "", 0.0
			if tc.wantRetried {
				wantGood, wantHeader, wantCounted = 1, "1", 1
			}
			if got := good.count.Load() - goodBefore; got != wantGood {
				t.Errorf("the good upstream got %d requests, want %d", got, wantGood)
			}
			if got := r.header.Get("X-Podium-Retries"); got != wantHeader {
				t.Errorf("X-Podium-Retries %q, want %q", got, wantHeader)
			}
			if got := retriesCounted(e, retryStatus5xx) - counted; got != wantCounted {
				t.Errorf(`podium_edge_retries_total{reason="status_5xx"} grew by %v, want %v`, got, wantCounted)
			}
			switch {
			case tc.wantRetried && tc.method != "HEAD" && r.body != "hello from "+good.addr:
				t.Errorf("body %q, want the good upstream's", r.body)
			case !tc.wantRetried && r.body != "from the bad upstream":
				t.Errorf("body %q, want the bad upstream's own answer, passed through", r.body)
			}
		})
	}
}

// An upstream answering 502, 503 or 504 has the request retried on
// another upstream (retries.on_status), for a method that may be sent
// twice (GET, HEAD, OPTIONS); any other 5xx, or a POST without an
// Idempotency-Key, or a PUT that retries.methods does not list, reaches
// the client as the upstream sent it.
func TestRetriedOnUpstreamStatus(t *testing.T) {
	statusRetryEdge(t, nil, []statusRetryCase{
		{"GET 502", 502, "GET", nil, 200, true},
		{"GET 503", 503, "GET", nil, 200, true},
		{"GET 504", 504, "GET", nil, 200, true},
		{"HEAD 503", 503, "HEAD", nil, 200, true},
		{"OPTIONS 503", 503, "OPTIONS", nil, 200, true},
		{"GET 500", 500, "GET", nil, 500, false},
		{"GET 501", 501, "GET", nil, 501, false},
		{"POST 503", 503, "POST", nil, 503, false},
		{"POST 503 with Idempotency-Key", 503, "POST", []string{"Idempotency-Key", "k-503"}, 200, true},
		{"PUT 503, not in retries.methods", 503, "PUT", nil, 503, false},
	})
}

// retries.methods makes a method retried as GET is: a PUT listed there
// is sent again to another upstream after a 503 (without the setting,
// TestRetriedOnUpstreamStatus sees it passed through); a method it does
// not list is still not.
func TestRetriedMethodsSetting(t *testing.T) {
	statusRetryEdge(t, func(c *config.Edge) { c.Retries.Methods = []string{"PUT"} }, []statusRetryCase{
		{"PUT 503", 503, "PUT", nil, 200, true},
		{"PUT 502", 502, "PUT", nil, 200, true},
		{"DELETE 503, not listed", 503, "DELETE", nil, 503, false},
		{"POST 503", 503, "POST", nil, 503, false},
	})
}

// retries.per_try_timeout bounds one attempt, not the whole request: an
// upstream that never answers costs a GET one per-try timeout, then it is
// retried elsewhere; a POST, not retried, gets 504 after that one attempt,
// long before timeouts.upstream.
func TestPerTryTimeout(t *testing.T) {
	const perTry, total = time.Second, 30 * time.Second
	good, stalled := newUpstream(t), newUpstream(t)
	never := newGate(t)
	stalled.handler = func(w http.ResponseWriter, r *http.Request) { <-never.ch }
	e := startEdge(t, []*testUpstream{good, stalled}, nil, func(c *config.Edge) {
		c.Retries.PerTryTimeout = config.Duration(perTry)
		c.Timeouts.Upstream = config.Duration(total)
	})
	keepBusy(t, e, good.addr) // the stalled upstream is picked first

	counted := retriesCounted(e, kindTimeout)
	start := time.Now()
	r := do(t, "GET", e.url("/api/games/1"))
	took := time.Since(start)
	if r.code != 200 || r.body != "hello from "+good.addr || r.header.Get("X-Podium-Retries") != "1" {
		t.Errorf("GET: %d %q, X-Podium-Retries %q; want 200 from the good upstream after one retry", r.code, r.body, r.header.Get("X-Podium-Retries"))
	}
	if stalled.count.Load() != 1 || good.count.Load() != 1 {
		t.Errorf("stalled upstream got %d, good %d; want 1 each", stalled.count.Load(), good.count.Load())
	}
	if got := retriesCounted(e, kindTimeout) - counted; got != 1 {
		t.Errorf(`podium_edge_retries_total{reason="timeout"} grew by %v, want 1`, got)
	}
	if took < perTry {
		t.Errorf("GET answered after %v, before the stalled attempt's per-try timeout (%v) ran out", took, perTry)
	}

	start = time.Now()
	r = do(t, "POST", e.url("/api/games/1/buy"))
	took = time.Since(start)
	if r.code != 504 || !strings.Contains(r.body, "did not answer in time") {
		t.Errorf("POST: %d %q, want the edge's 504", r.code, r.body)
	}
	if stalled.count.Load() != 2 || good.count.Load() != 1 {
		t.Errorf("after the POST: stalled upstream got %d, good %d; want 2 and 1 (a POST without a key is not resent)", stalled.count.Load(), good.count.Load())
	}
	// The one wall-clock bound here tells 1 s from 30 s.
	if took < perTry || took >= total/2 {
		t.Errorf("POST answered 504 after %v, want the per-try timeout (%v), not timeouts.upstream (%v)", took, perTry, total)
	}
}

// When every connection to an upstream is busy (upstream_pool.max_conns),
// a request waits up to timeouts.connect for one to come free, and gets it
// if one does; otherwise the client gets 503.
func TestUpstreamPoolFull(t *testing.T) {
	// poolUpstream holds each request to /hold until the test opens the
	// gate it was given, and tracks how many it serves at once.
	type poolUpstream struct {
		*testUpstream
		held      chan struct{} // one value per /hold request arrived
		now, most atomic.Int64
		release   *gate
	}
	newPoolUpstream := func(t *testing.T) *poolUpstream {
		u := &poolUpstream{testUpstream: newUpstream(t), held: make(chan struct{}, 8), release: newGate(t)}
		u.handler = func(w http.ResponseWriter, r *http.Request) {
			n := u.now.Add(1)
			defer u.now.Add(-1)
			for m := u.most.Load(); n > m && !u.most.CompareAndSwap(m, n); m = u.most.Load() {
			}
			if strings.HasSuffix(r.URL.Path, "/hold") {
				u.held <- struct{}{}
				<-u.release.ch
			}
			io.WriteString(w, "ok "+r.URL.Path)
		}
		return u
	}
	onePool := func(connect time.Duration) edgeOption {
		return func(c *config.Edge) {
			c.UpstreamPool.MaxConns = 1
			c.Timeouts.Connect = config.Duration(connect)
		}
	}
	// hold starts a request that takes the only connection, and returns
	// once the upstream has it.
	hold := func(t *testing.T, e *testEdge, u *poolUpstream) <-chan result {
		done := make(chan result, 1)
		go func() { done <- do(t, "GET", e.url("/api/hold")) }()
		select {
		case <-u.held:
		case <-time.After(30 * time.Second):
			t.Fatal("the holding request never reached the upstream")
		}
		return done
	}

	t.Run("waits for a connection", func(t *testing.T) {
		u := newPoolUpstream(t)
		e := startEdge(t, []*testUpstream{u.testUpstream}, nil, onePool(30*time.Second))
		t.Cleanup(u.release.open) // before the edge's shutdown waits on a held request
		first := hold(t, e, u)
		second := make(chan result, 1)
		go func() { second <- do(t, "GET", e.url("/api/next")) }()
		// The second request is counted in flight before it asks the pool
		// for a connection: once it is, let the first one finish.
		h := e.p.Pool().Hosts()[0]
		for i := 0; h.InFlight() < 2; i++ {
			select {
			case r := <-second:
				t.Fatalf("the second request was answered %d %q while the only connection was busy, want it to wait", r.code, r.body)
			default:
			}
			if i == 3000 {
				t.Fatal("the second request never reached the edge's upstream pool")
			}
			time.Sleep(10 * time.Millisecond)
		}
		u.release.open()
		for _, c := range []<-chan result{first, second} {
			if r := <-c; r.code != 200 || !strings.HasPrefix(r.body, "ok /api/") {
				t.Errorf("%d %q, want 200 from the upstream", r.code, r.body)
			}
		}
		if got := u.most.Load(); got != 1 {
			t.Errorf("the upstream served %d requests at once over a pool of max_conns 1", got)
		}
		if got := testCounter(e.p.metrics.errors[kindPoolFull]); got != 0 {
			t.Errorf("pool_full errors %v, want 0: the connection came free in time", got)
		}
	})

	t.Run("503 after timeouts.connect", func(t *testing.T) {
		const connect = 300 * time.Millisecond
		u := newPoolUpstream(t)
		e := startEdge(t, []*testUpstream{u.testUpstream}, nil, onePool(connect))
		t.Cleanup(u.release.open)
		first := hold(t, e, u)
		start := time.Now()
		r := do(t, "GET", e.url("/api/next"))
		took := time.Since(start)
		var eb struct {
			Error     string `json:"error"`
			RequestID string `json:"request_id"`
		}
		if r.code != 503 || json.Unmarshal([]byte(r.body), &eb) != nil ||
			eb.Error != "the ticket service is at its connection limit; try again shortly" || eb.RequestID != r.header.Get("X-Request-ID") {
			t.Errorf("with the only connection busy: %d %q, want the edge's 503 (connection limit) as JSON", r.code, r.body)
		}
		if took < connect {
			t.Errorf("503 after %v, before timeouts.connect (%v): the request did not wait for a connection", took, connect)
		}
		if got := testCounter(e.p.metrics.errors[kindPoolFull]); got != 1 {
			t.Errorf(`podium_edge_errors_total{kind="pool_full"} = %v, want 1`, got)
		}
		if got := u.count.Load(); got != 1 {
			t.Errorf("the upstream got %d requests, want only the one holding the connection", got)
		}
		u.release.open()
		if r := <-first; r.code != 200 {
			t.Errorf("the request holding the connection: %d %q", r.code, r.body)
		}
	})
}
