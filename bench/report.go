package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"time"
)

// WriteJSON writes v as indented JSON to path.
func WriteJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", path, err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// ms formats microseconds as milliseconds with three decimals, the unit
// load testers read latency in.
func ms(us int64) string { return fmt.Sprintf("%.3f", float64(us)/1000) }

// WriteMarkdown writes the human summary of one run.
func WriteMarkdown(w io.Writer, r *Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s against %s\n\n", r.Scenario, r.Target)
	fmt.Fprintf(&b, "Started %s, %s mode, scheduled %s, elapsed %s.\n\n",
		r.Started.UTC().Format(time.RFC3339), r.Mode, r.Duration, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(&b, "| requests | throughput (req/s) | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n")
	fmt.Fprintf(&b, "|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	l := r.Latency
	fmt.Fprintf(&b, "| %d | %.0f | %d | %s | %s | %s | %s | %s |\n\n",
		r.Requests, r.Throughput, r.ErrorCount, ms(l.P50), ms(l.P90), ms(l.P99), ms(l.P999), ms(l.Max))
	if r.Mode == ModeOpen {
		fmt.Fprintf(&b, "Latency is measured from each request's intended send time (coordinated omission corrected); the schedule called for %.0f requests. ", r.TargetRequests)
		u := r.Uncorrected
		fmt.Fprintf(&b, "Measured from the actual send instead, p50 would read %s ms, p99 %s ms and max %s ms. ", ms(u.P50), ms(u.P99), ms(u.Max))
		fmt.Fprintf(&b, "Send lag (intended to actual send: waiting for a free connection plus the generator's own timer delay): p50 %s ms, p99 %s ms.\n\n", ms(r.SendLag.P50), ms(r.SendLag.P99))
	} else {
		b.WriteString("Closed loop: each connection sends its next request when the previous answer arrives; latency runs from the send.\n\n")
	}
	if r.ExpectedCount > 0 {
		fmt.Fprintf(&b, "%d answers were statuses the scenario expects (%s), counted apart, not as errors.\n\n", r.ExpectedCount, counts(r.Expected))
	}
	if r.Queued > 0 {
		fmt.Fprintf(&b, "%d answers were a waiting room's 429 (with its Podium-Waiting-Room token): fans told to wait in the queue, counted apart, not as errors. Each client sent its token back on its next request, as a browser sends the room's cookie.\n\n", r.Queued)
	}
	if r.Retried > 0 {
		f := r.FirstTry
		fmt.Fprintf(&b, "The edge retried %d answers on another upstream (X-Podium-Retries). The %d answered at the first try: p50 %s ms, p90 %s ms, p99 %s ms, max %s ms.\n\n",
			r.Retried, r.Requests-r.Retried, ms(f.P50), ms(f.P90), ms(f.P99), ms(f.Max))
	}
	b.WriteString("## Streams and request kinds\n\n")
	b.WriteString("| stream | op | requests | errors | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Streams {
		for _, o := range s.Ops {
			name := string(o.Op)
			if o.Path != "" {
				name += " " + o.Path
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %d | %s | %s | %s | %s |\n", s.Name, name, o.Requests, o.Errors,
				ms(o.Latency.P50), ms(o.Latency.P99), ms(o.Latency.P999), ms(o.Latency.Max))
		}
	}
	b.WriteString("\n## Responses\n\n")
	fmt.Fprintf(&b, "| stream | statuses | expected (not errors) | errors by kind |\n|---|---|---|---|\n")
	for _, s := range r.Streams {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", s.Name, counts(s.Statuses), counts(s.Expected), counts(s.Errors))
	}
	g := r.Generator
	fmt.Fprintf(&b, "\n## Generator\n\nThe generator itself used %.2f s user + %.2f s system CPU: %.1f µs per request (max RSS %d KiB). ",
		g.UserSeconds, g.SystemSeconds, g.MicrosPerRequest, g.MaxRSSKiB)
	b.WriteString("If that approaches the wall time of the run, the generator, not the target, set the pace.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func counts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// WriteSVG draws two panels: latency over time (p50, p99, max per
// interval, log scale) and the percentile distribution on HdrHistogram's
// 1/(1-p) axis.
func WriteSVG(w io.Writer, r *Result) error {
	const W, H = 900, 1000
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" text-anchor="middle">%s against %s (%s mode)</text>`+"\n", W/2, xmlEscape(r.Scenario), xmlEscape(r.Target), r.Mode)

	// Panel 1: latency over time.
	p1 := plot{x: 80, y: 50, w: 780, h: 250, logY: true}
	var maxT float64
	for _, t := range r.Timeline {
		maxT = math.Max(maxT, t.Second)
	}
	p1.xmin, p1.xmax = 0, math.Max(maxT, 1)
	p1.ymin, p1.ymax = latencyRange(r)
	p1.axes(&b, "time since start (s)", "latency (ms)", linearTicks(p1.xmin, p1.xmax), nil)
	series := []struct {
		name, color string
		get         func(TimelinePoint) int64
	}{
		{"p50", "#1f77b4", func(t TimelinePoint) int64 { return t.P50 }},
		{"p99", "#ff7f0e", func(t TimelinePoint) int64 { return t.P99 }},
		{"max", "#d62728", func(t TimelinePoint) int64 { return t.Max }},
	}
	for i, s := range series {
		var pts [][2]float64
		for _, t := range r.Timeline {
			if t.Requests == 0 {
				continue
			}
			pts = append(pts, [2]float64{t.Second, float64(s.get(t)) / 1000})
		}
		p1.line(&b, pts, s.color)
		p1.legend(&b, i, s.name, s.color)
	}

	// Panel 2: throughput over time (the ramp of a ticket drop).
	p3 := plot{x: 80, y: 370, w: 780, h: 200}
	p3.xmin, p3.xmax = p1.xmin, p1.xmax
	var maxRate float64
	for _, t := range r.Timeline {
		maxRate = math.Max(maxRate, t.Rate)
	}
	p3.ymin, p3.ymax = 0, niceCeil(maxRate)
	p3.axes(&b, "time since start (s)", "completed (req/s)", linearTicks(p3.xmin, p3.xmax), linearTicks(0, p3.ymax))
	var ratePts, errPts [][2]float64
	for _, t := range r.Timeline {
		ratePts = append(ratePts, [2]float64{t.Second, t.Rate})
		errPts = append(errPts, [2]float64{t.Second, float64(t.Errors) / math.Max(1, float64(t.Requests)) * t.Rate})
	}
	p3.line(&b, ratePts, "#1f77b4")
	p3.legend(&b, 0, "all", "#1f77b4")
	p3.line(&b, errPts, "#d62728")
	p3.legend(&b, 1, "errors", "#d62728")

	// Panel 3: percentile distribution.
	p2 := plot{x: 80, y: 660, w: 780, h: 270, logY: true}
	p2.xmin, p2.xmax = 0, 5 // log10(1/(1-p)) from p0 to p99.999
	p2.ymin, p2.ymax = p1.ymin, p1.ymax
	xt := []tick{{0, "0%"}, {1, "90%"}, {2, "99%"}, {3, "99.9%"}, {4, "99.99%"}, {5, "99.999%"}}
	p2.axes(&b, "percentile", "latency (ms)", xt, nil)
	var pts [][2]float64
	for _, p := range r.Percentile {
		x := 5.0
		if p.Percentile < 100 {
			x = math.Min(5, math.Log10(1/(1-p.Percentile/100)))
		}
		pts = append(pts, [2]float64{x, float64(p.Micros) / 1000})
	}
	name := "from send"
	if r.Mode == ModeOpen {
		name = "from intended send (corrected)"
	}
	p2.line(&b, pts, "#2ca02c")
	p2.legend(&b, 0, "", "#2ca02c")
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", p2.x+37, p2.y+14, name)
	if len(r.UncorrectedPercentile) > 0 {
		pts = pts[:0]
		for _, p := range r.UncorrectedPercentile {
			x := 5.0
			if p.Percentile < 100 {
				x = math.Min(5, math.Log10(1/(1-p.Percentile/100)))
			}
			pts = append(pts, [2]float64{x, float64(p.Micros) / 1000})
		}
		p2.line(&b, pts, "#9467bd")
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#9467bd" stroke-width="3"/><text x="%.1f" y="%.1f">from actual send (what a closed-loop tool would report)</text>`+"\n",
			p2.x+260, p2.y+10, p2.x+282, p2.y+10, p2.x+287, p2.y+14)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func latencyRange(r *Result) (float64, float64) {
	lo, hi := math.Inf(1), 0.0
	for _, t := range r.Timeline {
		if t.Requests == 0 {
			continue
		}
		lo = math.Min(lo, float64(t.P50)/1000)
		hi = math.Max(hi, float64(t.Max)/1000)
	}
	for _, p := range append(append([]PercentilePoint{}, r.Percentile...), r.UncorrectedPercentile...) {
		lo = math.Min(lo, float64(p.Micros)/1000)
		hi = math.Max(hi, float64(p.Micros)/1000)
	}
	if math.IsInf(lo, 1) || hi <= 0 {
		return 0.01, 1
	}
	lo = math.Pow(10, math.Floor(math.Log10(math.Max(lo, 0.001))))
	hi = math.Pow(10, math.Ceil(math.Log10(hi*1.01)))
	return lo, hi
}

type tick struct {
	v     float64
	label string
}

func linearTicks(lo, hi float64) []tick {
	step := math.Pow(10, math.Floor(math.Log10((hi-lo)/5)))
	for (hi-lo)/step > 10 {
		step *= 2
	}
	var ts []tick
	for v := math.Ceil(lo/step) * step; v <= hi+step/1e6; v += step {
		ts = append(ts, tick{v, trimFloat(v)})
	}
	return ts
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.3f", v)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// plot is one panel of an SVG chart; y may be logarithmic.
type plot struct {
	x, y, w, h             float64
	xmin, xmax, ymin, ymax float64
	logY                   bool
}

func (p plot) px(v float64) float64 { return p.x + (v-p.xmin)/(p.xmax-p.xmin)*p.w }

func (p plot) py(v float64) float64 {
	if p.logY {
		v = math.Log10(math.Max(v, p.ymin))
		return p.y + p.h - (v-math.Log10(p.ymin))/(math.Log10(p.ymax)-math.Log10(p.ymin))*p.h
	}
	return p.y + p.h - (v-p.ymin)/(p.ymax-p.ymin)*p.h
}

func (p plot) axes(b *strings.Builder, xlabel, ylabel string, xt, yt []tick) {
	fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", p.x, p.y, p.w, p.h)
	for _, t := range xt {
		x := p.px(t.v)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`, x, p.y, x, p.y+p.h)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, p.y+p.h+16, t.label)
	}
	if yt == nil && p.logY {
		for v := p.ymin; v <= p.ymax*1.0001; v *= 10 {
			yt = append(yt, tick{v, trimFloat(v)})
		}
	}
	for _, t := range yt {
		y := p.py(t.v)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`, p.x, y, p.x+p.w, y)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", p.x-6, y+4, t.label)
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", p.x+p.w/2, p.y+p.h+34, xlabel)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">%s</text>`+"\n",
		p.x-55, p.y+p.h/2, p.x-55, p.y+p.h/2, ylabel)
}

func (p plot) line(b *strings.Builder, pts [][2]float64, color string) {
	if len(pts) == 0 {
		return
	}
	b.WriteString(`<polyline fill="none" stroke-width="1.8" stroke="` + color + `" points="`)
	for i, pt := range pts {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(b, "%.1f,%.1f", p.px(pt[0]), p.py(pt[1]))
	}
	b.WriteString(`"/>` + "\n")
}

func (p plot) legend(b *strings.Builder, i int, name, color string) {
	x, y := p.x+10+float64(i)*90, p.y+14
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/><text x="%.1f" y="%.1f">%s</text>`+"\n",
		x, y-4, x+22, y-4, color, x+27, y, name)
}

func xmlEscape(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;")
	return r.Replace(s)
}
