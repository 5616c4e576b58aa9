package bench

import (
	"net/http"
	"sort"
	"strconv"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Result is everything one run measured. It is what the JSON file holds;
// the Markdown summary and the SVG plot are drawn from it.
type Result struct {
	Scenario string    `json:"scenario"`
	Target   string    `json:"target"`
	Mode     Mode      `json:"mode"`
	Started  time.Time `json:"started"`
	// Duration is the scheduled length; Elapsed runs from the start until
	// the last request completed.
	Duration time.Duration `json:"duration_ns"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	// Requests counts every request that completed or failed; Throughput
	// is Requests per second of Duration (open mode) or Elapsed (closed).
	Requests   int64   `json:"requests"`
	Throughput float64 `json:"throughput_rps"`
	// TargetRequests is how many the open-loop schedule called for.
	TargetRequests float64 `json:"target_requests,omitempty"`
	// Latency runs from the intended send time (open mode) or the send
	// (closed mode). Uncorrected always runs from the actual send: the
	// figure a coordinated-omission-prone tool would print.
	Latency     Percentiles `json:"latency"`
	Uncorrected Percentiles `json:"uncorrected_latency"`
	// Retried counts answers a Podium edge got only by retrying on another
	// upstream (X-Podium-Retries); FirstTry is the latency of all the
	// others, which a slow upstream must not drag down.
	Retried  int64       `json:"retried,omitempty"`
	FirstTry Percentiles `json:"first_try_latency,omitempty"`
	// SendLag (open mode) runs from the intended to the actual send: the
	// time requests queued for a free connection plus the generator's own
	// timer and scheduling delay. Large with no server stall means the
	// generator itself is late, and Latency overstates the target's.
	SendLag Percentiles `json:"send_lag,omitempty"`
	// Statuses counts responses by HTTP status; Errors counts failures by
	// kind: transport errors (timeout, refused, reset, closed, not_sent,
	// other) and "http_4xx"/"http_5xx" for error statuses.
	Statuses   map[string]int64 `json:"statuses"`
	Errors     map[string]int64 `json:"errors"`
	ErrorCount int64            `json:"error_count"`
	// Expected counts, by status, the answers >= 400 that the scenario
	// names as right (MixEntry.Expect); they are in Statuses, not Errors.
	Expected      map[string]int64 `json:"expected,omitempty"`
	ExpectedCount int64            `json:"expected_count"`
	// Queued counts the 429s of a Podium waiting room (they carried its
	// token, which the client sent back next time): fans told to wait,
	// in Statuses, not Errors.
	Queued     int64             `json:"waiting_room_queued"`
	BytesRead  int64             `json:"body_bytes_read"`
	Streams    []StreamResult    `json:"streams"`
	Timeline   []TimelinePoint   `json:"timeline"`
	Percentile []PercentilePoint `json:"percentiles"`
	// UncorrectedPercentile is the distribution from the actual send (open
	// mode only; in closed mode it is Percentile).
	UncorrectedPercentile []PercentilePoint `json:"uncorrected_percentiles,omitempty"`
	Generator             GeneratorCost     `json:"generator"`
}

// StreamResult is one stream's share of a run.
type StreamResult struct {
	Name        string           `json:"name"`
	Connections int              `json:"connections"`
	Clients     int              `json:"clients"`
	Rate        Rate             `json:"rate"`
	Requests    int64            `json:"requests"`
	Throughput  float64          `json:"throughput_rps"`
	Latency     Percentiles      `json:"latency"`
	Statuses    map[string]int64 `json:"statuses"`
	Errors      map[string]int64 `json:"errors"`
	Expected    map[string]int64 `json:"expected,omitempty"`
	Ops         []OpResult       `json:"ops"`
}

// OpResult is one request kind within a stream.
type OpResult struct {
	Op       Op          `json:"op"`
	Path     string      `json:"path,omitempty"`
	Requests int64       `json:"requests"`
	Errors   int64       `json:"errors"`
	Latency  Percentiles `json:"latency"`
}

// TimelinePoint is one interval of the latency-over-time plot, placed by
// intended send time (open mode) or send time (closed mode).
type TimelinePoint struct {
	Second   float64 `json:"t_s"`
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	Rate     float64 `json:"rate_rps"`
	P50      int64   `json:"p50_us"`
	P99      int64   `json:"p99_us"`
	Max      int64   `json:"max_us"`
}

// GeneratorCost is the load generator's own CPU, so a reader can tell
// whether the generator, not the target, was the bottleneck.
type GeneratorCost struct {
	PID              int     `json:"pid"`
	UserSeconds      float64 `json:"user_s"`
	SystemSeconds    float64 `json:"system_s"`
	MicrosPerRequest float64 `json:"cpu_us_per_request"`
	MaxRSSKiB        int64   `json:"max_rss_kib"`
}

func (r *runner) result(start, end time.Time, streams []*streamRun) *Result {
	res := &Result{
		Scenario: r.sc.Name,
		Target:   r.base.String(),
		Mode:     r.sc.Mode,
		Started:  start,
		Duration: r.sc.Duration,
		Elapsed:  end.Sub(start),
		Statuses: map[string]int64{},
		Errors:   map[string]int64{},
		Expected: map[string]int64{},
	}
	all := newLatencyHistogram()
	allFirst := newLatencyHistogram()
	allService := newLatencyHistogram()
	allLag := newLatencyHistogram()
	var tls []*timeline
	for _, sr := range streams {
		st := sr.stream
		out := StreamResult{Name: st.Name, Connections: st.Connections, Clients: st.Clients,
			Statuses: map[string]int64{}, Errors: map[string]int64{}, Expected: map[string]int64{}}
		if r.sc.Mode == ModeOpen {
			out.Rate = st.Rate
			res.TargetRequests += sr.sched.countBefore(r.sc.Duration)
		}
		lat := newLatencyHistogram()
		ops := make([]*hdrhistogram.Histogram, len(st.Mix))
		for i := range ops {
			ops[i] = newLatencyHistogram()
			out.Ops = append(out.Ops, OpResult{Op: st.Mix[i].Op, Path: st.Mix[i].Path})
		}
		for _, rec := range sr.recorders {
			rec.flush()
			lat.Merge(rec.latency)
			allFirst.Merge(rec.firstTry)
			res.Retried += rec.retried
			allService.Merge(rec.service)
			allLag.Merge(rec.lag)
			for i := range rec.ops {
				ops[i].Merge(rec.ops[i].hist)
				out.Ops[i].Requests += rec.ops[i].requests
				out.Ops[i].Errors += rec.ops[i].errs
			}
			for code, n := range rec.statuses {
				out.Statuses[strconv.Itoa(code)] += n
				n -= rec.expected[code]
				if code == http.StatusTooManyRequests {
					n -= rec.queued
				}
				switch {
				case n == 0:
				case code >= 500:
					out.Errors["http_5xx"] += n
				case code >= 400:
					out.Errors["http_4xx"] += n
				}
			}
			for code, n := range rec.expected {
				out.Expected[strconv.Itoa(code)] += n
			}
			for k, n := range rec.kinds {
				out.Errors[k] += n
			}
			res.BytesRead += rec.bytes
			res.Queued += rec.queued
		}
		if n := sr.notSent.Load(); n > 0 {
			out.Errors["not_sent"] += n
		}
		for i := range ops {
			out.Ops[i].Latency = summarize(ops[i])
		}
		out.Latency = summarize(lat)
		out.Requests = lat.TotalCount()
		out.Throughput = float64(out.Requests) / r.span(res).Seconds()
		all.Merge(lat)
		for k, n := range out.Statuses {
			res.Statuses[k] += n
		}
		for k, n := range out.Errors {
			res.Errors[k] += n
			res.ErrorCount += n
		}
		for k, n := range out.Expected {
			res.Expected[k] += n
			res.ExpectedCount += n
		}
		res.Streams = append(res.Streams, out)
		tls = append(tls, sr.timeline)
	}
	res.Requests = all.TotalCount()
	res.Throughput = float64(res.Requests) / r.span(res).Seconds()
	res.Latency = summarize(all)
	if res.Retried > 0 {
		res.FirstTry = summarize(allFirst)
	}
	res.Uncorrected = summarize(allService)
	res.Percentile = distribution(all)
	if r.sc.Mode == ModeOpen {
		res.UncorrectedPercentile = distribution(allService)
		res.SendLag = summarize(allLag)
	}
	res.Timeline = mergeTimelines(tls, r.sc.Duration)
	return res
}

// span is the time the throughput is divided by: the schedule's length in
// open mode (what was offered), the measured length in closed mode.
func (r *runner) span(res *Result) time.Duration {
	if r.sc.Mode == ModeOpen || res.Elapsed <= 0 {
		return r.sc.Duration
	}
	return res.Elapsed
}

func mergeTimelines(tls []*timeline, d time.Duration) []TimelinePoint {
	if len(tls) == 0 {
		return nil
	}
	iv := tls[0].interval
	var pts []TimelinePoint
	for slot := range tls[0].slots {
		h := newTimelineHistogram()
		var errs int64
		for _, tl := range tls {
			if tl.slots[slot] != nil {
				h.Merge(tl.slots[slot])
			}
			errs += tl.errs[slot]
		}
		at := time.Duration(slot) * iv
		if h.TotalCount() == 0 && at >= d {
			continue
		}
		pts = append(pts, TimelinePoint{
			Second:   at.Seconds(),
			Requests: h.TotalCount(),
			Errors:   errs,
			Rate:     float64(h.TotalCount()) / iv.Seconds(),
			P50:      h.ValueAtPercentile(50),
			P99:      h.ValueAtPercentile(99),
			Max:      h.Max(),
		})
	}
	sort.Slice(pts, func(i, j int) bool { return pts[i].Second < pts[j].Second })
	return pts
}
