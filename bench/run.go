package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/valyala/fasthttp"
)

// RunOptions says where and how to run a scenario. The zero value is not
// usable: Target is required.
type RunOptions struct {
	// Target is the base URL every request path is appended to, e.g.
	// http://127.0.0.1:8080.
	Target string
	// AllowRemote permits a target outside loopback. Without it Run refuses,
	// so a typo cannot aim an on-sale surge at someone else's host.
	AllowRemote bool
	// Progress, when set, receives a progress line every second (rewritten
	// in place when ProgressTTY) or a plain line every five seconds.
	Progress    io.Writer
	ProgressTTY bool
	// RunID prefixes Idempotency-Keys and emails so two runs never collide;
	// empty means random.
	RunID string
	// Dial, when set, replaces TCP dialing (tests use an in-memory
	// listener).
	Dial fasthttp.DialFunc
	// DrainGrace is how long after the scheduled end open-loop requests may
	// still complete; 0 means the scenario's request timeout plus a second.
	// Requests still queued after it are counted as error kind "not_sent",
	// with their latency so far, never silently dropped.
	DrainGrace time.Duration
}

// Run drives scenario sc against opts.Target and returns the measured
// result. It returns an error only when the run cannot start; failures of
// individual requests are counted in the result.
func Run(ctx context.Context, sc *Scenario, opts RunOptions) (*Result, error) {
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	base, err := checkTarget(opts.Target, opts.AllowRemote)
	if err != nil {
		return nil, err
	}
	if opts.RunID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		opts.RunID = hex.EncodeToString(b[:])
	}
	if opts.DrainGrace == 0 {
		opts.DrainGrace = sc.Timeout + time.Second
	}
	ru0 := rusage()
	r := &runner{sc: sc, opts: opts, base: base}
	res := r.run(ctx)
	ru1 := rusage()
	res.Generator = generatorCost(ru0, ru1, res.Requests)
	return res, nil
}

// checkTarget parses the base URL and refuses non-loopback hosts unless
// allowed. A name is resolved and every address must be loopback.
func checkTarget(target string, allowRemote bool) (*url.URL, error) {
	if target == "" {
		return nil, errors.New("no target: pass -target http://127.0.0.1:8080 (the edge's listen address)")
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", target, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("target %q: scheme must be http or https", target)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("target %q has no host", target)
	}
	if allowRemote {
		return u, nil
	}
	host := u.Hostname()
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else if ips, err = net.LookupIP(host); err != nil {
		return nil, fmt.Errorf("target %q: resolving %s: %w", target, host, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return nil, fmt.Errorf("target %q resolves to %s, outside loopback: pass -allow-remote if you mean to load that host", target, ip)
		}
	}
	return u, nil
}

type runner struct {
	sc   *Scenario
	opts RunOptions
	base *url.URL

	// Live counters for the progress line. Workers add; the progress loop
	// reads. The result is built from the per-worker recorders, not these.
	done, errs atomic.Int64
}

// job is one scheduled open-loop request.
type job struct {
	seq      uint64
	intended time.Time
}

func (r *runner) run(ctx context.Context) *Result {
	sc := r.sc
	interval := timelineInterval(sc.Duration)
	start := time.Now().Add(10 * time.Millisecond) // let every worker reach its loop first
	streams := make([]*streamRun, len(sc.Streams))
	var wg sync.WaitGroup
	for i := range sc.Streams {
		st := &sc.Streams[i]
		sr := &streamRun{
			stream:   st,
			sched:    newSchedule(st.Rate),
			timeline: newTimeline(interval, sc.Duration+r.opts.DrainGrace),
			client:   r.newClient(st),
		}
		sr.roomTokens = make([]atomic.Pointer[[]byte], max(st.Clients, 1))
		streams[i] = sr
		sr.recorders = make([]*recorder, st.Connections)
		var jobs chan job
		if sc.Mode == ModeOpen {
			// The queue is the backlog a stalled server builds up: jobs
			// keep their intended time while they wait in it.
			jobs = make(chan job, 4096)
		}
		for w := 0; w < st.Connections; w++ {
			rec := newRecorder(st.Mix, sr.timeline)
			sr.recorders[w] = rec
			wk := &worker{r: r, sr: sr, rec: rec, start: start, id: w,
				rng: mrand.New(mrand.NewPCG(uint64(i)<<32|uint64(w), uint64(time.Now().UnixNano())))}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if jobs != nil {
					wk.open(ctx, jobs)
				} else {
					wk.closed(ctx)
				}
			}()
		}
		if jobs != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.pace(ctx, sr, start, jobs)
			}()
		}
	}
	stopProgress := r.progress(start, streams)
	wg.Wait()
	end := time.Now()
	stopProgress()
	return r.result(start, end, streams)
}

