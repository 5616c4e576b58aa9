package balancer

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

func newPool(t testing.TB, weights ...int) *Pool {
	t.Helper()
	p := &Pool{}
	var cfgs []Config
	for i, w := range weights {
		cfgs = append(cfgs, Config{Addr: fmt.Sprintf("127.0.0.1:%d", 9001+i), Weight: w})
	}
	p.Update(cfgs)
	for _, h := range p.Hosts() {
		h.SetHealthy(true, time.Now().Add(-time.Hour))
	}
	return p
}

func TestPickEmptyAndAllDown(t *testing.T) {
	var p Pool
	if h := p.PickExcept(nil); h != nil {
		t.Fatalf("empty pool picked %s", h.Addr)
	}
	p.Update([]Config{{Addr: "127.0.0.1:1"}})
	if h := p.PickExcept(nil); h != nil {
		t.Fatalf("a host that never passed a check was picked: %s", h.Addr)
	}
}

func TestPickTiesAreUniform(t *testing.T) {
	// With nothing in flight every host ties; a fixed order would send all
	// of them to the first host.
	p := newPool(t, 1, 1, 1)
	counts := map[string]int{}
	const n = 30000
	for range n {
		counts[p.PickExcept(nil).Addr]++
	}
	for addr, c := range counts {
		if share := float64(c) / n; math.Abs(share-1.0/3) > 0.02 {
			t.Errorf("%s got %.3f of picks, want 1/3 ± 0.02", addr, share)
		}
	}
	if len(counts) != 3 {
		t.Errorf("picked %d hosts, want 3", len(counts))
	}
}

func TestPickLeastInFlight(t *testing.T) {
	p := newPool(t, 1, 1, 1)
	hs := p.Hosts()
	hs[0].inflight.Store(5)
	hs[1].inflight.Store(2)
	hs[2].inflight.Store(3)
	for range 100 {
		if got := p.PickExcept(nil); got != hs[1] {
			t.Fatalf("picked %s with %d in flight, want %s with 2", got.Addr, got.InFlight(), hs[1].Addr)
		}
	}
}

func TestPickWeighted(t *testing.T) {
	// Simulate steady concurrency: hold 300 requests open, each pick
	// acquiring; the weight-2 host must end with twice the share.
	p := newPool(t, 1, 2, 1)
	for range 300 {
		p.PickExcept(nil).Acquire()
	}
	hs := p.Hosts()
	got := []int64{hs[0].InFlight(), hs[1].InFlight(), hs[2].InFlight()}
	if got[1] < 2*got[0]-2 || got[1] > 2*got[0]+2 || got[0]-got[2] > 1 || got[2]-got[0] > 1 {
		t.Errorf("in flight = %v, want about 75/150/75", got)
	}
}

func TestPickSkipsDownAndRemoved(t *testing.T) {
	p := newPool(t, 1, 1)
	hs := p.Hosts()
	if !hs[0].SetHealthy(false, time.Now()) {
		t.Fatal("up→down did not report a transition")
	}
	if hs[0].SetHealthy(false, time.Now()) {
		t.Fatal("down→down reported a transition")
	}
	for range 50 {
		if got := p.PickExcept(nil); got != hs[1] {
			t.Fatalf("picked %v, want the only healthy host", got)
		}
	}
	p.Update([]Config{{Addr: hs[0].Addr}})
	if !hs[1].Removed() {
		t.Error("a host dropped by Update is not marked removed")
	}
	if got := p.PickExcept(nil); got != nil {
		t.Errorf("picked %v after the healthy host was removed, want nil", got.Addr)
	}
}

