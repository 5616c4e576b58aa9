package bench

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/podium-edge/podium/deploy/haproxy"
	"github.com/podium-edge/podium/deploy/nginx"
	"github.com/valyala/fasthttp"
)

//go:embed podium-edge.yaml.tmpl
var podiumTemplate string

// Target names, in the order the comparison runs them.
const (
	TargetDirect  = "direct"
	TargetPodium  = "podium"
	TargetHAProxy = "haproxy"
	TargetNginx   = "nginx"
)

// AllTargets is the default target list.
var AllTargets = []string{TargetDirect, TargetPodium, TargetHAProxy, TargetNginx}

// CompareScenario is one named row group of the comparison report. A
// scenario with Pending set is listed in the report with that reason and
// not run: the hook for comparisons whose Podium side has not landed yet.
type CompareScenario struct {
	Name  string
	Title string
	// Pending, when not empty, says what the scenario waits for.
	Pending string
	// Rounds is the scenario's default number of interleaved rounds: the
	// headline scenario gets three, the others one, so `make bench` stays
	// well under 10 minutes.
	Rounds int
	// Origin runs the scenario against `podium origin` (two instances on
	// the load CPU, sharing the MariaDB cluster named by PODIUM_DB_*)
	// instead of the synthetic upstream.
	Origin bool
	// WrkPath, when set, has the scenario driven by wrk (-t1, closed loop,
	// Connections connections, GET of this path) instead of `podium bench
	// run`: wrk is the load tool the edge's acceptance names, and, written
	// in C over epoll, it keeps every proxy saturated where the Go
	// generator tops out first. wrk sends every request from one address,
	// so Podium's config for these runs limits no client on GETs, as
	// HAProxy's and nginx's configs limit none (PeerConfig.OneClient).
	WrkPath string
	// args returns the `bench run` arguments for the measured phase.
	args func(o *CompareOptions) []string
}

// unavailable says why cs cannot run here, or "" when it can.
func (cs *CompareScenario) unavailable(o *CompareOptions) string {
	if cs.Pending != "" {
		return cs.Pending
	}
	if cs.WrkPath != "" {
		if _, err := exec.LookPath(o.Wrk); err != nil {
			return "needs wrk: run `scripts/deps.sh peers` (as root) first"
		}
	}
	if cs.Origin && os.Getenv("PODIUM_DB_PRIMARY") == "" {
		return "needs the origin's database: run `scripts/mariadb-cluster.sh start` and `eval \"$(scripts/mariadb-cluster.sh env)\"` first (PODIUM_DB_PRIMARY is not set)"
	}
	return ""
}

// CompareScenarios are the comparison's scenarios, in report order.
var CompareScenarios = []CompareScenario{
	{
		Name: "proxied-get-wrk",
		Title: "Proxied GET under wrk: 2 KiB body from the synthetic upstream, 64 connections, `wrk -t1` closed loop on the load CPU (every proxy saturated). " +
			"Equivalent configs: no per-client rate limit in any of them, the same forwarding headers added by all three; Podium's metrics on, as always",
		Rounds:  5,
		WrkPath: "/bench/payload",
	},
	{
		Name: "cached-listing-wrk",
		Title: "Cached listing under wrk: GET /api/games?limit=50 (8 KiB JSON, Cache-Control max-age=2 from the synthetic upstream), 64 connections, `wrk -t1` closed loop. " +
			"Podium's cache vs nginx proxy_cache + proxy_cache_lock vs HAProxy's cache; no per-client rate limit in any of them",
		Rounds:  3,
		WrkPath: "/api/games?limit=50",
	},
	{
		Name:   "proxied-get",
		Title:  "Proxied GET, 2 KiB body from the synthetic upstream, 64 connections, closed loop (maximum throughput)",
		Rounds: 3,
		args: func(o *CompareOptions) []string {
			return []string{"-scenario", "proxied-get", "-mode", "closed", "-connections", strconv.Itoa(o.Connections)}
		},
	},
	{
		Name:   "proxied-get-paced",
		Title:  "Proxied GET, 2 KiB body, 64 connections, open loop at a fixed rate every target sustains (latency at equal load)",
		Rounds: 1,
		args: func(o *CompareOptions) []string {
			return []string{"-scenario", "proxied-get", "-mode", "open", "-connections", strconv.Itoa(o.Connections),
				"-rate", strconv.FormatFloat(o.PacedRate, 'f', -1, 64), "-ramp", "0"}
		},
	},
	{
		Name: "cached-listing",
		Title: "Cached listing: GET /api/games?limit=50 (8 KiB JSON, Cache-Control max-age=2 from the synthetic upstream), 64 connections, closed loop. " +
			"Podium's cache vs nginx proxy_cache + proxy_cache_lock vs HAProxy's cache; direct has no cache",
		Rounds: 1,
		args: func(o *CompareOptions) []string {
			return []string{"-scenario", "cached-listing", "-connections", strconv.Itoa(o.Connections)}
		},
	},
	{
		Name: "ticket-drop-origin",
		Title: "ticket-drop through the real origin: two `podium origin` on the MariaDB primary + 2 replicas, 90% listing / 9% details / 1% buys, " +
			"ramping to the origin rate over 5 s, 64 connections; every proxy caches /api/games* as Podium's default routes do",
		Rounds: 1,
		Origin: true,
		args: func(o *CompareOptions) []string {
			return []string{"-scenario", "ticket-drop", "-connections", strconv.Itoa(o.Connections),
				"-rate", strconv.FormatFloat(o.OriginRate, 'f', -1, 64), "-ramp", "5s"}
		},
	},
}

