package waitroom

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// A room on many edges (issue 18, "Many edges"), coordinated through
// Consul's KV store; Consul does the consensus, this file only follows
// its rules. Under Prefix/<room>/<epoch>/ (and <opens_at ms>/ for a room
// with an opening: a new opening is a new queue, see historyKey):
//
//   - arrivals/<edge>: each edge's waiting counts (ms -> count, from the
//     watermark on) and its clock, written every PublishEvery without a
//     session, so a restarted edge's key, and the count of the visitors
//     it had placed, survives it (see Publish);
//   - leader: a lock (api.Lock) held by one edge's session;
//   - history: the shared admission history, written by the leader only,
//     in one transaction that checks it still holds the lock and that
//     nobody wrote the history since it read it (check-and-set).
//
// The leader, every TickEvery, lists the arrivals, merges them and moves
// the watermark with the same advance as Gate.Tick, at the room's rate.
// Every edge follows the history with a blocking query and adopts it, so
// Check, Ahead and admission answer alike on every edge. Places are
// stamped by each edge's clock: the watermark stays SettleMs behind the
// leader's, which must cover a place's way to the leader (a publish
// interval, a leader tick, the round trips) and the clocks' skew, or a
// late-counted place is admitted out of order. NewCoordinator refuses a
// settle time shorter than PublishEvery + TickEvery + MinSkewMargin.

// Defaults of CoordinatorConfig's zero values.
const (
	DefaultConsulPrefix = "podium/waitroom"
	// DefaultPublishEvery: an arrival reaches the leader within a quarter
	// second, well inside DefaultSettleMs.
	DefaultPublishEvery = 250 * time.Millisecond
	// DefaultCoordTick: the leader writes the history five times a second
	// (a Raft write each), keeping a 500/s room to bursts of 100.
	DefaultCoordTick = 200 * time.Millisecond
	// DefaultSessionTTL is Consul's minimum. A leader that dies without
	// closing holds the lock until Consul invalidates its session (up to
	// twice the TTL); the edges tick alone after StaleAfter meanwhile.
	DefaultSessionTTL = 10 * time.Second
	// DefaultStaleAfter: an edge that has heard no new checkpoint for this
	// long ticks alone at its share of the rate. Several leader ticks, so
	// a slow write does not set every edge ticking beside a live leader.
	DefaultStaleAfter = 3 * time.Second
	// MinSkewMargin is what the settle time must leave for the clocks'
	// skew and the round trips beyond PublishEvery + TickEvery.
	MinSkewMargin = 500 * time.Millisecond
	// maxCatchUpMs bounds the budget a new leader carries over from the
	// last checkpoint: a handover keeps the rate without a burst of more
	// than a second's admissions.
	maxCatchUpMs = 1000
	// DefaultAloneFor: how long an edge that hears no leader admits alone
	// before it stops admitting; and how long the leader keeps the share
	// of an edge that stopped publishing (it may be admitting alone).
	// Long enough to ride out an agent's restart; a crashed edge costs the
	// others its share of the rate for this long.
	DefaultAloneFor = 5 * time.Minute
	// retryEvery paces the loops' retries after a failed Consul call.
	retryEvery = 500 * time.Millisecond
)

// CoordinatorConfig configures a Coordinator. It is a plain value.
type CoordinatorConfig struct {
	// Client talks to the Consul agent. Required.
	Client *api.Client
	// EdgeID names this edge's arrivals key; it must be unique among the
	// edges and the same across the edge's restarts (its host and listen
	// address). Required.
	EdgeID string
	// Prefix is the KV folder of every room; zero means
	// DefaultConsulPrefix.
	Prefix string
	// PublishEvery, TickEvery: zero means DefaultPublishEvery,
	// DefaultCoordTick; negative runs no loop, and the caller calls
	// Publish and Tick (tests, on a fake clock).
	PublishEvery, TickEvery time.Duration
	// SessionTTL of the leader's session; zero means DefaultSessionTTL.
	SessionTTL time.Duration
	// StaleAfter; zero means DefaultStaleAfter.
	StaleAfter time.Duration
	// AloneFor; zero means DefaultAloneFor.
	AloneFor time.Duration
	// Log hears of state changes, once each. Nil: slog.Default().
	Log *slog.Logger
}

