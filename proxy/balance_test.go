package proxy

import (
	"math"
	"testing"
	"time"
)

func TestEqualUpstreamsShareEvenly(t *testing.T) {
	// Concurrent slow requests across three equal upstreams: each gets its
	// third within ±10%.
	ups := []*testUpstream{newUpstream(t), newUpstream(t), newUpstream(t)}
	for _, u := range ups {
		u.delay.Store(int64(10 * time.Millisecond))
	}
	e := startEdge(t, ups, nil)
	const n = 1800
	if failed := load(t, e.url("/api/games"), 30, n); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	for _, u := range ups {
		got := float64(u.count.Load())
		if math.Abs(got-n/3) > 0.10*n/3 {
			t.Errorf("upstream %s got %.0f of %d requests, want %d ± 10%%", u.addr, got, n, n/3)
		}
	}
}

func TestSlowUpstreamGetsFewer(t *testing.T) {
	ups := []*testUpstream{newUpstream(t), newUpstream(t), newUpstream(t)}
	ups[0].delay.Store(int64(5 * time.Millisecond))
	ups[1].delay.Store(int64(5 * time.Millisecond))
	// Fifty times slower: least connections shares by latency, and on a
	// busy machine the fast ones' latency is mostly the scheduler's (at
	// ten times, load 20 brought the slow one's share to 0.35).
	ups[2].delay.Store(int64(250 * time.Millisecond))
	e := startEdge(t, ups, nil)
	if failed := load(t, e.url("/x"), 12, 1200); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	fast := float64(ups[0].count.Load()+ups[1].count.Load()) / 2
	slow := float64(ups[2].count.Load())
	if slow > fast/3 {
		t.Errorf("slow upstream got %.0f requests, fast ones %.0f each; want the slow one under a third", slow, fast)
	}
}

func TestWeightTwoGetsTwiceTheShare(t *testing.T) {
	ups := []*testUpstream{newUpstream(t), newUpstream(t), newUpstream(t)}
	for _, u := range ups {
		u.delay.Store(int64(10 * time.Millisecond))
	}
	e := startEdge(t, ups, []int{1, 2, 1})
	if failed := load(t, e.url("/x"), 40, 2000); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	one := float64(ups[0].count.Load()+ups[2].count.Load()) / 2
	ratio := float64(ups[1].count.Load()) / one
	if ratio < 1.7 || ratio > 2.3 {
		t.Errorf("weight-2 upstream got %.2f× a weight-1 upstream's share (%d vs %.0f), want 2 ± 0.3", ratio, ups[1].count.Load(), one)
	}
}

func TestDownUpstreamGetsNoTraffic(t *testing.T) {
	ups := []*testUpstream{newUpstream(t), newUpstream(t), newUpstream(t)}
	e := startEdge(t, ups, nil)
	victim := ups[1]
	var host = e.p.Pool().Hosts()[1]
	if host.Addr != victim.addr {
		t.Fatalf("pool order %s, want %s", host.Addr, victim.addr)
	}
	hc := e.p.Config().HealthCheck
	// Down on exactly the fall-th failed probe in a row, not earlier and
	// not later: counted in probes, which is what healthcheck.fall says,
	// rather than in wall-clock time, which a busy machine stretches.
	victim.stop()
	if pr := e.waitChange(t, victim.addr, false); pr.Fails != hc.Fall || pr.Err == nil {
		t.Fatalf("stopped upstream marked down by a probe with %d failures in a row (error %v), want fall = %d", pr.Fails, pr.Err, hc.Fall)
	}
	if host.Healthy() {
		t.Fatal("the prober said down; the host still reads healthy")
	}

	before := victim.count.Load()
	if failed := load(t, e.url("/x"), 8, 400); failed != 0 {
		t.Errorf("%d requests failed while one of three upstreams was down", failed)
	}
	if got := victim.count.Load(); got != before {
		t.Errorf("down upstream received %d requests", got-before)
	}

	victim.restart()
	if pr := e.waitChange(t, victim.addr, true); pr.Passes != hc.Rise || pr.Err != nil {
		t.Fatalf("restarted upstream brought up by a probe with %d passes in a row (error %v), want rise = %d", pr.Passes, pr.Err, hc.Rise)
	}
	if failed := load(t, e.url("/x"), 8, 300); failed != 0 {
		t.Errorf("%d requests failed after restart", failed)
	}
	if victim.count.Load() == before {
		t.Error("restarted upstream got no traffic")
	}
}
