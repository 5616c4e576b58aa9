package cache

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
)

// Store keeps entries in ristretto under a byte budget, and the last good
// copy of each recently stored key in a small structure of its own for
// stale-if-error: ristretto admits asynchronously and may drop a Set or
// evict an entry at any moment, and a fan should still see a listing when
// every origin is down.
//
// Purges are per path. The store indexes what it put in ristretto, the
// last-good copies and the fills in flight by the path of their key, so a
// purchase's purge of /api/games/7 costs the entries of that path, not a
// scan of the whole cache, and leaves a fill of /api/games/9 alone: with
// one purge generation for the whole store, every purchase would discard
// every fill in flight, and under a buy storm the cache would stop
// filling.
//
// A Store is safe for concurrent use; it must not be copied.
type Store struct {
	c *ristretto.Cache[uint64, *Entry]

	// mu guards paths, entries, lastGood, order, lastBytes and each Fill's
	// purged mark. It is never held while waiting for ristretto to apply
	// its buffer (Wait), and ristretto's callbacks never take it (they
	// queue on exitMu), so ristretto's goroutine can always drain the
	// buffer that a Del under mu may wait for.
	mu         sync.Mutex
	paths      map[string]*pathIndex
	entries    map[uint64]*Entry // what Set put in ristretto under each hash, until evicted, rejected or purged
	lastGood   map[uint64]*lastGood
	order      []uint64 // insertion order, for FIFO eviction of lastGood
	maxLast    int
	lastBytes  int64
	maxLastLen int64

	exitMu sync.Mutex
	exited []*Entry // evicted or rejected by ristretto; taken out of the index at the next Set, BeginFill or purge

	evictions atomic.Uint64
	rejected  atomic.Uint64
}

// pathIndex is what the store holds for one path (a key up to its '?' or
// NUL). It exists while any of its sets is non-empty.
type pathIndex struct {
	cached map[uint64]struct{} // hashes of its entries in ristretto
	last   map[uint64]struct{} // hashes of its last-good copies
	fills  []*Fill             // fetches in flight
}

func (pi *pathIndex) empty() bool {
	return len(pi.cached) == 0 && len(pi.last) == 0 && len(pi.fills) == 0
}

// lastGood is one last-good copy. A purge marks it: it may still stand in
// when no origin answers (served as STALE), but never again counts as a
// fresh copy.
type lastGood struct {
	e      *Entry
	purged bool
}

// Fill is one origin fetch for a key, from before its request is sent
// until its answer is stored or dropped (BeginFill, Set, EndFill). A purge
// of its path in between marks it, and Set then refuses what it fetched:
// a listing fetched before a purchase must not be stored after the
// purchase purged it.
//
// A Fill is used by one goroutine at a time; it must not be copied.
type Fill struct {
	key    string
	path   string
	purged bool // guarded by Store.mu
}

// NewStore makes a store with a byte budget for ristretto, and room for
// lastGoodEntries last-good copies using at most lastGoodBytes.
func NewStore(maxBytes int64, lastGoodEntries int, lastGoodBytes int64) (*Store, error) {
	s := &Store{
		paths:    map[string]*pathIndex{},
		entries:  map[uint64]*Entry{},
		lastGood: map[uint64]*lastGood{},
		maxLast:  lastGoodEntries, maxLastLen: lastGoodBytes,
	}
	// About 1 entry per 4 KiB of budget, and ristretto's advice of ten
	// counters per entry.
	counters := max(maxBytes/4096*10, 10000)
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *Entry]{
		NumCounters:        counters,
		MaxCost:            maxBytes,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict: func(it *ristretto.Item[*Entry]) {
			s.evictions.Add(1)
			s.exit(it.Value)
		},
		OnReject: func(it *ristretto.Item[*Entry]) {
			s.rejected.Add(1)
			s.exit(it.Value)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cache: creating ristretto: %w", err)
	}
	s.c = c
	return s, nil
}

// Close stops ristretto's goroutines.
func (s *Store) Close() { s.c.Close() }

// exit queues an entry ristretto let go of. It runs on ristretto's
// goroutine, so it must not wait for mu (see Store.mu).
func (s *Store) exit(e *Entry) {
	if e == nil {
		return
	}
	s.exitMu.Lock()
	s.exited = append(s.exited, e)
	s.exitMu.Unlock()
}

// drainExitsLocked takes the entries ristretto let go of out of the index.
// An entry only leaves it if it is still the one indexed under its hash: a
// newer Set of the same hash stays indexed.
func (s *Store) drainExitsLocked() {
	s.exitMu.Lock()
	exited := s.exited
	s.exited = nil
	s.exitMu.Unlock()
	for _, e := range exited {
		if s.entries[e.Hash] == e {
			s.unindexLocked(e)
		}
	}
}