// Coordinator runs one room's gate as one of many edges through Consul
// (see above). Make it with NewCoordinator, run it with Run. It is safe
// for concurrent use; do not copy it.
type Coordinator struct {
	cfg        CoordinatorConfig
	gate       *Gate
	log        *slog.Logger
	arrivals   string // KV folder of every edge's counts, ending in "/"
	own        string // this edge's key in it
	leaderKey  string
	historyKey string

	up      atomic.Bool  // following a live leader's history
	stopped atomic.Bool  // alone for longer than AloneFor: admitting nobody
	held    atomic.Bool  // the room is paused or closed (SetHeld)
	edges   atomic.Int32 // edges seen publishing lately, this one included
	session atomic.Pointer[string]

	mu         sync.Mutex // guards what follows
	lastTotal  float64    // the shared history's passed count last adopted
	haveTotal  bool
	lastW      Place            // the shared watermark last adopted
	freshMs    int64            // when (this edge's clock) the shared watermark last moved
	alone      bool             // ticking alone (not up)
	listed     bool             // Publish has read the arrivals once
	inherited  map[int64]uint32 // while held: the counts this edge's key held at start (Publish)
	changed    chan struct{}    // closed and replaced at each change (Changes)
	leadLoaded bool             // lead* hold the history as this leader last read or wrote it
	leadHist   []Checkpoint
	leadIndex  uint64
	leadPassed float64
	leadTick   int64
	leadCarry  float64
	leadBeat   int64 // when this leader last wrote the history
}

// NewCoordinator makes the coordinator of gate's room. The gate's settle
// time must cover the way of a count to the leader (see above).
func NewCoordinator(cfg CoordinatorConfig, gate *Gate) (*Coordinator, error) {
	if cfg.Client == nil || cfg.EdgeID == "" || gate == nil {
		return nil, errors.New("waitroom: a coordinator needs a Consul client, an edge ID and a gate")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultConsulPrefix
	}
	if cfg.PublishEvery == 0 {
		cfg.PublishEvery = DefaultPublishEvery
	}
	if cfg.TickEvery == 0 {
		cfg.TickEvery = DefaultCoordTick
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	if cfg.AloneFor == 0 {
		cfg.AloneFor = DefaultAloneFor
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.StaleAfter <= historyEveryMs*time.Millisecond {
		return nil, fmt.Errorf("waitroom: room %s: stale after %v: want more than %v, how often a leader writes a watermark that passed nobody", gate.cfg.Room, cfg.StaleAfter, historyEveryMs*time.Millisecond)
	}
	need := max(cfg.PublishEvery, 0) + max(cfg.TickEvery, 0) + MinSkewMargin
	if settle := time.Duration(gate.cfg.SettleMs) * time.Millisecond; settle < need {
		return nil, fmt.Errorf("waitroom: room %s: settle time %v is shorter than publish %v + leader tick %v + %v for skew and round trips: places would be admitted out of order", gate.cfg.Room, settle, cfg.PublishEvery, cfg.TickEvery, MinSkewMargin)
	}
	base := strings.TrimSuffix(cfg.Prefix, "/") + "/" + gate.key + "/"
	c := &Coordinator{cfg: cfg, gate: gate, log: cfg.Log.With("room", gate.cfg.Room),
		arrivals: base + "arrivals/", leaderKey: base + "leader", historyKey: base + "history",
		changed: make(chan struct{}), freshMs: gate.clock.NowMs()}
	c.own = c.arrivals + url.PathEscape(cfg.EdgeID)
	c.edges.Store(1)
	c.up.Store(true)
	return c, nil
}

// Up reports whether the edge follows a live leader's history; false
// while it ticks alone (Consul unreachable, or no leader heard for
// StaleAfter).
func (c *Coordinator) Up() bool { return c.up.Load() }

// Leader reports whether this edge leads the room.
func (c *Coordinator) Leader() bool { return c.session.Load() != nil }

// Edges is how many edges were seen publishing lately, this one included.
func (c *Coordinator) Edges() int { return int(c.edges.Load()) }

// Run runs the coordinator until ctx ends: the election, the history's
// watch, and unless configured negative the publish and tick loops. It
// returns when they have stopped, the lock released.
func (c *Coordinator) Run(ctx context.Context) {
	var wg sync.WaitGroup
	loop := func(name string, f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					c.log.Error("waiting room coordinator panicked; the room no longer follows the other edges", "loop", name, "panic", fmt.Sprint(r))
				}
			}()
			f(ctx)
		}()
	}
	loop("election", c.elect)
	loop("watch", c.watch)
	every := func(d time.Duration, f func(context.Context) error) func(context.Context) {
		return func(ctx context.Context) {
			t := time.NewTicker(d)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_ = f(ctx) // failures are logged once, on the transition
				}
			}
		}
	}
	if c.cfg.PublishEvery > 0 {
		loop("publish", every(c.cfg.PublishEvery, c.Publish))
	}
	if c.cfg.TickEvery > 0 {
		loop("tick", every(c.cfg.TickEvery, c.Tick))
	}
	wg.Wait()
	// Closed: say so (stamp 0), keeping the counts, so the leader gives
	// this edge's share of the rate back at once rather than after
	// AloneFor. A restarted edge stamps its key again.
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v := appendArrivals(nil, 0, c.ownCounts(c.gate.Watermark().Ms, nil))
	if _, err := c.cfg.Client.KV().Put(&api.KVPair{Key: c.own, Value: v}, (&api.WriteOptions{}).WithContext(cctx)); err != nil {
		c.log.Debug("waiting room: could not mark this edge's arrivals closed", "error", err.Error())
	}
}

