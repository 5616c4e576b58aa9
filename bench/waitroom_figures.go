package bench

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/podium-edge/podium/waitroom"
)

// The pure figures of `podium bench waitroom`: arrival order, the
// admitted rate over the steady window, and the verdict. They take what
// the clients and the scrapes recorded, so tests feed them records that
// must fail.

// visitorRecord is what one visitor's client saw. Times are Unix
// nanoseconds from this machine's wall clock, the clock the edge stamps
// places with (same host); zero means "never".
type visitorRecord struct {
	// FirstSent and FirstRecv bound the first request: the edge stamped
	// the visitor's place between them.
	FirstSent, FirstRecv int64
	// Place is the place the edge's token gave (decoded with the room's
	// keys); PlaceOK is false when no valid place token came back.
	Place   waitroom.Place
	PlaceOK bool
	// LastWaitSent is when the last request answered "wait" (429 with a
	// place token) was sent.
	LastWaitSent int64
	// AdmittedSent and AdmittedRecv bound the request answered 2xx.
	AdmittedSent, AdmittedRecv int64
	// EdgeAdmittedMs is the admission token's own time (when the edge
	// exchanged the place for an admission), in Unix ms; 0 when none.
	EdgeAdmittedMs int64
	// PassedAt is the first watermark sample (GET /rooms) that had passed
	// the visitor's place, PassedAfter the sample before it: the edge
	// admitted the place in (PassedAfter, PassedAt]. Zero: never seen
	// passed.
	PassedAt, PassedAfter int64
	Requests              int
}

// admitted reports whether the visitor got in.
func (v *visitorRecord) admitted() bool { return v.AdmittedRecv != 0 }

// OrderCheck counts visitors admitted ahead of one who arrived earlier.
//
// The edge admits by place, and a visitor B is "admitted ahead" of A when
// B's 2xx was received before A sent a request that was still told to
// wait: at that moment the edge had let B in and kept A out. A arrived
// earlier than B
//   - ByPlace: when A's place (from its token) is before B's: the edge's
//     own order, exact;
//   - ByArrival: when A's first answer was received at least Granularity
//     before B's first request was sent: the clients' order. The edge
//     stamps a place with its clock in whole milliseconds while it handles
//     the first request, so A's stamp is at most A's receipt and B's at
//     least B's send; 1 ms apart, A's millisecond is strictly earlier, and
//     only within one millisecond does the identity hash break the tie
//     (waitroom/doc.go). The round trip is outside X: queueing in the
//     client's connection pool cannot make an order look wrong.
type OrderCheck struct {
	Granularity time.Duration `json:"granularity_ns"`
	ByArrival   int           `json:"violations_by_arrival"`
	ByPlace     int           `json:"violations_by_place"`
	// PlaceOutsideRoundTrip counts places stamped outside their first
	// request's [send, receive] (whole ms): the edge's place does not
	// record the visitor's arrival.
	PlaceOutsideRoundTrip int `json:"place_outside_round_trip"`
	// ByStep counts visitors whose place the watermark passed in an
	// earlier sample (admission step, GET /rooms polled) than that of a
	// visitor who arrived Granularity earlier (as ByArrival): the
	// issue's definition, on the edge's admission rather than on when
	// the visitor came back to collect it.
	ByStep int `json:"violations_by_step"`
	// AdmittedBeforePassed counts visitors answered 2xx before the
	// watermark sample preceding the one that first showed their place
	// passed: let in before their turn.
	AdmittedBeforePassed int `json:"admitted_before_passed"`
	// Compared is how many admitted visitors were checked.
	Compared int    `json:"compared"`
	Example  string `json:"example,omitempty"`
}