// pace sends each request's intended time into jobs on schedule. When the
// workers fall behind, the send blocks, but the next job's intended time
// still comes from the schedule, so the backlog is measured, not skipped.
func (r *runner) pace(ctx context.Context, sr *streamRun, start time.Time, jobs chan<- job) {
	defer close(jobs)
	stop := start.Add(r.sc.Duration)
	hard := stop.Add(r.opts.DrainGrace)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	hardC := time.After(time.Until(hard))
	for i := uint64(0); ; i++ {
		t := start.Add(sr.sched.offset(i))
		if !t.Before(stop) {
			return
		}
		if d := time.Until(t); d > 0 {
			// Sleep overshoot (tens of µs) only delays the send; latency
			// is still taken from t, so it errs towards reporting more.
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		select {
		case jobs <- job{seq: i, intended: t}:
		case <-ctx.Done():
			return
		case <-hardC:
			// Workers never freed up: count what was due and not sent.
			sr.notSent.Add(int64(sr.sched.countBefore(r.sc.Duration)) - int64(i))
			return
		}
	}
}

// newClient builds one fasthttp.HostClient per stream with exactly as many
// connections as the stream has workers, so "64 connections" means 64.
func (r *runner) newClient(st *Stream) *fasthttp.HostClient {
	return &fasthttp.HostClient{
		Addr:                          hostPort(r.base),
		IsTLS:                         r.base.Scheme == "https",
		Name:                          "podium-bench",
		MaxConns:                      st.Connections,
		MaxIdleConnDuration:           time.Minute,
		ReadTimeout:                   r.sc.Timeout,
		WriteTimeout:                  r.sc.Timeout,
		Dial:                          r.opts.Dial,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		// A rejected request must not be resent behind our back: the
		// generator counts what the server did, once.
		RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

type streamRun struct {
	stream    *Stream
	sched     schedule
	client    *fasthttp.HostClient
	recorders []*recorder
	timeline  *timeline
	notSent   atomic.Int64
	// roomTokens are the waiting room tokens (Podium-Waiting-Room) the
	// edge gave each client of the stream (one slot without clients: the
	// generator's own address), sent back on the client's next request,
	// as a fan's browser sends the room's cookie back.
	roomTokens []atomic.Pointer[[]byte]
}

// roomHeader carries a Podium edge's waiting room token, both ways.
const roomHeader = "Podium-Waiting-Room"

// worker owns one connection's request loop and its recorder; nothing in
// it is shared, so the hot path takes no lock.
type worker struct {
	r     *runner
	sr    *streamRun
	rec   *recorder
	rng   *mrand.Rand
	start time.Time
	id    int    // connection index within the stream
	seq   uint64 // closed loop's own sequence, for unique keys
}

func (w *worker) open(ctx context.Context, jobs <-chan job) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	hard := w.start.Add(w.r.sc.Duration + w.r.opts.DrainGrace)
	for j := range jobs {
		if ctx.Err() != nil || time.Now().After(hard) {
			// Past the grace period: record what is left as not sent,
			// with the latency it had accrued, and keep draining.
			w.rec.recordNotSent(j.intended.Sub(w.start), time.Since(j.intended))
			w.r.errs.Add(1)
			continue
		}
		w.do(req, resp, j.seq, j.intended)
	}
}

func (w *worker) closed(ctx context.Context) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	stop := w.start.Add(w.r.sc.Duration)
	if d := time.Until(w.start); d > 0 {
		time.Sleep(d)
	}
	think := w.sr.stream.Think
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(stop) {
			return
		}
		w.seq++
		w.do(req, resp, w.seq, now)
		if think > 0 {
			select {
			case <-time.After(think):
			case <-ctx.Done():
				return
			}
		}
	}
}