// sleep waits d or until ctx ends, reporting whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Publish reads every edge's counts and writes this edge's: the others'
// feed Ahead and Queued, and their number the share of the rate when
// ticking alone.
//
// A restarted edge's gate has lost the counts of the visitors it had
// placed: its key, which outlives it, still holds them. While the gate
// is held (GateConfig.HoldUntilMs: until their pages come back and Join
// counts them again) the edge publishes, for each millisecond, the
// larger of that inherited count and its own, so its visitors are
// neither lost (which would let the watermark pass them for nothing,
// over the rate) nor, once they re-join, counted twice.
func (c *Coordinator) Publish(ctx context.Context) error {
	now := c.gate.clock.NowMs()
	kv := c.cfg.Client.KV()
	pairs, _, err := kv.List(c.arrivals, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return c.failed("reading the edges' arrivals", err)
	}
	held := c.gate.holding()
	from := c.gate.Watermark().Ms
	c.mu.Lock()
	inherited, first := c.inherited, !c.listed
	c.mu.Unlock()
	remote := map[int64]uint32{}
	live := 1 // this edge, whether or not its key is there yet
	for _, p := range pairs {
		if p.Key == c.own {
			if held && first {
				inherited = map[int64]uint32{}
				if _, err := parseArrivals(p.Value, from, inherited); err != nil {
					c.log.Warn("waiting room: ignored this edge's earlier arrivals, which do not parse", "key", p.Key, "error", err.Error())
				}
			}
			continue
		}
		stamp, err := parseArrivals(p.Value, from, remote)
		if err != nil {
			c.log.Warn("waiting room: ignored an edge's arrivals that do not parse", "key", p.Key, "error", err.Error())
			continue
		}
		if c.edgeState(now, stamp) != edgeGone {
			live++
		}
	}
	if !held {
		inherited = nil
	}
	c.mu.Lock()
	c.inherited, c.listed = inherited, true
	c.mu.Unlock()
	c.edges.Store(int32(live))
	counts := c.ownCounts(from, remote)
	c.gate.setRemote(remote)
	if _, err := kv.Put(&api.KVPair{Key: c.own, Value: appendArrivals(nil, now, counts)}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return c.failed("publishing this edge's arrivals", err)
	}
	return nil
}

// An edge's state as its arrivals stamp shows it.
const (
	edgeLive  = iota // published within StaleAfter
	edgeAlone        // silent for longer: presumed to admit alone, for AloneFor
	edgeGone         // closed (stamp 0), or silent for StaleAfter + AloneFor
)

