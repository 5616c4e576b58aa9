package healthcheck

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
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
	var mu sync.Mutex
	var changes []bool
	var probes, failures atomic.Int32
	p := &Prober{
		Pool: pool, Interval: 30 * time.Millisecond, Timeout: 30 * time.Millisecond, Rise: 2, Fall: 3,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnChange: func(h *balancer.Host, up bool) { mu.Lock(); changes = append(changes, up); mu.Unlock() },
		OnProbe: func(h *balancer.Host, rtt time.Duration, err error) {
			probes.Add(1)
			if err != nil {
				failures.Add(1)
			}
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
	if f := failures.Load(); f < 3 {
		t.Errorf("down after %d failures, want fall=3", f)
	}
	status.Store(200)
	waitFor(t, "two passes bring it back", h.Healthy)
	mu.Lock()
	got := changes
	mu.Unlock()
	if len(got) != 3 || !got[0] || got[1] || !got[2] {
		t.Errorf("transitions = %v, want [true false true], each once", got)
	}
}

func TestRemovedHostIsNoLongerProbed(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	addr := pingServer(t, &status)
	pool := &balancer.Pool{}
	pool.Update([]balancer.Config{{Addr: addr}})
	var probes atomic.Int32
	p := &Prober{Pool: pool, Interval: 20 * time.Millisecond, Timeout: 20 * time.Millisecond,
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnProbe: func(*balancer.Host, time.Duration, error) { probes.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	waitFor(t, "probed", func() bool { return probes.Load() > 2 })
	pool.Update(nil)
	p.Notify()
	time.Sleep(60 * time.Millisecond) // let a probe already under way finish
	n := probes.Load()
	time.Sleep(150 * time.Millisecond)
	if got := probes.Load(); got != n {
		t.Errorf("%d probes of a removed host", got-n)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
