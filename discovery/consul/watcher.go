// Package consul discovers upstreams in the Consul catalog and registers
// Podium's own services there.
//
// The Watcher is a discovery.Source: it follows
// /v1/health/service/<name>?passing&near=_agent with blocking queries (on
// Consul's RPC backend, not its streaming one) and pushes the whole
// passing set each time it changes. Register puts a service with an HTTP check
// on its /ping into the local agent and returns a handle that drains it
// (MarkCritical) and removes it (Deregister).
//
// Nothing here knows about the balancer or the proxy; cmd/podium connects the
// snapshots to the pool.
package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podium-edge/podium/discovery"
)

// Defaults, one place each. Config and Watcher fields at their zero value
// take these.
const (
	// DefaultAddress is the local agent's HTTP API, as `consul agent -dev`
	// and scripts/consul.sh bind it.
	DefaultAddress = "127.0.0.1:8500"
	// DefaultService is the name origins register under.
	DefaultService = "podium-origin"
	// DefaultWaitTime bounds one blocking query. Consul's own default is 5m;
	// a shorter wait finds a hung (not refused) agent sooner, at the cost of
	// one idle request a minute.
	DefaultWaitTime = time.Minute
	// DefaultRetryMin and DefaultRetryMax bound the exponential backoff after
	// a failed query. The cap keeps recovery after an agent restart within a
	// few seconds while a dead agent sees at most one request per ~4 s per
	// edge.
	DefaultRetryMin = 250 * time.Millisecond
	DefaultRetryMax = 4 * time.Second
	// DefaultMinQueryInterval spaces successive queries. Consul's blocking
	// query docs ask clients to rate limit: a service whose checks flap
	// would otherwise turn every edge into a tight loop against the agent.
	DefaultMinQueryInterval = 50 * time.Millisecond
	// DefaultSettle is how long removals are held back after the watch
	// recovers from errors or the index goes backwards. A restarted agent
	// restores its services with every HTTP check critical until the check
	// first runs (within one check interval, DefaultCheckInterval here), so
	// believing its first answers would empty the edge for that long.
	DefaultSettle = 5 * time.Second
)

// MetaWeight is the service meta key that carries an instance's weight.
const MetaWeight = "weight"

// Meta keys the watcher adds to Target.Meta beside the service's own meta.
// Consul allows only [A-Za-z0-9_-] in meta keys, so these dotted keys can
// never collide with a service's meta.
const (
	MetaNode = "consul.node"
	MetaTags = "consul.tags" // comma-separated, in registration order
)

// Config is the discovery.consul section of the edge config. Its zero value
// watches DefaultService on DefaultAddress.
//
// A Config is a plain value and may be copied.
type Config struct {
	// Address is the agent's HTTP API as host:port, or a URL with an
	// http:// or https:// scheme. Empty means DefaultAddress.
	Address string `yaml:"address"`
	// Token is the ACL token sent with each query. Empty sends none (the
	// agent's default token applies).
	Token string `yaml:"token"`
	// Datacenter to query. Empty means the agent's own.
	Datacenter string `yaml:"datacenter"`
	// Service is the service name to watch. Empty means DefaultService.
	Service string `yaml:"service"`
	// Tag keeps only instances registered with this tag. Empty keeps all.
	Tag string `yaml:"tag"`
	// AllowStale lets any server answer, not only the leader: reads scale
	// and survive a leaderless cluster, at the price of data that may lag
	// by a few Raft rounds (QueryMeta.LastContact).
	AllowStale bool `yaml:"allow_stale"`
}

// Validate reports the first problem in c, naming its key, so the config
// loader can reject a bad file before anything runs.
func (c Config) Validate() error {
	if c.Address == "" {
		return nil
	}
	addr := c.Address
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		if scheme != "http" && scheme != "https" {
			return fmt.Errorf("address %q: scheme must be http or https", c.Address)
		}
		addr = rest
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port such as %s: %w", c.Address, DefaultAddress, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %q: port must be a number in 1..65535", c.Address)
	}
	return nil
}

// NewClient returns a Consul API client for c.Address and c.Token.
func (c Config) NewClient() (*api.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	cfg := api.DefaultNonPooledConfig()
	addr := c.Address
	if addr == "" {
		addr = DefaultAddress
	}
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		cfg.Scheme, addr = scheme, rest
	}
	cfg.Address = addr
	cfg.Token = c.Token
	cfg.Datacenter = c.Datacenter
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul: client for %q: %w", c.Address, err)
	}
	return client, nil
}

// NewWatcher returns a Watcher for c with default timings.
func NewWatcher(c Config, logger *slog.Logger) (*Watcher, error) {
	client, err := c.NewClient()
	if err != nil {
		return nil, err
	}
	return &Watcher{
		Client:     client,
		Service:    c.Service,
		Tag:        c.Tag,
		Datacenter: c.Datacenter,
		Token:      c.Token,
		AllowStale: c.AllowStale,
		Logger:     logger,
	}, nil
}

