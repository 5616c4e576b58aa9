package waitroom

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
)

// What a Gate needs to run as one of many edges (issue 18, "Many edges"):
// the watermark's advance as a function of any count map, so a leader can
// run it over the merged counts of every edge; the histories' merge and
// trim; the Gate's side of a coordinator (adopt a shared history, report
// its own counts, count the other edges' for Ahead); and the compact
// encodings of counts and histories that edges exchange. The Consul
// coordinator (consul.go) moves these between edges.

// advance moves the watermark w over the per-millisecond counts (sorted)
// by budget places, never to or past (limit, 0). Empty milliseconds cost
// nothing, and it walks only the milliseconds that hold arrivals. It
// returns where the watermark got to, the budget left (zero once it
// reached limit: an empty queue saves up no burst), the places passed and
// how many of counts' entries it passed whole (the caller drops them).
//
// Within one millisecond the places are unknown, only their count n:
// their tie-breaks are hash values, spread evenly over the uint64 space,
// so passing k of them moves w.TB on by k/n of that space.
func advance(counts countList, w Place, budget float64, limit int64) (Place, float64, float64, int) {
	var passed float64
	i := 0
	for w.Ms < limit {
		for i < len(counts) && counts[i].ms < w.Ms {
			i++
		}
		if i == len(counts) || counts[i].ms >= limit {
			// Nothing waits before the limit: go straight to it.
			w = Place{Ms: limit}
			break
		}
		if counts[i].ms > w.Ms {
			w = Place{Ms: counts[i].ms}
		}
		if budget <= 0 {
			break
		}
		n := counts[i].n
		left := ^w.TB // tie-break space not yet passed in this millisecond
		rem := float64(n) * float64(left) / (1 << 64)
		if budget < rem {
			adv := budget / float64(n) * (1 << 64)
			if adv < float64(left) && uint64(adv) <= left {
				w.TB += uint64(adv)
				passed += budget
				return w, 0, passed, i
			}
		}
		budget -= rem
		passed += rem
		i++
		w = Place{Ms: w.Ms + 1}
	}
	if w.Ms >= limit {
		budget = 0
	}
	for i < len(counts) && counts[i].ms < w.Ms {
		i++
	}
	return w, max(budget, 0), passed, i
}

// mergeHistories is the pointwise maximum of two histories (each a step
// function from time to watermark): at every checkpoint time of either,
// the further of the two watermarks. A place's first checkpoint past it
// in the result is the earlier of its first checkpoints in a and b, so a
// place either history admitted stays admitted, from the earlier time.
func mergeHistories(a, b []Checkpoint) []Checkpoint {
	out := make([]Checkpoint, 0, len(a)+len(b))
	var wa, wb Place
	var haveA, haveB bool
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		var ms int64
		switch {
		case j == len(b) || i < len(a) && a[i].Ms <= b[j].Ms:
			ms = a[i].Ms
		default:
			ms = b[j].Ms
		}
		for i < len(a) && a[i].Ms == ms {
			wa, haveA = a[i].W, true
			i++
		}
		for j < len(b) && b[j].Ms == ms {
			wb, haveB = b[j].W, true
			j++
		}
		w := wa
		if !haveA || haveB && w.Before(wb) {
			w = wb
		}
		if n := len(out); n == 0 || out[n-1].W.Before(w) {
			out = append(out, Checkpoint{Ms: ms, W: w})
		}
	}
	return out
}

// trimHistory drops the checkpoints made before cutoffMs but the newest
// of them, which stays as the floor: a place before its watermark was
// passed at or before its time, long enough ago to be spent, and Check
// still says so.
func trimHistory(h []Checkpoint, cutoffMs int64) []Checkpoint {
	i, _ := slices.BinarySearchFunc(h, cutoffMs, func(c Checkpoint, ms int64) int {
		switch {
		case c.Ms < ms:
			return -1
		case c.Ms > ms:
			return 1
		}
		return 0
	})
	if i <= 1 {
		return h
	}
	return h[i-1:]
}

// historyKeepMs is how far back a shared history reaches: the claim
// window, and a minute for the clocks and the history's readers.
func (g *Gate) historyKeepMs() int64 { return g.cfg.ClaimWindowMs + 60_000 }

