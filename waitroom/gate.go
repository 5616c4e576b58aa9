package waitroom

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"sync/atomic"
)

// Clock reads the time in Unix milliseconds. The edge passes a wall clock;
// tests pass a fake one they move by hand.
type Clock interface {
	NowMs() int64
}

// Checkpoint records that at Ms the watermark had reached W.
type Checkpoint struct {
	Ms int64
	W  Place
}

// Store keeps each room's checkpoint history, so that a restarted Gate
// knows when every place was admitted and refuses spent ones. key names
// the room, its epoch and its opening: "room/epoch" or
// "room/epoch/opens_at_ms", names of [A-Za-z0-9_-] and numbers.
type Store interface {
	// Append adds c to key's history. Checkpoints come in order.
	Append(key string, c Checkpoint) error
	// Load returns key's history, oldest first; nil when there is none.
	Load(key string) ([]Checkpoint, error)
}

// MemStore is a Store in memory: it outlives a Gate, not the process. It
// is safe for concurrent use; do not copy it after first use.
type MemStore struct {
	mu sync.Mutex // guards h
	h  map[string][]Checkpoint
}

var (
	_ Store     = (*MemStore)(nil)
	_ compacter = (*MemStore)(nil)
)

// Append implements Store.
func (s *MemStore) Append(key string, c Checkpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		s.h = map[string][]Checkpoint{}
	}
	s.h[key] = append(s.h[key], c)
	return nil
}

// Compact replaces key's history with keep.
func (s *MemStore) Compact(key string, keep []Checkpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		s.h = map[string][]Checkpoint{}
	}
	s.h[key] = append([]Checkpoint(nil), keep...)
	return nil
}

// Load implements Store.
func (s *MemStore) Load(key string) ([]Checkpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Checkpoint(nil), s.h[key]...), nil
}

// Defaults for GateConfig's zero values.
const (
	// DefaultSettleMs keeps the watermark this far behind the clock, so a
	// place stamped a moment ago (by a request still in flight, or an edge
	// whose clock is behind) is not passed before it is counted.
	DefaultSettleMs = 2_000
	// DefaultClaimWindowMs is how long an admitted place may be claimed.
	DefaultClaimWindowMs = 5 * 60_000
)

// GateConfig configures a Gate.
type GateConfig struct {
	Room      string
	Epoch     uint32
	OpensAtMs int64
	// Rate is the places admitted per second; it must be positive.
	Rate float64
	// SettleMs is how far the watermark stays behind the clock; zero
	// means DefaultSettleMs.
	SettleMs int64
	// ClaimWindowMs is how long after the watermark passes a place its
	// token admits; after that it is spent. It should be at most the
	// session lifetime. Zero means DefaultClaimWindowMs.
	ClaimWindowMs int64
	// HoldUntilMs, when set, holds the watermark until then: Tick moves
	// nothing and saves no budget before it. A restarted edge has lost
	// its per-millisecond counts, and with none the watermark would jump
	// to now-SettleMs at the first Tick, past every waiting visitor; held
	// for a refresh interval, the visitors' pages come back and Join
	// counts them again first.
	HoldUntilMs int64
	// MaxVisitors bounds the identities Join remembers (each about 100
	// bytes with its entry in the queue by place); past it an arrival is
	// counted without being remembered: its refreshes, through Rejoin,
	// are not counted again, but requests of the identity without its
	// token are. Zero means DefaultMaxVisitors.
	MaxVisitors int
}

// DefaultMaxVisitors is GateConfig.MaxVisitors's zero value: a million
// waiting identities, about 100 MiB.
const DefaultMaxVisitors = 1 << 20

// Status is what Gate.Check says of a place.
type Status uint8

// Statuses.
const (
	Waiting  Status = iota // the watermark has not passed it yet
	Admitted               // passed, and within the claim window
	Spent                  // passed more than the claim window ago
)

func (s Status) String() string {
	switch s {
	case Waiting:
		return "waiting"
	case Admitted:
		return "admitted"
	case Spent:
		return "spent"
	}
	return fmt.Sprintf("status(%d)", s)
}

