package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Compare runs the comparison and writes compare.md and compare.json into
// opts.ResultsDir. A target that fails is reported as failed; Compare
// returns an error only when the comparison itself cannot run (no
// upstream, no results directory).
func Compare(ctx context.Context, opts CompareOptions) (*CompareReport, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.ResultsDir)
	if err != nil {
		return nil, fmt.Errorf("results directory: %w", err)
	}
	for _, sub := range []string{"runs", "configs", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("creating results directory: %w", err)
		}
	}
	c := &comparison{opts: opts, dir: dir}
	up, err := c.startUpstreams(ctx)
	if err != nil {
		return nil, err
	}
	defer up.stop()
	c.upstreams = up.addrs

	rep := &CompareReport{
		Date:    time.Now().UTC(),
		Command: opts.Command,
		Machine: machineInfo(opts),
		Method: Method{LoadCPU: opts.LoadCPU, ProxyCPU: opts.ProxyCPU, Duration: opts.Duration, Warmup: opts.Warmup,
			Connections: opts.Connections, BodySize: opts.BodySize, Upstreams: c.upstreams, PacedRate: opts.PacedRate, Priority: opts.Priority},
	}
	for _, cs := range CompareScenarios {
		why := cs.unavailable(&opts)
		sr := ScenarioReport{Name: cs.Name, Title: cs.Title, Unavailable: why}
		if why == "" && !contains(opts.Scenarios, cs.Name) {
			continue
		}
		be := up
		if why == "" && cs.Origin {
			var err error
			if be, err = c.startOrigins(ctx); err != nil {
				// Every target of the scenario fails alike; the others
				// still run.
				fmt.Fprintf(opts.Log, "compare: %s: %v\n", cs.Name, err)
				for _, t := range opts.Targets {
					sr.Targets = append(sr.Targets, TargetResult{Target: t, Error: err.Error(), UpstreamRequests: -1})
				}
				sr.Ratios = ratios(sr.Targets)
				rep.Scenarios = append(rep.Scenarios, sr)
				continue
			}
		}
		if why == "" {
			// Rounds interleave the targets (A B C D, A B C D, ...) so
			// that a neighbour's burst of CPU use on this shared machine
			// lands on every target alike, and the median round per
			// target is reported.
			nr := cs.Rounds
			if opts.Rounds > 0 {
				nr = opts.Rounds
			}
			sr.Rounds = nr
			rounds := map[string][]TargetResult{}
			for round := 1; round <= nr; round++ {
				for _, t := range opts.Targets {
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					tr := c.measure(ctx, &cs, t, be, round)
					if tr.OK {
						fmt.Fprintf(opts.Log, "compare: %s / %s round %d/%d: %.0f req/s, p99 %s ms, proxy %.1f µs/request, peak RSS %d KiB, %d errors\n",
							cs.Name, t, round, nr, tr.Throughput, ms(tr.Latency.P99), tr.ProxyCPUMicrosPerRequest, tr.ProxyPeakRSSKiB, tr.ErrorCount)
					} else {
						fmt.Fprintf(opts.Log, "compare: %s / %s round %d/%d: FAILED: %s\n", cs.Name, t, round, nr, tr.Error)
					}
					rounds[t] = append(rounds[t], tr)
				}
			}
			for _, t := range opts.Targets {
				sr.Targets = append(sr.Targets, medianRound(rounds[t]))
			}
			sr.Ratios = ratios(sr.Targets)
			if be != up {
				be.stop()
			}
		}
		rep.Scenarios = append(rep.Scenarios, sr)
	}
	if err := WriteJSON(filepath.Join(dir, "compare.json"), rep); err != nil {
		return rep, err
	}
	var md bytes.Buffer
	WriteCompareMarkdown(&md, rep)
	if err := os.WriteFile(filepath.Join(dir, "compare.md"), md.Bytes(), 0o644); err != nil {
		return rep, fmt.Errorf("writing compare.md: %w", err)
	}
	return rep, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

type comparison struct {
	opts      CompareOptions
	dir       string
	upstreams []string
	wrkScript string // wrkScript's file, written on first use
}
