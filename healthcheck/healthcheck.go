// Package healthcheck is the active prober: GET /ping on every upstream each
// interval, with HAProxy's rise/fall thresholds, updating the health that
// the balancer reads.
package healthcheck

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/valyala/fasthttp"
)

// Prober probes every host of a pool. Configure the exported fields, then
// call Run once. Zero values of Interval, Timeout, Rise and Fall mean the
// config defaults (2s, 500ms, 2, 3); an empty Path means /ping.
//
// A Prober is safe for concurrent use once Run has started (Notify may be
// called from any goroutine); it must not be copied.
type Prober struct {
	Pool     *balancer.Pool
	Path     string
	Interval time.Duration
	Timeout  time.Duration
	Rise     int // consecutive passes that bring a down host up
	Fall     int // consecutive failures that take an up host down
	Logger   *slog.Logger

	// OnProbe, if set, is called after every probe with its round-trip
	// time and its error (nil when it passed).
	OnProbe func(h *balancer.Host, rtt time.Duration, err error)
	// OnChange, if set, is called once per up/down transition.
	OnChange func(h *balancer.Host, up bool)

	notify chan struct{}
	once   sync.Once
	client *fasthttp.Client
}

func (p *Prober) init() {
	p.once.Do(func() {
		p.notify = make(chan struct{}, 1)
		if p.Path == "" {
			p.Path = "/ping"
		}
		if p.Interval <= 0 {
			p.Interval = 2 * time.Second
		}
		if p.Timeout <= 0 {
			p.Timeout = 500 * time.Millisecond
		}
		if p.Rise <= 0 {
			p.Rise = 2
		}
		if p.Fall <= 0 {
			p.Fall = 3
		}
		if p.Logger == nil {
			p.Logger = slog.Default()
		}
		p.client = &fasthttp.Client{
			Name:                      "podium-healthcheck",
			MaxIdemponentCallAttempts: 1, // a probe that fails, fails; no silent retry
			NoDefaultUserAgentHeader:  false,
			ReadBufferSize:            4096,
			MaxResponseBodySize:       4096,
		}
	})
}

// Notify tells the prober that the pool changed, so new hosts are probed
// at once rather than at the next reconcile tick.
func (p *Prober) Notify() {
	p.init()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// Run probes until ctx is done. Each host gets its own loop, started when
// it appears in the pool and stopped when it leaves.
func (p *Prober) Run(ctx context.Context) {
	p.init()
	loops := map[*balancer.Host]context.CancelFunc{}
	defer func() {
		for _, cancel := range loops {
			cancel()
		}
	}()
	reconcile := func() {
		present := map[*balancer.Host]bool{}
		for _, h := range p.Pool.Hosts() {
			present[h] = true
			if _, ok := loops[h]; !ok {
				hctx, cancel := context.WithCancel(ctx)
				loops[h] = cancel
				go p.loop(hctx, h)
			}
		}
		for h, cancel := range loops {
			if !present[h] {
				cancel()
				delete(loops, h)
			}
		}
	}
	reconcile()
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.notify:
			reconcile()
		case <-t.C:
			reconcile()
		}
	}
}

// loop probes one host each interval. The first probe runs at once, so a
// newly discovered host can take traffic within one round trip; later ones
// are spread with ±10% jitter so a fleet of edges does not probe in step.
func (p *Prober) loop(ctx context.Context, h *balancer.Host) {
	defer func() {
		if r := recover(); r != nil {
			p.Logger.Error("health check loop panicked; host keeps its last state", "upstream", h.Addr, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	var passes, fails int
	checked := false
	for {
		rtt, err := p.probe(h)
		if p.OnProbe != nil {
			p.OnProbe(h, rtt, err)
		}
		if err == nil {
			passes, fails = passes+1, 0
		} else {
			passes, fails = 0, fails+1
		}
		up := h.Healthy()
		switch {
		case !checked && err == nil:
			// A new host's first pass brings it up at once: it has no
			// history to distrust, and discovery already vouched for it.
			p.flip(h, true, "first check passed", rtt, err)
		case !up && passes >= p.Rise:
			p.flip(h, true, fmt.Sprintf("%d checks passed", passes), rtt, err)
		case up && fails >= p.Fall:
			p.flip(h, false, fmt.Sprintf("%d checks failed", fails), rtt, err)
		}
		checked = true
		jitter := time.Duration(rand.Int64N(int64(p.Interval)/5+1)) - p.Interval/10
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.Interval + jitter):
		}
	}
}

func (p *Prober) flip(h *balancer.Host, up bool, why string, rtt time.Duration, err error) {
	if !h.SetHealthy(up, time.Now()) {
		return
	}
	state := "down"
	if up {
		state = "up"
	}
	attrs := []any{"upstream", h.Addr, "id", h.ID, "state", state, "reason", why, "rtt", rtt.String()}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
		p.Logger.Warn("upstream health changed", attrs...)
	} else {
		p.Logger.Info("upstream health changed", attrs...)
	}
	if p.OnChange != nil {
		p.OnChange(h, up)
	}
}

// probe sends one GET on a fresh connection, as HAProxy's httpchk does: a
// pooled connection would hide an upstream that no longer accepts.
func (p *Prober) probe(h *balancer.Host) (time.Duration, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + h.Addr + p.Path)
	req.Header.SetConnectionClose()
	start := time.Now()
	err := p.client.DoTimeout(req, resp, p.Timeout)
	rtt := time.Since(start)
	if err != nil {
		return rtt, fmt.Errorf("probe %s%s: %w", h.Addr, p.Path, err)
	}
	if code := resp.StatusCode(); code < 200 || code > 299 {
		return rtt, fmt.Errorf("probe %s%s: status %d", h.Addr, p.Path, code)
	}
	return rtt, nil
}