// edgeState reads an edge's stamp (its clock, Unix ms; 0 once it closed)
// at now (this edge's clock: the skew is far below StaleAfter).
func (c *Coordinator) edgeState(now, stamp int64) int {
	switch age := now - stamp; {
	case stamp == 0:
		return edgeGone
	case age < c.cfg.StaleAfter.Milliseconds():
		return edgeLive
	case age < (c.cfg.StaleAfter + c.cfg.AloneFor).Milliseconds():
		return edgeAlone
	}
	return edgeGone
}

// ownCounts are the counts this edge publishes: its gate's from the
// watermark on and, while held, what its key held at start, the larger
// of the two each millisecond (see Publish). With remote set, the
// inherited visitors not back yet are added to it, for Ahead.
func (c *Coordinator) ownCounts(from int64, remote map[int64]uint32) map[int64]uint32 {
	c.mu.Lock()
	inherited := c.inherited
	c.mu.Unlock()
	counts := c.gate.pending()
	for ms, n := range inherited {
		if ms >= from && n > counts[ms] {
			if remote != nil {
				remote[ms] += n - counts[ms]
			}
			counts[ms] = n
		}
	}
	return counts
}

// failed logs a failed Consul call and returns it wrapped. Whether the
// edge then ticks alone is Tick's to decide (the history's freshness).
func (c *Coordinator) failed(what string, err error) error {
	c.log.Debug("waiting room: consul call failed", "what", what, "error", err.Error())
	return fmt.Errorf("waitroom: room %s: %s: %w", c.gate.cfg.Room, what, err)
}

// Tick is the coordinator's beat: the leader moves the shared watermark;
// an edge that has heard no new checkpoint for StaleAfter ticks its own
// gate at 1/Edges of the rate, which keeps the total within the rate
// while every edge does so (and admits nothing twice: its history is
// merged with the leader's when the leader is heard again).
func (c *Coordinator) Tick(ctx context.Context) error {
	if sid := c.session.Load(); sid != nil {
		err := c.leaderTick(ctx, *sid)
		if err == nil {
			return nil
		}
		c.log.Debug("waiting room: leader tick failed", "error", err.Error())
	}
	now := c.gate.clock.NowMs()
	c.mu.Lock()
	silent := now - c.freshMs
	stale := silent >= c.cfg.StaleAfter.Milliseconds()
	startAlone := stale && !c.alone
	c.alone = stale
	c.mu.Unlock()
	c.setUp(!stale)
	if !stale {
		return nil
	}
	if startAlone {
		c.gate.restartTicking()
	}
	if silent >= (c.cfg.StaleAfter + c.cfg.AloneFor).Milliseconds() {
		// By now the leader counts this edge gone and gives its share to
		// the others: admitting more would exceed the rate.
		if c.stopped.CompareAndSwap(false, true) {
			c.log.Error("waiting room: no leader heard for too long; this edge admits nobody until it hears one", "alone_for", c.cfg.AloneFor.String())
		}
		return nil
	}
	c.stopped.Store(false)
	if c.held.Load() {
		c.gate.Hold(now)
		return nil
	}
	return c.gate.tick(1 / float64(c.Edges()))
}

// setUp records whether the edge follows a live leader, logging the
// change once.
func (c *Coordinator) setUp(up bool) {
	if c.up.CompareAndSwap(!up, up) {
		if up {
			c.log.Info("waiting room: following the room's leader again", "edges", c.Edges())
		} else {
			c.log.Warn("waiting room: no new checkpoint from the room's leader; admitting alone at this edge's share of the rate", "edges", c.Edges(), "stale_after", c.cfg.StaleAfter.String())
		}
	}
}

