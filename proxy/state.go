package proxy

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/ratelimit"
)

// state is everything a request reads that a config reload may change. It
// is immutable: a reload builds a new one and swaps the pointer, and a
// request keeps the state it started with to the end, so in-flight
// requests finish on the old config.
type state struct {
	cfg     *config.Edge
	routes  []route
	trusted []netip.Prefix
	allow   *ratelimit.AllowList
	// responds are the routes the edge answers itself (see directResponse).
	responds []directResponse
	// rooms are the waiting rooms (waitroom.go), in config order.
	rooms []*roomState
}

func (p *Proxy) newState(cfg *config.Edge, prev *state, rooms []*roomState) *state {
	st := &state{cfg: cfg, trusted: cfg.TrustedPrefixes(), allow: ratelimit.NewAllowList(cfg.AllowPrefixes()), rooms: rooms}
	for _, r := range cfg.Routes {
		rt := newRoute(r)
		// Counters are per route name and outlive reloads, so a reload
		// never resets a series Prometheus has seen.
		rt.counts = p.metrics.routeCounts(r.Name)
		rt.policy = cfg.RoutePolicy(r)
		if r.MaxInFlight > 0 {
			rt.inflight = &ratelimit.Concurrency{Max: r.MaxInFlight}
			// An unchanged cap keeps its count: requests under way on the
			// old config still hold their places.
			if old := prev.route(r.Name); old != nil && old.inflight != nil && old.inflight.Max == r.MaxInFlight {
				rt.inflight = old.inflight
			}
		}
		st.routes = append(st.routes, rt)
	}
	st.responds = directResponses(cfg, st.routes)
	return st
}

func (st *state) route(name string) *route {
	if st == nil {
		return nil
	}
	for i := range st.routes {
		if st.routes[i].name == name {
			return &st.routes[i]
		}
	}
	return nil
}

// policies turns the config's rate limits into the ratelimit package's.
func policies(cfg *config.Edge) []ratelimit.Policy {
	out := make([]ratelimit.Policy, 0, len(cfg.RateLimits))
	for name, rl := range cfg.RateLimits {
		pol := ratelimit.Policy{Name: name, Rate: rl.Rate, Burst: rl.Burst, IPv6Prefix: rl.IPv6Prefix,
			MaxClients: rl.MaxClients, IdleTTL: rl.IdleTTL.D()}
		if h, ok := strings.CutPrefix(rl.Key, "header:"); ok {
			pol.Header = h
		}
		out = append(out, pol)
	}
	return out
}

func poolSettings(cfg *config.Edge) balancer.Settings {
	return balancer.Settings{
		SlowStart: cfg.Balancer.SlowStart.D(),
		Outlier: balancer.OutlierConfig{
			ConsecutiveFailures: cfg.Outlier.ConsecutiveFailures,
			BaseEjection:        cfg.Outlier.BaseEjection.D(),
			MaxEjection:         cfg.Outlier.MaxEjection.D(),
			MaxEjectedPercent:   cfg.Outlier.MaxEjectedPercent,
		},
	}
}

func needsStore(cfg *config.Edge) bool {
	for _, r := range cfg.Routes {
		if r.Cache != nil {
			return true
		}
	}
	return false
}

// Config returns the config in force.
func (p *Proxy) Config() *config.Edge { return p.state.Load().cfg }

// Reload switches to cfg, which must already be validated, at once for new
// requests; requests under way finish on the config they started with.
// Routes, cache policies, retries, outlier and balancer settings, trusted
// proxies, the upstream timeout and the access log switch live. Keys that
// only take effect on restart are returned, so the caller can say so; the
// running values of those stay.
//
// The upstream set and the health checker's settings are the caller's to
// apply (they belong to discovery and the prober).
func (p *Proxy) Reload(cfg *config.Edge) (needRestart []string, err error) {
	if needsStore(cfg) && p.store == nil {
		needRestart = append(needRestart, "routes[].cache (the cache was off at start)")
	}
	boot := p.boot
	for _, k := range []struct {
		key      string
		old, new any
	}{
		{"listen", boot.Listen, cfg.Listen},
		{"reuse_port", boot.ReusePort, cfg.ReusePort},
		{"admin", boot.Admin, cfg.Admin},
		{"limits", boot.Limits, cfg.Limits},
		{"upstream_pool", boot.UpstreamPool, cfg.UpstreamPool},
		{"timeouts.connect", boot.Timeouts.Connect, cfg.Timeouts.Connect},
		{"timeouts.read_header", boot.Timeouts.ReadHeader, cfg.Timeouts.ReadHeader},
		{"timeouts.read_body", boot.Timeouts.ReadBody, cfg.Timeouts.ReadBody},
		{"timeouts.idle", boot.Timeouts.Idle, cfg.Timeouts.Idle},
		{"timeouts.write", boot.Timeouts.Write, cfg.Timeouts.Write},
		{"cache", boot.Cache, cfg.Cache},
	} {
		if !reflect.DeepEqual(k.old, k.new) {
			needRestart = append(needRestart, fmt.Sprintf("%s (running %v, file says %v)", k.key, k.old, k.new))
		}
	}
	if cfg.WaitingRoomStatePath() != boot.WaitingRoomStatePath() {
		needRestart = append(needRestart, fmt.Sprintf("waiting_room_state_dir (running %s, file says %s)", boot.WaitingRoomStatePath(), cfg.WaitingRoomStatePath()))
	}
	if !reflect.DeepEqual(cfg.WaitingRoomStore, boot.WaitingRoomStore) {
		needRestart = append(needRestart, fmt.Sprintf("waiting_room_store (running %+v, file says %+v)", boot.WaitingRoomStore, cfg.WaitingRoomStore))
	}
	// Rooms keep their queues; keys, rates and pages switch now. A room
	// whose epoch or opening changed starts a new queue. Every room is
	// built before anything changes, so a room that fails leaves the
	// running config whole.
	plan, err := p.prepareRooms(cfg)
	if err != nil {
		return nil, fmt.Errorf("waiting rooms: %w", err)
	}
	// Policies whose settings did not change keep their buckets: a reload
	// must not hand every client a fresh burst.
	if err := p.limits.Reconfigure(policies(cfg)); err != nil {
		return nil, fmt.Errorf("rate limits: %w", err)
	}
	rooms := plan.commit(p)
	p.pool.Configure(poolSettings(cfg))
	p.state.Store(p.newState(cfg, p.state.Load(), rooms))
	p.metrics.ObserveReload(true, len(needRestart) > 0)
	return needRestart, nil
}

// ReloadFailed records a config that did not load or validate.
func (p *Proxy) ReloadFailed() { p.metrics.ObserveReload(false, false) }