func TestUpdateKeepsState(t *testing.T) {
	var added, removed []string
	p := &Pool{OnAdd: func(h *Host) { added = append(added, h.Addr) }, OnRemove: func(h *Host) { removed = append(removed, h.Addr) }}
	p.Update([]Config{{Addr: "a:1"}, {Addr: "b:1"}})
	a := p.Hosts()[0]
	a.SetHealthy(true, time.Now())
	a.Acquire()
	p.Update([]Config{{Addr: "a:1"}, {Addr: "c:1"}})
	if p.Hosts()[0] != a || a.InFlight() != 1 || !a.Healthy() {
		t.Errorf("host a lost its state across an update")
	}
	if fmt.Sprint(added) != "[a:1 b:1 c:1]" || fmt.Sprint(removed) != "[b:1]" {
		t.Errorf("added %v removed %v, want [a:1 b:1 c:1] and [b:1]", added, removed)
	}
	// A new weight for the same instance keeps it in rotation, and what
	// the health check last said of it (the admin listener shows it).
	a.SetProbe(Probe{At: time.Now(), RTT: time.Millisecond, Passes: 4})
	p.Update([]Config{{Addr: "a:1", Weight: 3}})
	h := p.Hosts()[0]
	if h.Weight != 3 || !h.Healthy() {
		t.Errorf("reweighted host = weight %d healthy %v, want 3 true", h.Weight, h.Healthy())
	}
	if got, want := h.HealthChanged(), a.HealthChanged(); got.IsZero() || !got.Equal(want) {
		t.Errorf("reweighted host's health changed at %v, want %v", got, want)
	}
	if got := h.LastProbe(); got == nil || got.Passes != 4 {
		t.Errorf("reweighted host's last probe = %+v, want the old host's (4 passes)", got)
	}
}

func TestLastProbeIsPublishedWhole(t *testing.T) {
	var h Host
	if got := h.LastProbe(); got != nil {
		t.Fatalf("a host never probed has last probe %+v, want nil", got)
	}
	if !h.HealthChanged().IsZero() {
		t.Errorf("a host never flipped has health changed at %v, want zero", h.HealthChanged())
	}
	err := errors.New("probe a:1/ping: status 503")
	h.SetProbe(Probe{Err: err, Fails: 3})
	got := h.LastProbe()
	if got.Err != err || got.Fails != 3 || got.Passes != 0 {
		t.Errorf("last probe = %+v, want the failure just set", got)
	}
	// Readers hold on to what they loaded; the next probe does not change it.
	h.SetProbe(Probe{Passes: 1})
	if got.Err != err || h.LastProbe().Passes != 1 {
		t.Errorf("publishing a probe changed one already read")
	}
	now := time.Now()
	h.SetHealthy(true, now)
	h.SetHealthy(false, now.Add(time.Second))
	if got := h.HealthChanged(); !got.Equal(now.Add(time.Second)) {
		t.Errorf("health changed at %v, want the down flip at %v", got, now.Add(time.Second))
	}
}

// TestSlowStart checks the whole ramp: a host that just came up gets 10% of
// its weight, then a share that grows linearly to 100% at SlowStart.
func TestSlowStart(t *testing.T) {
	const ramp = 10 * time.Second
	now := time.Now()
	for _, tc := range []struct {
		up   time.Duration // how long ago the host came up
		want float64       // its effective weight of 4
	}{
		{0, 0.4},
		{500 * time.Millisecond, 0.4}, // 5% of the ramp: the 10% floor
		{time.Second, 0.4},
		{2500 * time.Millisecond, 1.0},
		{5 * time.Second, 2.0},
		{7500 * time.Millisecond, 3.0},
		{9900 * time.Millisecond, 3.96},
		{ramp, 4},
		{time.Hour, 4},
	} {
		h := &Host{Weight: 4}
		h.SetHealthy(true, now.Add(-tc.up))
		if got := effectiveWeight(h, ramp, now.UnixNano()); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("up for %v: effective weight %.4f, want %.4f", tc.up, got, tc.want)
		}
		if got := effectiveWeight(h, 0, now.UnixNano()); got != 4 {
			t.Errorf("up for %v without slow start: effective weight %v, want 4", tc.up, got)
		}
	}
	// Through PickExcept: the share of 100 concurrent requests a host that came
	// up a given time ago takes beside an old host of the same weight.
	// Least connections keeps (inflight+1)/weight level, so the new host
	// holds w/(1+w) of them, w its effective fraction.
	for _, tc := range []struct {
		up       time.Duration
		min, max int64
	}{
		{0, 8, 11},                        // w = 0.1: ~9
		{5 * time.Second, 32, 35},         // w = 0.5: ~33
		{7500 * time.Millisecond, 41, 44}, // w = 0.75: ~43
		{time.Hour, 49, 51},               // w = 1: ~50
	} {
		p := &Pool{}
		p.Configure(Settings{SlowStart: ramp})
		p.Update([]Config{{Addr: "old:1"}, {Addr: "new:1"}})
		p.Hosts()[0].SetHealthy(true, now.Add(-time.Hour))
		p.Hosts()[1].SetHealthy(true, time.Now().Add(-tc.up))
		for range 100 {
			p.PickExcept(nil).Acquire()
		}
		if got := p.Hosts()[1].InFlight(); got < tc.min || got > tc.max {
			t.Errorf("up for %v: took %d of 100 concurrent requests, want %d..%d", tc.up, got, tc.min, tc.max)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	for _, n := range []int{3, 16} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			ws := make([]int, n)
			for i := range ws {
				ws[i] = 1
			}
			p := newPool(b, ws...)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					h := p.PickExcept(nil)
					h.Acquire()
					h.Release()
				}
			})
		})
	}
}