// leaderTick moves the shared watermark: merge every edge's counts,
// advance, and write the history if this edge still holds the lock and
// nobody wrote it since. sid is the session that holds the lock.
func (c *Coordinator) leaderTick(ctx context.Context, sid string) error {
	kv := c.cfg.Client.KV()
	qo := (&api.QueryOptions{}).WithContext(ctx)
	c.mu.Lock()
	loaded := c.leadLoaded
	c.mu.Unlock()
	if !loaded {
		pair, _, err := kv.Get(c.historyKey, qo)
		if err != nil {
			return c.failed("reading the history", err)
		}
		var h []Checkpoint
		var passed float64
		var index uint64
		if pair != nil {
			if passed, h, err = parseHistory(pair.Value); err != nil {
				return c.failed("reading the history", err)
			}
			index = pair.ModifyIndex
		}
		now := c.gate.clock.NowMs()
		c.mu.Lock()
		c.leadLoaded, c.leadHist, c.leadIndex, c.leadPassed, c.leadCarry = true, h, index, passed, 0
		// A new leader goes on from the last checkpoint, carrying over
		// at most a second: the rate holds across a handover, without a
		// burst after a long one. The first leader of a room starts a
		// second back, as if it had led before, so that its first tick
		// already moves the watermark.
		c.leadTick = now - maxCatchUpMs
		if len(h) > 0 {
			c.leadTick = min(now, max(h[len(h)-1].Ms, now-maxCatchUpMs))
		}
		c.mu.Unlock()
	}
	pairs, _, err := kv.List(c.arrivals, qo)
	if err != nil {
		return c.failed("reading the edges' arrivals", err)
	}
	now := c.gate.clock.NowMs()
	c.mu.Lock()
	h, index, passed, last, carry := c.leadHist, c.leadIndex, c.leadPassed, c.leadTick, c.leadCarry
	c.mu.Unlock()
	w := Place{Ms: c.gate.cfg.OpensAtMs}
	if len(h) > 0 {
		w = h[len(h)-1].W
	}
	merged := map[int64]uint32{}
	live, alone := 1, 0 // this edge leads: it is live, whatever its key says
	for _, p := range pairs {
		stamp, err := parseArrivals(p.Value, w.Ms, merged)
		if err != nil {
			c.log.Warn("waiting room: ignored an edge's arrivals that do not parse", "key", p.Key, "error", err.Error())
			continue
		}
		if p.Key == c.own {
			continue
		}
		switch c.edgeState(now, stamp) {
		case edgeLive:
			live++
		case edgeAlone:
			alone++
		}
	}
	dt := now - last
	if dt <= 0 {
		return nil
	}
	if c.held.Load() {
		// Paused or closed: the time held earns no budget.
		c.mu.Lock()
		c.leadTick, c.leadCarry = now, 0
		c.mu.Unlock()
		return nil
	}
	// An edge gone silent may be cut off from Consul and admitting its
	// share alone (Tick): the leader keeps that share back, so the total
	// stays within the rate.
	rate := c.gate.Rate() * float64(live) / float64(live+alone)
	budget := carry + rate*float64(dt)/1000
	if free := c.gate.freeSlots(); !math.IsInf(free, 1) {
		// max_active (Gate.SetFree): the leader knows how full its own
		// edge is, not the others; it takes them to be as full, the
		// visitors being spread evenly over the edges by what is in
		// front of them. An edge fuller than that still refuses an
		// admission past its max_active when it is claimed.
		budget = min(budget, free*float64(live))
	}
	nw, left, moved, _ := advance(countsOf(merged), w, budget, now-c.gate.cfg.SettleMs)
	// As a gate does (Gate.record): a watermark that passed nobody is
	// written once every historyEveryMs, not every tick; the next tick
	// walks the same empty milliseconds again, for nothing. A watermark
	// that cannot move (max_active full, or the opening not yet come)
	// is written again unchanged as often, a heartbeat: the followers
	// count the leader live while its history is written (heard), and
	// would otherwise admit alone after StaleAfter.
	write := nw != w && (moved > 0 || len(h) == 0 || now-h[len(h)-1].Ms >= historyEveryMs)
	c.mu.Lock()
	beat := !write && now-c.leadBeat >= historyEveryMs
	c.mu.Unlock()
	if !write && !beat {
		c.mu.Lock()
		c.leadTick, c.leadCarry = now, left
		c.mu.Unlock()
		return nil
	}
	nh, total := h, passed
	if write {
		nh = trimHistory(append(h[:len(h):len(h)], Checkpoint{Ms: now, W: nw}), now-c.gate.historyKeepMs())
		total += moved
	} else {
		moved = 0
	}
	ok, resp, _, err := kv.Txn(api.KVTxnOps{
		{Verb: api.KVCheckSession, Key: c.leaderKey, Session: sid},
		{Verb: api.KVCAS, Key: c.historyKey, Value: appendHistoryAt(nil, now, total, nh), Index: index},
	}, qo)
	if err != nil {
		return c.failed("writing the history", err)
	}
	if !ok {
		// The lock was lost, or the history written by another leader:
		// read it again next tick.
		c.mu.Lock()
		c.leadLoaded = false
		c.mu.Unlock()
		var why []string
		for _, e := range resp.Errors {
			why = append(why, e.What)
		}
		return fmt.Errorf("waitroom: room %s: history write refused: %s", c.gate.cfg.Room, strings.Join(why, "; "))
	}
	c.gate.spendFree(moved / float64(live))
	c.mu.Lock()
	c.leadHist, c.leadPassed, c.leadTick, c.leadCarry, c.leadBeat = nh, total, now, left, now
	if len(resp.Results) == 2 && resp.Results[1] != nil {
		c.leadIndex = resp.Results[1].ModifyIndex
	} else {
		c.leadLoaded = false
	}
	c.mu.Unlock()
	c.adoptShared(total, nh)
	c.heard()
	return nil
}

