package cache

import (
	"bytes"
	"fmt"
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
// A Store is safe for concurrent use; it must not be copied.
type Store struct {
	c *ristretto.Cache[uint64, *Entry]

	// gen counts purges. A fill records it when it starts and is dropped if
	// a purge happened meanwhile, so a listing fetched before a purchase
	// cannot be stored after the purchase purged it.
	gen atomic.Uint64

	mu         sync.Mutex // guards lastGood and order
	lastGood   map[uint64]*lastGood
	order      []uint64 // insertion order, for FIFO eviction of lastGood
	maxLast    int
	lastBytes  int64
	maxLastLen int64

	evictions atomic.Uint64
	rejected  atomic.Uint64
}

// lastGood is one last-good copy. A purge marks it: it may still stand in
// when no origin answers (served as STALE), but never again counts as a
// fresh copy.
type lastGood struct {
	e      *Entry
	purged bool
}

// NewStore makes a store with a byte budget for ristretto, and room for
// lastGoodEntries last-good copies using at most lastGoodBytes.
func NewStore(maxBytes int64, lastGoodEntries int, lastGoodBytes int64) (*Store, error) {
	s := &Store{lastGood: map[uint64]*lastGood{}, maxLast: lastGoodEntries, maxLastLen: lastGoodBytes}
	// About 1 entry per 4 KiB of budget, and ristretto's advice of ten
	// counters per entry.
	counters := max(maxBytes/4096*10, 10000)
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *Entry]{
		NumCounters:        counters,
		MaxCost:            maxBytes,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict:            func(*ristretto.Item[*Entry]) { s.evictions.Add(1) },
		OnReject:           func(*ristretto.Item[*Entry]) { s.rejected.Add(1) },
	})
	if err != nil {
		return nil, fmt.Errorf("cache: creating ristretto: %w", err)
	}
	s.c = c
	return s, nil
}

// Close stops ristretto's goroutines.
func (s *Store) Close() { s.c.Close() }

// Generation is the current purge generation; pass it to Set.
func (s *Store) Generation() uint64 { return s.gen.Load() }

// Get returns the entry stored under key, or nil. A hash collision with
// another key is a miss.
func (s *Store) Get(hash uint64, key []byte) *Entry {
	e, ok := s.c.Get(hash)
	if !ok || !bytes.Equal(e.Key, key) {
		return nil
	}
	return e
}

// Set stores e unless a purge happened since gen was read, and waits until
// ristretto has applied it, so the requests right behind the fill hit.
// It reports whether ristretto admitted it; the last-good copy is kept
// either way (markers for Vary excepted).
func (s *Store) Set(e *Entry, gen uint64) bool {
	if s.gen.Load() != gen {
		return false
	}
	ok := s.c.Set(e.Hash, e, e.Size())
	s.c.Wait()
	if !e.IsVary {
		s.keepLastGood(e)
	}
	return ok
}

func (s *Store) keepLastGood(e *Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.lastGood[e.Hash]; old != nil {
		s.lastBytes -= old.e.Size()
	} else {
		s.order = append(s.order, e.Hash)
	}
	s.lastGood[e.Hash] = &lastGood{e: e}
	s.lastBytes += e.Size()
	for (len(s.lastGood) > s.maxLast || s.lastBytes > s.maxLastLen) && len(s.order) > 0 {
		h := s.order[0]
		s.order = s.order[1:]
		if old := s.lastGood[h]; old != nil {
			s.lastBytes -= old.e.Size()
			delete(s.lastGood, h)
		}
	}
}

// LastGood returns the last good copy of key, or nil, and whether a purge
// has marked it since (then it may only stand in for a failed origin).
func (s *Store) LastGood(hash uint64, key []byte) (e *Entry, purged bool) {
	s.mu.Lock()
	lg := s.lastGood[hash]
	s.mu.Unlock()
	if lg == nil || !bytes.Equal(lg.e.Key, key) {
		return nil, false
	}
	return lg.e, lg.purged
}

// purge removes the entries whose key matches and marks their last-good
// copies purged.
func (s *Store) purge(match func(key []byte) bool) int {
	s.gen.Add(1)
	var hashes []uint64
	s.c.IterValues(func(e *Entry) bool {
		if match(e.Key) {
			hashes = append(hashes, e.Hash)
		}
		return false
	})
	for _, h := range hashes {
		s.c.Del(h)
	}
	s.c.Wait()
	s.mu.Lock()
	for _, lg := range s.lastGood {
		if match(lg.e.Key) {
			lg.purged = true
		}
	}
	s.mu.Unlock()
	return len(hashes)
}

// PurgePrefix removes every entry whose key starts with prefix (a path
// prefix, since keys start with the path) and returns how many. Last-good
// copies are marked, not dropped: they are only served, as STALE, when no
// origin answers.
func (s *Store) PurgePrefix(prefix []byte) int {
	return s.purge(func(k []byte) bool { return bytes.HasPrefix(k, prefix) })
}

// PurgePath removes the entries of one path: every query, host and variant
// of it, and nothing under it.
func (s *Store) PurgePath(path []byte) int {
	return s.purge(func(k []byte) bool {
		return bytes.HasPrefix(k, path) && len(k) > len(path) && (k[len(path)] == 0 || k[len(path)] == '?')
	})
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