// checkOrder counts the order violations among vs (see OrderCheck).
func checkOrder(vs []visitorRecord, granularity time.Duration) OrderCheck {
	oc := OrderCheck{Granularity: granularity}
	var placed []int
	for i := range vs {
		v := &vs[i]
		if !v.PlaceOK || v.FirstSent == 0 {
			continue
		}
		placed = append(placed, i)
		if v.admitted() {
			oc.Compared++
		}
		if v.admitted() && v.PassedAt != 0 && v.AdmittedRecv < v.PassedAfter {
			oc.AdmittedBeforePassed++
		}
		lo := v.FirstSent / 1e6 // the edge reads whole ms: floor
		hi := v.FirstRecv / 1e6
		if v.Place.Ms < lo || v.Place.Ms > hi {
			oc.PlaceOutsideRoundTrip++
		}
	}
	// By place: sweep in place order keeping the latest wait among the
	// earlier places.
	sort.Slice(placed, func(a, b int) bool { return vs[placed[a]].Place.Before(vs[placed[b]].Place) })
	var latest int64
	latestWho := -1
	for _, i := range placed {
		b := &vs[i]
		if b.admitted() && latest > b.AdmittedRecv {
			oc.ByPlace++
			if oc.Example == "" {
				oc.Example = violationExample("place", vs, latestWho, i)
			}
		}
		if b.LastWaitSent > latest {
			latest, latestWho = b.LastWaitSent, i
		}
	}
	// By arrival: visitors as A in order of first receipt, as B in order
	// of first send; every A received X before B sent is earlier.
	as := append([]int(nil), placed...)
	sort.Slice(as, func(a, b int) bool { return vs[as[a]].FirstRecv < vs[as[b]].FirstRecv })
	bs := append([]int(nil), placed...)
	sort.Slice(bs, func(a, b int) bool { return vs[bs[a]].FirstSent < vs[bs[b]].FirstSent })
	latest, latestWho = 0, -1
	var latestPass int64 // the latest pass among the earlier arrivals; MaxInt64: one never passed
	k := 0
	for _, i := range bs {
		b := &vs[i]
		for k < len(as) && vs[as[k]].FirstRecv+int64(granularity) <= b.FirstSent {
			a := &vs[as[k]]
			if a.LastWaitSent > latest {
				latest, latestWho = a.LastWaitSent, as[k]
			}
			pass := a.PassedAt
			if pass == 0 {
				pass = math.MaxInt64
			}
			latestPass = max(latestPass, pass)
			k++
		}
		if b.admitted() && latest > b.AdmittedRecv {
			oc.ByArrival++
			if oc.Example == "" {
				oc.Example = violationExample("arrival", vs, latestWho, i)
			}
		}
		if b.PassedAt != 0 && latestPass > b.PassedAt {
			oc.ByStep++
		}
	}
	return oc
}

// watermarkSample is the room's watermark as GET /rooms showed it.
type watermarkSample struct {
	At int64 // Unix ns, when the answer came
	W  waitroom.Place
}

// setPassTimes sets each placed visitor's PassedAt and PassedAfter from
// samples, in time order (the watermark only moves forward).
func setPassTimes(vs []visitorRecord, samples []watermarkSample) {
	for i := range vs {
		v := &vs[i]
		if !v.PlaceOK {
			continue
		}
		j := sort.Search(len(samples), func(j int) bool { return v.Place.Before(samples[j].W) })
		if j == len(samples) {
			continue
		}
		v.PassedAt = samples[j].At
		if j > 0 {
			v.PassedAfter = samples[j-1].At
		}
	}
}

// passRate is the rate at which the watermark passed the visitors'
// places: from the first pass plus margin to the last minus margin, the
// places passed over the time (times are sample times, ns).
func passRate(vs []visitorRecord, margin time.Duration, origin int64) RateWindow {
	var passes []int64
	for i := range vs {
		if vs[i].PassedAt != 0 {
			passes = append(passes, vs[i].PassedAt)
		}
	}
	start, end, ok := steadyWindow(passes, margin)
	if !ok {
		return RateWindow{}
	}
	return clientRate(passes, start, end, origin)
}

func violationExample(by string, vs []visitorRecord, a, b int) string {
	va, vb := &vs[a], &vs[b]
	return fmt.Sprintf("by %s: visitor %d (place %d.%d, first answer at %d ns) was told to wait in a request sent at %d ns, after visitor %d (place %d.%d, first request at %d ns) was admitted at %d ns",
		by, a, va.Place.Ms, va.Place.TB, va.FirstRecv, va.LastWaitSent, b, vb.Place.Ms, vb.Place.TB, vb.FirstSent, vb.AdmittedRecv)
}

