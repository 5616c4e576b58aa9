package healthcheck

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/balancer"
)

// pingServer is a real upstream whose /ping answers with a settable status.
func pingServer(t *testing.T, status *atomic.Int32) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
		io.WriteString(w, "pong")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestRiseFallTransitionsOnce(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	addr := pingServer(t, &status)
	pool := &balancer.Pool{}
	pool.Update([]balancer.Config{{Addr: addr}})
	// A change and the probe that made it: OnChange runs on the probing
	// goroutine right after that probe is published.
	type change struct {
		up            bool
		passes, fails int
	}
	var mu sync.Mutex
	var changes []change
	p := &Prober{
		// Probes come quickly; a probe's timeout is long, so only the
		// answers this test sets decide, never a busy machine.
		Pool: pool, Interval: 30 * time.Millisecond, Timeout: 10 * time.Second, Rise: 2, Fall: 3,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnChange: func(h *balancer.Host, up bool) {
			pr := h.LastProbe()
			mu.Lock()
			changes = append(changes, change{up, pr.Passes, pr.Fails})
			mu.Unlock()
		},
		OnProbe: func(h *balancer.Host, rtt time.Duration, err error) {
			if rtt <= 0 {
				t.Errorf("probe rtt %v, want > 0", rtt)
			}
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	h := pool.Hosts()[0]
	waitFor(t, "first pass brings the new host up", h.Healthy)

	status.Store(503) // a non-2xx answer is a failure
	waitFor(t, "three failures take it down", func() bool { return !h.Healthy() })
	status.Store(200)
	waitFor(t, "two passes bring it back", h.Healthy)
	// The host is published up before OnChange runs: wait for the third
	// change itself, or a fast read sees only two (1 in 50 under load).
	waitFor(t, "the third change reported", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(changes) >= 3
	})
	mu.Lock()
	got := changes
	mu.Unlock()
	// Up on the first pass (a new host), down on exactly the third
	// failure in a row, up again on exactly the second pass: each once.
	want := []change{{true, 1, 0}, {false, 0, 3}, {true, 2, 0}}
	if len(got) != len(want) {
		t.Fatalf("transitions = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("transition %d = %+v, want %+v (all: %v)", i, got[i], want[i], got)
		}
	}
}

func TestRemovedHostIsNoLongerProbed(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	addr := pingServer(t, &status)
	pool := &balancer.Pool{}
	pool.Update([]balancer.Config{{Addr: addr}})
	var probes atomic.Int32
	p := &Prober{Pool: pool, Interval: 20 * time.Millisecond, Timeout: 10 * time.Second,
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnProbe: func(*balancer.Host, time.Duration, error) { probes.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	waitFor(t, "probed", func() bool { return probes.Load() > 2 })
	pool.Update(nil)
	p.Notify()
	// The host's probing loop ends (a probe under way finishes first):
	// from then on nothing can probe it.
	waitFor(t, "the removed host's probe loop ends", func() bool { return !goroutineIn("healthcheck.(*Prober).loop(") })
	n := probes.Load()
	time.Sleep(150 * time.Millisecond) // over seven intervals
	if got := probes.Load(); got != n {
		t.Errorf("%d probes of a removed host", got-n)
	}
}

// goroutineIn reports whether some goroutine's stack holds fn.
func goroutineIn(fn string) bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a hang guard
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
