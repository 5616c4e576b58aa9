package bench

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// WaitroomReport is what `podium bench waitroom` writes.
type WaitroomReport struct {
	Date    time.Time `json:"date"`
	Command string    `json:"command,omitempty"`
	Machine Machine   `json:"machine"`
	// LoadBefore and LoadAfter are the machine's load averages (1, 5,
	// 15 min) at start and end: the figures are only as quiet as this.
	LoadBefore   string         `json:"load_before"`
	LoadAfter    string         `json:"load_after"`
	Method       WaitroomMethod `json:"method"`
	Load         *WaitroomLoad  `json:"load"`
	Cost         *WaitroomCost  `json:"cost,omitempty"`
	Requirements []Requirement  `json:"requirements"`
	OK           bool           `json:"ok"`
}

// WaitroomMethod records where things ran.
type WaitroomMethod struct {
	LoadCPU     string `json:"load_cpu"`
	ProxyCPU    string `json:"proxy_cpu"`
	Priority    string `json:"priority"`
	Connections int    `json:"connections"`
	EdgeConfig  string `json:"edge_config"`
	Edge        string `json:"edge"`
	Admin       string `json:"admin"`
	Upstream    string `json:"upstream"`
}

// Failed are the requirements not met.
func (r *WaitroomReport) Failed() []Requirement {
	var out []Requirement
	for _, q := range r.Requirements {
		if !q.OK && !q.Info {
			out = append(out, q)
		}
	}
	return out
}

// writeWaitroomReport writes waitroom.json and waitroom.md into dir.
func writeWaitroomReport(dir string, r *WaitroomReport) error {
	if err := WriteJSON(filepath.Join(dir, "waitroom.json"), r); err != nil {
		return err
	}
	var md bytes.Buffer
	WriteWaitroomMarkdown(&md, r)
	if err := os.WriteFile(filepath.Join(dir, "waitroom.md"), md.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing waitroom.md: %w", err)
	}
	return nil
}

