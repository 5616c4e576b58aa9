package waitroom

import (
	"fmt"
	"strings"
)

// A room matches on its room form of the request path: the proxy's normal
// form (proxy/normalize.go), made stricter. A room that fails to match a
// path the origin serves as a guarded one is a way around the queue;
// matching a path the origin does not serve only queues a 404. So the room
// form errs towards matching:
//
//   - ASCII letters are lower-cased: some origins route case-insensitively
//     (IIS, Spring with setCaseSensitive(false)), Go's ServeMux does not;
//   - each segment is cut at ";": /games/1;x/buy is /games/1/buy, since
//     Tomcat and Spring strip such path parameters (";jsessionid=") before
//     routing;
//   - empty segments are dropped, after the cut: "//" and a trailing "/"
//     do not matter, whatever the origin makes of them.
//
// Matching never allocates: it walks the path in place.

// Pattern is a compiled room path pattern, such as /games/*/buy: segments
// compared one by one in room form, "*" standing for exactly one segment.
// It is immutable; copy it freely and use it concurrently.
type Pattern struct {
	src  string
	segs []string // room form; "*" is any one segment
}

// ParsePattern compiles a room path pattern. It must begin with "/" and
// have at least one segment; "*" must be a whole segment. Letters are
// lower-cased and empty segments dropped, as in a path's room form.
func ParsePattern(s string) (Pattern, error) {
	p := Pattern{src: s}
	if !strings.HasPrefix(s, "/") {
		return p, fmt.Errorf("room path %q: must begin with /", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(";?#\\", c) >= 0 {
			return p, fmt.Errorf("room path %q: %q is not allowed in a pattern; write the path as the edge normalises it, without ; ? # \\ spaces or raw non-ASCII", s, s[i:i+1])
		}
	}
	for seg := range strings.SplitSeq(strings.ToLower(s), "/") {
		if seg == "" {
			continue
		}
		if seg != "*" && strings.Contains(seg, "*") {
			return p, fmt.Errorf("room path %q: * must be a whole segment, as in /games/*/buy", s)
		}
		p.segs = append(p.segs, seg)
	}
	if len(p.segs) == 0 {
		return p, fmt.Errorf("room path %q: has no segment; a room guards specific paths, such as /games/*/buy", s)
	}
	return p, nil
}

// String is the pattern as written.
func (p Pattern) String() string { return p.src }

// RoomForm is the pattern in room form ("/games/*/buy" for
// "/Games//*/buy/"): two patterns that match the same paths have the same
// room form.
func (p Pattern) RoomForm() string { return "/" + strings.Join(p.segs, "/") }

// Match reports whether path, in the proxy's normal form, is guarded by p
// in room form. It does not allocate.
func (p Pattern) Match(path []byte) bool {
	i := 0
	for _, want := range p.segs {
		var seg []byte
		seg, i = nextSegment(path, i)
		if seg == nil {
			return false
		}
		if want != "*" && !equalLower(seg, want) {
			return false
		}
	}
	seg, _ := nextSegment(path, i)
	return seg == nil
}

// AppendWild appends to dst the segments of path that p's "*" stand for,
// in room form, each followed by "/", when p matches path: for
// /games/*/buy and /API/Games/45;x/buy, "45/". A pattern without "*"
// appends nothing. ok is false when p does not match. It is what tells
// the paths of one room apart by what they are about (one game), so
// /games/45/buy and /api/games/45/buy give the same key.
func (p Pattern) AppendWild(dst, path []byte) (out []byte, ok bool) {
	n := len(dst)
	i := 0
	for _, want := range p.segs {
		var seg []byte
		seg, i = nextSegment(path, i)
		if seg == nil || want != "*" && !equalLower(seg, want) {
			return dst[:n], false
		}
		if want == "*" {
			for _, c := range seg {
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
				}
				dst = append(dst, c)
			}
			dst = append(dst, '/')
		}
	}
	if seg, _ := nextSegment(path, i); seg != nil {
		return dst[:n], false
	}
	return dst, true
}

// nextSegment returns the next non-empty segment of path at or after i,
// cut at ";", and the index after it; nil when there is none.
func nextSegment(path []byte, i int) (seg []byte, next int) {
	for i < len(path) {
		j := i
		for j < len(path) && path[j] != '/' {
			j++
		}
		seg = path[i:j]
		for k, c := range seg {
			if c == ';' {
				seg = seg[:k]
				break
			}
		}
		i = j + 1
		if len(seg) > 0 {
			return seg, i
		}
	}
	return nil, len(path)
}

// equalLower reports whether seg, ASCII lower-cased, equals want, which is
// lower-case already.
func equalLower(seg []byte, want string) bool {
	if len(seg) != len(want) {
		return false
	}
	for i, c := range seg {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != want[i] {
			return false
		}
	}
	return true
}

// AppendRoomForm appends the room form of path to dst: "/" and the
// non-empty segments, each cut at ";" and lower-cased, joined by "/". It is
// what Match compares, written out for logs and tests.
func AppendRoomForm(dst, path []byte) []byte {
	n := len(dst)
	for seg, i := nextSegment(path, 0); seg != nil; seg, i = nextSegment(path, i) {
		dst = append(dst, '/')
		for _, c := range seg {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			dst = append(dst, c)
		}
	}
	if len(dst) == n {
		dst = append(dst, '/')
	}
	return dst
}
