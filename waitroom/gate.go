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
// the room and its epoch.
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

var _ Store = (*MemStore)(nil)

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
}

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
// Gate is safe for concurrent use; Check takes no lock. Do not copy it.
type Gate struct {
	cfg   GateConfig
	clock Clock
	store Store
	key   string

	mu       sync.Mutex // guards counts, w, lastTick, carry
	counts   map[int64]uint32
	w        Place
	lastTick int64
	carry    float64 // places of budget left over inside a millisecond

	// history is append-only: a reader's snapshot stays valid as Tick
	// publishes longer ones.
	history atomic.Pointer[[]Checkpoint]
}

// NewGate makes the gate of cfg's room, resuming the history store holds
// for the room and epoch.
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
	g := &Gate{cfg: cfg, clock: clock, store: store, counts: map[int64]uint32{}}
	g.key = fmt.Sprintf("%s/%d", cfg.Room, cfg.Epoch)
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
	return g, nil
}

// Arrive counts a place just issued. Count each new place once; counting
// one twice only slows admission, never speeds it.
func (g *Gate) Arrive(p Place) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p.Before(g.w) {
		return // already passed: it is admitted at once
	}
	g.counts[p.Ms]++
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
func (g *Gate) Tick() error {
	now := g.clock.NowMs()
	g.mu.Lock()
	defer g.mu.Unlock()
	dt := now - g.lastTick
	if dt <= 0 {
		return nil
	}
	g.lastTick = now
	budget := g.carry + g.cfg.Rate*float64(dt)/1000
	limit := now - g.cfg.SettleMs
	w := g.w
	for w.Ms < limit {
		n := g.counts[w.Ms]
		if n == 0 {
			// Empty milliseconds cost no budget.
			w = Place{Ms: w.Ms + 1}
			if len(g.counts) == 0 {
				w.Ms = limit
			}
			continue
		}
		if budget <= 0 {
			break
		}
		left := ^w.TB // tie-break space not yet passed in this millisecond
		rem := float64(n) * float64(left) / (1 << 64)
		if budget < rem {
			adv := budget / float64(n) * (1 << 64)
			if adv < float64(left) && uint64(adv) <= left {
				w.TB += uint64(adv)
				budget = 0
				break
			}
		}
		budget -= rem
		delete(g.counts, w.Ms)
		w = Place{Ms: w.Ms + 1}
	}
	if w.Ms >= limit {
		budget = 0
	}
	g.carry = max(budget, 0)
	if w == g.w {
		return nil
	}
	g.w = w
	c := Checkpoint{Ms: now, W: w}
	h := append(*g.history.Load(), c)
	g.history.Store(&h)
	return g.store.Append(g.key, c)
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