// RateWindow is a rate over the steady window.
type RateWindow struct {
	// StartS and EndS are seconds since the first arrival.
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
	Count  float64 `json:"count"`
	Rate   float64 `json:"rate_per_s"`
}

// steadyWindow is the window over which the admitted rate is the room's
// own: from the first admission plus margin to the last minus margin
// (times in ns). A visitor learns of its admission on its next refresh,
// so claims lag the watermark by up to one refresh interval (plus
// jitter): inside the window the queue is never empty and every visitor
// whose place was passed has come back. ok is false when the window is
// empty.
func steadyWindow(admissions []int64, margin time.Duration) (start, end int64, ok bool) {
	if len(admissions) == 0 {
		return 0, 0, false
	}
	lo, hi := admissions[0], admissions[0]
	for _, t := range admissions {
		lo, hi = min(lo, t), max(hi, t)
	}
	start, end = lo+int64(margin), hi-int64(margin)
	return start, end, end > start
}

// clientRate is the admissions (receipt times, ns) in [start, end) over
// its length; origin is the run's zero for StartS and EndS.
func clientRate(admissions []int64, start, end, origin int64) RateWindow {
	w := RateWindow{StartS: float64(start-origin) / 1e9, EndS: float64(end-origin) / 1e9}
	for _, t := range admissions {
		if t >= start && t < end {
			w.Count++
		}
	}
	if end > start {
		w.Rate = w.Count / (float64(end-start) / 1e9)
	}
	return w
}

// scrape is one read of the edge's metrics.
type scrape struct {
	At       int64              `json:"at_unix_ns"`
	Admitted float64            `json:"admitted_total"`
	Queue    float64            `json:"queue_length"`
	Refused  map[string]float64 `json:"refused_total,omitempty"`
}

// counterRate is the rise of the admitted counter between the first and
// the last scrape inside [start, end], over the time between them.
func counterRate(samples []scrape, start, end, origin int64) RateWindow {
	first, last := -1, -1
	for i, s := range samples {
		if s.At < start || s.At > end {
			continue
		}
		if first < 0 {
			first = i
		}
		last = i
	}
	if first < 0 || last == first {
		return RateWindow{StartS: float64(start-origin) / 1e9, EndS: float64(end-origin) / 1e9}
	}
	a, b := samples[first], samples[last]
	w := RateWindow{StartS: float64(a.At-origin) / 1e9, EndS: float64(b.At-origin) / 1e9, Count: b.Admitted - a.Admitted}
	w.Rate = w.Count / (float64(b.At-a.At) / 1e9)
	return w
}

// Requirement is one line of the verdict. An Info line is measured
// against the same bound and shown, but does not fail the run.
type Requirement struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	OK   bool   `json:"ok"`
	Info bool   `json:"info,omitempty"`
}

// withinPercent reports whether got is within pct percent of want.
func withinPercent(got, want, pct float64) bool {
	return !math.IsNaN(got) && math.Abs(got-want) <= want*pct/100
}