// Gate is one room's admission state on one edge: per-millisecond arrival
// counts and a watermark W that Tick advances by Rate places a second. A
// place P is admitted once W has passed it (P before W), which admits
// places in queue order. Memory grows with the milliseconds that hold
// waiting arrivals, never with visitors: a count per millisecond, dropped
// once W passes it.
//
// Within one millisecond the places are unknown, only their count n: their
// tie-breaks are hash values, spread evenly over the uint64 space, so
// admitting k of them moves W.TB on by k/n of that space.
//
// Gate is safe for concurrent use; Check and Ahead take no lock. Do not
// copy it.
type Gate struct {
	cfg   GateConfig
	clock Clock
	store Store
	key   string
	// startMs is when the gate was made: tokens signed after it hold
	// places it counted (Rejoin).
	startMs int64

	mu       sync.Mutex // guards counts, remote, w, lastTick, carry, seen, seenQ, passed, dropped, free, cfg.Rate, and writes of history
	counts   countList  // this edge's waiting counts, none before w.Ms
	w        Place
	lastTick int64
	carry    float64 // places of budget left over inside a millisecond
	// seen maps the identity hash of each counted place that still waits
	// to the place, so one identity is counted once (Join); seenQ orders
	// them by place, so the watermark forgets the ones it passes.
	seen   map[[16]byte]Place
	seenQ  seenQueue
	passed float64 // places the watermark has passed since NewGate
	// dropped counts the checkpoints trimmed from the history since the
	// store was last compacted.
	dropped int
	// free caps the places the next ticks pass (SetFree); +Inf when
	// nothing does.
	free float64
	// remote are the other edges' waiting counts when a coordinator feeds
	// them (coord.go), so Ahead and Queued count the whole queue.
	remote countList

	// view is what Ahead reads (queue.go), published under mu after
	// each change of the watermark or of the other edges' counts.
	view atomic.Pointer[aheadView]
	// history is append-only but for trimming from the front (which
	// makes a new slice header): a reader's snapshot stays valid as Tick
	// publishes longer ones.
	history atomic.Pointer[[]Checkpoint]
}

// NewGate makes the gate of cfg's room, resuming the history store holds
// for the room, its epoch and its opening.
func NewGate(cfg GateConfig, clock Clock, store Store) (*Gate, error) {
	if !(cfg.Rate > 0) || math.IsInf(cfg.Rate, 0) {
		return nil, fmt.Errorf("waitroom: room %s: rate %v: want a positive number of visitors a second", cfg.Room, cfg.Rate)
	}
	if clock == nil || store == nil {
		return nil, errors.New("waitroom: room " + cfg.Room + ": a gate needs a clock and a store")
	}
	if cfg.SettleMs == 0 {
		cfg.SettleMs = DefaultSettleMs
	}
	if cfg.ClaimWindowMs == 0 {
		cfg.ClaimWindowMs = DefaultClaimWindowMs
	}
	if cfg.MaxVisitors == 0 {
		cfg.MaxVisitors = DefaultMaxVisitors
	}
	g := &Gate{cfg: cfg, clock: clock, store: store, seen: map[[16]byte]Place{}, free: math.Inf(1)}
	g.key = historyKey(cfg)
	h, err := store.Load(g.key)
	if err != nil {
		return nil, fmt.Errorf("waitroom: room %s: loading admission history: %w", cfg.Room, err)
	}
	g.w = Place{Ms: cfg.OpensAtMs}
	if len(h) > 0 {
		g.w = h[len(h)-1].W
	}
	g.history.Store(&h)
	g.lastTick = clock.NowMs()
	g.startMs = g.lastTick
	g.publish()
	return g, nil
}

// historyKey names cfg's history in its Store: room/epoch, and for a
// room that opens at a time, room/epoch/opens_at (Unix ms). A new
// opens_at starts a new queue: the history of the old one has a
// watermark that may be past the new opening, which would admit the new
// pre-queue at once, unshuffled (review 18, 14). A room without an
// opening (OpensAtMs <= 0) has no pre-queue to lose.
func historyKey(cfg GateConfig) string {
	if cfg.OpensAtMs > 0 {
		return fmt.Sprintf("%s/%d/%d", cfg.Room, cfg.Epoch, cfg.OpensAtMs)
	}
	return fmt.Sprintf("%s/%d", cfg.Room, cfg.Epoch)
}

// publish makes the current counts and watermark what Ahead reads. The
// caller holds g.mu.
func (g *Gate) publish() { g.view.Store(buildView(g.w, g.counts, g.remote)) }

// count adds d to the count of ms and tells Ahead. The caller holds g.mu.
func (g *Gate) count(ms int64, d int64) {
	d = g.counts.add(ms, d)
	if d == 0 {
		return
	}
	v := g.view.Load()
	k := v.nd.Load()
	if int(k) == len(v.d) {
		g.publish() // it holds the change
		return
	}
	v.d[k] = msDelta{ms: ms, d: int32(d)}
	v.nd.Store(k + 1)
}

// Arrive counts a place just issued. Count each new place once; counting
// one twice only slows admission, never speeds it.
func (g *Gate) Arrive(p Place) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p.Before(g.w) {
		return // already passed: it is admitted at once
	}
	g.count(p.Ms, 1)
}

// Watermark is how far admission has reached.
func (g *Gate) Watermark() Place {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.w
}

// Tick advances the watermark by Rate places for each second since the
// last tick, never past (now-SettleMs, 0), and records where it got to.
// Budget left when the watermark reaches that bound is dropped, so an
// empty queue does not save up a burst. It returns the store's error.
func (g *Gate) Tick() error { return g.tick(1) }

