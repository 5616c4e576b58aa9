// Package healthcheck is the active prober: GET /ping on every upstream each
// interval, with HAProxy's rise/fall thresholds, updating the health that
// the balancer reads.
package healthcheck

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/config"
	"github.com/valyala/fasthttp"
)

// DefaultDownLogInterval is how often the prober repeats, while a host
// stays down, why it is down. Once a minute keeps the reason in any log
// window an operator looks at without one line per probe per host.
const DefaultDownLogInterval = time.Minute

// Limits on what a probe reads. A probe is judged by its status alone, as
// HAProxy's httpchk is; these only bound the cost of a large answer.
const (
	// probeHeaderBytes is the read buffer, which caps the response
	// headers: the edge's own default limit, so headers a client of the
	// edge may send do not fail a probe.
	probeHeaderBytes = config.DefaultMaxHeaderBytes
	// probeDrainBytes is how much body a probe reads before it drops the
	// connection. A small body read to its end lets the probe's
	// connection close with a FIN rather than a reset the upstream may
	// log as an error; a larger one is cut there, never buffered.
	probeDrainBytes = 64 << 10
)

// Prober probes every host of a pool. Configure the exported fields, then
// call Run once. Zero values of Path, Interval, Timeout, Rise and Fall mean
// the edge config's defaults, config.DefaultHealthPath, DefaultHealthInterval,
// DefaultHealthTimeout, DefaultHealthRise and DefaultHealthFall, so a Prober
// built by hand probes as the edge does; zero DownLogInterval means
// DefaultDownLogInterval.
//
// Each probe's result is published on its host (balancer.Host.LastProbe),
// where the admin listener shows it. The log says why a host is down: when
// it goes down, when a new host fails its first probe, and then at most
// once per DownLogInterval while it stays down.
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

	// DownLogInterval is the least time between two log lines saying that
	// a host is still down, and why.
	DownLogInterval time.Duration

	// OnProbe, if set, is called after every probe with its round-trip
	// time and its error (nil when it passed).
	OnProbe func(h *balancer.Host, rtt time.Duration, err error)
	// OnChange, if set, is called once per up/down transition.
	OnChange func(h *balancer.Host, up bool)

	notify chan struct{}
	once   sync.Once
	client *fasthttp.Client
	now    func() time.Time // the clock of the down-log schedule and the probes' times; tests replace it
}

func (p *Prober) init() {
	p.once.Do(func() {
		p.notify = make(chan struct{}, 1)
		if p.Path == "" {
			p.Path = config.DefaultHealthPath
		}
		if p.Interval <= 0 {
			p.Interval = config.DefaultHealthInterval
		}
		if p.Timeout <= 0 {
			p.Timeout = config.DefaultHealthTimeout
		}
		if p.Rise <= 0 {
			p.Rise = config.DefaultHealthRise
		}
		if p.Fall <= 0 {
			p.Fall = config.DefaultHealthFall
		}
		if p.DownLogInterval <= 0 {
			p.DownLogInterval = DefaultDownLogInterval
		}
		if p.Logger == nil {
			p.Logger = slog.Default()
		}
		if p.now == nil {
			p.now = time.Now
		}
		p.client = &fasthttp.Client{
			Name:                      "podium-healthcheck",
			MaxIdemponentCallAttempts: 1, // a probe that fails, fails; no silent retry
			NoDefaultUserAgentHeader:  false,
			ReadBufferSize:            probeHeaderBytes,
			// Streamed, so a healthy upstream whose /ping answers with a
			// big body is not marked down by a body limit: a probe reads
			// at most probeDrainBytes of it, under the probe's deadline,
			// whatever its length or encoding.
			StreamResponseBody: true,
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
	// downSince is when this loop first said h was down (zero while it is
	// up), lastDownLog when it last said so.
	var downSince, lastDownLog time.Time
	for {
		start := p.now()
		rtt, err := p.probe(h)
		if err == nil {
			passes, fails = passes+1, 0
		} else {
			passes, fails = 0, fails+1
		}
		h.SetProbe(balancer.Probe{At: start, RTT: rtt, Err: err, Passes: passes, Fails: fails})
		if p.OnProbe != nil {
			p.OnProbe(h, rtt, err)
		}
		up := h.Healthy()
		now := p.now()
		switch {
		case !checked && err == nil:
			// A new host's first pass brings it up at once: it has no
			// history to distrust, and discovery already vouched for it.
			p.flip(h, true, "first check passed", rtt, err)
		case !checked && !up:
			// A new host starts down, so failing its first probe changes
			// nothing to flip; say so, or an operator sees only "no
			// healthy instance" and no reason anywhere.
			p.Logger.Warn("upstream down", "upstream", h.Addr, "id", h.ID, "state", "down",
				"reason", "first check failed", "rtt", rtt.String(), "error", err.Error())
			downSince, lastDownLog = now, now
		case !up && passes >= p.Rise:
			if p.flip(h, true, fmt.Sprintf("%d checks passed", passes), rtt, err) {
				downSince, lastDownLog = time.Time{}, time.Time{}
			}
		case up && fails >= p.Fall:
			if p.flip(h, false, fmt.Sprintf("%d checks failed", fails), rtt, err) {
				downSince, lastDownLog = now, now
			}
		case !up && err != nil && now.Sub(lastDownLog) >= p.DownLogInterval:
			attrs := []any{"upstream", h.Addr, "id", h.ID, "state", "down",
				"consecutive_failures", fails, "rtt", rtt.String(), "error", err.Error()}
			if !downSince.IsZero() {
				attrs = append(attrs, "down_for", now.Sub(downSince).Round(time.Second).String())
			} else {
				downSince = now // flipped by another loop: a replaced prober's last probe
			}
			p.Logger.Warn("upstream still down", attrs...)
			lastDownLog = now
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

// flip sets h's health and, if that changed it, logs the transition and
// reports true.
func (p *Prober) flip(h *balancer.Host, up bool, why string, rtt time.Duration, err error) bool {
	if !h.SetHealthy(up, p.now()) {
		return false
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
	return true
}

// probe sends one GET on a fresh connection, as HAProxy's httpchk does: a
// pooled connection would hide an upstream that no longer accepts. It is
// judged by the status alone (2xx passes); rtt is the time to the status
// line. The body is read up to probeDrainBytes and dropped, all within the
// probe's timeout.
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
	// The connection's read deadline is still the probe's, so neither an
	// endless nor a trickling body holds the probe past its timeout; an
	// error here (that timeout, a truncated body) does not change the
	// verdict, which the status has already given.
	if body := resp.BodyStream(); body != nil {
		io.Copy(io.Discard, io.LimitReader(body, probeDrainBytes))
	}
	resp.CloseBodyStream()
	if code := resp.StatusCode(); code < 200 || code > 299 {
		return rtt, fmt.Errorf("probe %s%s: status %d", h.Addr, p.Path, code)
	}
	return rtt, nil
}
