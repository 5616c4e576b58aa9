package ratelimit

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// shardCount spreads clients over independent locks: with 64 shards two
// cores (or 64) almost never wait for each other, and a shard's LRU is a
// good approximation of a global one.
const shardCount = 64

// maxChunkLen is the most entries allocated at once when a shard grows:
// 256 entries are about 30 KiB, so a shard never holds more than that in
// slots it has not used yet, and entries never move once handed out.
const maxChunkLen = 256

const nilSlot = -1

// Limiter holds the token buckets of one policy, one per client key, in
// memory bounded by the policy's MaxClients.
//
// Clients are spread over 64 shards by a keyed hash of their Key; each
// shard is a mutex, a map from Key to slot and an intrusive LRU list of
// slots. A shard holds at most its share of MaxClients: when it is full, a
// new client takes the slot of the shard's least recently seen client
// (counted in Stats.Evicted). Entries not seen for the effective idle TTL
// are dropped as traffic passes (two per request at most, from the cold end
// of the list) and by Sweep (counted in Stats.Expired). Slots are reused,
// never freed: memory grows to the high-water mark of clients and stays
// there, and that high-water mark is bounded by MaxClients.
//
// Each bucket is a golang.org/x/time/rate.Limiter, so the arithmetic is the
// library's; the caller supplies the time, which keeps the hot path free of
// clock reads it has already made and makes tests exact. Its own mutex is
// redundant under the shard's (an uncontended lock and unlock, ~40
// instructions of the ~800 an Allow costs), and its time.Time fields make
// the slots memory the GC scans (~14 MiB at the default capacity); both
// are the price of not re-implementing the library.
//
// A Limiter is safe for concurrent use; it must not be copied. It is made
// by NewLimiter or by a Set; the zero value is not usable.
type Limiter struct {
	policy Policy // with defaults applied; immutable
	limit  rate.Limit
	idle   int64  // effective idle TTL in nanoseconds
	seed   uint64 // spreads keys over shards; random so a client cannot aim at one shard
	shards [shardCount]shard
}

// shard is one lock's worth of clients.
type shard struct {
	mu       sync.Mutex
	index    map[Key]int32 // guarded by mu; no pointers, so the GC skips it
	chunks   [][]entry     // guarded by mu; slot i is chunks[i>>shift][i&mask]
	shift    uint8         // log2 of the chunk length
	capacity int32         // most entries this shard holds
	used     int32         // slots handed out so far (the high-water mark)
	free     int32         // first slot of the free list (linked by next), or nilSlot
	head     int32         // most recently seen, or nilSlot
	tail     int32         // least recently seen, or nilSlot
	evicted  uint64        // guarded by mu
	expired  uint64        // guarded by mu
	_        [64]byte      // keep neighbouring shards' locks off one cache line
}

// entry is one client's bucket and its place in the LRU list.
type entry struct {
	lim        rate.Limiter
	seen       int64 // unix nanoseconds of the last request
	key        Key
	prev, next int32
}

// NewLimiter returns an empty Limiter for p, or p's validation error.
func NewLimiter(p Policy) (*Limiter, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	p = p.withDefaults()
	l := &Limiter{
		policy: p,
		limit:  rate.Limit(p.Rate),
		idle:   int64(max(p.IdleTTL, p.refill())),
		seed:   rand.Uint64() | 1,
	}
	per, extra := p.MaxClients/shardCount, p.MaxClients%shardCount
	for i := range l.shards {
		s := &l.shards[i]
		s.capacity = int32(per)
		if i < extra {
			s.capacity++
		}
		chunk := min(maxChunkLen, 1<<bits.Len32(uint32(s.capacity-1)))
		s.shift = uint8(bits.TrailingZeros(uint(chunk)))
		s.index = make(map[Key]int32)
		s.free, s.head, s.tail = nilSlot, nilSlot, nilSlot
	}
	return l, nil
}

// Policy returns the limiter's policy with defaults applied.
func (l *Limiter) Policy() Policy { return l.policy }

// Key is the key of a request under this limiter's policy: the hash of the
// policy's header value when the policy names a header and the request
// carries a non-empty one, else the client address (see ClientIP) keyed by
// the policy's IPv6 prefix. It does not allocate.
func (l *Limiter) Key(client netip.Addr, headerValue []byte) Key {
	if l.policy.Header != "" && len(headerValue) > 0 {
		return KeyFromHeader(headerValue)
	}
	return KeyFromAddr(client, l.policy.IPv6Prefix)
}

// Allow takes one token from k's bucket at time now. When the bucket is
// empty it returns false and how long from now until it holds a token again
// (exact to the nanosecond, rounded up: a request sent that much later is
// allowed, unless another took the token first). retryAfter is zero when
// allowed. Allow does not allocate for a client it knows, nor for a new
// client once the limiter has reached its capacity.
func (l *Limiter) Allow(k Key, now time.Time) (allowed bool, retryAfter time.Duration) {
	s := &l.shards[l.shardOf(k)]
	ns := now.UnixNano()
	s.mu.Lock()
	i, ok := s.index[k]
	if ok {
		s.moveToFront(i)
	} else {
		i = s.insert(k, l)
	}
	e := s.at(i)
	e.seen = ns
	s.expire(ns, l.idle, 2) // after the touch: k is at the front and fresh
	allowed = e.lim.AllowN(now, 1)
	if !allowed {
		retryAfter = l.retryAfter(&e.lim, now)
	}
	s.mu.Unlock()
	return allowed, retryAfter
}

