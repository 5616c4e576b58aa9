package proxy

import (
	"bytes"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// A game's sale ends before its room does: a room guards every game's buy
// paths (/games/*/buy), and one final selling out must not close the
// queue for the others. The origin says when a game has no seat left, on
// the answer to a purchase or to the game's buy form (the
// X-Podium-Sold-Out header, origin.SoldOutHeader). The edge remembers it
// by what the room's "*" segments stood for (the game: "45/" for both
// /games/45/buy and /api/games/45/buy, waitroom.Pattern.AppendWild), and
// the visitors waiting for that game, or arriving for it, are told it is
// sold out instead of queueing on for a seat that does not exist. A room
// whose paths have no "*" has one key, "", so the whole room is sold out.

const (
	// soldOutHeader is origin.SoldOutHeader, which the proxy must not
	// import.
	soldOutHeader = "X-Podium-Sold-Out"
	// soldOutTTL is how long a sold-out mark lasts unless the origin says
	// it again. Seats can come back (an order cancelled, a block
	// released): after this a newcomer queues again, and the first
	// admitted request for the game renews the mark if it is still sold
	// out. A waiting visitor keeps their place token through it.
	soldOutTTL = time.Minute
	// maxSoldOut bounds the marks of one room: an origin is trusted, but
	// a bug there must not grow the edge's memory without bound.
	maxSoldOut = 4096
)

var strTrue = []byte("true")

// soldOutMarks are one room's sold-out keys and until when (Unix ms).
// Safe for concurrent use; has is lock-free while there is no mark.
type soldOutMarks struct {
	n  atomic.Int32 // len(m), read without the lock
	mu sync.RWMutex
	m  map[string]int64
}

// has reports whether key is marked sold out at now.
func (s *soldOutMarks) has(key []byte, now int64) bool {
	if s.n.Load() == 0 {
		return false
	}
	s.mu.RLock()
	until, ok := s.m[string(key)]
	s.mu.RUnlock()
	return ok && now < until
}

// mark marks key sold out until now+soldOutTTL; fresh is true when it was
// not marked (or its mark had run out). Past maxSoldOut marks, expired
// ones are dropped, and a new key is not marked if none was.
func (s *soldOutMarks) mark(key []byte, now int64) (fresh bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, had := s.m[string(key)]
	if !had && len(s.m) >= maxSoldOut {
		for k, u := range s.m {
			if u <= now {
				delete(s.m, k)
			}
		}
		if len(s.m) >= maxSoldOut {
			return false
		}
	}
	if s.m == nil {
		s.m = map[string]int64{}
	}
	s.m[string(key)] = now + soldOutTTL.Milliseconds()
	s.n.Store(int32(len(s.m)))
	return !had || until <= now
}

// clear drops every mark: the admin API's resume.
func (s *soldOutMarks) clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.m)
	s.n.Store(0)
}

// list is the keys marked at now, sorted, for GET /rooms.
func (s *soldOutMarks) list(now int64) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var keys []string
	for k, until := range s.m {
		if now < until {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// matchRoomKey is the room guarding path, or nil, and the room's key of
// path (what its "*" segments stood for) appended to dst.
func (st *state) matchRoomKey(path, dst []byte) (*roomState, []byte) {
	for _, rs := range st.rooms {
		for _, pat := range rs.patterns {
			if key, ok := pat.AppendWild(dst, path); ok {
				return rs, key
			}
		}
	}
	return nil, dst
}

// setGuard remembers the room guarding the request and its key there.
func (x *exchange) setGuard(rs *roomState, key []byte) {
	x.guardRoom = rs
	if len(key) <= len(x.guardKeyBuf) {
		x.guardKeyLen = copy(x.guardKeyBuf[:], key)
		x.guardKeyLong = nil
	} else {
		x.guardKeyLong = bytes.Clone(key) // rare: a long "*" segment
	}
}

// guardKey is the key setGuard remembered.
func (x *exchange) guardKey() []byte {
	if x.guardKeyLong != nil {
		return x.guardKeyLong
	}
	return x.guardKeyBuf[:x.guardKeyLen]
}

// noteSoldOut marks the request's game sold out in its room when the
// answer says so. finish calls it for every request a room guarded.
func (x *exchange) noteSoldOut() {
	rs := x.guardRoom
	if !bytes.Equal(x.ctx.Response.Header.Peek(soldOutHeader), strTrue) {
		return
	}
	if rs.rt.soldOut.mark(x.guardKey(), x.p.clock.NowMs()) {
		x.p.log.Info("waiting room: the origin says a game is sold out; its waiting visitors are told so", "room", rs.cfg.Name,
			"game", string(bytes.TrimSuffix(x.guardKey(), []byte("/"))), "path", string(x.ctx.Path()), "for", soldOutTTL.String())
	}
}
