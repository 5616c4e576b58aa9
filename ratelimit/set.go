package ratelimit

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Set is the named policies of an edge, each with its Limiter.
//
// Readers look a limiter up by name without locking: the table is an
// immutable map swapped atomically by Reconfigure. A *Limiter stays valid
// (and keeps working) after a Reconfigure that replaces or drops its
// policy, but it is no longer the one the Set hands out, so callers look
// limiters up per request rather than keep them across reloads.
//
// The zero Set holds no policies and is ready to use. A Set is safe for
// concurrent use; it must not be copied.
type Set struct {
	mu    sync.Mutex                          // serialises Reconfigure; readers never take it
	table atomic.Pointer[map[string]*Limiter] // never modified once stored
}

// NewSet returns a Set of policies (see Reconfigure).
func NewSet(policies []Policy) (*Set, error) {
	s := new(Set)
	if err := s.Reconfigure(policies); err != nil {
		return nil, err
	}
	return s, nil
}

// Limiter returns the limiter of the named policy, or nil if the Set has no
// such policy. It does not allocate or lock.
func (s *Set) Limiter(name string) *Limiter {
	t := s.table.Load()
	if t == nil {
		return nil
	}
	return (*t)[name]
}

// Limiters returns the current limiters sorted by policy name, for metrics
// and the admin endpoint.
func (s *Set) Limiters() []*Limiter {
	t := s.table.Load()
	if t == nil {
		return nil
	}
	ls := make([]*Limiter, 0, len(*t))
	for _, l := range *t {
		ls = append(ls, l)
	}
	slices.SortFunc(ls, func(a, b *Limiter) int { return strings.Compare(a.policy.Name, b.policy.Name) })
	return ls
}

// Reconfigure makes policies the Set's policies. A policy whose parameters
// (defaults applied) are unchanged keeps its Limiter and so every client's
// bucket: a config reload must not hand a drained client a fresh burst. A
// changed policy gets a new, empty Limiter; a policy no longer listed is
// dropped. Every policy is validated first and any error rejects the whole
// list, leaving the Set as it was.
func (s *Set) Reconfigure(policies []Policy) error {
	next := make(map[string]*Limiter, len(policies))
	for _, p := range policies {
		if err := p.Validate(); err != nil {
			return err
		}
		if _, dup := next[p.Name]; dup {
			return fmt.Errorf("ratelimit policy %q: defined twice: give each policy its own name", p.Name)
		}
		next[p.Name] = nil
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var prev map[string]*Limiter
	if t := s.table.Load(); t != nil {
		prev = *t
	}
	for _, p := range policies {
		if old := prev[p.Name]; old != nil && old.policy == p.withDefaults() {
			next[p.Name] = old
			continue
		}
		l, err := NewLimiter(p)
		if err != nil {
			return err // unreachable: validated above
		}
		next[p.Name] = l
	}
	s.table.Store(&next)
	return nil
}
