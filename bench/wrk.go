package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// wrkScript makes wrk print its summary as one JSON line after the run,
// marked so it can be found among wrk's own output. wrk's latency runs from
// each request's send (a closed loop has no intended send time).
const wrkScript = `-- Written by podium bench compare: wrk's summary as one JSON line.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '` + wrkMarker + `{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
`

const wrkMarker = "PODIUM-WRK "

// wrkSummary is what wrkScript prints.
type wrkSummary struct {
	Requests   int64   `json:"requests"`
	DurationUs int64   `json:"duration_us"`
	Bytes      int64   `json:"bytes"`
	Connect    int64   `json:"connect"`
	Read       int64   `json:"read"`
	Write      int64   `json:"write"`
	Status     int64   `json:"status"`
	Timeout    int64   `json:"timeout"`
	Mean       float64 `json:"mean_us"`
	P50        int64   `json:"p50_us"`
	P90        int64   `json:"p90_us"`
	P99        int64   `json:"p99_us"`
	P999       int64   `json:"p999_us"`
	Max        int64   `json:"max_us"`
}

// parseWrk finds wrkScript's line in wrk's output.
func parseWrk(out []byte) (*wrkSummary, error) {
	for _, line := range bytes.Split(out, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte(wrkMarker)); ok {
			var s wrkSummary
			if err := json.Unmarshal(rest, &s); err != nil {
				return nil, fmt.Errorf("decoding wrk's summary %q: %w", rest, err)
			}
			return &s, nil
		}
	}
	return nil, fmt.Errorf("wrk printed no summary: %s", strings.TrimSpace(string(out)))
}

// result turns wrk's summary into a Result. wrk counts answers that are
// not 2xx or 3xx without saying which, so they are one error kind here.
func (s *wrkSummary) result(url string, d time.Duration) *Result {
	res := &Result{
		Scenario:   "wrk",
		Target:     url,
		Mode:       ModeClosed,
		Duration:   d,
		Elapsed:    time.Duration(s.DurationUs) * time.Microsecond,
		Requests:   s.Requests,
		BytesRead:  s.Bytes,
		Latency:    Percentiles{Count: s.Requests, Mean: s.Mean, P50: s.P50, P90: s.P90, P99: s.P99, P999: s.P999, Max: s.Max},
		Statuses:   map[string]int64{},
		Errors:     map[string]int64{},
		ErrorCount: s.Connect + s.Read + s.Write + s.Status + s.Timeout,
	}
	if secs := res.Elapsed.Seconds(); secs > 0 {
		res.Throughput = float64(s.Requests) / secs
	}
	for kind, n := range map[string]int64{"refused": s.Connect, "read": s.Read, "write": s.Write, "timeout": s.Timeout, "http_not_2xx_3xx": s.Status} {
		if n > 0 {
			res.Errors[kind] = n
		}
	}
	return res
}

// generateWrk runs wrk for d against url, pinned to the load CPU at the
// comparison's priority, and writes its output and the Result beside prefix.
func (c *comparison) generateWrk(ctx context.Context, url string, d time.Duration, prefix string) (*Result, error) {
	if c.wrkScript == "" {
		script := filepath.Join(c.dir, "runs", "summary.lua")
		if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
			return nil, fmt.Errorf("writing the wrk script: %w", err)
		}
		c.wrkScript = script
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	argv := c.pinned(c.opts.LoadCPU, []string{c.opts.Wrk, "-t1", "-c" + strconv.Itoa(c.opts.Connections),
		"-d" + strconv.Itoa(secs) + "s", "--timeout", "5s", "-s", c.wrkScript, url})
	cctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, c.opts.Taskset, argv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("wrk: %w: %s", err, strings.TrimSpace(out.String()))
	}
	sum, err := parseWrk(out.Bytes())
	if err != nil {
		return nil, err
	}
	res := sum.result(url, time.Duration(secs)*time.Second)
	res.Started = time.Now().Add(-res.Elapsed)
	res.Generator = GeneratorCost{PID: cmd.ProcessState.Pid(),
		UserSeconds: cmd.ProcessState.UserTime().Seconds(), SystemSeconds: cmd.ProcessState.SystemTime().Seconds()}
	if res.Requests > 0 {
		res.Generator.MicrosPerRequest = (res.Generator.UserSeconds + res.Generator.SystemSeconds) * 1e6 / float64(res.Requests)
	}
	md := fmt.Sprintf("# wrk %s\n\n```\n%s\n```\n", url, strings.TrimSpace(out.String()))
	if err := os.WriteFile(prefix+".md", []byte(md), 0o644); err != nil {
		return nil, err
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return nil, err
	}
	return res, os.WriteFile(prefix+".json", js, 0o644)
}
