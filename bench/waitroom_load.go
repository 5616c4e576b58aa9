package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podium-edge/podium/waitroom"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/valyala/fasthttp"
)

// The attacks mixed into the load, as AttackFigure keys.
const (
	// attackForged presents the attacker's own place token altered and
	// re-encoded: the kind byte flipped from place to admission, or the
	// place moved ahead to an admitted visitor's millisecond.
	attackForged = "forged"
	// attackCopied presents an admitted visitor's place token from
	// another identity.
	attackCopied = "copied"
	// attackReplayed presents an admitted visitor's admission token from
	// another identity.
	attackReplayed = "replayed"
	// attackersPerKind is how many identities (addresses in
	// 203.0.113.0/24, RFC 5737) each attack comes from: few, because each
	// takes a place in the queue that nobody claims.
	attackersPerKind = 16
)

var attackKinds = []string{attackForged, attackCopied, attackReplayed}

// AttackFigure counts one attack's requests and how the edge answered.
type AttackFigure struct {
	Sent     int64 `json:"sent"`
	Answered int64 `json:"answered"`
	// Admitted are answers 2xx: the attack got past the room.
	Admitted int64 `json:"admitted"`
	Waited   int64 `json:"waited"` // 429: sent back to the queue
	Other    int64 `json:"other"`
}

// WaitroomLoad is the load figure: the 20,000 visitors.
type WaitroomLoad struct {
	Visitors       int           `json:"visitors"`
	Arrival        time.Duration `json:"arrival_ns"`
	AdmitPerSecond float64       `json:"admit_per_second"`
	Refresh        time.Duration `json:"refresh_ns"`
	Jitter         float64       `json:"jitter"`
	// Admitted visitors got a 2xx before the deadline.
	Admitted     int              `json:"admitted"`
	Requests     int64            `json:"requests"`
	Statuses     map[string]int64 `json:"statuses"`
	Status5xx    int64            `json:"status_5xx"`
	Unexpected   int64            `json:"unexpected"`
	ClientErrors int64            `json:"client_errors"`
	ErrorKinds   map[string]int64 `json:"client_error_kinds,omitempty"`
	// BadTokens counts answers whose token did not verify with the room's
	// keys for the visitor's identity: the edge issued a broken token.
	BadTokens int64 `json:"bad_tokens"`
	// FirstAdmissionS and LastAdmissionS are seconds since the first
	// arrival; the steady window is between them, a refresh interval
	// (with jitter) in from each end.
	FirstAdmissionS float64 `json:"first_admission_s"`
	LastAdmissionS  float64 `json:"last_admission_s"`
	// PassRate is the rate the edge's watermark passed the visitors'
	// places (GET /rooms polled every 100 ms): when the edge admitted
	// them. ClientRate and EdgeRate are the rate at which the visitors
	// collected their admissions (2xx), which they do on their next
	// refresh.
	PassRate   RateWindow `json:"pass_rate"`
	ClientRate RateWindow `json:"client_rate"`
	EdgeRate   RateWindow `json:"edge_rate"`
	// QueueDrainRate is how fast the edge's queue_length fell once every
	// visitor had arrived: the watermark's own rate, free of the
	// refresh's quantisation (information, not a requirement).
	QueueDrainRate RateWindow              `json:"queue_drain_rate"`
	Order          OrderCheck              `json:"order"`
	Attacks        map[string]AttackFigure `json:"attacks"`
	// RefusedDelta is the rise of podium_edge_waitroom_tokens_refused_total
	// over the run, by reason.
	RefusedDelta map[string]float64 `json:"refused_delta"`
	// Wait is first answer to admission, seconds, by the clients; EdgeWait
	// is place to admission token, by the edge's stamps.
	Wait     Seconds `json:"wait_s"`
	EdgeWait Seconds `json:"edge_wait_s"`
	// ArrivalLag is first request sent after its scheduled arrival, ms:
	// large means the generator could not keep the schedule.
	ArrivalLag           Seconds       `json:"arrival_lag_ms"`
	Generator            GeneratorCost `json:"generator"`
	GeneratorCores       float64       `json:"generator_cores"`
	EdgeCPUSeconds       float64       `json:"edge_cpu_s"`
	EdgeMicrosPerRequest float64       `json:"edge_cpu_us_per_request"`
	DurationS            float64       `json:"duration_s"`
	Scrapes              []scrape      `json:"scrapes"`
	// AdmittedPerSecond is the clients' admissions in each second since
	// the first arrival.
	AdmittedPerSecond []int `json:"admitted_per_second"`
}

