package bench

import (
	"fmt"
	"sort"
	"time"
)

// CompareReport is the comparison's JSON file and the source of its
// Markdown.
type CompareReport struct {
	Date      time.Time        `json:"date"`
	Command   string           `json:"command,omitempty"`
	Machine   Machine          `json:"machine"`
	Method    Method           `json:"method"`
	Scenarios []ScenarioReport `json:"scenarios"`
}

// Machine describes where the figures were taken.
type Machine struct {
	CPU       string            `json:"cpu"`
	CPUs      int               `json:"cpus"`
	Kernel    string            `json:"kernel"`
	GoVersion string            `json:"go"`
	Versions  map[string]string `json:"versions"`
}

// Method records the knobs of the run.
type Method struct {
	LoadCPU     string        `json:"load_cpu"`
	ProxyCPU    string        `json:"proxy_cpu"`
	Duration    time.Duration `json:"duration_ns"`
	Warmup      time.Duration `json:"warmup_ns"`
	Connections int           `json:"connections"`
	BodySize    int           `json:"body_bytes"`
	Upstreams   []string      `json:"upstreams"`
	PacedRate   float64       `json:"paced_rate_rps"`
	Priority    string        `json:"priority"`
}

// ScenarioReport is one scenario across every target.
type ScenarioReport struct {
	Name  string `json:"name"`
	Title string `json:"title"`
	// Unavailable, when not empty, says why the scenario was not run on
	// this machine and what to do about it.
	Unavailable string         `json:"unavailable,omitempty"`
	Rounds      int            `json:"rounds,omitempty"`
	Targets     []TargetResult `json:"targets,omitempty"`
	Ratios      []Ratio        `json:"ratios,omitempty"`
}

// TargetResult is one target's figures in one scenario.
type TargetResult struct {
	Target string `json:"target"`
	// OK is false when the target could not be started or measured; Error
	// then says why and the figures are zero.
	OK         bool             `json:"ok"`
	Error      string           `json:"error,omitempty"`
	Requests   int64            `json:"requests"`
	Throughput float64          `json:"throughput_rps"`
	Latency    Percentiles      `json:"latency"`
	ErrorCount int64            `json:"error_count"`
	Errors     map[string]int64 `json:"errors,omitempty"`
	// ProxyCPUMicrosPerRequest is the proxy processes' utime+stime over
	// the measured run divided by the requests completed (nginx: master
	// plus worker). Zero for the direct target.
	ProxyCPUSeconds          float64 `json:"proxy_cpu_s"`
	ProxyCPUMicrosPerRequest float64 `json:"proxy_cpu_us_per_request"`
	// ProxyPeakRSSKiB is VmHWM at the end of the run (summed over nginx's
	// processes).
	ProxyPeakRSSKiB              int64   `json:"proxy_peak_rss_kib"`
	UpstreamCPUMicrosPerRequest  float64 `json:"upstream_cpu_us_per_request"`
	GeneratorCPUMicrosPerRequest float64 `json:"generator_cpu_us_per_request"`
	Config                       string  `json:"config,omitempty"`
	RunReport                    string  `json:"run_report,omitempty"`
	// LoadCPUBusyFraction is the generator's and upstreams' CPU over the
	// run's wall time: near 1 means the load CPU, not the proxy, set the
	// throughput.
	LoadCPUBusyFraction float64 `json:"load_cpu_busy_fraction"`
	// UpstreamRequests is how many requests reached the synthetic
	// upstream during the measured run (-1: unknown); below Requests
	// when a cache answered the rest.
	UpstreamRequests int64 `json:"upstream_requests"`
	// OtherCPUCores is the CPU time used during the measured run by
	// everything but the proxy, generator and upstreams (other processes,
	// interrupts, time stolen by the hypervisor), in cores: on a shared
	// machine, above about 0.2 the round's latency tail is disturbed.
	OtherCPUCores float64 `json:"other_cpu_cores"`
	// Rounds holds every round's headline figures; the fields above are
	// the median round's.
	Rounds []RoundFigures `json:"rounds,omitempty"`
}

// RoundFigures is one round of one target.
type RoundFigures struct {
	OK                       bool    `json:"ok"`
	Error                    string  `json:"error,omitempty"`
	Throughput               float64 `json:"throughput_rps"`
	P99                      int64   `json:"p99_us"`
	ProxyCPUMicrosPerRequest float64 `json:"proxy_cpu_us_per_request"`
	OtherCPUCores            float64 `json:"other_cpu_cores"`
}

// medianRound picks the round with the median proxy CPU per request (the
// direct target: the median throughput) among the rounds that succeeded,
// and attaches every round's figures. All rounds failed: the first
// failure.
func medianRound(trs []TargetResult) TargetResult {
	var ok []TargetResult
	var figs []RoundFigures
	for _, tr := range trs {
		figs = append(figs, RoundFigures{OK: tr.OK, Error: tr.Error, Throughput: tr.Throughput, P99: tr.Latency.P99,
			ProxyCPUMicrosPerRequest: tr.ProxyCPUMicrosPerRequest, OtherCPUCores: tr.OtherCPUCores})
		if tr.OK {
			ok = append(ok, tr)
		}
	}
	if len(ok) == 0 {
		out := trs[0]
		out.Rounds = figs
		return out
	}
	sort.Slice(ok, func(i, j int) bool {
		if ok[i].Target == TargetDirect {
			return ok[i].Throughput < ok[j].Throughput
		}
		return ok[i].ProxyCPUMicrosPerRequest < ok[j].ProxyCPUMicrosPerRequest
	})
	out := ok[len(ok)/2]
	out.Rounds = figs
	if n := len(trs) - len(ok); n > 0 {
		out.Error = fmt.Sprintf("%d of %d rounds failed; the median of the others is shown", n, len(trs))
	}
	return out
}

// Ratio is Podium's figure over a peer's, from the same run.
type Ratio struct {
	Peer            string  `json:"peer"`
	CPUPerRequest   float64 `json:"cpu_per_request"`
	Throughput      float64 `json:"throughput"`
	P99             float64 `json:"p99"`
	PeakRSS         float64 `json:"peak_rss"`
	PodiumAvailable bool    `json:"podium_available"`
	Note            string  `json:"note,omitempty"`
}

func ratios(trs []TargetResult) []Ratio {
	var podium *TargetResult
	for i := range trs {
		if trs[i].Target == TargetPodium {
			podium = &trs[i]
		}
	}
	var out []Ratio
	for i := range trs {
		peer := &trs[i]
		if peer.Target != TargetHAProxy && peer.Target != TargetNginx {
			continue
		}
		r := Ratio{Peer: peer.Target}
		switch {
		case podium == nil:
			r.Note = "podium was not in this run"
		case !podium.OK:
			r.Note = "podium failed in this run"
		case !peer.OK:
			r.Note = peer.Target + " failed in this run"
		default:
			r.PodiumAvailable = true
			r.CPUPerRequest = div(podium.ProxyCPUMicrosPerRequest, peer.ProxyCPUMicrosPerRequest)
			r.Throughput = div(podium.Throughput, peer.Throughput)
			r.P99 = div(float64(podium.Latency.P99), float64(peer.Latency.P99))
			r.PeakRSS = div(float64(podium.ProxyPeakRSSKiB), float64(peer.ProxyPeakRSSKiB))
		}
		out = append(out, r)
	}
	return out
}

func div(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