// heard records that the leader wrote the history just now, whether or
// not its watermark moved: the edge follows a live leader.
func (c *Coordinator) heard() {
	c.mu.Lock()
	c.freshMs = c.gate.clock.NowMs()
	c.alone = false
	c.mu.Unlock()
	c.setUp(true)
}

// adoptShared hands the gate a shared history, once per new watermark.
func (c *Coordinator) adoptShared(total float64, h []Checkpoint) {
	if len(h) == 0 {
		return
	}
	c.mu.Lock()
	w := h[len(h)-1].W
	if !c.lastW.Before(w) && c.haveTotal {
		c.mu.Unlock()
		return // nothing new: an older or the same history
	}
	delta := 0.0
	if c.haveTotal {
		delta = total - c.lastTotal
	}
	c.lastTotal, c.haveTotal, c.lastW = total, true, w
	c.freshMs = c.gate.clock.NowMs()
	c.alone = false
	c.mu.Unlock()
	c.gate.adopt(h, delta)
	c.setUp(true)
	c.signal()
}

// Changes returns a channel closed at the next change: a new shared
// history adopted, or leadership taken or lost.
func (c *Coordinator) Changes() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *Coordinator) signal() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.changed)
	c.changed = make(chan struct{})
}

// watch follows the shared history with blocking queries.
func (c *Coordinator) watch(ctx context.Context) {
	first := true
	c.watchKey(ctx, c.historyKey, "history", time.Minute, func(pair *api.KVPair) {
		wasFirst := first
		first = false
		total, h, err := parseHistory(pair.Value)
		if err != nil {
			c.log.Warn("waiting room: ignored a shared history that does not parse", "key", c.historyKey, "error", err.Error())
			return
		}
		c.adoptShared(total, h)
		if !wasFirst {
			// A write, if only the leader's heartbeat: the leader was
			// heard (watchKey calls once per write, and once at start).
			c.heard()
		}
	})
}

// watchKey calls onPair with key's pair each time it is written, until
// ctx ends, following Consul's blocking-query rules; errors are retried
// every retryEvery. A blocking query returns after wait even when nothing
// changed, and the key is read again then: a write whose wake-up was
// missed is seen within wait. what names the key in the debug log.
func (c *Coordinator) watchKey(ctx context.Context, key, what string, wait time.Duration, onPair func(*api.KVPair)) {
	kv := c.cfg.Client.KV()
	var index, seen uint64
	for ctx.Err() == nil {
		pair, meta, err := kv.Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				c.log.Debug("waiting room: watching the shared "+what+" failed", "error", err.Error())
				sleep(ctx, retryEvery)
			}
			continue
		}
		// An index that went backwards (a restored snapshot) starts over;
		// never wait on 0.
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		if pair == nil || pair.ModifyIndex == seen {
			continue
		}
		seen = pair.ModifyIndex
		onPair(pair)
	}
}