// do sends one request and records it. Latency runs from intended (the
// scheduled time in open mode, the send time in closed mode); the
// uncorrected service time, from the actual send, is kept beside it so the
// report shows how much queueing the correction uncovered.
func (w *worker) do(req *fasthttp.Request, resp *fasthttp.Response, seq uint64, intended time.Time) {
	mi := w.pick()
	client := w.build(req, mi, seq)
	resp.Reset()
	sent := time.Now()
	err := w.sr.client.Do(req, resp)
	done := time.Now()
	status := 0
	if err == nil {
		status = resp.StatusCode()
	}
	retried := err == nil && len(resp.Header.Peek(retriesHeader)) > 0
	queued := false
	if tok := resp.Header.Peek(roomHeader); err == nil && len(tok) > 0 {
		t := bytes.Clone(tok)
		w.sr.roomTokens[client].Store(&t)
		queued = status == fasthttp.StatusTooManyRequests
	}
	failed := w.rec.record(mi, intended.Sub(w.start), done.Sub(intended), done.Sub(sent), status, err, int64(len(resp.Body())), retried, queued)
	if w.r.sc.Mode == ModeOpen {
		_ = w.rec.lag.RecordValue(micros(sent.Sub(intended)))
	}
	w.r.done.Add(1)
	if failed {
		w.r.errs.Add(1)
	}
}

func (w *worker) pick() int {
	mix := w.sr.stream.Mix
	if len(mix) == 1 {
		return 0
	}
	total := 0
	for _, m := range mix {
		total += m.Weight
	}
	n := w.rng.IntN(total)
	for i, m := range mix {
		if n < m.Weight {
			return i
		}
		n -= m.Weight
	}
	return len(mix) - 1
}

// build fills req for mix entry mi. Request and header values are written
// into req's own buffers; the only allocations are the small strings of
// paths and keys.
// It returns the index of the client it sends as (its roomTokens slot).
func (w *worker) build(req *fasthttp.Request, mi int, seq uint64) (client int) {
	sc, st, m := w.r.sc, w.sr.stream, &w.sr.stream.Mix[mi]
	req.Reset()
	req.URI().SetScheme(w.r.base.Scheme)
	req.URI().SetHost(w.r.base.Host)
	req.Header.SetUserAgent("podium-bench")
	prefix := w.r.base.EscapedPath()
	if len(prefix) > 0 && prefix[len(prefix)-1] == '/' {
		prefix = prefix[:len(prefix)-1]
	}
	game := sc.Games.First + w.rng.IntN(sc.Games.Last-sc.Games.First+1)
	switch m.Op {
	case OpGet:
		req.SetRequestURI(w.r.base.Scheme + "://" + w.r.base.Host + prefix + m.Path)
	case OpList:
		p := prefix + "/api/games?limit=" + strconv.Itoa(sc.ListLimit)
		if len(sc.Sports) > 0 && w.rng.Float64() < sc.SportFraction {
			p += "&sport=" + url.QueryEscape(sc.Sports[w.rng.IntN(len(sc.Sports))])
		}
		req.SetRequestURI(w.r.base.Scheme + "://" + w.r.base.Host + p)
	case OpDetail:
		req.SetRequestURI(w.r.base.Scheme + "://" + w.r.base.Host + prefix + "/api/games/" + strconv.Itoa(game))
	case OpBuy:
		req.SetRequestURI(w.r.base.Scheme + "://" + w.r.base.Host + prefix + "/api/games/" + strconv.Itoa(game) + "/buy")
		req.Header.SetMethod(fasthttp.MethodPost)
		req.Header.SetContentType("application/json")
		// Unique per run, stream, connection and sequence: a retried buy
		// of ours would reuse it, a new buyer never does.
		key := fmt.Sprintf("bench-%s-%s-%d-%d", w.r.opts.RunID, st.Name, w.id, seq)
		req.Header.Set("Idempotency-Key", key)
		req.SetBodyString(fmt.Sprintf(`{"quantity":%d,"email":"fan-%s-%x-%d@example.com"}`, m.Quantity, w.r.opts.RunID, w.rng.Uint32(), seq))
	}
	if st.Clients > 0 {
		client = int(seq % uint64(st.Clients))
		req.Header.Set("X-Forwarded-For", clientIP(client))
	}
	if t := w.sr.roomTokens[client].Load(); t != nil {
		req.Header.SetBytesV(roomHeader, *t)
	}
	return client
}