// Seconds are percentiles of a duration sample in the unit its field
// names.
type Seconds struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func percentiles(xs []float64) Seconds {
	if len(xs) == 0 {
		return Seconds{}
	}
	sort.Float64s(xs)
	at := func(p float64) float64 { return xs[min(len(xs)-1, int(p*float64(len(xs))))] }
	return Seconds{P50: at(0.5), P99: at(0.99), Max: xs[len(xs)-1]}
}

// loadRun is the load phase's shared state.
type loadRun struct {
	b       *roomBench
	origin  time.Time
	recs    []visitorRecord
	status  [600]atomic.Int64
	errs    sync.Map // kind -> *atomic.Int64
	nErr    atomic.Int64
	bad     atomic.Int64
	unexp   atomic.Int64
	reqs    atomic.Int64
	victims victimRing
	attacks map[string]*attackCounter
}

type attackCounter struct{ sent, answered, admitted, waited, other atomic.Int64 }

// victimRing keeps the tokens of the visitors admitted last, for the
// attackers to copy. Safe for concurrent use.
type victimRing struct {
	mu   sync.Mutex // guards the rest
	ring [64]victim
	n    int
}

type victim struct {
	place, admission []byte
	placeMs          int64
}

func (r *victimRing) add(v victim) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring[r.n%len(r.ring)] = v
	r.n++
}

func (r *victimRing) pick(rng *rand.Rand) (victim, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == 0 {
		return victim{}, false
	}
	return r.ring[rng.IntN(min(r.n, len(r.ring)))], true
}

// visitorAddr is visitor i's address: 198.18.0.0/16 from .0.1 on.
func visitorAddr(base [4]byte, i int) netip.Addr {
	n := binary.BigEndian.Uint32(base[:]) + uint32(i) + 1
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], n)
	return netip.AddrFrom4(a)
}

// identity is addr as the edge keys a waiting room: 16 bytes, IPv4 mapped.
func identity(addr netip.Addr) []byte { b := addr.As16(); return b[:] }

// roomAnswer is one answer to a request on the guarded path.
type roomAnswer struct {
	status     int
	retryAfter time.Duration
	token      []byte
	sent, recv int64
	err        error
}

// post sends POST roomBuyPath from addr (X-Forwarded-For) carrying tok
// in the room's header when set.
func (b *roomBench) post(addr netip.Addr, tok []byte) roomAnswer {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + b.listen + roomBuyPath)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.Header.Set("X-Forwarded-For", addr.String())
	if len(tok) > 0 {
		req.Header.SetBytesV("Podium-Waiting-Room", tok)
	}
	req.SetBodyString(`{"quantity":1,"email":"fan@example.com"}`)
	a := roomAnswer{sent: time.Now().UnixNano()}
	a.err = b.client.Do(req, resp)
	a.recv = time.Now().UnixNano()
	if a.err != nil {
		return a
	}
	a.status = resp.StatusCode()
	if t := resp.Header.Peek("Podium-Waiting-Room"); len(t) > 0 {
		a.token = append([]byte(nil), t...)
	}
	if s, err := strconv.Atoi(string(resp.Header.Peek("Retry-After"))); err == nil && s > 0 {
		a.retryAfter = time.Duration(s) * time.Second
	}
	return a
}

func (r *loadRun) count(a roomAnswer) {
	r.reqs.Add(1)
	if a.err != nil {
		r.nErr.Add(1)
		kind := errorKind(a.err)
		c, _ := r.errs.LoadOrStore(kind, new(atomic.Int64))
		c.(*atomic.Int64).Add(1)
		return
	}
	if a.status >= 0 && a.status < len(r.status) {
		r.status[a.status].Add(1)
	}
}

