package ratelimit

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSetReconfigure(t *testing.T) {
	def := Policy{Name: "default", Rate: 50, Burst: 100}
	buy := Policy{Name: "buy", Rate: 2, Burst: 5}
	api := Policy{Name: "api", Rate: 10, Burst: 10, Header: "X-Api-Key"}
	s, err := NewSet([]Policy{def, buy, api})
	if err != nil {
		t.Fatal(err)
	}
	k := addrKey("198.51.100.7")
	drain := func(name string) {
		t.Helper()
		l := s.Limiter(name)
		for {
			if ok, _ := l.Allow(k, t0); !ok {
				return
			}
		}
	}
	drain("default")
	drain("buy")
	drain("api")
	oldDefault := s.Limiter("default")

	// Reload: default unchanged (written with its defaults spelled out),
	// buy changed, api dropped, search added.
	defExplicit := def
	defExplicit.IPv6Prefix, defExplicit.MaxClients, defExplicit.IdleTTL = DefaultIPv6Prefix, DefaultMaxClients, DefaultIdleTTL
	buy2 := buy
	buy2.Burst = 3
	search := Policy{Name: "search", Rate: 5, Burst: 5}
	if err := s.Reconfigure([]Policy{defExplicit, buy2, search}); err != nil {
		t.Fatal(err)
	}
	if s.Limiter("default") != oldDefault {
		t.Error("unchanged policy got a new limiter")
	}
	if ok, _ := s.Limiter("default").Allow(k, t0); ok {
		t.Error("unchanged policy: a drained client was given a fresh bucket by the reload")
	}
	if ok, _ := s.Limiter("buy").Allow(k, t0); !ok {
		t.Error("changed policy kept the old buckets")
	}
	if got := s.Limiter("buy").Policy().Burst; got != 3 {
		t.Errorf("changed policy burst %d, want 3", got)
	}
	if s.Limiter("api") != nil {
		t.Error("dropped policy still served")
	}
	if s.Limiter("search") == nil {
		t.Error("added policy missing")
	}
	var names []string
	for _, l := range s.Limiters() {
		names = append(names, l.Policy().Name)
	}
	if got, want := strings.Join(names, ","), "buy,default,search"; got != want {
		t.Errorf("Limiters: got %s, want %s", got, want)
	}

	// A bad reload is rejected whole and changes nothing.
	for _, bad := range [][]Policy{
		{def, {Name: "x", Rate: 0, Burst: 1}},
		{def, def},
	} {
		if err := s.Reconfigure(bad); err == nil {
			t.Errorf("Reconfigure(%+v) accepted", bad)
		}
	}
	if s.Limiter("search") == nil || s.Limiter("default") != oldDefault {
		t.Error("a rejected reload changed the Set")
	}

	var zero Set
	if zero.Limiter("default") != nil || zero.Limiters() != nil {
		t.Error("the zero Set holds a policy")
	}
}

// Allow and Limiter run while the policies are reloaded: make test runs it
// under -race (ratelimit is in RACE_PKGS). Besides what the race detector
// sees, a reader must never find the policy missing mid-reload, every read
// must see one whole policy, and the last reload must be what stays.
func TestSetConcurrentReconfigure(t *testing.T) {
	a := Policy{Name: "default", Rate: 1000, Burst: 1000}
	var s Set
	if err := s.Reconfigure([]Policy{a}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var missing, torn, reads atomic.Int64
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			k := addrKey("192.0.2.1")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				l := s.Limiter("default")
				if l == nil {
					missing.Add(1)
					continue
				}
				if p := l.Policy(); p.Rate != 1000 || (p.Burst != 1000 && p.Burst != 1001) {
					torn.Add(1)
				}
				l.Allow(k, t0.Add(time.Duration(g*1000+i)*time.Microsecond))
				reads.Add(1)
			}
		})
	}
	for i := range 200 {
		b := a
		b.Burst = 1000 + i%2
		if err := s.Reconfigure([]Policy{b}); err != nil {
			t.Error(err)
		}
	}
	for reads.Load() < 1000 { // bounded: the readers never block
		runtime.Gosched()
	}
	close(stop)
	wg.Wait()
	if missing.Load() != 0 || torn.Load() != 0 {
		t.Errorf("over %d reads during 200 reloads: policy missing %d times, torn %d times", reads.Load(), missing.Load(), torn.Load())
	}
	if got := s.Limiter("default").Policy().Burst; got != 1001 {
		t.Errorf("after the last reload (burst 1001) the policy has burst %d", got)
	}
}