// tick is Tick at share (0 < share <= 1) of the rate: a coordinated gate
// ticking alone while its coordinator is away (coord.go).
func (g *Gate) tick(share float64) error {
	now := g.clock.NowMs()
	g.mu.Lock()
	defer g.mu.Unlock()
	dt := now - g.lastTick
	if dt <= 0 {
		return nil
	}
	g.lastTick = now
	if now < g.cfg.HoldUntilMs {
		g.carry = 0
		return nil
	}
	budget := min(g.carry+g.cfg.Rate*share*float64(dt)/1000, g.free)
	w, budget, passed, done := advance(g.counts, g.w, budget, now-g.cfg.SettleMs)
	g.counts = g.counts[done:]
	g.passed += passed
	g.free -= passed
	g.carry = max(budget, 0)
	if w == g.w {
		return nil
	}
	g.w = w
	g.forgetPassed()
	g.publish()
	return g.record(now, passed > 0)
}

// historyEveryMs is how often a watermark that passed no counted place
// (it moved over empty milliseconds, towards now-SettleMs) is recorded.
// A checkpoint each time the watermark moved was 20 lines a second a
// room, for ever (review 18, 10). Only places nobody counted here lie in
// those milliseconds (a token of another edge, a place restored after a
// restart that came back late); they are admitted at the next
// checkpoint, at most this much later. It is well under
// DefaultStaleAfter, which a coordinated room's leader must write
// within.
const historyEveryMs = 1_000

// record appends the watermark's checkpoint at now to the history, when
// places were passed or historyEveryMs after the last one, and drops the
// checkpoints Check no longer needs: those older than historyKeepMs, but
// the newest of them (trimHistory). Once as many were dropped as are
// kept, the store is compacted too. The caller holds g.mu.
func (g *Gate) record(now int64, passed bool) error {
	h := *g.history.Load()
	if n := len(h); n > 0 && !passed && now-h[n-1].Ms < historyEveryMs {
		return nil
	}
	c := Checkpoint{Ms: now, W: g.w}
	h = append(h, c) // beyond every reader's length: see history
	kept := trimHistory(h, now-g.historyKeepMs())
	g.dropped += len(h) - len(kept)
	g.history.Store(&kept)
	if err := g.store.Append(g.key, c); err != nil {
		return err
	}
	if cs, ok := g.store.(compacter); ok && g.dropped >= max(len(kept), minCompact) {
		if err := cs.Compact(g.key, kept); err != nil {
			return err
		}
		g.dropped = 0
	}
	return nil
}

// minCompact is the fewest dropped checkpoints that are worth rewriting
// the store's history for.
const minCompact = 256

// compacter is a Store that can replace a history with its newest part
// (FileStore, MemStore). The Consul history has none: its leader trims
// it at each write (consul.go).
type compacter interface {
	// Compact replaces key's history with keep, which is its newest
	// part, whole.
	Compact(key string, keep []Checkpoint) error
}

// forgetPassed forgets the remembered identities whose places the
// watermark has passed. The caller holds g.mu.
func (g *Gate) forgetPassed() {
	for len(g.seenQ) > 0 && g.seenQ[0].p.Before(g.w) {
		e := g.seenQ.pop()
		if q, ok := g.seen[e.idh]; ok && q == e.p {
			delete(g.seen, e.idh)
		}
	}
}

// Check says whether place p is waiting, admitted (the watermark passed
// it at passedMs, less than ClaimWindowMs ago) or spent. It takes no lock.
func (g *Gate) Check(p Place) (s Status, passedMs int64) {
	h := *g.history.Load()
	// The watermark only moves forward, so the first checkpoint past p is
	// when p was admitted.
	i := sort.Search(len(h), func(i int) bool { return p.Before(h[i].W) })
	if i == len(h) {
		return Waiting, 0
	}
	if g.clock.NowMs()-h[i].Ms < g.cfg.ClaimWindowMs {
		return Admitted, h[i].Ms
	}
	return Spent, h[i].Ms
}

// Join counts the arrival of the identity whose hash is idh at place p,
// once per identity: while an earlier place of idh still waits, that
// place is returned and nothing is counted, so 100 tabs, or a visitor who
// drops the token to fetch a new one, hold one place. Otherwise p is
// counted (unless the watermark has passed it already) and returned.
//
// When p is earlier than the place remembered for idh, p wins and the
// count moves to it: after a restart (nothing remembered) a request of
// the same identity without its token (a NAT neighbour, an API call
// without the header) can come first and be counted at "now"; the token
// holder's next refresh must keep its own, earlier place (review 18, 7).
func (g *Gate) Join(idh [16]byte, p Place) Place { return g.join(idh, p, false) }