// adopt takes a history shared by the room's leader: the gate's history
// becomes its merge with the gate's own (which holds what the gate
// admitted alone while no leader was heard, see tick), trimmed; the
// watermark the further of the two; counts, the other edges' counts and
// remembered identities the watermark has passed are dropped; passed
// (the places the shared watermark passed since the last adopt) is
// added to the measured count.
func (g *Gate) adopt(shared []Checkpoint, passed float64) {
	now := g.clock.NowMs()
	g.mu.Lock()
	defer g.mu.Unlock()
	h := trimHistory(mergeHistories(*g.history.Load(), shared), now-g.historyKeepMs())
	if n := len(h); n > 0 && g.w.Before(h[n-1].W) {
		g.w = h[n-1].W
	}
	g.history.Store(&h)
	g.passed += max(passed, 0)
	g.counts = g.counts.from(g.w.Ms)
	g.remote = g.remote.from(g.w.Ms)
	g.forgetPassed()
	g.publish()
}

// pending copies this edge's counts at or after the watermark's
// millisecond: what it publishes for the leader to merge.
func (g *Gate) pending() map[int64]uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[int64]uint32, len(g.counts))
	for _, c := range g.counts.from(g.w.Ms) {
		out[c.ms] = c.n
	}
	return out
}

// setRemote replaces the other edges' counts, which Ahead and Queued add
// to this edge's own.
func (g *Gate) setRemote(m map[int64]uint32) {
	l := countsOf(m)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.remote = l.from(g.w.Ms)
	g.publish()
}

// restartTicking makes the next tick count from now: a coordinated gate
// that begins ticking alone must not spend the time it was coordinated.
func (g *Gate) restartTicking() {
	now := g.clock.NowMs()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lastTick, g.carry = now, 0
}

// holding reports whether the gate is still held after its start
// (GateConfig.HoldUntilMs).
func (g *Gate) holding() bool { return g.clock.NowMs() < g.cfg.HoldUntilMs }

// The encodings edges exchange. Both begin with a version byte, so a
// later format can be told apart; integers are varints, milliseconds
// delta-encoded in increasing order.
const (
	arrivalsV1 = 1
	historyV1  = 1
	historyV2  = 2 // historyV1 with the writer's stamp
)

// errEncoding is returned for a value that is not a valid encoding.
var errEncoding = errors.New("not a valid encoding")

// appendArrivals encodes an edge's counts and the time it published them
// (its clock, Unix ms): version, stamp, n, then n pairs (ms delta,
// count).
func appendArrivals(dst []byte, stampMs int64, counts map[int64]uint32) []byte {
	ms := make([]int64, 0, len(counts))
	for m, n := range counts {
		if n > 0 {
			ms = append(ms, m)
		}
	}
	slices.Sort(ms)
	dst = append(dst, arrivalsV1)
	dst = binary.AppendVarint(dst, stampMs)
	dst = binary.AppendUvarint(dst, uint64(len(ms)))
	prev := int64(0)
	for _, m := range ms {
		dst = binary.AppendVarint(dst, m-prev)
		dst = binary.AppendUvarint(dst, uint64(counts[m]))
		prev = m
	}
	return dst
}

// parseArrivals decodes appendArrivals' encoding, adding each count at or
// after fromMs into into (which may be nil to only read the stamp).
func parseArrivals(b []byte, fromMs int64, into map[int64]uint32) (stampMs int64, err error) {
	if len(b) == 0 || b[0] != arrivalsV1 {
		return 0, fmt.Errorf("arrivals: %w (version)", errEncoding)
	}
	b = b[1:]
	stampMs, k := binary.Varint(b)
	if k <= 0 {
		return 0, fmt.Errorf("arrivals: %w (stamp)", errEncoding)
	}
	b = b[k:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return 0, fmt.Errorf("arrivals: %w (length)", errEncoding)
	}
	b = b[k:]
	prev := int64(0)
	for i := range n {
		d, k := binary.Varint(b)
		if k <= 0 || (i > 0 && d <= 0) {
			return 0, fmt.Errorf("arrivals: %w (millisecond)", errEncoding)
		}
		b = b[k:]
		c, k := binary.Uvarint(b)
		if k <= 0 || c > math.MaxUint32 {
			return 0, fmt.Errorf("arrivals: %w (count)", errEncoding)
		}
		b = b[k:]
		prev += d
		if into != nil && prev >= fromMs {
			into[prev] += uint32(min(c, uint64(math.MaxUint32-into[prev])))
		}
	}
	if len(b) != 0 {
		return 0, fmt.Errorf("arrivals: %w (trailing bytes)", errEncoding)
	}
	return stampMs, nil
}

