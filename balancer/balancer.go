// Package balancer owns the upstream pool and the least-connections picker.
//
// The pool is an immutable snapshot of hosts swapped atomically when
// discovery changes the set; PickExcept reads it without a lock and allocates
// nothing. Per-host runtime state (in-flight count, health) lives in
// atomics on the Host, which survives from one snapshot to the next while
// its ID stays in the set, so an update never resets counters or health.
package balancer

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podium-edge/podium/transport"
)

// Config is one upstream as the pool is told of it.
type Config struct {
	ID     string // stable identity across updates; the address if empty
	Addr   string // host:port
	Weight int    // share under least connections; < 1 means 1
}

// Host is one upstream and its shared runtime state.
//
// A Host is safe for concurrent use and must not be copied after it is
// published in a pool.
type Host struct {
	ID     string
	Addr   string
	Weight int

	// Transport carries requests to the host: its pooled keep-alive
	// connections. The pool's owner attaches it in OnAdd, before the host
	// is published, and never changes it after; the pool never reads it.
	// Nil on a host no OnAdd has seen.
	Transport *transport.Upstream

	inflight      atomic.Int64
	healthy       atomic.Bool
	healthySince  atomic.Int64 // unix nanoseconds of the last down→up flip, for slow start
	healthChanged atomic.Int64 // unix nanoseconds of the last flip either way; 0 before the first
	removed       atomic.Bool
	probe         atomic.Pointer[Probe] // the active health check's latest result; nil before the first

	// Passive health (outlier detection), Envoy's consecutive-5xx model.
	failures     atomic.Int32 // consecutive failed requests
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when not ejected
	ejections    atomic.Int32 // times ejected, scaling the next ejection
	ejectedFor   atomic.Int64 // length of the last ejection, nanoseconds
}

// EjectedUntil is when h's current or last ejection ends (zero if never
// ejected), and LastEjection how long that ejection was set for.
func (h *Host) EjectedUntil() time.Time {
	if u := h.ejectedUntil.Load(); u != 0 {
		return time.Unix(0, u)
	}
	return time.Time{}
}

// LastEjection is how long h's last ejection was set for.
func (h *Host) LastEjection() time.Duration { return time.Duration(h.ejectedFor.Load()) }

// Ejected reports whether passive health checking holds h out of rotation
// at now.
func (h *Host) Ejected(now time.Time) bool {
	u := h.ejectedUntil.Load()
	return u != 0 && now.UnixNano() < u
}

// Ejections is how many times h has been ejected.
func (h *Host) Ejections() int { return int(h.ejections.Load()) }

// Uneject returns an ejected host to rotation (a passing active health
// check may do so early, as in Envoy) and reports whether it was ejected.
func (h *Host) Uneject() bool {
	u := h.ejectedUntil.Load()
	if u == 0 {
		return false
	}
	h.failures.Store(0)
	return h.ejectedUntil.CompareAndSwap(u, 0)
}

// InFlight returns the requests now in flight to h.
func (h *Host) InFlight() int64 { return h.inflight.Load() }

// Acquire counts a request to h; call Release when it ends.
func (h *Host) Acquire() { h.inflight.Add(1) }

// Release ends a request counted by Acquire.
func (h *Host) Release() { h.inflight.Add(-1) }

// Healthy reports whether the active health check holds h up.
func (h *Host) Healthy() bool { return h.healthy.Load() }

// SetHealthy sets h's health and reports whether that changed it, so the
// caller logs a transition exactly once (compare-and-swap, as Caddy does).
func (h *Host) SetHealthy(up bool, now time.Time) bool {
	if !h.healthy.CompareAndSwap(!up, up) {
		return false
	}
	if up {
		h.healthySince.Store(now.UnixNano())
	}
	h.healthChanged.Store(now.UnixNano())
	return true
}

// HealthChanged is when h's health last flipped, up or down; zero if it
// never has (a new host starts down, so zero with Healthy false means it
// has never been up).
func (h *Host) HealthChanged() time.Time {
	if t := h.healthChanged.Load(); t != 0 {
		return time.Unix(0, t)
	}
	return time.Time{}
}