// load runs the load test and reduces it to the figure.
func (b *roomBench) load(ctx context.Context) (*WaitroomLoad, error) {
	o := b.opts
	drain := time.Duration(float64(o.Visitors) / o.AdmitPerSecond * float64(time.Second))
	budget := o.Arrival + drain*3/2 + 4*o.Refresh + 20*time.Second
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	r := &loadRun{b: b, recs: make([]visitorRecord, o.Visitors), attacks: map[string]*attackCounter{}}
	for _, k := range attackKinds {
		r.attacks[k] = &attackCounter{}
	}
	first, err := b.scrapeMetrics()
	if err != nil {
		return nil, err
	}
	pids := b.edgePIDs()
	cpu0, err := cpuSeconds(pids)
	if err != nil {
		return nil, err
	}
	ru0 := rusage()
	r.origin = time.Now().Add(100 * time.Millisecond)
	origin := r.origin.UnixNano()

	// The edge's metrics each second, its watermark every 100 ms: a
	// watermark sample brackets each place's admission step.
	scrapes := []scrape{first}
	var watermarks []watermarkSample
	stopPolls := make(chan struct{})
	scrapeDone := every(time.Second, stopPolls, func() {
		if s, err := b.scrapeMetrics(); err == nil {
			scrapes = append(scrapes, s)
		}
	})
	wmDone := every(100*time.Millisecond, stopPolls, func() {
		if w, err := b.watermark(); err == nil {
			watermarks = append(watermarks, w)
		}
	})

	var wg sync.WaitGroup
	lags := make([]float64, o.Visitors)
	base := [4]byte{198, 18, 0, 0}
	for i := range o.Visitors {
		wg.Add(1)
		due := r.origin.Add(time.Duration(int64(o.Arrival) * int64(i) / int64(o.Visitors)))
		go func() {
			defer wg.Done()
			lags[i] = r.visitor(ctx, i, visitorAddr(base, i), due)
		}()
	}
	attackCtx, stopAttacks := context.WithCancel(ctx)
	var awg sync.WaitGroup
	interval := time.Duration(float64(drain) / 2 / float64(o.Attacks))
	for k, kind := range attackKinds {
		awg.Add(1)
		go func() {
			defer awg.Done()
			r.attack(attackCtx, kind, k, interval)
		}()
	}
	wg.Wait()
	stopAttacks()
	awg.Wait()
	end := time.Now()
	cpu1, cerr := cpuSeconds(pids)
	ru1 := rusage()
	close(stopPolls)
	<-scrapeDone
	<-wmDone
	last, err := b.scrapeMetrics()
	if err != nil {
		return nil, err
	}
	scrapes = append(scrapes, last)

	l := &WaitroomLoad{Visitors: o.Visitors, Arrival: o.Arrival, AdmitPerSecond: o.AdmitPerSecond, Refresh: o.Refresh, Jitter: o.Jitter,
		Requests: r.reqs.Load(), Statuses: map[string]int64{}, ErrorKinds: map[string]int64{}, ClientErrors: r.nErr.Load(),
		BadTokens: r.bad.Load(), Unexpected: r.unexp.Load(), Attacks: map[string]AttackFigure{}, RefusedDelta: map[string]float64{},
		Scrapes: scrapes, DurationS: end.Sub(r.origin).Seconds()}
	for s := range r.status {
		if n := r.status[s].Load(); n > 0 {
			l.Statuses[strconv.Itoa(s)] = n
			if s >= 500 {
				l.Status5xx += n
			}
		}
	}
	r.errs.Range(func(k, v any) bool { l.ErrorKinds[k.(string)] = v.(*atomic.Int64).Load(); return true })
	for k, c := range r.attacks {
		l.Attacks[k] = AttackFigure{Sent: c.sent.Load(), Answered: c.answered.Load(), Admitted: c.admitted.Load(), Waited: c.waited.Load(), Other: c.other.Load()}
	}
	for reason, v := range last.Refused {
		if d := v - first.Refused[reason]; d != 0 {
			l.RefusedDelta[reason] = d
		}
	}
	l.Generator = generatorCost(ru0, ru1, l.Requests)
	l.GeneratorCores = (l.Generator.UserSeconds + l.Generator.SystemSeconds) / end.Sub(r.origin).Seconds()
	if cerr == nil {
		l.EdgeCPUSeconds = cpu1 - cpu0
		if l.Requests > 0 {
			l.EdgeMicrosPerRequest = l.EdgeCPUSeconds * 1e6 / float64(l.Requests)
		}
	}

	var admissions []int64
	var waits, edgeWaits []float64
	for i := range r.recs {
		v := &r.recs[i]
		if !v.admitted() {
			continue
		}
		l.Admitted++
		admissions = append(admissions, v.AdmittedRecv)
		waits = append(waits, float64(v.AdmittedRecv-v.FirstRecv)/1e9)
		if v.EdgeAdmittedMs != 0 && v.PlaceOK {
			edgeWaits = append(edgeWaits, float64(v.EdgeAdmittedMs-v.Place.Ms)/1e3)
		}
	}
	l.Wait, l.EdgeWait, l.ArrivalLag = percentiles(waits), percentiles(edgeWaits), percentiles(lags)
	setPassTimes(r.recs, watermarks)
	l.Order = checkOrder(r.recs, time.Millisecond)
	l.PassRate = passRate(r.recs, time.Second, origin)
	margin := time.Duration(float64(o.Refresh)*(1+o.Jitter)) + 100*time.Millisecond
	if start, stop, ok := steadyWindow(admissions, margin); ok {
		l.ClientRate = clientRate(admissions, start, stop, origin)
		l.EdgeRate = counterRate(scrapes, start, stop, origin)
	}
	if len(admissions) > 0 {
		lo, hi := admissions[0], admissions[0]
		for _, t := range admissions {
			lo, hi = min(lo, t), max(hi, t)
		}
		l.FirstAdmissionS, l.LastAdmissionS = float64(lo-origin)/1e9, float64(hi-origin)/1e9
		l.AdmittedPerSecond = make([]int, int((hi-origin)/1e9)+1)
		for _, t := range admissions {
			if t >= origin {
				l.AdmittedPerSecond[(t-origin)/1e9]++
			}
		}
	}
	l.QueueDrainRate = queueDrain(scrapes, origin+int64(o.Arrival)+int64(time.Second), origin)
	if err := writeVisitors(filepath.Join(b.c.dir, "visitors.csv"), r.recs); err != nil {
		return nil, err
	}
	return l, nil
}