// Watcher follows the passing instances of one service in the Consul
// catalog. It implements discovery.Source.
//
// Set the fields before Run and do not change them after; Run may then be
// called from one goroutine at a time. A Watcher must not be copied after its
// first Run.
type Watcher struct {
	// Client talks to the agent. Required.
	Client *api.Client
	// Service, Tag, Datacenter, Token and AllowStale are as in Config.
	Service    string
	Tag        string
	Datacenter string
	Token      string
	AllowStale bool
	// WaitTime bounds one blocking query. Zero means DefaultWaitTime.
	WaitTime time.Duration
	// RetryMin and RetryMax bound the backoff after errors. Zero means
	// DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// MinQueryInterval spaces the starts of successive queries. Zero means
	// DefaultMinQueryInterval.
	MinQueryInterval time.Duration
	// Settle is how long, after a recovery from errors or an index reset,
	// the watcher pushes additions at once but holds back removals (see
	// DefaultSettle). Instances that really died meanwhile are caught by the
	// edge's own prober. Zero means DefaultSettle; negative disables it.
	Settle time.Duration
	// Logger receives transitions (errors, recovery, bad weights). Nil means
	// slog.Default().
	Logger *slog.Logger
}

var _ discovery.Source = (*Watcher)(nil)

// Run watches until ctx is done and returns ctx.Err(). It pushes the set
// once when the first query answers (even if empty), then only when the set
// of targets changes. While the agent cannot be reached it pushes nothing, so
// the consumer keeps the last known set; it logs the first failure and the
// recovery, not every retry. After a recovery or an index reset it holds
// back removals for Settle. A panic inside the loop is returned as an error.
//
// Each pushed slice belongs to the consumer; the targets' Meta maps are
// shared with the watcher and must not be modified.
func (w *Watcher) Run(ctx context.Context, push func([]discovery.Target)) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("consul: watcher panicked: %v\n%s", p, debug.Stack())
		}
	}()
	if w.Client == nil {
		return errors.New("consul: watcher has no client: set Watcher.Client or use NewWatcher")
	}
	log := w.Logger
	if log == nil {
		log = slog.Default()
	}
	service := cmp.Or(w.Service, DefaultService)
	log = log.With("service", service)
	wait := cmp.Or(w.WaitTime, DefaultWaitTime)
	retryMin := cmp.Or(w.RetryMin, DefaultRetryMin)
	retryMax := max(cmp.Or(w.RetryMax, DefaultRetryMax), retryMin)
	minInterval := cmp.Or(w.MinQueryInterval, DefaultMinQueryInterval)
	settle := max(cmp.Or(w.Settle, DefaultSettle), 0)

	var (
		index       uint64
		current     []discovery.Target // from the latest answer
		last        []discovery.Target // as last pushed
		pushed      bool
		failures    int
		started     time.Time
		settleUntil time.Time
		holding     bool
	)
	for {
		// Rate limit successive queries (Consul blocking query docs,
		// "Rate limit"): an answer that comes back at once is followed by
		// a short pause, a long poll is not delayed at all.
		if d := minInterval - time.Since(started); !started.IsZero() && d > 0 {
			if err := sleep(ctx, d); err != nil {
				return err
			}
		}
		started = time.Now()

		q := &api.QueryOptions{
			Datacenter: w.Datacenter,
			Token:      w.Token,
			AllowStale: w.AllowStale,
			WaitIndex:  index,
			WaitTime:   wait,
			// near=_agent keeps the query on Consul's RPC blocking-query
			// backend. An agent with use_streaming_backend (the default
			// since 1.10) answers blocking health queries from a streaming
			// view unless near is set (1.15, rpcclient/health). When that
			// view's subscription fails, Consul retries it with a backoff
			// that grows to 60 s and meanwhile, after at most one error,
			// answers from the stale view, so the watcher cannot tell: at a
			// load of 26 on two cores an origin reached the watcher 19 s
			// after its check passed while the agent logged failed
			// subscriptions. On the RPC backend a failure reaches us as an
			// error, and our backoff (at most RetryMax) applies. near's
			// sorting by round-trip time costs nothing (targets sorts by
			// ID), and one watch per edge is not the many-watcher load that
			// streaming exists for.
			Near: "_agent",
		}
		if failures > 0 {
			// First query after errors: read at once instead of blocking.
			// If the agent came back with less state (a restart, a restored
			// snapshot), its index is below ours and a blocking query would
			// wait for the next change to this service, up to WaitTime,
			// while we hold a set that may be stale.
			q.WaitIndex = 0
		}
		if d := time.Until(settleUntil); d > 0 && d < wait {
			// Wake when the settle period ends to apply held removals.
			q.WaitTime = d + time.Millisecond
		}
		// Consul adds up to WaitTime/16 of jitter to a blocking query; the
		// margin beyond that catches an agent that accepted the connection
		// and then hung, which the default HTTP client would wait on forever.
		qctx, cancel := context.WithTimeout(ctx, wait+wait/16+5*time.Second)
		entries, meta, err := w.Client.Health().Service(service, w.Tag, true, q.WithContext(qctx))
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failures++
			if failures == 1 {
				log.Warn("consul watch failing; keeping the last known set", "error", err)
			}
			if err := sleep(ctx, backoff(failures, retryMin, retryMax)); err != nil {
				return err
			}
			continue
		}
		if failures > 0 {
			log.Info("consul watch recovered", "failures", failures)
			failures = 0
			settleUntil = time.Now().Add(settle)
		}

		prev := index
		index = nextIndex(prev, meta.LastIndex)
		if index == 0 {
			// The index went backwards: the agent restarted, or the servers
			// restored a snapshot. The answer is still current; the next
			// query starts afresh without blocking.
			log.Info("consul index went backwards; resetting", "was", prev, "got", meta.LastIndex)
			settleUntil = time.Now().Add(settle)
		}
		if !pushed || meta.LastIndex != prev {
			// Otherwise the wait expired with nothing changed.
			current = targets(entries, log)
		}
		next := current
		if pushed && time.Now().Before(settleUntil) {
			next = union(last, current)
			if !holding && len(next) > len(current) {
				log.Info("consul instances missing right after recovery; holding them until the agent's checks settle",
					"missing", len(next)-len(current), "settle", settle)
				holding = true
			}
		} else {
			holding = false
		}
		if pushed && equalTargets(next, last) {
			continue // e.g. a check's output changed, not the set
		}
		last = next
		pushed = true
		push(slices.Clone(next))
	}
}