// Probe is the result of one active health check of a host, kept so that
// an operator can see why a host is down (the admin listener's /upstreams)
// rather than only that it is. It is an immutable value: the prober
// publishes a new one after each probe and never changes a published one.
type Probe struct {
	At     time.Time     // when the probe started
	RTT    time.Duration // until the status line arrived, or the probe failed
	Err    error         // why it failed; nil when it passed
	Passes int           // consecutive passes, this one included; 0 if it failed
	Fails  int           // consecutive failures, this one included; 0 if it passed
}

// LastProbe returns h's latest active health check, or nil before the
// first. The result must not be modified.
func (h *Host) LastProbe() *Probe { return h.probe.Load() }

// SetProbe publishes r as h's latest active health check.
func (h *Host) SetProbe(r Probe) { h.probe.Store(&r) }

// Removed reports whether discovery has dropped h from the pool; in-flight
// requests finish, new ones never pick it.
func (h *Host) Removed() bool { return h.removed.Load() }

// snapshot is an immutable host list.
type snapshot struct {
	hosts []*Host
	byID  map[string]*Host
}

// Pool is the set of upstreams. The zero value is an empty pool with slow
// start off, ready to use.
//
// A Pool is safe for concurrent use; it must not be copied after first use.
type Pool struct {
	// OnAdd, if set, is called for each new host before it is published,
	// so the owner can attach its Transport. OnRemove is called after a
	// host leaves the published set. Set both before the pool is shared.
	OnAdd    func(*Host)
	OnRemove func(*Host)

	settings atomic.Pointer[Settings] // nil: slow start and ejection off

	mu         sync.Mutex // serialises Update; readers never take it
	snap       atomic.Pointer[snapshot]
	anyEjected atomic.Bool // some host has a non-zero ejectedUntil; PickExcept then reads the clock
}

// Settings tune a pool; they may change while it serves (config reload).
// The zero value turns slow start and ejection off.
type Settings struct {
	// SlowStart ramps a newly healthy host's effective weight from 10% to
	// 100% over this period (HAProxy's slowstart). Zero turns it off.
	SlowStart time.Duration
	// Outlier ejection; zero ConsecutiveFailures turns it off.
	Outlier OutlierConfig
}

var noSettings Settings

// Configure replaces the pool's settings; picks under way finish on the
// old ones.
func (p *Pool) Configure(s Settings) { p.settings.Store(&s) }

func (p *Pool) cfg() *Settings {
	if s := p.settings.Load(); s != nil {
		return s
	}
	return &noSettings
}

// OutlierConfig is passive health checking (Envoy's outlier detection).
type OutlierConfig struct {
	ConsecutiveFailures int           // failures in a row that eject a host; 0 = off
	BaseEjection        time.Duration // first ejection; the n-th lasts n × this
	MaxEjection         time.Duration // cap on one ejection
	MaxEjectedPercent   int           // at most this share of hosts out at once; never all
}

// Succeeded records a request that h answered well: its failure streak ends.
func (p *Pool) Succeeded(h *Host) {
	if h.failures.Load() != 0 {
		h.failures.Store(0)
	}
}

// Failed records a connect error, reset or 5xx from h. When the streak
// reaches ConsecutiveFailures, h is ejected for BaseEjection × times
// ejected (capped at MaxEjection), unless that would put more than
// MaxEjectedPercent of the hosts, or all of them, out at once. It reports
// whether this call ejected h, so the caller logs the transition once.
func (p *Pool) Failed(h *Host, now time.Time) (ejected bool, d time.Duration) {
	o := p.cfg().Outlier
	if o.ConsecutiveFailures <= 0 {
		return false, 0
	}
	if int(h.failures.Add(1)) < o.ConsecutiveFailures || h.Ejected(now) {
		return false, 0
	}
	hosts := p.Hosts()
	out := 0
	for _, x := range hosts {
		if x != h && x.Ejected(now) {
			out++
		}
	}
	// Never all, and never past the percentage (at least one may go, as
	// in Envoy, unless it is the last host in rotation).
	if out+1 >= len(hosts) || (out > 0 && (out+1)*100 > o.MaxEjectedPercent*len(hosts)) {
		return false, 0
	}
	n := h.ejections.Load() + 1
	d = time.Duration(n) * o.BaseEjection
	if o.MaxEjection > 0 && d > o.MaxEjection {
		d = o.MaxEjection
	}
	prev := h.ejectedUntil.Load()
	if !h.ejectedUntil.CompareAndSwap(prev, now.Add(d).UnixNano()) {
		return false, 0 // another request ejected it first
	}
	h.ejections.Store(n)
	h.ejectedFor.Store(int64(d))
	h.failures.Store(0)
	p.anyEjected.Store(true)
	return true, d
}