// writeVisitors writes every visitor's record, a line each, for a reader
// who wants to check a figure by hand.
func writeVisitors(path string, vs []visitorRecord) error {
	var buf bytes.Buffer
	buf.WriteString("visitor,first_sent_ns,first_recv_ns,place_ms,place_tb,last_wait_sent_ns,passed_after_ns,passed_at_ns,admitted_sent_ns,admitted_recv_ns,edge_admitted_ms,requests\n")
	for i := range vs {
		v := &vs[i]
		fmt.Fprintf(&buf, "%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d\n", i, v.FirstSent, v.FirstRecv, v.Place.Ms, v.Place.TB, v.LastWaitSent,
			v.PassedAfter, v.PassedAt, v.AdmittedSent, v.AdmittedRecv, v.EdgeAdmittedMs, v.Requests)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing the visitors' records: %w", err)
	}
	return nil
}

// queueDrain is how fast the queue gauge fell from the first scrape after
// from until it was below a tenth of its value then.
func queueDrain(samples []scrape, from, origin int64) RateWindow {
	a := -1
	for i, s := range samples {
		if s.At >= from && a < 0 {
			a = i
		}
	}
	if a < 0 {
		return RateWindow{}
	}
	b := a
	for i := a + 1; i < len(samples) && samples[i].Queue >= samples[a].Queue/10; i++ {
		b = i
	}
	if b == a {
		return RateWindow{}
	}
	w := RateWindow{StartS: float64(samples[a].At-origin) / 1e9, EndS: float64(samples[b].At-origin) / 1e9, Count: samples[a].Queue - samples[b].Queue}
	w.Rate = w.Count / (float64(samples[b].At-samples[a].At) / 1e9)
	return w
}