// CompareOptions configures a comparison. Zero values take the defaults
// named on each field.
type CompareOptions struct {
	// Exe is the command prefix that runs bench subcommands in a child
	// process: default [this executable, "bench"]. Env is added to those
	// children's environment (tests re-exec themselves with it).
	Exe []string
	Env []string
	// Podium, HAProxy, Nginx are the binaries under test: default this
	// executable, "haproxy", "nginx" (looked up in PATH and /usr/sbin).
	Podium, HAProxy, Nginx string
	// Wrk is the generator of the WrkPath scenarios: default wrk in PATH.
	Wrk string
	// Taskset pins processes: default "taskset". LoadCPU runs the
	// generator and upstreams, ProxyCPU the proxy: default "0" and "1".
	Taskset           string
	LoadCPU, ProxyCPU string
	// Priority is the scheduling every process of the comparison (proxy,
	// generator, upstreams) runs with; the same for every target, so it
	// favours none. PriorityRealtime (default as root) is SCHED_FIFO 10:
	// on a 2-core machine shared with other engineers' builds it is what
	// keeps a neighbour's compile from landing in the proxy's latency
	// tail. The kernel's RT throttling (95% per second by default) still
	// leaves the rest of the machine 50 ms a second, which can show as a
	// ~50 ms max in saturated closed-loop runs, alike for every target.
	// PriorityNice is nice -10; PriorityNormal (default otherwise) changes
	// nothing.
	Priority string
	// ResultsDir receives compare.md, compare.json and per-run files:
	// default "bench-results".
	ResultsDir string
	Targets    []string // default AllTargets
	Scenarios  []string // default every non-pending CompareScenarios entry
	// Duration is each measured run, Warmup the unmeasured run before it:
	// default 12s and 3s.
	Duration, Warmup time.Duration
	Connections      int     // default 64
	BodySize         int     // default 2048
	PacedRate        float64 // default 5000 req/s
	OriginRate       float64 // peak of ticket-drop-origin: default 1000 req/s
	Upstreams        int     // synthetic upstream listeners: default 2
	// Rounds, when set, is how many times each target is measured in
	// every scenario, interleaved, the median round reported; 0 means each
	// scenario's own Rounds.
	Rounds int
	// ReadyTimeout bounds the wait for a proxy to answer: default 20s
	// (Podium's health checks need rise×interval before it routes).
	ReadyTimeout time.Duration
	Log          io.Writer // progress lines; default discard
	Command      string    // the command line, recorded in the report
}