// Update replaces the set with cfgs. Hosts whose ID stays keep their state;
// new hosts start down until the health checker marks them up.
func (p *Pool) Update(cfgs []Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.snap.Load()
	next := &snapshot{hosts: make([]*Host, 0, len(cfgs)), byID: make(map[string]*Host, len(cfgs))}
	for _, c := range cfgs {
		id := c.ID
		if id == "" {
			id = c.Addr
		}
		if _, dup := next.byID[id]; dup {
			continue
		}
		w := max(c.Weight, 1)
		var h *Host
		if old != nil {
			if prev := old.byID[id]; prev != nil && prev.Addr == c.Addr && prev.Weight == w {
				h = prev
			}
		}
		if h == nil {
			h = &Host{ID: id, Addr: c.Addr, Weight: w}
			if old != nil {
				// A changed weight keeps the health state: it is the same
				// instance, and it should not drop out of rotation.
				if prev := old.byID[id]; prev != nil && prev.Addr == c.Addr {
					h.healthy.Store(prev.healthy.Load())
					h.healthySince.Store(prev.healthySince.Load())
					h.healthChanged.Store(prev.healthChanged.Load())
					h.probe.Store(prev.probe.Load())
				}
			}
			if p.OnAdd != nil {
				p.OnAdd(h)
			}
		}
		next.hosts = append(next.hosts, h)
		next.byID[id] = h
	}
	p.snap.Store(next)
	if old == nil {
		return
	}
	for _, h := range old.hosts {
		if next.byID[h.ID] != h {
			h.removed.Store(true)
			if p.OnRemove != nil {
				p.OnRemove(h)
			}
		}
	}
}

// Hosts returns the current hosts. The slice is shared and must not be
// modified.
func (p *Pool) Hosts() []*Host {
	s := p.snap.Load()
	if s == nil {
		return nil
	}
	return s.hosts
}

// PickExcept returns the healthy host not in tried with the fewest
// in-flight requests per unit of weight, or nil when there is none: tried
// holds the hosts earlier attempts of the request went to, so a retry goes
// to a different upstream. Ties are broken uniformly at random, so equal
// hosts share evenly even at low concurrency (a fixed order would send
// every request of an idle pool to the first host).
//
// PickExcept does not count the request: the caller calls Acquire on the
// result. Two concurrent picks may choose the same host; as in HAProxy's
// leastconn the error is one request and corrects itself on the next pick.
func (p *Pool) PickExcept(tried []*Host) *Host {
	s := p.snap.Load()
	if s == nil {
		return nil
	}
	slowStart := p.cfg().SlowStart
	var now int64
	if slowStart > 0 || p.anyEjected.Load() {
		now = time.Now().UnixNano()
	}
	var best *Host
	bestScore := math.Inf(1)
	ties := 0
hosts:
	for _, h := range s.hosts {
		if !h.healthy.Load() {
			continue
		}
		if u := h.ejectedUntil.Load(); u != 0 && now < u {
			continue
		}
		for _, t := range tried {
			if t == h {
				continue hosts
			}
		}
		score := float64(h.inflight.Load()+1) / effectiveWeight(h, slowStart, now)
		switch {
		case score < bestScore:
			best, bestScore, ties = h, score, 1
		case score == bestScore:
			// Reservoir sampling over the tied hosts: each is kept with
			// probability 1/ties, so the choice is uniform in one pass.
			ties++
			if rand.IntN(ties) == 0 {
				best = h
			}
		}
	}
	return best
}

// effectiveWeight applies slow start: a host that came up within SlowStart
// gets a share that grows linearly from 10% of its weight.
func effectiveWeight(h *Host, slowStart time.Duration, now int64) float64 {
	w := float64(h.Weight)
	if slowStart <= 0 {
		return w
	}
	since := h.healthySince.Load()
	elapsed := time.Duration(now - since)
	if since == 0 || elapsed >= slowStart {
		return w
	}
	frac := float64(elapsed) / float64(slowStart)
	return w * max(0.1, frac)
}
