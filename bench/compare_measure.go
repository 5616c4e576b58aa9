package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// measure runs one scenario against one target: start, wait until it
// proxies, warm up, then sample CPU around the measured run.
func (c *comparison) measure(ctx context.Context, cs *CompareScenario, target string, be *backend, round int) TargetResult {
	tr := TargetResult{Target: target}
	name := fmt.Sprintf("%s-%s-r%d", cs.Name, target, round)
	fail := func(format string, a ...any) TargetResult {
		tr.OK = false
		tr.Error = fmt.Sprintf(format, a...)
		return tr
	}
	base := "http://" + be.addrs[0]
	var proxy *child
	if target != TargetDirect {
		var err error
		var cfg string
		base, proxy, cfg, err = c.startProxy(name, target, be.addrs, cs.WrkPath != "")
		tr.Config = cfg
		if err != nil {
			return fail("%v", err)
		}
		defer proxy.stop()
		if err := waitReady(ctx, proxy, base+be.readyPath, be.readyLen, c.opts.ReadyTimeout); err != nil {
			return fail("%s did not proxy: %v", target, err)
		}
	}
	run := func(d time.Duration, prefix string) (*Result, error) {
		if cs.WrkPath != "" {
			return c.generateWrk(ctx, base+cs.WrkPath, d, prefix)
		}
		return c.generate(ctx, base, cs.args(&c.opts), d, prefix)
	}
	if _, err := run(c.opts.Warmup, filepath.Join(c.dir, "runs", name+"-warmup")); err != nil {
		return fail("warm-up: %v", err)
	}
	var pids []int
	if proxy != nil {
		pids = processTree(proxy.cmd.Process.Pid)
	}
	cpu0, err := cpuSeconds(pids)
	if err != nil {
		return fail("reading proxy CPU: %v", err)
	}
	up0, _ := cpuSeconds(be.pids())
	busy0 := machineBusySeconds()
	ureq0, uerr0 := c.upstreamRequests(be)
	prefix := filepath.Join(c.dir, "runs", name)
	res, err := run(c.opts.Duration, prefix)
	if err != nil {
		return fail("measured run: %v", err)
	}
	if proxy != nil && proxy.exited() {
		return fail("%s exited during the run (%v): %s", target, proxy.err, proxy.tail())
	}
	cpu1, err := cpuSeconds(pids)
	if err != nil {
		return fail("reading proxy CPU: %v", err)
	}
	up1, _ := cpuSeconds(be.pids())
	busy1 := machineBusySeconds()
	ureq1, uerr1 := c.upstreamRequests(be)
	if uerr0 == nil && uerr1 == nil {
		tr.UpstreamRequests = ureq1 - ureq0
	} else {
		tr.UpstreamRequests = -1
	}
	tr.RunReport = prefix + ".md"
	tr.Requests = res.Requests
	tr.Throughput = res.Throughput
	tr.Latency = res.Latency
	tr.ErrorCount = res.ErrorCount
	tr.Errors = res.Errors
	tr.GeneratorCPUMicrosPerRequest = res.Generator.MicrosPerRequest
	if res.Requests == 0 {
		return fail("no request completed")
	}
	// A target that answers errors is not doing the work being compared
	// (a rate limit firing, an upstream it cannot reach): its cost per
	// request would flatter it.
	if res.ErrorCount*100 > res.Requests {
		return fail("%d of %d requests failed (statuses %s; errors %s): the target did not do the work compared",
			res.ErrorCount, res.Requests, counts(res.Statuses), counts(res.Errors))
	}
	n := float64(res.Requests)
	tr.UpstreamCPUMicrosPerRequest = (up1 - up0) * 1e6 / n
	gen := res.Generator.UserSeconds + res.Generator.SystemSeconds
	if secs := res.Elapsed.Seconds(); secs > 0 {
		tr.LoadCPUBusyFraction = (gen + up1 - up0) / secs
	}
	if secs := res.Elapsed.Seconds(); secs > 0 && busy1 > busy0 {
		ours := gen + (up1 - up0) + (cpu1 - cpu0)
		tr.OtherCPUCores = math.Max(0, (busy1-busy0-ours)/secs)
	}
	if proxy != nil {
		tr.ProxyCPUSeconds = cpu1 - cpu0
		tr.ProxyCPUMicrosPerRequest = tr.ProxyCPUSeconds * 1e6 / n
		tr.ProxyPeakRSSKiB = peakRSS(pids)
	}
	tr.OK = true
	return tr
}

// upstreamRequests reads the synthetic upstream's request counter.
func (c *comparison) upstreamRequests(be *backend) (int64, error) {
	if !be.stats {
		return 0, errors.New("this backend counts no requests")
	}
	_, body, err := fasthttp.GetTimeout(nil, "http://"+be.addrs[0]+UpstreamStatsPath, 2*time.Second)
	if err != nil {
		return 0, fmt.Errorf("reading upstream stats: %w", err)
	}
	var st struct {
		Requests int64 `json:"requests"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return 0, fmt.Errorf("decoding upstream stats %q: %w", body, err)
	}
	return st.Requests, nil
}

// generate runs `bench run` in a child pinned to the load CPU and reads its
// JSON result.
func (c *comparison) generate(ctx context.Context, base string, runArgs []string, d time.Duration, prefix string) (*Result, error) {
	argv := append(append([]string{}, c.opts.Exe...), "run", "-target", base, "-quiet",
		"-duration", d.String(), "-prefix", prefix)
	argv = c.pinned(c.opts.LoadCPU, append(argv, runArgs...))
	cctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, c.opts.Taskset, argv...)
	cmd.Env = append(os.Environ(), c.opts.Env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("bench run: %w: %s", err, strings.TrimSpace(out.String()))
	}
	data, err := os.ReadFile(prefix + ".json")
	if err != nil {
		return nil, fmt.Errorf("reading run result: %w", err)
	}
	var res Result
	if err := json.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("decoding %s.json: %w", prefix, err)
	}
	return &res, nil
}