func (o *CompareOptions) defaults() error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this executable: %w", err)
	}
	if len(o.Exe) == 0 {
		o.Exe = []string{self, "bench"}
	}
	if o.Podium == "" {
		o.Podium = self
	}
	o.HAProxy = lookBin(o.HAProxy, "haproxy")
	o.Nginx = lookBin(o.Nginx, "nginx")
	o.Wrk = lookBin(o.Wrk, "wrk")
	if o.Taskset == "" {
		o.Taskset = "taskset"
	}
	if o.Priority == "" {
		o.Priority = PriorityNormal
		if os.Geteuid() == 0 {
			o.Priority = PriorityRealtime
		}
	}
	switch o.Priority {
	case PriorityRealtime, PriorityNice, PriorityNormal:
	default:
		return fmt.Errorf("priority %q: want %s, %s or %s", o.Priority, PriorityRealtime, PriorityNice, PriorityNormal)
	}
	if o.LoadCPU == "" {
		o.LoadCPU = "0"
	}
	if o.ProxyCPU == "" {
		o.ProxyCPU = "1"
	}
	if o.ResultsDir == "" {
		o.ResultsDir = "bench-results"
	}
	if len(o.Targets) == 0 {
		o.Targets = AllTargets
	}
	for _, t := range o.Targets {
		switch t {
		case TargetDirect, TargetPodium, TargetHAProxy, TargetNginx:
		default:
			return fmt.Errorf("unknown target %q: want %s", t, strings.Join(AllTargets, ", "))
		}
	}
	if len(o.Scenarios) == 0 {
		for i := range CompareScenarios {
			if CompareScenarios[i].unavailable(o) == "" {
				o.Scenarios = append(o.Scenarios, CompareScenarios[i].Name)
			}
		}
	}
	for _, name := range o.Scenarios {
		if findCompareScenario(name) == nil {
			var names []string
			for _, s := range CompareScenarios {
				names = append(names, s.Name)
			}
			return fmt.Errorf("unknown comparison scenario %q: want %s", name, strings.Join(names, ", "))
		}
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.Warmup == 0 {
		o.Warmup = 2 * time.Second
	}
	if o.Connections == 0 {
		o.Connections = 64
	}
	if o.BodySize == 0 {
		o.BodySize = 2048
	}
	if o.PacedRate == 0 {
		o.PacedRate = 5000
	}
	if o.OriginRate == 0 {
		o.OriginRate = 1000
	}
	if o.Upstreams == 0 {
		o.Upstreams = 2
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 20 * time.Second
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return nil
}

func lookBin(given, name string) string {
	if given != "" {
		return given
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	// Debian installs both in /usr/sbin, which a non-root PATH may lack.
	return "/usr/sbin/" + name
}

func findCompareScenario(name string) *CompareScenario {
	for i := range CompareScenarios {
		if CompareScenarios[i].Name == name {
			return &CompareScenarios[i]
		}
	}
	return nil
}

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
	Name    string         `json:"name"`
	Title   string         `json:"title"`
	Pending string         `json:"pending,omitempty"`
	Rounds  int            `json:"rounds,omitempty"`
	Targets []TargetResult `json:"targets,omitempty"`
	Ratios  []Ratio        `json:"ratios,omitempty"`
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
		sr := ScenarioReport{Name: cs.Name, Title: cs.Title, Pending: why}
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

// child is a process the comparison started, with its log.
type child struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

// start runs argv pinned to cpu, in its own process group so that a
// proxy's workers go down with it.
func (c *comparison) start(name, cpu string, env []string, argv ...string) (*child, error) {
	logf, err := os.Create(filepath.Join(c.dir, "logs", name+".log"))
	if err != nil {
		return nil, fmt.Errorf("creating log for %s: %w", name, err)
	}
	cmd := exec.Command(c.opts.Taskset, c.pinned(cpu, argv)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, strings.Join(argv, " "), err)
	}
	ch := &child{name: name, cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		ch.err = cmd.Wait()
		close(ch.done)
	}()
	return ch, nil
}

func (ch *child) exited() bool {
	select {
	case <-ch.done:
		return true
	default:
		return false
	}
}

// Scheduling priorities of CompareOptions.Priority.
const (
	PriorityRealtime = "realtime"
	PriorityNice     = "nice"
	PriorityNormal   = "normal"
)

// pinned returns taskset's arguments to run argv on cpu at the configured
// priority. taskset, chrt and nice all exec, so the pid started is argv's
// own.
func (c *comparison) pinned(cpu string, argv []string) []string {
	args := []string{"-c", cpu}
	switch c.opts.Priority {
	case PriorityRealtime:
		args = append(args, "chrt", "--fifo", "10")
	case PriorityNice:
		args = append(args, "nice", "-n", "-10")
	}
	return append(args, argv...)
}

// stop ends the child with SIGTERM, then SIGKILL after 5 s, signalling its
// process group (the pid we started is the group's leader).
func (ch *child) stop() {
	if !ch.exited() {
		_ = syscall.Kill(-ch.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-ch.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-ch.cmd.Process.Pid, syscall.SIGKILL)
			<-ch.done
		}
	}
	ch.log.Close()
}