// appendHistory encodes a shared history and the places its watermark
// has passed in all (a float64, for the edges' measured rate): version,
// passed, n, then n checkpoints (ms delta, watermark ms delta, tie-break
// as 8 bytes: hash values do not shrink as varints).
func appendHistory(dst []byte, passed float64, h []Checkpoint) []byte {
	return appendHistoryBody(append(dst, historyV1), passed, h)
}

// appendHistoryAt is appendHistory with the leader's clock when it wrote
// it (Unix ms) after the version (2): the heartbeat of a leader whose
// watermark cannot move changes the value, which Consul does not count
// as a write when it is the same, so the followers hear it.
func appendHistoryAt(dst []byte, stampMs int64, passed float64, h []Checkpoint) []byte {
	dst = binary.AppendVarint(append(dst, historyV2), stampMs)
	return appendHistoryBody(dst, passed, h)
}

// appendHistoryBody is the encodings' part after the version (and stamp).
func appendHistoryBody(dst []byte, passed float64, h []Checkpoint) []byte {
	dst = binary.BigEndian.AppendUint64(dst, math.Float64bits(passed))
	dst = binary.AppendUvarint(dst, uint64(len(h)))
	var pms, pw int64
	for _, c := range h {
		dst = binary.AppendVarint(dst, c.Ms-pms)
		dst = binary.AppendVarint(dst, c.W.Ms-pw)
		dst = binary.BigEndian.AppendUint64(dst, c.W.TB)
		pms, pw = c.Ms, c.W.Ms
	}
	return dst
}

// parseHistory decodes appendHistory's and appendHistoryAt's encodings,
// refusing a history whose watermark does not move forward.
func parseHistory(b []byte) (passed float64, h []Checkpoint, err error) {
	switch {
	case len(b) > 0 && b[0] == historyV1:
		b = b[1:]
	case len(b) > 0 && b[0] == historyV2:
		_, k := binary.Varint(b[1:])
		if k <= 0 {
			return 0, nil, fmt.Errorf("history: %w (stamp)", errEncoding)
		}
		b = b[1+k:]
	default:
		return 0, nil, fmt.Errorf("history: %w (version)", errEncoding)
	}
	if len(b) < 8 {
		return 0, nil, fmt.Errorf("history: %w (passed)", errEncoding)
	}
	passed = math.Float64frombits(binary.BigEndian.Uint64(b[:8]))
	if !(passed >= 0) || math.IsInf(passed, 0) {
		return 0, nil, fmt.Errorf("history: %w (passed)", errEncoding)
	}
	b = b[8:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return 0, nil, fmt.Errorf("history: %w (length)", errEncoding)
	}
	b = b[k:]
	h = make([]Checkpoint, 0, n)
	var pms, pw int64
	for range n {
		dms, k1 := binary.Varint(b)
		if k1 <= 0 {
			return 0, nil, fmt.Errorf("history: %w (time)", errEncoding)
		}
		b = b[k1:]
		dw, k2 := binary.Varint(b)
		if k2 <= 0 || len(b) < k2+8 {
			return 0, nil, fmt.Errorf("history: %w (watermark)", errEncoding)
		}
		c := Checkpoint{Ms: pms + dms, W: Place{Ms: pw + dw, TB: binary.BigEndian.Uint64(b[k2:])}}
		b = b[k2+8:]
		if len(h) > 0 && (c.Ms < pms || !h[len(h)-1].W.Before(c.W)) {
			return 0, nil, fmt.Errorf("history: %w (checkpoint %d goes back)", errEncoding, len(h))
		}
		h = append(h, c)
		pms, pw = c.Ms, c.W.Ms
	}
	if len(b) != 0 {
		return 0, nil, fmt.Errorf("history: %w (trailing bytes)", errEncoding)
	}
	return passed, h, nil
}