// Rejoin is Join for the place p of a valid place token signed at
// signedMs: a waiting visitor's refresh. A token signed after the gate
// was made shows a place the gate counted when it signed it (every place
// token an edge signs holds a place Join returned), so the place is not
// counted again, whether or not the identity is remembered: past
// MaxVisitors, a refresh no longer counts its visitor once more each
// time, which inflated Ahead and Queued and slowed admission (review 18,
// 8). A token signed before the gate was made (by the process before a
// restart, whose counts are lost) is counted, once: the page that
// answers it carries a token signed now. In a coordinated room a token
// another edge signed is counted by that edge, which publishes it.
func (g *Gate) Rejoin(idh [16]byte, p Place, signedMs int64) Place {
	return g.join(idh, p, signedMs > g.startMs)
}

// join is Join, with counted when p is known to be counted already.
// seen holds only places this gate counted: a move takes its count back.
func (g *Gate) join(idh [16]byte, p Place, counted bool) Place {
	g.mu.Lock()
	defer g.mu.Unlock()
	if q, ok := g.seen[idh]; ok {
		if !q.Before(g.w) {
			if !p.Before(q) {
				return q
			}
			g.count(q.Ms, -1)
		}
		delete(g.seen, idh)
	}
	if p.Before(g.w) {
		return p
	}
	if counted {
		// Not remembered either: it may be another edge's count, which a
		// later move to an earlier place must not take from this edge's.
		return p
	}
	g.count(p.Ms, 1)
	if len(g.seen) < g.cfg.MaxVisitors {
		g.seen[idh] = p
		g.seenQ.push(seenEntry{p: p, idh: idh})
	}
	return p
}

// Ahead estimates how many counted places (this edge's, and the other
// edges' a coordinator reported) before p the watermark has not
// passed yet: the whole count of each millisecond between them, and of
// the milliseconds the watermark and p are in, the share of the
// tie-break space between them (tie-breaks are hash values, spread
// evenly). It takes no lock and is O(log n) in the waiting milliseconds
// (queue.go): every waiting visitor asks it each refresh.
func (g *Gate) Ahead(p Place) float64 { return g.view.Load().ahead(p) }

// Queued estimates the counted places the watermark has not passed.
func (g *Gate) Queued() float64 {
	return g.Ahead(Place{Ms: math.MaxInt64, TB: math.MaxUint64})
}

// Passed is how many counted places the watermark has passed since the
// gate was made: its rate over time is the measured admission rate.
func (g *Gate) Passed() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.passed
}

// Rate is the places admitted per second.
func (g *Gate) Rate() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cfg.Rate
}

// SetRate changes the places admitted per second from the next Tick on;
// a rate that is not positive and finite is refused.
func (g *Gate) SetRate(r float64) error {
	if !(r > 0) || math.IsInf(r, 0) {
		return fmt.Errorf("waitroom: room %s: rate %v: want a positive number of visitors a second", g.cfg.Room, r)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cfg.Rate = r
	return nil
}

// Hold keeps the watermark where it is at nowMs, for a room that is
// paused or closed: the time held earns no budget, so the first Tick
// after a resume admits Rate places a second from then on, not the
// whole backlog of the pause at once (review 18, 2).
func (g *Gate) Hold(nowMs int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if nowMs > g.lastTick {
		g.lastTick = nowMs
	}
	g.carry = 0
}

// SetFree caps the places the next ticks pass, in all, at n: a room
// with max_active passes no more visitors than it has room for (review
// 18, 6), so that admitted visitors do not pile up at a full room and
// take its freed places in the order they happen to refresh. The caller
// sets it before each tick: max_active less the visitors inside and
// those admitted who may still claim. +Inf (the default) caps nothing.
// A coordinated room's leader passes at most its own n times the live
// edges (consul.go). A NaN or negative n is zero.
func (g *Gate) SetFree(n float64) {
	if !(n > 0) {
		n = 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.free = n
}

// freeSlots is SetFree's cap as it stands.
func (g *Gate) freeSlots() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.free
}

// spendFree takes n places from SetFree's cap: a leader's passes, of
// which this edge's share is n.
func (g *Gate) spendFree(n float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.free -= n
}

// LastCheckpoint is the history's newest checkpoint, and false when it
// has none: after a tick that passed places, the time Check gives them.
func (g *Gate) LastCheckpoint() (Checkpoint, bool) {
	h := *g.history.Load()
	if len(h) == 0 {
		return Checkpoint{}, false
	}
	return h[len(h)-1], true
}

// ClaimWindowMs is how long an admitted place may be claimed.
func (g *Gate) ClaimWindowMs() int64 { return g.cfg.ClaimWindowMs }

// SettleMs is how far the watermark stays behind the clock.
func (g *Gate) SettleMs() int64 { return g.cfg.SettleMs }