func TestOutlierEjection(t *testing.T) {
	p := newPool(t, 1, 1, 1, 1)
	p.Configure(Settings{Outlier: OutlierConfig{ConsecutiveFailures: 3, BaseEjection: 10 * time.Second, MaxEjection: 25 * time.Second, MaxEjectedPercent: 50}})
	hs := p.Hosts()
	now := time.Now()
	for i := range 2 {
		if ej, _ := p.Failed(hs[0], now); ej {
			t.Fatalf("ejected after %d failures, want 3", i+1)
		}
	}
	p.Succeeded(hs[0]) // a success ends the streak
	for range 2 {
		if ej, _ := p.Failed(hs[0], now); ej {
			t.Fatal("ejected although a success broke the streak")
		}
	}
	ej, d := p.Failed(hs[0], now)
	if !ej || d != 10*time.Second {
		t.Fatalf("third failure in a row: ejected %v for %v, want true for 10s", ej, d)
	}
	for range 200 {
		if p.PickExcept(nil) == hs[0] {
			t.Fatal("an ejected host was picked")
		}
	}
	// Back after the base time; the next ejection lasts twice as long, the
	// third is capped.
	later := now.Add(11 * time.Second)
	if hs[0].Ejected(later) {
		t.Fatal("still ejected after the base ejection time")
	}
	for _, want := range []time.Duration{20 * time.Second, 25 * time.Second} {
		var ej bool
		for range 3 {
			ej, d = p.Failed(hs[0], later)
		}
		if !ej || d != want {
			t.Errorf("next ejection: %v for %v, want %v", ej, d, want)
		}
		later = later.Add(d + time.Second)
	}
}

func TestOutlierNeverEjectsAll(t *testing.T) {
	p := newPool(t, 1, 1, 1)
	p.Configure(Settings{Outlier: OutlierConfig{ConsecutiveFailures: 1, BaseEjection: time.Minute, MaxEjectedPercent: 100}})
	now := time.Now()
	ejected := 0
	for _, h := range p.Hosts() {
		for range 5 {
			if ej, _ := p.Failed(h, now); ej {
				ejected++
			}
		}
	}
	if ejected != 2 {
		t.Errorf("ejected %d of 3 failing hosts, want 2: one always stays in rotation", ejected)
	}
	if p.PickExcept(nil) == nil {
		t.Error("nothing left to pick")
	}
	q := newPool(t, 1, 1, 1, 1)
	q.Configure(Settings{Outlier: OutlierConfig{ConsecutiveFailures: 1, BaseEjection: time.Minute, MaxEjectedPercent: 50}})
	ejected = 0
	for _, h := range q.Hosts() {
		if ej, _ := q.Failed(h, now); ej {
			ejected++
		}
	}
	if ejected != 2 {
		t.Errorf("max_ejected_percent 50 of 4 hosts: ejected %d, want 2", ejected)
	}
	h := q.Hosts()[0]
	if !h.Uneject() || h.Ejected(now) {
		t.Error("Uneject did not return the host")
	}
}

func TestPickExcept(t *testing.T) {
	p := newPool(t, 1, 1, 1)
	hs := p.Hosts()
	for range 100 {
		if got := p.PickExcept([]*Host{hs[0], hs[2]}); got != hs[1] {
			t.Fatalf("PickExcept picked %v, want the one untried host", got.Addr)
		}
	}
	if got := p.PickExcept(hs); got != nil {
		t.Errorf("all tried: picked %v, want nil", got.Addr)
	}
}
