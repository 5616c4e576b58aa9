package bench

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

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
	Scenarios  []string // default every CompareScenarios entry this machine can run
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

// Scheduling priorities of CompareOptions.Priority.
const (
	PriorityRealtime = "realtime"
	PriorityNice     = "nice"
	PriorityNormal   = "normal"
)