// WriteWaitroomMarkdown writes the human report of a waiting-room bench.
func WriteWaitroomMarkdown(w io.Writer, r *WaitroomReport) {
	verdict := "every requirement met"
	if f := r.Failed(); len(f) > 0 {
		verdict = fmt.Sprintf("%d requirement(s) FAILED", len(f))
	}
	fmt.Fprintf(w, "# Waiting room: load and cost (issue 18)\n\n%s — %s\n\n", r.Date.Format(time.RFC3339), verdict)
	if r.Command != "" {
		fmt.Fprintf(w, "Command: `%s`\n\n", r.Command)
	}
	fmt.Fprintf(w, "Machine: %s, %d CPUs, Linux %s, %s; edge `%s`. Load average %s at start, %s at end.\n",
		r.Machine.CPU, r.Machine.CPUs, r.Machine.Kernel, r.Machine.GoVersion, r.Machine.Versions[TargetPodium], r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(w, "Edge on CPU %s, generator and upstream on CPU %s, priority %s, %d client connections.\n\n",
		r.Method.ProxyCPU, r.Method.LoadCPU, r.Method.Priority, r.Method.Connections)
	fmt.Fprintf(w, "| requirement | want | got | |\n|---|---|---|---|\n")
	for _, q := range r.Requirements {
		mark := "ok"
		switch {
		case q.Info && q.OK:
			mark = "info: within"
		case q.Info:
			mark = "info: outside"
		case !q.OK:
			mark = "**FAIL**"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", q.Name, q.Want, q.Got, mark)
	}
	if l := r.Load; l != nil {
		fmt.Fprintf(w, "\n## Load\n\n%d visitors, each its own X-Forwarded-For address, arrive evenly over %s at a room admitting %.0f/s (refresh %s). "+
			"Each POSTs %s, keeps the token of the 429 in the `Podium-Waiting-Room` header and comes back after Retry-After × (1 + U[0, %.2f]) until answered 2xx.\n\n",
			l.Visitors, l.Arrival, l.AdmitPerSecond, l.Refresh, roomBuyPath, l.Jitter)
		fmt.Fprintf(w, "- admitted %d of %d; first at %.1f s, last at %.1f s after the first arrival; %d requests in %.1f s; statuses %s\n",
			l.Admitted, l.Visitors, l.FirstAdmissionS, l.LastAdmissionS, l.Requests, l.DurationS, counts(l.Statuses))
		fmt.Fprintf(w, "- admitted rate, as the edge admits (its watermark, polled every 100 ms from GET /rooms, passing the visitors' places; from the first pass + 1 s to the last − 1 s): %.1f/s (%.0f places in %.1f–%.1f s)\n",
			l.PassRate.Rate, l.PassRate.Count, l.PassRate.StartS, l.PassRate.EndS)
		fmt.Fprintf(w, "- admitted rate, as the edge's queue_length gauge (scraped each second) fell once every visitor had arrived: %.1f/s from %.1f to %.1f s (until a tenth was left)\n",
			l.QueueDrainRate.Rate, l.QueueDrainRate.StartS, l.QueueDrainRate.EndS)
		fmt.Fprintf(w, "- admitted rate, as the visitors collect it (2xx, on their next refresh), over the steady window (first admission + refresh × (1 + jitter) + 0.1 s to last − the same): clients %.1f/s (%.0f 2xx in %.1f–%.1f s); edge counter %.1f/s (scraped each second, %.1f–%.1f s); at most %d collected in one second. Visitors with neighbouring places arrived together and refresh together, so the 2xx come in waves (below): shown, not required\n",
			l.ClientRate.Rate, l.ClientRate.Count, l.ClientRate.StartS, l.ClientRate.EndS, l.EdgeRate.Rate, l.EdgeRate.StartS, l.EdgeRate.EndS, maxInt(l.AdmittedPerSecond))
		fmt.Fprintf(w, "- order: %d admitted visitors compared; %d admitted (2xx) while a visitor whose first answer came ≥ %s before their first request was still told to wait; %d passed by the watermark in an earlier step than such a visitor; %d admitted while an earlier place was told to wait; %d let in before the watermark passed them; %d places stamped outside their first request's round trip\n",
			l.Order.Compared, l.Order.ByArrival, l.Order.Granularity, l.Order.ByStep, l.Order.ByPlace, l.Order.AdmittedBeforePassed, l.Order.PlaceOutsideRoundTrip)
		if l.Order.Example != "" {
			fmt.Fprintf(w, "  - first violation: %s\n", l.Order.Example)
		}
		fmt.Fprintf(w, "- wait (first answer to 2xx): p50 %.1f s, p99 %.1f s, max %.1f s; by the edge's stamps (place to admission token): p50 %.1f s, p99 %.1f s, max %.1f s\n",
			l.Wait.P50, l.Wait.P99, l.Wait.Max, l.EdgeWait.P50, l.EdgeWait.P99, l.EdgeWait.Max)
		fmt.Fprintf(w, "- tokens from the edge that did not verify for their visitor: %d; client errors %d %s\n", l.BadTokens, l.ClientErrors, counts(l.ErrorKinds))
		fmt.Fprintf(w, "- generator: %.2f cores (%.1f µs/request), first requests late by p50 %.2f ms, p99 %.2f ms, max %.2f ms; edge %.1f µs/request over the load\n",
			l.GeneratorCores, l.Generator.MicrosPerRequest, l.ArrivalLag.P50, l.ArrivalLag.P99, l.ArrivalLag.Max, l.EdgeMicrosPerRequest)
		fmt.Fprintf(w, "\n| attack | sent | answered | admitted (2xx) | sent back (429) | other |\n|---|---|---|---|---|---|\n")
		for _, k := range attackKinds {
			a := l.Attacks[k]
			fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d |\n", k, a.Sent, a.Answered, a.Admitted, a.Waited, a.Other)
		}
		var reasons []string
		for k, v := range l.RefusedDelta {
			reasons = append(reasons, fmt.Sprintf("%s %.0f", k, v))
		}
		sort.Strings(reasons)
		fmt.Fprintf(w, "\npodium_edge_waitroom_tokens_refused_total rose by: %s. Forged: the attacker's own place token with the kind byte flipped to admission, or its place moved to an admitted visitor's millisecond, re-encoded. Copied: an admitted visitor's place token from another address. Replayed: an admitted visitor's admission token from another address.\n",
			strings.Join(reasons, ", "))
		fmt.Fprintf(w, "\nAdmissions per second (clients): %s\n", joinInts(l.AdmittedPerSecond))
	}
	if c := r.Cost; c != nil {
		fmt.Fprintf(w, "\n## Cost\n\nThe edge's CPU (all its threads, /proc/PID/task/*/schedstat) per answered request, paced at %.0f req/s for %s per round, interleaved listing then waiting page, %d rounds, the median reported. "+
			"Listing: `GET /api/games`, a cache hit. Waiting page: `POST %s` with the visitor's token, answered 429 with JSON and a fresh token, while %.0f identities wait in the paused room.\n\n",
			c.Rate, c.Duration, c.Rounds, roomBuyPath, c.Queued)
		fmt.Fprintf(w, "| round | listing µs/req | waiting µs/req | ratio | listing req/s | waiting req/s | listing upstream requests | load average |\n|---|---|---|---|---|---|---|---|\n")
		for i := range c.Listing {
			fmt.Fprintf(w, "| %d | %.1f | %.1f | %.2f | %.0f | %.0f | %d | %s |\n", i+1, c.Listing[i].MicrosPerRequest, c.Waiting[i].MicrosPerRequest,
				c.RoundRatios[i], c.Listing[i].Throughput, c.Waiting[i].Throughput, c.Listing[i].UpstreamRequests, c.Waiting[i].LoadAverage)
		}
		fmt.Fprintf(w, "| median | %.1f | %.1f | **%.2f** | | | | |\n", c.ListingMicros, c.WaitingMicros, c.Ratio)
	}
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, " ")
}

func maxInt(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