// visitor is one visitor: it arrives at due, keeps the token it is given
// and comes back after Retry-After (with jitter) until admitted or ctx
// ends. It returns how late its first request was sent, in ms.
func (r *loadRun) visitor(ctx context.Context, i int, addr netip.Addr, due time.Time) float64 {
	o := r.b.opts
	rec := &r.recs[i]
	rng := rand.New(rand.NewPCG(uint64(i), 18))
	if !sleepCtx(ctx, time.Until(due)) {
		return 0
	}
	id := identity(addr)
	var tok []byte
	for ctx.Err() == nil {
		a := r.b.post(addr, tok)
		r.count(a)
		rec.Requests++
		if rec.FirstSent == 0 {
			rec.FirstSent, rec.FirstRecv = a.sent, a.recv
		}
		wait := o.Refresh
		switch {
		case a.err != nil:
		case a.status == fasthttp.StatusTooManyRequests && len(a.token) > 0:
			t, reason := r.b.room.Verify(a.token, id, time.Now().UnixMilli())
			if reason != waitroom.Valid || t.Kind != waitroom.KindPlace {
				r.bad.Add(1)
				break
			}
			if !rec.PlaceOK {
				rec.Place, rec.PlaceOK = t.Place, true
			} else if t.Place != rec.Place {
				r.bad.Add(1) // the edge moved a waiting visitor's place
			}
			rec.LastWaitSent = a.sent
			tok = a.token
			if a.retryAfter > 0 {
				wait = a.retryAfter
			}
		case a.status >= 200 && a.status < 300:
			rec.AdmittedSent, rec.AdmittedRecv = a.sent, a.recv
			if t, reason := r.b.room.Verify(a.token, id, time.Now().UnixMilli()); reason == waitroom.Valid && t.Kind == waitroom.KindAdmission {
				rec.EdgeAdmittedMs = t.AdmittedMs
				r.victims.add(victim{place: tok, admission: a.token, placeMs: rec.Place.Ms})
			} else {
				r.bad.Add(1)
			}
			return float64(rec.FirstSent-due.UnixNano()) / 1e6
		default:
			r.unexp.Add(1)
		}
		wait += time.Duration(rng.Float64() * o.Jitter * float64(wait))
		if !sleepCtx(ctx, wait) {
			break
		}
	}
	return float64(rec.FirstSent-due.UnixNano()) / 1e6
}

// attack sends o.Attacks requests of kind, one every interval once a
// visitor has been admitted (there is something to copy), from
// attackersPerKind identities of its own.
func (r *loadRun) attack(ctx context.Context, kind string, k int, interval time.Duration) {
	o := r.b.opts
	c := r.attacks[kind]
	rng := rand.New(rand.NewPCG(uint64(k), 1818))
	addrs := make([]netip.Addr, attackersPerKind)
	own := make([][]byte, attackersPerKind)
	for j := range addrs {
		addrs[j] = netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + k*attackersPerKind + j)})
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := 0; int64(n) < int64(o.Attacks); {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v, ok := r.victims.pick(rng)
		if !ok {
			continue
		}
		j := n % attackersPerKind
		if kind == attackForged && own[j] == nil {
			// The forger's own place token, to alter: an honest first
			// request, not an attack.
			a := r.b.post(addrs[j], nil)
			r.count(a)
			if a.err == nil && a.status == fasthttp.StatusTooManyRequests && len(a.token) > 0 {
				own[j] = a.token
			}
			continue
		}
		var tok []byte
		switch kind {
		case attackForged:
			tok = forgeToken(own[j], n, v.placeMs)
		case attackCopied:
			tok = v.place
		case attackReplayed:
			tok = v.admission
		}
		n++
		c.sent.Add(1)
		a := r.b.post(addrs[j], tok)
		r.count(a)
		if a.err != nil {
			continue
		}
		c.answered.Add(1)
		switch {
		case a.status >= 200 && a.status < 300:
			c.admitted.Add(1)
		case a.status == fasthttp.StatusTooManyRequests:
			c.waited.Add(1)
		default:
			c.other.Add(1)
			r.unexp.Add(1)
		}
	}
}