func (s *Store) unindexLocked(e *Entry) {
	delete(s.entries, e.Hash)
	path := KeyPath(e.Key)
	if pi := s.paths[string(path)]; pi != nil {
		delete(pi.cached, e.Hash)
		s.forgetIfEmptyLocked(string(path), pi)
	}
}

func (s *Store) forgetIfEmptyLocked(path string, pi *pathIndex) {
	if pi.empty() {
		delete(s.paths, path)
	}
}

// pathLocked returns the index of path, making it if needed.
func (s *Store) pathLocked(path []byte) *pathIndex {
	pi := s.paths[string(path)]
	if pi == nil {
		pi = &pathIndex{}
		s.paths[string(path)] = pi
	}
	return pi
}

// BeginFill registers an origin fetch for key; call it before the request
// is sent, pass the Fill to Set, and end it with EndFill.
func (s *Store) BeginFill(key []byte) *Fill {
	f := &Fill{key: string(key)}
	f.path = f.key[:len(KeyPath(key))]
	s.mu.Lock()
	s.drainExitsLocked()
	pi := s.pathLocked(KeyPath(key))
	pi.fills = append(pi.fills, f)
	s.mu.Unlock()
	return f
}

// EndFill unregisters a fill.
func (s *Store) EndFill(f *Fill) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pi := s.paths[f.path]
	if pi == nil {
		return
	}
	for i, g := range pi.fills {
		if g == f {
			pi.fills = append(pi.fills[:i], pi.fills[i+1:]...)
			break
		}
	}
	s.forgetIfEmptyLocked(f.path, pi)
}

// Get returns the entry stored under key, or nil. A hash collision with
// another key is a miss.
func (s *Store) Get(hash uint64, key []byte) *Entry {
	e, ok := s.c.Get(hash)
	if !ok || !bytes.Equal(e.Key, key) {
		return nil
	}
	return e
}

// Set stores e, which fill fetched, unless a purge of its path happened
// since the fill began; then it waits until ristretto has applied it, so
// the requests right behind the fill hit. It reports whether ristretto
// admitted it. A successful (2xx) entry also becomes its key's last-good
// copy, whether ristretto admitted it or not (markers for Vary excepted);
// any other status retires the key's last-good copy, since the origin has
// since said something else about it.
func (s *Store) Set(e *Entry, fill *Fill) bool {
	s.mu.Lock()
	s.drainExitsLocked()
	if fill.purged {
		s.mu.Unlock()
		return false
	}
	// Under mu, so that a purge's Del of this hash is queued behind this
	// Set in ristretto's buffer, which applies them in order.
	ok := s.c.Set(e.Hash, e, e.Size())
	if ok {
		s.indexLocked(e)
	}
	if !e.IsVary {
		if e.Successful() {
			s.keepLastGoodLocked(e)
		} else {
			s.dropLastGoodLocked(e.Hash)
		}
	}
	s.mu.Unlock()
	s.c.Wait()
	return ok
}

func (s *Store) indexLocked(e *Entry) {
	if old := s.entries[e.Hash]; old != nil && old != e {
		// The same key again (a refill), or, rarely, another key with the
		// same hash, which ristretto now holds in its place.
		s.unindexLocked(old)
	}
	s.entries[e.Hash] = e
	pi := s.pathLocked(KeyPath(e.Key))
	if pi.cached == nil {
		pi.cached = map[uint64]struct{}{}
	}
	pi.cached[e.Hash] = struct{}{}
}

func (s *Store) keepLastGoodLocked(e *Entry) {
	if old := s.lastGood[e.Hash]; old != nil {
		s.lastBytes -= old.e.Size()
		if !bytes.Equal(KeyPath(old.e.Key), KeyPath(e.Key)) {
			s.unlinkLastGoodLocked(old.e)
		}
	} else {
		s.order = append(s.order, e.Hash)
	}
	s.lastGood[e.Hash] = &lastGood{e: e}
	s.lastBytes += e.Size()
	pi := s.pathLocked(KeyPath(e.Key))
	if pi.last == nil {
		pi.last = map[uint64]struct{}{}
	}
	pi.last[e.Hash] = struct{}{}
	for (len(s.lastGood) > s.maxLast || s.lastBytes > s.maxLastLen) && len(s.order) > 0 {
		h := s.order[0]
		s.order = s.order[1:]
		s.removeLastGoodLocked(h)
	}
}

