package bench

import (
	"fmt"
	"io"
	"strings"
)

// WriteCompareMarkdown writes the comparison report README quotes.
func WriteCompareMarkdown(w io.Writer, rep *CompareReport) {
	m := rep.Machine
	fmt.Fprintf(w, "# Podium vs HAProxy vs nginx\n\n")
	fmt.Fprintf(w, "Measured %s on %d × %s, Linux %s, %s.  \n", rep.Date.Format("2006-01-02 15:04 MST"), m.CPUs, m.CPU, m.Kernel, m.GoVersion)
	fmt.Fprintf(w, "Peers: %s; %s; podium: %s.  \n", m.Versions[TargetHAProxy], m.Versions[TargetNginx], m.Versions[TargetPodium])
	if rep.Command != "" {
		fmt.Fprintf(w, "Command: `%s`\n", rep.Command)
	}
	me := rep.Method
	fmt.Fprintf(w, "\nMethod: the proxy under test is pinned to CPU %s (one process/thread: HAProxy `nbthread 1`, nginx `worker_processes 1`, Podium `GOMAXPROCS` = 1 from its affinity); the load generator (`podium bench run`, or `wrk -t1` in the scenarios named -wrk) and the %d synthetic upstreams (%d-byte body) share CPU %s; all of them run at %s scheduling priority (realtime: SCHED_FIFO 10, so neighbours on this shared machine cannot preempt them; the kernel's RT throttling still takes 50 ms a second, which can show as a ~50 ms max in saturated runs, alike for every target). Each target gets a %s warm-up, then a %s measured run at %d connections; targets are measured in interleaved rounds (A B C D, A B C D, …; the count is under each scenario's title) and the round with the median proxy CPU per request is shown, every round's figure in the last column. \"Reached upstream\" is the share of requests the synthetic upstream answered (from its own counter): 100%% without a cache. Proxy CPU is utime+stime from /proc/PID/stat over the measured run ÷ requests completed (nginx: master + worker); peak RSS is VmHWM. Ratios are Podium's figure over the peer's, from this same run (CPU and p99: lower is better; throughput: higher is better). When the load CPU is near 100%% busy, throughput is the generator's limit, not the proxy's: CPU µs/request is the figure that compares proxies. \"Other CPU\" is what the rest of the machine (other processes, interrupts, hypervisor steal) used during the run, in cores: above about 0.2 that round's latency tail says more about the neighbours than about the proxy.\n\n",
		me.ProxyCPU, len(me.Upstreams), me.BodySize, me.LoadCPU, me.Priority, me.Warmup, me.Duration, me.Connections)
	for _, s := range rep.Scenarios {
		fmt.Fprintf(w, "## %s\n\n%s\n\n", s.Name, s.Title)
		if s.Unavailable != "" {
			fmt.Fprintf(w, "Not measured here: %s.\n\n", s.Unavailable)
			continue
		}
		fmt.Fprintf(w, "%d round(s) per target.\n\n", s.Rounds)
		fmt.Fprintf(w, "| target | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | proxy CPU µs/req | peak RSS MiB | errors | reached upstream | load CPU busy | other CPU (cores) | CPU µs/req, every round |\n")
		fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		var notes []string
		for _, t := range s.Targets {
			if !t.OK {
				fmt.Fprintf(w, "| %s | failed (below) |||||||||||||\n", t.Target)
				notes = append(notes, fmt.Sprintf("%s failed: %s", t.Target, t.Error))
				continue
			}
			if t.Error != "" {
				notes = append(notes, fmt.Sprintf("%s: %s", t.Target, t.Error))
			}
			var every []string
			for _, r := range t.Rounds {
				switch {
				case !r.OK:
					every = append(every, "failed")
				case t.Target == TargetDirect:
					every = append(every, fmt.Sprintf("%.0f req/s", r.Throughput))
				default:
					every = append(every, fmt.Sprintf("%.1f", r.ProxyCPUMicrosPerRequest))
				}
			}
			cpu, rss := "—", "—"
			if t.Target != TargetDirect {
				cpu = fmt.Sprintf("%.1f", t.ProxyCPUMicrosPerRequest)
				rss = fmt.Sprintf("%.1f", float64(t.ProxyPeakRSSKiB)/1024)
			}
			l := t.Latency
			reached := "?"
			if t.UpstreamRequests >= 0 && t.Requests > 0 {
				reached = fmt.Sprintf("%d (%.3g%%)", t.UpstreamRequests, float64(t.UpstreamRequests)*100/float64(t.Requests))
			}
			fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %d | %s | %.0f%% | %.2f | %s |\n", t.Target, t.Throughput,
				ms(l.P50), ms(l.P90), ms(l.P99), ms(l.P999), ms(l.Max), cpu, rss, t.ErrorCount, reached, t.LoadCPUBusyFraction*100, t.OtherCPUCores, strings.Join(every, ", "))
		}
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", strings.ReplaceAll(n, "\n", " "))
		}
		for _, r := range s.Ratios {
			if !r.PodiumAvailable {
				fmt.Fprintf(w, "- Podium/%s: not available (%s).\n", r.Peer, r.Note)
				continue
			}
			fmt.Fprintf(w, "- Podium/%s: CPU per request ×%.2f, throughput ×%.2f, p99 ×%.2f, peak RSS ×%.2f.\n", r.Peer, r.CPUPerRequest, r.Throughput, r.P99, r.PeakRSS)
		}
		fmt.Fprintln(w)
	}
}