// forgeToken alters an encoded place token as a forger would, by the
// layout of waitroom/token.go (byte 1 the kind, bytes 32-39 the place's
// millisecond, big-endian): even n flips the kind to admission, odd n
// moves the place ahead to aheadMs. The MAC is left as it was.
func forgeToken(tok []byte, n int, aheadMs int64) []byte {
	raw, err := base64.RawURLEncoding.DecodeString(string(tok))
	if err != nil || len(raw) < 40 {
		return append([]byte(nil), tok...) // not ours to read: sent as it is
	}
	if n%2 == 0 {
		raw[1] = byte(waitroom.KindAdmission)
	} else {
		binary.BigEndian.PutUint64(raw[32:40], uint64(aheadMs))
	}
	return []byte(base64.RawURLEncoding.EncodeToString(raw))
}

// every calls f every d until stop is closed, from a goroutine of its
// own; the channel it returns is closed once f has run for the last time.
func every(d time.Duration, stop <-chan struct{}, f func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				f()
			}
		}
	}()
	return done
}

// sleepCtx sleeps d unless ctx ends first; false when it did.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// scrapeMetrics reads the room's admitted counter, queue length and
// refusals from the edge's /metrics.
func (b *roomBench) scrapeMetrics() (scrape, error) {
	s := scrape{At: time.Now().UnixNano(), Refused: map[string]float64{}}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + b.admin + "/metrics")
	if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
		return s, fmt.Errorf("scraping the edge's metrics: %w", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(resp.Body()))
	if err != nil {
		return s, fmt.Errorf("parsing the edge's metrics: %w", err)
	}
	room := func(labels map[string]string) bool { return labels["room"] == roomName }
	for _, m := range metricsOf(fams, "podium_edge_waitroom_admitted_total") {
		if room(m.labels) {
			s.Admitted = m.value
		}
	}
	for _, m := range metricsOf(fams, "podium_edge_waitroom_queue_length") {
		if room(m.labels) {
			s.Queue = m.value
		}
	}
	for _, m := range metricsOf(fams, "podium_edge_waitroom_tokens_refused_total") {
		if room(m.labels) {
			s.Refused[m.labels["reason"]] += m.value
		}
	}
	return s, nil
}

// metricValue is one series of a scraped metric.
type metricValue struct {
	labels map[string]string
	value  float64
}

// metricsOf is every series of the counter or gauge name.
func metricsOf(fams map[string]*dto.MetricFamily, name string) []metricValue {
	f := fams[name]
	if f == nil {
		return nil
	}
	var out []metricValue
	for _, m := range f.GetMetric() {
		mv := metricValue{labels: map[string]string{}}
		for _, lp := range m.GetLabel() {
			mv.labels[lp.GetName()] = lp.GetValue()
		}
		switch {
		case m.GetCounter() != nil:
			mv.value = m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			mv.value = m.GetGauge().GetValue()
		}
		out = append(out, mv)
	}
	return out
}

// watermark reads the room's watermark from the admin API's GET /rooms.
func (b *roomBench) watermark() (watermarkSample, error) {
	status, body, err := fasthttp.GetTimeout(nil, "http://"+b.admin+"/rooms", 5*time.Second)
	at := time.Now().UnixNano()
	if err != nil {
		return watermarkSample{}, fmt.Errorf("reading /rooms: %w", err)
	}
	if status != fasthttp.StatusOK {
		return watermarkSample{}, fmt.Errorf("reading /rooms: status %d", status)
	}
	var v struct {
		Rooms []struct {
			Name string `json:"name"`
			Ms   int64  `json:"watermark_ms"`
			TB   uint64 `json:"watermark_tiebreak"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return watermarkSample{}, fmt.Errorf("decoding /rooms: %w", err)
	}
	for _, r := range v.Rooms {
		if r.Name == roomName {
			return watermarkSample{At: at, W: waitroom.Place{Ms: r.Ms, TB: r.TB}}, nil
		}
	}
	return watermarkSample{}, fmt.Errorf("/rooms lists no room %q", roomName)
}