// loadRequirements is the verdict on a load figure.
func loadRequirements(l *WaitroomLoad) []Requirement {
	rate := func(name string, w RateWindow) Requirement {
		return Requirement{Name: name, Want: fmt.Sprintf("%.0f/s ± 10%%", l.AdmitPerSecond),
			Got: fmt.Sprintf("%.1f/s (%.0f in %.1f–%.1f s)", w.Rate, w.Count, w.StartS, w.EndS), OK: withinPercent(w.Rate, l.AdmitPerSecond, 10)}
	}
	// The visitors collect their admissions on their next refresh, and
	// visitors with neighbouring places arrived together and refresh
	// together: the 2xx come in waves (the run's admitted_per_second shows
	// them), so a rate of 2xx over a window is the room's rate plus
	// whatever part of a wave the window's ends cut. Shown, not required:
	// the room's own rate is the watermark's.
	claims := func(name string, w RateWindow) Requirement {
		r := rate(name, w)
		r.Info = true
		return r
	}
	n := func(name string, got int64) Requirement {
		return Requirement{Name: name, Want: "0", Got: fmt.Sprint(got), OK: got == 0}
	}
	var breached, refusedWant int64
	for _, a := range l.Attacks {
		breached += a.Admitted
	}
	refusedWant = l.Attacks[attackForged].Answered
	refusedCopied := l.Attacks[attackCopied].Answered + l.Attacks[attackReplayed].Answered
	var otherRefused float64
	for reason, v := range l.RefusedDelta {
		if reason != "bad_mac" && reason != "copied" {
			otherRefused += v
		}
	}
	attacksSent := int64(0)
	for _, a := range l.Attacks {
		attacksSent += a.Sent
	}
	return []Requirement{
		{Name: "visitors admitted", Want: fmt.Sprint(l.Visitors), Got: fmt.Sprint(l.Admitted), OK: l.Admitted == l.Visitors},
		rate("admitted rate (edge's watermark over the visitors' places)", l.PassRate),
		rate("admitted rate (edge's queue_length falling once all arrived)", l.QueueDrainRate),
		claims("2xx collected (clients)", l.ClientRate),
		claims("2xx collected (edge's podium_edge_waitroom_admitted_total)", l.EdgeRate),
		n("order violations by arrival (≥ "+l.Order.Granularity.String()+" apart)", int64(l.Order.ByArrival)),
		n("order violations by admission step (≥ "+l.Order.Granularity.String()+" apart)", int64(l.Order.ByStep)),
		n("order violations by place", int64(l.Order.ByPlace)),
		n("visitors let in before the watermark passed them", int64(l.Order.AdmittedBeforePassed)),
		n("forged, copied or replayed tokens admitted", breached),
		{Name: "attacks sent", Want: "> 0 of each kind", Got: fmt.Sprintf("%d forged, %d copied, %d replayed", l.Attacks[attackForged].Sent, l.Attacks[attackCopied].Sent, l.Attacks[attackReplayed].Sent),
			OK: l.Attacks[attackForged].Sent > 0 && l.Attacks[attackCopied].Sent > 0 && l.Attacks[attackReplayed].Sent > 0 && attacksSent > 0},
		{Name: "refused-token metric counts every attack", Want: fmt.Sprintf("bad_mac %d, copied %d, other reasons 0", refusedWant, refusedCopied),
			Got: fmt.Sprintf("bad_mac %.0f, copied %.0f, other %.0f", l.RefusedDelta["bad_mac"], l.RefusedDelta["copied"], otherRefused),
			OK:  l.RefusedDelta["bad_mac"] == float64(refusedWant) && l.RefusedDelta["copied"] == float64(refusedCopied) && otherRefused == 0},
		n("responses 5xx", l.Status5xx),
		n("client errors", l.ClientErrors),
		n("unexpected answers (not 429 with a token, not 2xx)", l.Unexpected),
	}
}

// costRequirements is the verdict on the cost figure.
func costRequirements(c *WaitroomCost) []Requirement {
	var errs int64
	for _, r := range append(append([]CostRound(nil), c.Listing...), c.Waiting...) {
		errs += r.Unexpected
	}
	return []Requirement{
		{Name: "edge CPU per waiting-page request ÷ per cached listing hit", Want: fmt.Sprintf("≤ %.1f", c.MaxRatio),
			Got: fmt.Sprintf("%.2f (%.1f µs ÷ %.1f µs, medians of %d rounds)", c.Ratio, c.WaitingMicros, c.ListingMicros, c.Rounds),
			OK:  c.Ratio > 0 && c.Ratio <= c.MaxRatio},
		{Name: "cost rounds: errors and unexpected answers", Want: "0", Got: fmt.Sprint(errs), OK: errs == 0},
	}
}

// median of xs (of an even count the upper middle, as medianRound
// picks), 0 when empty.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
