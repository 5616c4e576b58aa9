package bench

import (
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Latency histograms record microseconds. One microsecond is below what a
// loopback round trip can take, and one minute is far above any request
// timeout the generator allows, so every sample that can occur fits.
const (
	histMinMicros = 1
	histMaxMicros = int64(time.Minute / time.Microsecond)

	// histSigFigs keeps every percentile within 0.1% of the recorded value,
	// the precision wrk2 and HdrHistogram's own tools report with.
	histSigFigs = 3

	// timelineSigFigs is coarser (1%) for the per-interval histograms that
	// only feed the latency-over-time plot, which cannot show finer detail;
	// it keeps one interval's histogram at about 20 KiB instead of 140 KiB.
	timelineSigFigs = 2
)

// newLatencyHistogram returns an empty histogram with the geometry every
// latency histogram of a run shares. Sharing one geometry is what makes
// merging exact: Merge then adds bucket counts one for one.
func newLatencyHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)
}

func newTimelineHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMinMicros, histMaxMicros, timelineSigFigs)
}

// micros converts d to whole microseconds clamped to the histogram range, so
// a sample is never dropped: a latency above a minute is recorded as a
// minute, and the report's max says so.
func micros(d time.Duration) int64 {
	v := int64(d / time.Microsecond)
	if v < histMinMicros {
		return histMinMicros
	}
	if v > histMaxMicros {
		return histMaxMicros
	}
	return v
}

// Percentiles is the latency summary every report carries, in microseconds.
type Percentiles struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean_us"`
	P50   int64   `json:"p50_us"`
	P90   int64   `json:"p90_us"`
	P99   int64   `json:"p99_us"`
	P999  int64   `json:"p99_9_us"`
	Max   int64   `json:"max_us"`
}

func summarize(h *hdrhistogram.Histogram) Percentiles {
	if h == nil || h.TotalCount() == 0 {
		return Percentiles{}
	}
	return Percentiles{
		Count: h.TotalCount(),
		Mean:  h.Mean(),
		P50:   h.ValueAtPercentile(50),
		P90:   h.ValueAtPercentile(90),
		P99:   h.ValueAtPercentile(99),
		P999:  h.ValueAtPercentile(99.9),
		Max:   h.Max(),
	}
}

// PercentilePoint is one point of the percentile distribution plot.
type PercentilePoint struct {
	Percentile float64 `json:"percentile"`
	Micros     int64   `json:"us"`
}

// distribution samples h at the percentiles HdrHistogram's plotter uses: a
// log scale of 1/(1-p), so the tail from p99 to p99.999 gets as much room as
// p0 to p90.
func distribution(h *hdrhistogram.Histogram) []PercentilePoint {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	var pts []PercentilePoint
	for _, p := range []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100} {
		pts = append(pts, PercentilePoint{Percentile: p, Micros: h.ValueAtPercentile(p)})
	}
	return pts
}