// clientIP returns the n-th address of 198.18.0.0/15 (RFC 2544's benchmark
// range), skipping .0 so no client looks like a network address.
func clientIP(n int) string {
	n++
	return "198." + strconv.Itoa(18+n>>16) + "." + strconv.Itoa(n>>8&0xff) + "." + strconv.Itoa(n&0xff)
}

// timelineInterval keeps the latency-over-time plot near 60 points.
func timelineInterval(d time.Duration) time.Duration {
	iv := (d / 60).Round(time.Second)
	if iv < time.Second {
		iv = time.Second
	}
	return iv
}

// progress starts the progress loop and returns its stop function.
func (r *runner) progress(start time.Time, streams []*streamRun) func() {
	if r.opts.Progress == nil {
		return func() {}
	}
	every := 5 * time.Second
	if r.opts.ProgressTTY {
		every = time.Second
	}
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(every)
		defer tick.Stop()
		var lastDone int64
		last := time.Now()
		for {
			select {
			case <-stop:
				if r.opts.ProgressTTY {
					fmt.Fprintln(r.opts.Progress)
				}
				return
			case now := <-tick.C:
				done := r.done.Load()
				rate := float64(done-lastDone) / now.Sub(last).Seconds()
				lastDone, last = done, now
				el := now.Sub(start)
				target := 0.0
				if r.sc.Mode == ModeOpen {
					for _, sr := range streams {
						target += sr.sched.rateAt(el)
					}
				}
				r.printProgress(el, rate, target, done, r.errs.Load())
			}
		}
	}()
	return func() { close(stop); <-finished }
}

func (r *runner) printProgress(el time.Duration, rate, target float64, done, errs int64) {
	total := r.sc.Duration
	frac := math.Min(1, math.Max(0, el.Seconds()/total.Seconds()))
	want := ""
	if target > 0 {
		want = fmt.Sprintf(" (target %.0f/s)", target)
	}
	if r.opts.ProgressTTY {
		const width = 30
		n := int(frac * width)
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if i < n {
				bar[i] = '='
			}
		}
		fmt.Fprintf(r.opts.Progress, "\r[%s] %3.0f%% %s/%s  %8.0f req/s%s  done %d  errors %d\x1b[K",
			bar, frac*100, el.Truncate(time.Second), total, rate, want, done, errs)
		return
	}
	fmt.Fprintf(r.opts.Progress, "%s/%s %.0f req/s%s done=%d errors=%d\n",
		el.Truncate(time.Second), total, rate, want, done, errs)
}

// recorder holds one worker's measurements. It is owned by one goroutine
// during the run and read only after it ends; not safe for concurrent use.
type recorder struct {
	firstTry *hdrhistogram.Histogram // from intended time, answers the edge did not retry
	retried  int64                   // answers carrying X-Podium-Retries
	latency  *hdrhistogram.Histogram // from intended time
	service  *hdrhistogram.Histogram // from actual send
	lag      *hdrhistogram.Histogram // intended time to actual send (open mode)
	ops      []opRecord
	statuses map[int]int64
	expected map[int]int64 // statuses >= 400 the op's mix entry expects
	queued   int64         // 429s of a waiting room: a fan told to wait, not an error
	kinds    map[string]int64
	bytes    int64

	tl      *timeline
	slot    int
	slotH   *hdrhistogram.Histogram
	slotN   int64
	slotErr int64
}

type opRecord struct {
	mix            *MixEntry
	hist           *hdrhistogram.Histogram
	requests, errs int64
}