// retryAfter is the earliest time from now, to the nanosecond, at which
// AllowN would grant lim's next token: rate's own estimate (the deficit
// over the rate, truncated, as in its reserveN), then corrected by asking
// the limiter itself, since float rounding in the deficit can put the
// estimate a nanosecond either side. A refused request leaves the bucket
// as it was, so these reads see the state that the client's retry will.
func (l *Limiter) retryAfter(lim *rate.Limiter, now time.Time) time.Duration {
	d := l.deficitDuration(lim.TokensAt(now))
	// Each correction is a nanosecond or two; the bounds only guard the
	// loop against a rate too large for float64 to resolve a nanosecond.
	for n := 0; n < 8 && !l.grants(lim.TokensAt(now.Add(d))); n++ {
		d++
	}
	for n := 0; n < 8 && d > 1 && l.grants(lim.TokensAt(now.Add(d-1))); n++ {
		d--
	}
	return d
}

// deficitDuration is rate's durationFromTokens of the tokens missing for
// one request: zero means AllowN grants it.
func (l *Limiter) deficitDuration(tokens float64) time.Duration {
	return time.Duration((1 - tokens) / float64(l.limit) * float64(time.Second))
}

func (l *Limiter) grants(tokens float64) bool { return l.deficitDuration(tokens) <= 0 }

// Sweep drops every entry idle for the effective idle TTL at now and
// reports how many. Allow already expires idle entries as traffic passes;
// Sweep is for the owner's housekeeping loop, so a limiter that stops
// receiving traffic also forgets its clients (their slots stay allocated
// for reuse).
func (l *Limiter) Sweep(now time.Time) int {
	ns, n := now.UnixNano(), 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += s.expire(ns, l.idle, -1)
		s.mu.Unlock()
	}
	return n
}

// LimiterStats is a snapshot of a Limiter's bookkeeping, for metrics.
type LimiterStats struct {
	// Clients is the number of buckets held now, at most MaxClients.
	Clients int
	// Evicted counts clients forgotten to make room while their bucket may
	// not yet have refilled: such a client gets a full bucket early. A
	// steadily rising count means MaxClients is too small for the traffic.
	Evicted uint64
	// Expired counts clients forgotten after the idle TTL. Harmless: their
	// buckets were full.
	Expired uint64
}

// Stats returns the limiter's counters. It takes each shard's lock in turn,
// so the figures are a near-snapshot, not an atomic one.
func (l *Limiter) Stats() LimiterStats {
	var st LimiterStats
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		st.Clients += len(s.index)
		st.Evicted += s.evicted
		st.Expired += s.expired
		s.mu.Unlock()
	}
	return st
}

// String describes the limiter for logs.
func (l *Limiter) String() string {
	return fmt.Sprintf("ratelimit %q (%g/s, burst %d)", l.policy.Name, l.policy.Rate, l.policy.Burst)
}

// shardOf mixes the key with the limiter's seed (a multiply-xorshift, as in
// wyhash) and takes the top six bits.
func (l *Limiter) shardOf(k Key) int {
	// Each half of the key goes through splitmix64's finaliser, which
	// spreads every input bit over the whole word. The multiply-and-fold it
	// replaces left, for about one seed in 300, whole runs of IPv4
	// addresses (the low bytes of the second half) off some shards.
	h := mix64(binary.LittleEndian.Uint64(k.b[:8]) ^ l.seed)
	h = mix64(h ^ binary.LittleEndian.Uint64(k.b[8:]))
	return int(h >> (64 - 6))
}

// mix64 is splitmix64's finaliser (Steele, Lea, Flood 2014).
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func (s *shard) at(i int32) *entry {
	return &s.chunks[i>>s.shift][i&(1<<s.shift-1)]
}

// insert gives k a slot holding a full bucket and puts it at the front: a
// freed slot, else a new one, else the least recently seen client's.
func (s *shard) insert(k Key, l *Limiter) int32 {
	var i int32
	switch {
	case s.free != nilSlot:
		i = s.free
		s.free = s.at(i).next
	case s.used < s.capacity:
		i = s.used
		if int(i>>s.shift) == len(s.chunks) {
			s.chunks = append(s.chunks, make([]entry, 1<<s.shift))
		}
		s.used++
	default:
		i = s.tail
		s.unlink(i)
		delete(s.index, s.at(i).key)
		s.evicted++
	}
	e := s.at(i)
	e.key = k
	// A zero rate.Limiter whose last update is the zero time: its first
	// AllowN sees centuries elapsed and fills the bucket to Burst, which
	// is rate.NewLimiter's state without allocating a new one.
	e.lim = rate.Limiter{}
	e.lim.SetLimitAt(time.Time{}, l.limit)
	e.lim.SetBurstAt(time.Time{}, l.policy.Burst)
	s.index[k] = i
	s.pushFront(i)
	return i
}

// expire drops up to limit entries (all when limit < 0) idle since before
// ns-idle, from the cold end of the list, and reports how many.
func (s *shard) expire(ns, idle int64, limit int) int {
	n := 0
	for s.tail != nilSlot && n != limit {
		i := s.tail
		e := s.at(i)
		if ns-e.seen < idle {
			break
		}
		s.unlink(i)
		delete(s.index, e.key)
		e.next = s.free
		s.free = i
		s.expired++
		n++
	}
	return n
}

func (s *shard) pushFront(i int32) {
	e := s.at(i)
	e.prev, e.next = nilSlot, s.head
	if s.head != nilSlot {
		s.at(s.head).prev = i
	}
	s.head = i
	if s.tail == nilSlot {
		s.tail = i
	}
}

func (s *shard) unlink(i int32) {
	e := s.at(i)
	if e.prev != nilSlot {
		s.at(e.prev).next = e.next
	} else {
		s.head = e.next
	}
	if e.next != nilSlot {
		s.at(e.next).prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = nilSlot, nilSlot
}

func (s *shard) moveToFront(i int32) {
	if s.head == i {
		return
	}
	s.unlink(i)
	s.pushFront(i)
}
