package healthcheck

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/balancer"
)

// recorder is a slog.Handler that keeps every record, for tests to read.
type recorder struct {
	mu   sync.Mutex
	recs []record
}

type record struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	x := record{level: rec.Level, msg: rec.Message, attrs: map[string]string{}}
	rec.Attrs(func(a slog.Attr) bool { x.attrs[a.Key] = a.Value.String(); return true })
	r.mu.Lock()
	r.recs = append(r.recs, x)
	r.mu.Unlock()
	return nil
}

func (r *recorder) records() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]record(nil), r.recs...)
}

// step is one probe of a scripted run: the status the upstream answers
// it with, and how far the prober's clock has moved when the prober
// judges it.
type step struct {
	status int
	at     time.Duration
}

// runScript probes one new host through steps and returns what the prober
// logged. The clock is fake and moved by the script, and the test reads
// the log only after the prober has judged every step, so nothing here
// depends on how fast the machine is.
func runScript(t *testing.T, downLogInterval time.Duration, steps []step) []record {
	t.Helper()
	var status atomic.Int32
	status.Store(int32(steps[0].status))
	addr := pingServer(t, &status)
	pool := &balancer.Pool{}
	pool.Update([]balancer.Config{{Addr: addr}})
	base := time.Now()
	var clock atomic.Int64 // offset from base
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	judged := make(chan struct{}) // closed when the step after the last has been probed
	var n int                     // probes seen; only the loop's goroutine touches it
	p := &Prober{
		Pool: pool, Interval: time.Millisecond, Timeout: 10 * time.Second, Rise: 2, Fall: 3,
		DownLogInterval: downLogInterval,
		Logger:          slog.New(rec),
		// OnProbe runs after a probe and before the prober judges it: it
		// sets the clock for this step and the status for the next.
		OnProbe: func(h *balancer.Host, rtt time.Duration, err error) {
			if n == len(steps) {
				// Every step has been judged: the loop has come back
				// for another probe. Hold it here until the test ends.
				close(judged)
				<-ctx.Done()
				return
			}
			clock.Store(int64(steps[n].at))
			if n+1 < len(steps) {
				status.Store(int32(steps[n+1].status))
			}
			n++
		},
	}
	p.now = func() time.Time { return base.Add(time.Duration(clock.Load())) }
	go p.Run(ctx)
	select {
	case <-judged:
	case <-time.After(30 * time.Second):
		t.Fatalf("the prober did not get through %d probes in 30s", len(steps))
	}
	return rec.records()
}

func TestDownIsLoggedWithItsReasonAndRateLimited(t *testing.T) {
	fail := func(at time.Duration) step { return step{503, at} }
	pass := func(at time.Duration) step { return step{200, at} }
	s := time.Second
	cases := []struct {
		name     string
		interval time.Duration // Prober.DownLogInterval; 0 is the default, a minute
		steps    []step
		want     []string // "message state [error]" per record
	}{
		{
			// A host that never passes its first probe flips nothing,
			// and must still say why it is down.
			name: "new host failing from the start", steps: []step{
				fail(0), fail(0), fail(0), fail(30 * s), fail(59 * s), fail(60 * s),
				fail(61 * s), fail(119 * s), fail(120 * s), fail(121 * s)},
			want: []string{
				"upstream down down status 503",
				"upstream still down down status 503",
				"upstream still down down status 503"},
		},
		{
			name: "up host falls, stays down, comes back", steps: []step{
				pass(0), fail(10 * s), fail(20 * s), fail(30 * s), // fall=3: down at 30s
				fail(60 * s), fail(89 * s), fail(90 * s), // a minute after going down
				pass(100 * s), pass(110 * s)}, // rise=2
			want: []string{
				"upstream health changed up",
				"upstream health changed down status 503",
				"upstream still down down status 503",
				"upstream health changed up"},
		},
		{
			// A pass while down (short of rise) neither logs nor
			// restarts the schedule.
			name: "down host passing once between failures", steps: []step{
				fail(0), pass(30 * s), fail(40 * s), fail(60 * s), fail(70 * s)},
			want: []string{
				"upstream down down status 503",
				"upstream still down down status 503"},
		},
		{
			name: "shorter interval", interval: 10 * s, steps: []step{
				fail(0), fail(5 * s), fail(10 * s), fail(15 * s), fail(19 * s), fail(20 * s)},
			want: []string{
				"upstream down down status 503",
				"upstream still down down status 503",
				"upstream still down down status 503"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			recs := runScript(t, c.interval, c.steps)
			var got []string
			for _, r := range recs {
				line := r.msg + " " + r.attrs["state"]
				if e, ok := r.attrs["error"]; ok {
					line += " " + e[strings.LastIndex(e, ": ")+2:]
				}
				got = append(got, line)
				if r.attrs["upstream"] == "" {
					t.Errorf("%q names no upstream", r.msg)
				}
				if wantLevel := slog.LevelWarn; r.attrs["state"] == "down" && r.level != wantLevel {
					t.Errorf("%q is logged at %v, want %v", r.msg, r.level, wantLevel)
				}
			}
			if g, w := strings.Join(got, "\n"), strings.Join(c.want, "\n"); g != w {
				t.Errorf("log:\n%s\nwant:\n%s", g, w)
			}
		})
	}
}

func TestStillDownSaysForHowLong(t *testing.T) {
	recs := runScript(t, 0, []step{{503, 0}, {503, 61 * time.Second}})
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2: %v", len(recs), recs)
	}
	r := recs[1]
	for k, want := range map[string]string{"consecutive_failures": "2", "down_for": "1m1s"} {
		if got := r.attrs[k]; got != want {
			t.Errorf("%s %s = %q, want %q", r.msg, k, got, want)
		}
	}
}

func TestDefaultDownLogInterval(t *testing.T) {
	p := &Prober{}
	p.init()
	if got, want := p.DownLogInterval, DefaultDownLogInterval; got != want {
		t.Errorf("zero DownLogInterval became %v, want %v", got, want)
	}
	if DefaultDownLogInterval != time.Minute {
		t.Errorf("DefaultDownLogInterval = %v; README documents a minute", DefaultDownLogInterval)
	}
}

// TestProbeIsPublishedOnTheHost: each probe's result is on the host when
// OnProbe hears of it, for the admin listener to show.
func TestProbeIsPublishedOnTheHost(t *testing.T) {
	var status atomic.Int32
	status.Store(503)
	addr := pingServer(t, &status)
	pool := &balancer.Pool{}
	pool.Update([]balancer.Config{{Addr: addr}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 1)
	p := &Prober{Pool: pool, Interval: time.Millisecond, Timeout: 10 * time.Second, Logger: slog.New(&recorder{}),
		OnProbe: func(h *balancer.Host, rtt time.Duration, err error) {
			pr := h.LastProbe()
			var s string
			switch {
			case pr == nil:
				s = "no probe published"
			case pr.Err != err || pr.RTT != rtt || pr.At.IsZero():
				s = fmt.Sprintf("published %+v, OnProbe heard %v %v", pr, rtt, err)
			case pr.Fails < 3:
				return // wait for a streak
			default:
				s = fmt.Sprintf("fails %d passes %d %v", pr.Fails, pr.Passes, pr.Err)
			}
			select {
			case got <- s:
			default:
			}
			<-ctx.Done()
		}}
	go p.Run(ctx)
	select {
	case s := <-got:
		if !strings.HasPrefix(s, "fails 3 passes 0 probe "+addr+"/ping: status 503") {
			t.Errorf("last probe: %s", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no probe in 30s")
	}
}