func newRecorder(mix []MixEntry, tl *timeline) *recorder {
	ops := len(mix)
	rec := &recorder{
		firstTry: newLatencyHistogram(),
		latency:  newLatencyHistogram(),
		service:  newLatencyHistogram(),
		lag:      newLatencyHistogram(),
		ops:      make([]opRecord, ops),
		statuses: map[int]int64{},
		expected: map[int]int64{},
		kinds:    map[string]int64{},
		tl:       tl,
		slot:     -1,
		slotH:    newTimelineHistogram(),
	}
	for i := range rec.ops {
		rec.ops[i].hist = newLatencyHistogram()
		rec.ops[i].mix = &mix[i]
	}
	return rec
}

// retriesHeader is what a Podium edge adds to an answer it got only after
// retrying on another upstream; the report splits latency on it, so a
// reader sees what the requests that needed no retry went through.
const retriesHeader = "X-Podium-Retries"

// record counts one answer and says whether it failed: a transport error,
// or a status >= 400 that the op's mix entry does not expect. queued is a
// waiting room's 429 (it carried the room's token): the fan waits in the
// queue, which is the room working, never a failure.
func (rec *recorder) record(mi int, at, latency, service time.Duration, status int, err error, n int64, retried, queued bool) (failed bool) {
	v := micros(latency)
	_ = rec.latency.RecordValue(v)
	if retried {
		rec.retried++
	} else {
		_ = rec.firstTry.RecordValue(v)
	}
	_ = rec.service.RecordValue(micros(service))
	op := &rec.ops[mi]
	_ = op.hist.RecordValue(v)
	op.requests++
	if err != nil {
		rec.kinds[errorKind(err)]++
		failed = true
	} else {
		rec.statuses[status]++
		rec.bytes += n
		if queued {
			rec.queued++
		} else if status >= 400 {
			if op.mix.expects(status) {
				rec.expected[status]++
			} else {
				failed = true
			}
		}
	}
	if failed {
		op.errs++
	}
	rec.timelineAdd(at, v, failed)
	return failed
}

func (rec *recorder) recordNotSent(at, latency time.Duration) {
	v := micros(latency)
	_ = rec.latency.RecordValue(v)
	rec.kinds["not_sent"]++
	rec.timelineAdd(at, v, true)
}

func (rec *recorder) timelineAdd(at time.Duration, v int64, failed bool) {
	slot := rec.tl.slotOf(at)
	if slot != rec.slot {
		rec.flush()
		rec.slot = slot
	}
	_ = rec.slotH.RecordValue(v)
	rec.slotN++
	if failed {
		rec.slotErr++
	}
}

// flush hands the current interval's samples to the shared timeline: one
// lock per worker per interval instead of one per request.
func (rec *recorder) flush() {
	if rec.slot >= 0 && rec.slotN > 0 {
		rec.tl.add(rec.slot, rec.slotH, rec.slotErr)
	}
	rec.slotH.Reset()
	rec.slotN, rec.slotErr = 0, 0
}

// errorKind names a transport failure for the report.
func errorKind(err error) string {
	switch {
	case errors.Is(err, fasthttp.ErrTimeout), errors.Is(err, fasthttp.ErrDialTimeout), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, fasthttp.ErrConnectionClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return "no_free_conns"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

// timeline collects per-interval histograms for the latency-over-time plot.
// Safe for concurrent use.
type timeline struct {
	interval time.Duration
	mu       sync.Mutex // guards slots and errs
	slots    []*hdrhistogram.Histogram
	errs     []int64
}

func newTimeline(interval, span time.Duration) *timeline {
	n := int(span/interval) + 2
	return &timeline{interval: interval, slots: make([]*hdrhistogram.Histogram, n), errs: make([]int64, n)}
}

func (t *timeline) slotOf(at time.Duration) int {
	s := int(at / t.interval)
	if s < 0 {
		return 0
	}
	if s >= len(t.slots) {
		return len(t.slots) - 1
	}
	return s
}

func (t *timeline) add(slot int, h *hdrhistogram.Histogram, errs int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slots[slot] == nil {
		t.slots[slot] = newTimelineHistogram()
	}
	t.slots[slot].Merge(h)
	t.errs[slot] += errs
}
