package waitroom

import (
	"math"
	"slices"
	"sync/atomic"
)

// The queue's counts, kept so that nothing on a visitor's request walks
// the queue (review 18, 4: Ahead walked every waiting millisecond under
// the gate's lock, 182 µs a waiting page at 20,000 visitors queued over
// 10 s; issue 18 allows 1.5× a cached listing hit, a few µs):
//
//   - countList: the waiting milliseconds in order, so that the
//     watermark's advance walks them and not a map per skipped
//     millisecond;
//   - aheadView: a sorted, cumulative copy of this edge's and the other
//     edges' counts, published atomically after each change of the
//     watermark, which Ahead reads without a lock in O(log n), plus the
//     few counts changed since it was built (at most viewDeltas; one
//     more rebuilds it);
//   - seenQueue: the remembered identities ordered by place, so that the
//     watermark's advance forgets the ones it passed without scanning
//     every one.

// msCount is the number of places counted in one millisecond.
type msCount struct {
	ms int64
	n  uint32
}

// countList is per-millisecond counts in increasing millisecond order,
// without zeros. Arrivals are placed at "now", after every waiting place,
// so adding one is almost always at the end.
type countList []msCount

// search returns the index of ms in l, or where it would go.
func (l countList) search(ms int64) (int, bool) {
	if n := len(l); n == 0 || l[n-1].ms < ms {
		return n, false
	} else if l[n-1].ms == ms {
		return n - 1, true
	}
	return slices.BinarySearchFunc(l, ms, func(c msCount, ms int64) int {
		switch {
		case c.ms < ms:
			return -1
		case c.ms > ms:
			return 1
		}
		return 0
	})
}

// add adds d (which may be negative) to the count of ms, dropping a
// count that reaches zero and never going below zero or above
// math.MaxUint32. It returns the change made.
func (l *countList) add(ms int64, d int64) int64 {
	i, ok := l.search(ms)
	if !ok {
		if d <= 0 {
			return 0
		}
		d = min(d, math.MaxUint32)
		*l = slices.Insert(*l, i, msCount{ms: ms, n: uint32(d)})
		return d
	}
	n := int64((*l)[i].n)
	v := min(max(n+d, 0), math.MaxUint32)
	if v == 0 {
		*l = slices.Delete(*l, i, i+1)
	} else {
		(*l)[i].n = uint32(v)
	}
	return v - n
}

// from is l without the milliseconds before ms.
func (l countList) from(ms int64) countList {
	i, _ := l.search(ms)
	return l[i:]
}

// countsOf sorts a map of counts into a countList.
func countsOf(m map[int64]uint32) countList {
	l := make(countList, 0, len(m))
	for ms, n := range m {
		if n > 0 {
			l = append(l, msCount{ms: ms, n: n})
		}
	}
	slices.SortFunc(l, func(a, b msCount) int {
		switch {
		case a.ms < b.ms:
			return -1
		case a.ms > b.ms:
			return 1
		}
		return 0
	})
	return l
}

// viewDeltas is how many count changes a view takes after it was built
// before the next change rebuilds it: Ahead scans them, so they are few
// (a 50 ms tick at issue 18's 2,000 arrivals a second brings 100, about
// half a µs to scan at most), and a rebuild is O(waiting milliseconds).
const viewDeltas = 128

// msDelta is a change of the count of one millisecond.
type msDelta struct {
	ms int64
	d  int32
}

// aheadView is the waiting counts as Ahead reads them, without a lock:
// the watermark, the waiting milliseconds of this edge and the others
// merged and summed, and the changes made since (d[:nd], appended under
// the gate's lock: a reader never reads past the nd it loaded, which
// the writer stores after the entry). It is never changed otherwise;
// the gate publishes a new one.
type aheadView struct {
	w   Place
	ms  []int64  // the waiting milliseconds, ascending, none before w.Ms
	cum []uint64 // cum[i] is the count of ms[:i]; len(ms)+1 entries
	a   int      // the index of the first millisecond after w.Ms
	wN  uint64   // the count of w.Ms
	nd  atomic.Int32
	d   [viewDeltas]msDelta
}

// buildView merges local and remote (both sorted) from w.Ms on.
func buildView(w Place, local, remote countList) *aheadView {
	local, remote = local.from(w.Ms), remote.from(w.Ms)
	v := &aheadView{w: w, ms: make([]int64, 0, len(local)+len(remote)), cum: make([]uint64, 1, len(local)+len(remote)+1)}
	var sum uint64
	for i, j := 0, 0; i < len(local) || j < len(remote); {
		var c msCount
		switch {
		case j == len(remote) || i < len(local) && local[i].ms < remote[j].ms:
			c = local[i]
			i++
		case i == len(local) || remote[j].ms < local[i].ms:
			c = remote[j]
			j++
		default:
			c = msCount{ms: local[i].ms, n: local[i].n}
			sum += uint64(remote[j].n) // the same millisecond on both sides
			i++
			j++
		}
		sum += uint64(c.n)
		v.ms = append(v.ms, c.ms)
		v.cum = append(v.cum, sum)
	}
	if len(v.ms) > 0 && v.ms[0] == w.Ms {
		v.wN, v.a = v.cum[1], 1
	}
	return v
}

// share is the part of n places in one millisecond whose tie-breaks lie
// in [lo, hi): tie-breaks are hash values, spread evenly over the uint64
// space.
func share(n float64, lo, hi uint64) float64 {
	if hi <= lo {
		return 0
	}
	return n * float64(hi-lo) / (1 << 64)
}

// ahead is Gate.Ahead on the view: O(log n) for the counts it was built
// with, plus a scan of the changes since.
func (v *aheadView) ahead(p Place) float64 {
	w := v.w
	if p.Before(w) {
		return 0
	}
	j, found := slices.BinarySearch(v.ms, p.Ms)
	var n float64
	if p.Ms == w.Ms {
		n = share(float64(v.wN), w.TB, p.TB)
	} else {
		n = share(float64(v.wN), w.TB, ^uint64(0))
		if j > v.a {
			n += float64(v.cum[j] - v.cum[v.a])
		}
		if found {
			n += share(float64(v.cum[j+1]-v.cum[j]), 0, p.TB)
		}
	}
	for _, d := range v.d[:v.nd.Load()] {
		if d.ms < w.Ms || d.ms > p.Ms {
			continue
		}
		lo, hi := uint64(0), ^uint64(0)
		if d.ms == w.Ms {
			lo = w.TB
		}
		if d.ms == p.Ms {
			hi = p.TB
		}
		n += share(float64(d.d), lo, hi)
	}
	return max(n, 0)
}

// seenEntry is a remembered identity and its place.
type seenEntry struct {
	p   Place
	idh [16]byte
}

// seenQueue is a min-heap of remembered identities by place. An entry
// whose identity has since moved to another place stays until the
// watermark passes it, and is then dropped as stale.
type seenQueue []seenEntry

func (q *seenQueue) push(e seenEntry) {
	*q = append(*q, e)
	h := *q
	for i := len(h) - 1; i > 0; {
		parent := (i - 1) / 2
		if !h[i].p.Before(h[parent].p) {
			break
		}
		h[i], h[parent] = h[parent], h[i]
		i = parent
	}
}

func (q *seenQueue) pop() seenEntry {
	h := *q
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h[l].p.Before(h[m].p) {
			m = l
		}
		if r < n && h[r].p.Before(h[m].p) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	*q = h
	return top
}