// elect holds the room's leader lock whenever it can: a session (TTL,
// released on invalidation, with the shortest lock delay, since the
// history's writes check the session themselves), api.Lock, lead until
// the lock is lost, then a new session.
func (c *Coordinator) elect(ctx context.Context) {
	ss := c.cfg.Client.Session()
	wo := (&api.WriteOptions{}).WithContext(ctx)
	for ctx.Err() == nil {
		sid, _, err := ss.Create(&api.SessionEntry{
			Name:      "podium waiting room " + c.gate.cfg.Room + " " + c.cfg.EdgeID,
			TTL:       c.cfg.SessionTTL.String(),
			LockDelay: time.Millisecond,
			Behavior:  api.SessionBehaviorRelease,
		}, wo)
		if err != nil {
			c.log.Debug("waiting room: creating a session failed", "error", err.Error())
			sleep(ctx, retryEvery)
			continue
		}
		c.lead(ctx, sid)
		// Destroy with a context of its own: ctx may be over.
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = ss.Destroy(sid, (&api.WriteOptions{}).WithContext(dctx))
		cancel()
	}
}

// lead takes the lock with session sid and leads until it is lost or ctx
// ends.
func (c *Coordinator) lead(ctx context.Context, sid string) {
	renewDone, renewExited := make(chan struct{}), make(chan struct{})
	defer func() { close(renewDone); <-renewExited }()
	go func() {
		defer close(renewExited)
		_ = c.cfg.Client.Session().RenewPeriodic(c.cfg.SessionTTL.String(), sid, (&api.WriteOptions{}).WithContext(ctx), renewDone)
	}()
	lock, err := c.cfg.Client.LockOpts(&api.LockOptions{
		Key: c.leaderKey, Session: sid, Value: []byte(c.cfg.EdgeID),
		// Followers' blocking queries end this often, so Run returns
		// soon after ctx ends.
		LockWaitTime: 2 * time.Second,
	})
	if err != nil {
		c.log.Error("waiting room: bad lock options", "error", err.Error())
		sleep(ctx, retryEvery)
		return
	}
	stop := make(chan struct{})
	unhook := context.AfterFunc(ctx, func() { close(stop) })
	defer unhook()
	lost, err := lock.Lock(stop)
	if err != nil || lost == nil {
		if err != nil {
			c.log.Debug("waiting room: taking the leader lock failed", "error", err.Error())
			sleep(ctx, retryEvery)
		}
		return
	}
	c.mu.Lock()
	c.leadLoaded = false
	c.mu.Unlock()
	c.session.Store(&sid)
	c.signal()
	c.log.Info("waiting room: this edge leads the room", "edge", c.cfg.EdgeID)
	select {
	case <-lost:
		c.log.Warn("waiting room: lost the room's leader lock", "edge", c.cfg.EdgeID)
	case <-ctx.Done():
	}
	c.session.Store(nil)
	c.signal()
	// Release at once, so a follower takes over without waiting for the
	// session's end; elect destroys the session next.
	_ = lock.Unlock()
}

// ConsulHistory is the Store of a coordinated gate: Load reads the shared
// history, so a restarted edge knows at once which places were admitted
// and which are spent. Append does nothing: only the room's leader writes
// the shared history (Coordinator); what a gate admits while ticking
// alone is kept in memory and merged into the shared history when the
// leader is heard again. It is safe for concurrent use and may be copied.
type ConsulHistory struct {
	Client *api.Client
	// Prefix as in CoordinatorConfig; zero means DefaultConsulPrefix.
	Prefix string
	// Timeout bounds Load; zero means 5 s.
	Timeout time.Duration
}

var _ Store = (*ConsulHistory)(nil)

// Append implements Store; see ConsulHistory.
func (s *ConsulHistory) Append(string, Checkpoint) error { return nil }

// Load implements Store. key is the Gate's (historyKey), which names the
// room's folder under Prefix.
func (s *ConsulHistory) Load(key string) ([]Checkpoint, error) {
	if key == "" || strings.Contains(key, "//") || strings.HasPrefix(key, "/") {
		return nil, fmt.Errorf("waitroom: history key %q: want room/epoch[/opens_at]", key)
	}
	prefix := s.Prefix
	if prefix == "" {
		prefix = DefaultConsulPrefix
	}
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	k := strings.TrimSuffix(prefix, "/") + "/" + key + "/history"
	pair, _, err := s.Client.KV().Get(k, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("waitroom: reading the shared history %s from Consul: %w", k, err)
	}
	if pair == nil {
		return nil, nil
	}
	_, h, err := parseHistory(pair.Value)
	if err != nil {
		return nil, fmt.Errorf("waitroom: shared history %s: %w", k, err)
	}
	return h, nil
}