// tail returns the last lines of the child's log, for failure reports.
func (ch *child) tail() string {
	data, _ := os.ReadFile(ch.log.Name())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// backend is what the proxies forward to in a scenario: the synthetic
// upstream or the origins.
type backend struct {
	addrs []string
	procs []*child
	// stats is true when addrs[0] answers UpstreamStatsPath.
	stats bool
	// readyPath and readyLen say what a proxy must answer before it is
	// measured: 200 with readyLen bytes (-1: any length).
	readyPath string
	readyLen  int
}

func (b *backend) pids() []int {
	var pids []int
	for _, p := range b.procs {
		pids = append(pids, processTree(p.cmd.Process.Pid)...)
	}
	return pids
}

func (b *backend) stop() {
	for _, p := range b.procs {
		p.stop()
	}
}

func (c *comparison) startUpstreams(ctx context.Context) (*backend, error) {
	be := &backend{stats: true, readyPath: "/bench/payload", readyLen: c.opts.BodySize}
	for i := 0; i < c.opts.Upstreams; i++ {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		be.addrs = append(be.addrs, a)
	}
	argv := append(append([]string{}, c.opts.Exe...), "upstream", "-listen", strings.Join(be.addrs, ","), "-size", strconv.Itoa(c.opts.BodySize))
	ch, err := c.start("upstream", c.opts.LoadCPU, c.opts.Env, argv...)
	if err != nil {
		return nil, err
	}
	be.procs = []*child{ch}
	for _, a := range be.addrs {
		if err := waitReady(ctx, ch, "http://"+a+"/ping", 4, 10*time.Second); err != nil {
			ch.stop()
			return nil, fmt.Errorf("synthetic upstream: %w", err)
		}
	}
	return be, nil
}

// startOrigins starts two `podium origin` on the load CPU. They read their
// database DSNs from the PODIUM_DB_* environment this process was given
// (and migrate at start when PODIUM_DB_MIGRATE is set).
func (c *comparison) startOrigins(ctx context.Context) (*backend, error) {
	be := &backend{readyPath: "/api/games/1", readyLen: -1}
	for i := 0; i < 2; i++ {
		a, err := freeAddr()
		if err != nil {
			be.stop()
			return nil, err
		}
		ch, err := c.start(fmt.Sprintf("origin%d", i+1), c.opts.LoadCPU, nil, c.opts.Podium, "origin", "-listen", a)
		if err != nil {
			be.stop()
			return nil, fmt.Errorf("origin: %w", err)
		}
		be.addrs = append(be.addrs, a)
		be.procs = append(be.procs, ch)
	}
	for i, a := range be.addrs {
		// The first start may apply migrations and the seed.
		if err := waitReady(ctx, be.procs[i], "http://"+a+"/api/games/1", -1, time.Minute); err != nil {
			be.stop()
			return nil, fmt.Errorf("origin %s: %w", a, err)
		}
	}
	return be, nil
}

// waitReady polls url until it answers 200 with a body of wantLen bytes
// (any length when wantLen < 0), the child exits, or timeout passes.
func waitReady(ctx context.Context, ch *child, url string, wantLen int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if ch != nil && ch.exited() {
			return fmt.Errorf("exited before it was ready (%v): %s", ch.err, ch.tail())
		}
		status, body, err := fasthttp.GetTimeout(nil, url, time.Second)
		switch {
		case err != nil:
			last = err.Error()
		case status != 200 || (wantLen >= 0 && len(body) != wantLen):
			last = fmt.Sprintf("status %d with %d bytes, want 200 with %d", status, len(body), wantLen)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s: %s", url, timeout, last)
}

// PeerConfig is what every config template is rendered from.
type PeerConfig struct {
	// OneClient is set when all the load comes from one address with no
	// X-Forwarded-For (wrk): Podium's template then drops its per-client
	// limit on GETs, which HAProxy's and nginx's configs do not have.
	OneClient   bool
	Listen      string
	Admin       string
	Upstreams   []string
	Connections int
	Dir         string // a scratch directory the proxy may write in
	// User is the user and group ("root root") a proxy started as root
	// should keep for its workers; empty when not root.
	User string
}

// startProxy renders target's config and starts it on the proxy CPU. It
// returns the base URL to load and the process.
func (c *comparison) startProxy(name, target string, upstreams []string, oneClient bool) (string, *child, string, error) {
	listen, err := freeAddr()
	if err != nil {
		return "", nil, "", err
	}
	admin, err := freeAddr()
	if err != nil {
		return "", nil, "", err
	}
	scratch := filepath.Join(c.dir, "configs", name)
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		return "", nil, "", fmt.Errorf("creating %s: %w", scratch, err)
	}
	pc := PeerConfig{OneClient: oneClient, Listen: listen, Admin: admin, Upstreams: upstreams, Connections: c.opts.Connections, Dir: scratch}
	if os.Geteuid() == 0 {
		pc.User = "root root"
	}
	var tmpl, file string
	var argv []string
	switch target {
	case TargetPodium:
		tmpl, file = podiumTemplate, "edge.yaml"
		argv = []string{c.opts.Podium, "edge", "-config", filepath.Join(scratch, file)}
	case TargetHAProxy:
		tmpl, file = haproxy.Template, "haproxy.cfg"
		// -db: stay in the foreground, no master process, so the pid we
		// start is the one that serves.
		argv = []string{c.opts.HAProxy, "-db", "-f", filepath.Join(scratch, file)}
	case TargetNginx:
		tmpl, file = nginx.Template, "nginx.conf"
		argv = []string{c.opts.Nginx, "-p", scratch, "-c", filepath.Join(scratch, file), "-e", filepath.Join(scratch, "error.log")}
	default:
		return "", nil, "", fmt.Errorf("no proxy for target %q", target)
	}
	t, err := template.New(file).Parse(tmpl)
	if err != nil {
		return "", nil, "", fmt.Errorf("parsing %s template: %w", target, err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, pc); err != nil {
		return "", nil, "", fmt.Errorf("rendering %s config: %w", target, err)
	}
	cfg := filepath.Join(scratch, file)
	if err := os.WriteFile(cfg, buf.Bytes(), 0o644); err != nil {
		return "", nil, "", fmt.Errorf("writing %s: %w", cfg, err)
	}
	// The proxy must not inherit extra env meant for bench children (a
	// test's re-exec switch would turn a Podium binary into something
	// else).
	ch, err := c.start(name, c.opts.ProxyCPU, nil, argv...)
	if err != nil {
		return "", nil, cfg, err
	}
	return "http://" + listen, ch, cfg, nil
}

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

// machineBusySeconds is the CPU time all CPUs spent not idle since boot,
// from /proc/stat: user, nice, system, irq, softirq and steal (guest time
// is already inside user).
func machineBusySeconds() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return float64(ticks) / clockTicks
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports (the kernel ABI fixes it,
// whatever CONFIG_HZ is).
const clockTicks = 100

// cpuSeconds sums utime+stime of pids from /proc/PID/stat.
func cpuSeconds(pids []int) (float64, error) {
	var ticks int64
	for _, pid := range pids {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return 0, fmt.Errorf("reading /proc/%d/stat: %w", pid, err)
		}
		f, err := statFields(data)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		// Fields 14 and 15 (utime, stime) of proc(5); f[0] is field 3.
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return float64(ticks) / clockTicks, nil
}

// statFields splits /proc/PID/stat after the command name, which may
// itself hold spaces and parentheses: the name ends at the last ')'.
func statFields(data []byte) ([]string, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, errors.New("no command name")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return nil, errors.New("too few fields")
	}
	return f, nil
}

// processTree returns pid and its descendants, found by parent pid in
// /proc: nginx's worker is the master's child.
func processTree(pid int) []int {
	parent := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f, err := statFields(data)
		if err != nil {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[pp] = append(parent[pp], p)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, parent[out[i]]...)
	}
	return out
}

// peakRSS sums VmHWM over pids, in KiB.
func peakRSS(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb
			}
		}
		f.Close()
	}
	return total
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

func machineInfo(o CompareOptions) Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Versions: map[string]string{}}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	firstLine := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil && len(out) == 0 {
			return "unavailable: " + err.Error()
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	m.Versions[TargetHAProxy] = firstLine(o.HAProxy, "-v")
	m.Versions[TargetNginx] = firstLine(o.Nginx, "-v")
	m.Versions[TargetPodium] = firstLine(o.Podium, "version")
	return m
}

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
		if s.Pending != "" {
			fmt.Fprintf(w, "Not measured yet: %s.\n\n", s.Pending)
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