// union is cur plus the targets of prev whose IDs cur lacks, sorted by ID.
func union(prev, cur []discovery.Target) []discovery.Target {
	out := slices.Clone(cur)
	for _, p := range prev {
		if !slices.ContainsFunc(cur, func(c discovery.Target) bool { return c.ID == p.ID }) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b discovery.Target) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// nextIndex is the WaitIndex for the next blocking query, given the one just
// sent and the X-Consul-Index that came back. It follows Consul's blocking
// query docs: an index that goes backwards resets to 0 (a full,
// non-blocking read), and an index of 0 — a Consul bug that would turn
// blocking into a busy loop — becomes 1.
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	default:
		return got
	}
}

// backoff is the pause after the n-th consecutive failure (n >= 1):
// exponential from lo, capped at hi, with "equal jitter" — half fixed, half
// random — so edges that lost the same agent do not retry in lockstep yet
// never retry with no pause at all.
func backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	half := d / 2
	return half + rand.N(half+1)
}

// targets maps passing entries to Targets sorted by ID, so that two answers
// with the same instances compare equal whatever order Consul used.
func targets(entries []*api.ServiceEntry, log *slog.Logger) []discovery.Target {
	out := make([]discovery.Target, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		addr := e.Service.Address
		if addr == "" && e.Node != nil {
			// Consul's documented fallback: a service registered without
			// an address lives at its node's address.
			addr = e.Node.Address
		}
		if addr == "" || e.Service.Port == 0 {
			log.Warn("consul instance has no address or port; skipped", "id", e.Service.ID)
			continue
		}
		meta := make(map[string]string, len(e.Service.Meta)+2)
		maps.Copy(meta, e.Service.Meta)
		if e.Node != nil {
			meta[MetaNode] = e.Node.Node
		}
		if len(e.Service.Tags) > 0 {
			meta[MetaTags] = strings.Join(e.Service.Tags, ",")
		}
		out = append(out, discovery.Target{
			ID:     e.Service.ID,
			Addr:   net.JoinHostPort(addr, strconv.Itoa(e.Service.Port)),
			Weight: weight(e.Service.ID, e.Service.Meta[MetaWeight], log),
			Meta:   meta,
		})
	}
	slices.SortFunc(out, func(a, b discovery.Target) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// weight parses the "weight" meta value. Missing means 1. A value that is
// not a positive integer also means 1, logged, so one mistyped registration
// cannot take an instance out of rotation or starve the others.
func weight(id, v string, log *slog.Logger) int {
	if v == "" {
		return 1
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 {
		log.Warn("consul instance has a bad weight meta; using 1", "id", id, "weight", v)
		return 1
	}
	return n
}

func equalTargets(a, b []discovery.Target) bool {
	return slices.EqualFunc(a, b, func(x, y discovery.Target) bool {
		return x.ID == y.ID && x.Addr == y.Addr && x.Weight == y.Weight && maps.Equal(x.Meta, y.Meta)
	})
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