// dropLastGoodLocked forgets the last-good copy under hash, if any, and
// its place in the FIFO (a linear scan of at most last_good_entries
// hashes; it runs only when the origin answers a key with an error it
// gave a lifetime).
func (s *Store) dropLastGoodLocked(hash uint64) {
	if s.lastGood[hash] == nil {
		return
	}
	s.removeLastGoodLocked(hash)
	if i := slices.Index(s.order, hash); i >= 0 {
		s.order = slices.Delete(s.order, i, i+1)
	}
}

func (s *Store) removeLastGoodLocked(hash uint64) {
	old := s.lastGood[hash]
	if old == nil {
		return
	}
	s.lastBytes -= old.e.Size()
	delete(s.lastGood, hash)
	s.unlinkLastGoodLocked(old.e)
}

func (s *Store) unlinkLastGoodLocked(e *Entry) {
	path := KeyPath(e.Key)
	if pi := s.paths[string(path)]; pi != nil {
		delete(pi.last, e.Hash)
		s.forgetIfEmptyLocked(string(path), pi)
	}
}

// LastGood returns the last good copy of key, or nil, and whether a purge
// has marked it since (then it may only stand in for a failed origin).
func (s *Store) LastGood(hash uint64, key []byte) (e *Entry, purged bool) {
	s.mu.Lock()
	lg := s.lastGood[hash]
	var purgedNow bool
	if lg != nil {
		e, purgedNow = lg.e, lg.purged
	}
	s.mu.Unlock()
	if e == nil || !bytes.Equal(e.Key, key) {
		return nil, false
	}
	return e, purgedNow
}

// purgeLocked purges what pi holds whose key match accepts (nil: all of
// it): marks its fills, deletes its entries from ristretto, marks its
// last-good copies. It returns how many entries it deleted.
func (s *Store) purgeLocked(path string, pi *pathIndex, match func(key []byte) bool) int {
	for _, f := range pi.fills {
		if match == nil || match([]byte(f.key)) {
			f.purged = true
		}
	}
	n := 0
	for h := range pi.cached {
		e := s.entries[h]
		if match != nil && (e == nil || !match(e.Key)) {
			continue
		}
		s.c.Del(h)
		delete(s.entries, h)
		delete(pi.cached, h)
		n++
	}
	for h := range pi.last {
		if lg := s.lastGood[h]; lg != nil && (match == nil || match(lg.e.Key)) {
			lg.purged = true
		}
	}
	s.forgetIfEmptyLocked(path, pi)
	return n
}

// PurgePath removes the entries of one path: every query, host and variant
// of it, and nothing under it. Fills of the path in flight will not store
// what they fetched. It costs the path's own entries, whatever the size of
// the cache. Last-good copies are marked, not dropped: they are only
// served, as STALE, when no origin answers.
func (s *Store) PurgePath(path []byte) int {
	s.mu.Lock()
	s.drainExitsLocked()
	n := 0
	if pi := s.paths[string(path)]; pi != nil {
		n = s.purgeLocked(string(path), pi, nil)
	}
	s.mu.Unlock()
	s.waitDeleted(n)
	return n
}

// PurgePrefix removes every entry whose key starts with prefix (a path
// prefix, since keys start with the path) and returns how many; fills in
// flight under it will not store. It walks the index of paths, not the
// cache: the admin purge and routes[].purge patterns ending in "*" use it;
// a purchase's own purges are PurgePath.
func (s *Store) PurgePrefix(prefix []byte) int {
	match := func(k []byte) bool { return bytes.HasPrefix(k, prefix) }
	pfx := string(prefix)
	s.mu.Lock()
	s.drainExitsLocked()
	n := 0
	for path, pi := range s.paths {
		switch {
		case strings.HasPrefix(path, pfx):
			n += s.purgeLocked(path, pi, nil)
		case strings.HasPrefix(pfx, path):
			// The prefix reaches past this path into the query or host:
			// key by key.
			n += s.purgeLocked(path, pi, match)
		}
	}
	s.mu.Unlock()
	s.waitDeleted(n)
	return n
}

// waitDeleted returns once ristretto has applied a purge's n Dels, and
// every Set queued before them: no Get sees a purged entry after a purge
// returns. With nothing deleted there is nothing to wait for: every Set of
// the purged paths queued before the purge was indexed, and so deleted.
func (s *Store) waitDeleted(n int) {
	if n > 0 {
		s.c.Wait()
	}
}

// Stats are the store's counters for metrics.
type Stats struct {
	Evictions, Rejected uint64
	Bytes               int64
	LastGoodEntries     int
	LastGoodBytes       int64
}

// Stats reads the counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Evictions:       s.evictions.Load(),
		Rejected:        s.rejected.Load(),
		Bytes:           s.c.MaxCost() - s.c.RemainingCost(),
		LastGoodEntries: len(s.lastGood),
		LastGoodBytes:   s.lastBytes,
	}
}
