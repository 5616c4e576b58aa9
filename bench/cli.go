package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RunCommand is `podium bench run`: load one scenario against a target and
// write the Markdown, JSON and SVG report. -h returns flag.ErrHelp.
func RunCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("podium bench run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("target", "", "base URL to load, e.g. http://127.0.0.1:8080 (loopback unless -allow-remote)")
	allowRemote := fs.Bool("allow-remote", false, "permit a target outside loopback (a staging edge); you own the consequences")
	scenario := fs.String("scenario", "browse", "shipped scenario ("+strings.Join(ScenarioNames(), ", ")+") or a .yaml file")
	mode := fs.String("mode", "", "override the mode: open (paced, coordinated omission corrected) or closed (max throughput)")
	duration := fs.Duration("duration", 0, "override the duration")
	rate := fs.Float64("rate", 0, "override the peak rate (req/s) of a single-stream scenario")
	rateScale := fs.Float64("rate-scale", 0, "multiply every stream's start and peak rate")
	ramp := fs.Duration("ramp", -1, "override every stream's ramp (0 = peak at once)")
	conns := fs.Int("connections", 0, "override every stream's connection count")
	think := fs.Duration("think", -1, "override every stream's think time (closed mode)")
	games := fs.String("games", "", "override the game id range, FIRST-LAST")
	outDir := fs.String("out", "bench-results", "directory for the report files")
	prefix := fs.String("prefix", "", "report file path without extension (default OUT/SCENARIO-UTCSTAMP)")
	quiet := fs.Bool("quiet", false, "no progress output")
	runID := fs.String("run-id", "", "prefix of Idempotency-Keys and emails (default random)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: podium bench run -target URL [-scenario NAME|FILE.yaml] [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: flags only", fs.Args())
	}
	sc, err := LoadScenario(*scenario)
	if err != nil {
		return err
	}
	if err := applyOverrides(sc, *mode, *duration, *rate, *rateScale, *ramp, *conns, *think, *games); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := RunOptions{Target: *target, AllowRemote: *allowRemote, RunID: *runID}
	if !*quiet {
		opts.Progress = stderr
		opts.ProgressTTY = isTerminal(stderr)
	}
	res, err := Run(ctx, sc, opts)
	if err != nil {
		return err
	}
	base := *prefix
	if base == "" {
		base = filepath.Join(*outDir, sc.Name+"-"+time.Now().UTC().Format("20060102T150405Z"))
	}
	if err := WriteRunFiles(base, res); err != nil {
		return err
	}
	l := res.Latency
	expected := ""
	if res.ExpectedCount > 0 {
		expected = fmt.Sprintf(", %d expected answers (%s)", res.ExpectedCount, counts(res.Expected))
	}
	if res.Queued > 0 {
		expected += fmt.Sprintf(", %d told to wait by a waiting room (429, not errors)", res.Queued)
	}
	fmt.Fprintf(stdout, "%s: %d requests, %.0f req/s, %d errors%s, p50 %s ms, p99 %s ms, p99.9 %s ms, max %s ms; generator %.1f µs/request\nreport: %s.{md,json,svg}\n",
		sc.Name, res.Requests, res.Throughput, res.ErrorCount, expected, ms(l.P50), ms(l.P99), ms(l.P999), ms(l.Max), res.Generator.MicrosPerRequest, base)
	return nil
}

// WriteRunFiles writes base.json, base.md and base.svg.
func WriteRunFiles(base string, res *Result) error {
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		return fmt.Errorf("creating report directory: %w", err)
	}
	if err := WriteJSON(base+".json", res); err != nil {
		return err
	}
	for ext, write := range map[string]func(io.Writer, *Result) error{".md": WriteMarkdown, ".svg": WriteSVG} {
		f, err := os.Create(base + ext)
		if err != nil {
			return fmt.Errorf("writing report: %w", err)
		}
		err = write(f, res)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", base+ext, err)
		}
	}
	return nil
}

func applyOverrides(sc *Scenario, mode string, duration time.Duration, rate, rateScale float64, ramp time.Duration, conns int, think time.Duration, games string) error {
	if mode != "" {
		sc.Mode = Mode(mode)
	}
	if duration > 0 {
		sc.Duration = duration
	}
	if rate > 0 {
		if len(sc.Streams) != 1 {
			return fmt.Errorf("-rate needs a single-stream scenario; %s has %d streams, use -rate-scale", sc.Name, len(sc.Streams))
		}
		sc.Streams[0].Rate.Peak = rate
		if sc.Streams[0].Rate.Ramp == 0 {
			sc.Streams[0].Rate.Start = rate
		}
	}
	for i := range sc.Streams {
		st := &sc.Streams[i]
		if rateScale > 0 {
			st.Rate.Start *= rateScale
			st.Rate.Peak *= rateScale
		}
		if ramp >= 0 {
			st.Rate.Ramp = ramp
		}
		if conns > 0 {
			st.Connections = conns
		}
		if think >= 0 {
			st.Think = think
		}
	}
	if games != "" {
		first, last, ok := strings.Cut(games, "-")
		a, err1 := strconv.Atoi(first)
		b, err2 := strconv.Atoi(last)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("-games %q: want FIRST-LAST, e.g. 1-48", games)
		}
		sc.Games = GameRange{First: a, Last: b}
	}
	return sc.Validate()
}

// isTerminal reports whether w is a character device (a TTY), where the
// progress line may be redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// UpstreamCommand is `podium bench upstream`: the synthetic fixed-response
// upstream, until SIGINT or SIGTERM.
func UpstreamCommand(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("podium bench upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9101", "address(es) to listen on, comma-separated")
	size := fs.Int("size", 2048, "response body size in bytes")
	delay := fs.Duration("delay", 0, "sleep before each answer (not /ping)")
	listingSize := fs.Int("listing-size", 8192, "size of the JSON answer to /api/games, in bytes")
	listingCC := fs.String("listing-cache-control", "public, max-age=2", "Cache-Control sent with /api/games (empty: none)")
	slowEvery := fs.Int("slow-every", 0, "make every N-th answer slow (10 = 10% of answers); 0: none")
	slowDelay := fs.Duration("slow-delay", 5*time.Second, "how long a slow answer (see -slow-every) sleeps")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *size < 0 || *delay < 0 || *listingSize < 0 || *slowEvery < 0 || *slowDelay < 0 {
		return errors.New("-size, -listing-size, -delay, -slow-every and -slow-delay must not be negative")
	}
	lns, err := ListenAll(*listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	u := &Upstream{Size: *size, Delay: *delay, ListingSize: *listingSize, ListingCacheControl: *listingCC,
		SlowEvery: *slowEvery, SlowDelay: *slowDelay}
	return u.Serve(ctx, lns...)
}

// CompareCommand is `podium bench compare`, what `make bench` calls.
func CompareCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("podium bench compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o CompareOptions
	fs.StringVar(&o.ResultsDir, "results", "bench-results", "directory for compare.md, compare.json and per-run files")
	targets := fs.String("targets", strings.Join(AllTargets, ","), "targets to run, in order")
	var names []string
	for _, s := range CompareScenarios {
		names = append(names, s.Name)
	}
	scenarios := fs.String("scenarios", "", "comparison scenarios to run (default: every one that is ready; all: "+strings.Join(names, ", ")+")")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "measured run per target, scenario and round")
	fs.DurationVar(&o.Warmup, "warmup", 2*time.Second, "unmeasured warm-up before each measured run")
	fs.IntVar(&o.Rounds, "rounds", 0, "interleaved rounds per target in every scenario, the median reported (default: 3 for proxied-get, 1 for the others)")
	fs.IntVar(&o.Connections, "connections", 64, "client connections")
	fs.IntVar(&o.BodySize, "size", 2048, "synthetic upstream body size in bytes")
	fs.Float64Var(&o.PacedRate, "paced-rate", 5000, "rate of the open-loop scenario, req/s (every target must sustain it)")
	fs.Float64Var(&o.OriginRate, "origin-rate", 1000, "peak rate of ticket-drop-origin, req/s")
	fs.StringVar(&o.Podium, "podium", "", "podium binary for the edge target (default: this binary)")
	fs.StringVar(&o.HAProxy, "haproxy", "", "haproxy binary (default: haproxy in PATH or /usr/sbin)")
	fs.StringVar(&o.Nginx, "nginx", "", "nginx binary (default: nginx in PATH or /usr/sbin)")
	fs.StringVar(&o.LoadCPU, "load-cpu", "0", "CPU list for the generator and upstreams (taskset -c)")
	fs.StringVar(&o.ProxyCPU, "proxy-cpu", "1", "CPU list for the proxy under test (taskset -c)")
	fs.StringVar(&o.Priority, "priority", "", "scheduling of every process of the comparison: realtime (SCHED_FIFO 10; default as root), nice (-10) or normal (default otherwise)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: flags only", fs.Args())
	}
	o.Targets = splitList(*targets)
	o.Scenarios = splitList(*scenarios)
	o.Log = stderr
	o.Command = strings.TrimSpace("podium bench compare " + strings.Join(args, " "))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := Compare(ctx, o)
	if err != nil {
		return err
	}
	WriteCompareMarkdown(stdout, rep)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// WaitroomCommand is `podium bench waitroom`: issue 18's load test and
// cost figure of the waiting room, against an edge it starts. It writes
// waitroom.md and waitroom.json and returns an error when a requirement
// failed.
func WaitroomCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("podium bench waitroom", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o WaitroomOptions
	fs.StringVar(&o.ResultsDir, "results", "bench-results", "directory for waitroom.md, waitroom.json and waitroom/ (configs, logs, state)")
	fs.StringVar(&o.Podium, "podium", "", "podium binary for the edge (default: this binary)")
	fs.IntVar(&o.Visitors, "visitors", DefaultRoomVisitors, "visitors, each with its own address")
	fs.DurationVar(&o.Arrival, "arrival", DefaultRoomArrival, "the visitors arrive evenly over this")
	fs.Float64Var(&o.AdmitPerSecond, "admit", DefaultRoomAdmitRate, "the room's admit_per_second")
	fs.DurationVar(&o.Refresh, "refresh", DefaultRoomRefresh, "the room's refresh (Retry-After), whole seconds")
	fs.Float64Var(&o.Jitter, "jitter", DefaultRoomJitter, "a visitor comes back after Retry-After × (1 + U[0, jitter])")
	fs.IntVar(&o.Connections, "connections", DefaultRoomConnections, "client connections to the edge")
	fs.IntVar(&o.Attacks, "attacks", 0, "requests of each attack: forged, copied, replayed (default visitors/40, at least 10)")
	fs.Float64Var(&o.CostRate, "cost-rate", DefaultRoomCostRate, "paced rate of each cost round, req/s")
	fs.DurationVar(&o.CostDuration, "cost-duration", DefaultRoomCostTime, "each cost round")
	fs.IntVar(&o.CostRounds, "cost-rounds", DefaultRoomCostRounds, "interleaved rounds of listing and waiting page, the median reported")
	fs.IntVar(&o.CostQueue, "cost-queue", 0, "identities waiting in the paused room while waiting pages are measured (default: visitors)")
	fs.Float64Var(&o.MaxRatio, "max-ratio", DefaultRoomMaxRatio, "required: waiting-page CPU per request ÷ listing hit's at most this")
	fs.BoolVar(&o.SkipCost, "skip-cost", false, "run the load figure alone")
	fs.StringVar(&o.LoadCPU, "load-cpu", "0", "CPU list for the upstream (run this process there too: taskset -c 0)")
	fs.StringVar(&o.ProxyCPU, "proxy-cpu", "1", "CPU list for the edge")
	fs.StringVar(&o.Priority, "priority", PriorityNormal, "scheduling of the edge and upstream: realtime, nice or normal")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: flags only", fs.Args())
	}
	if !*quiet {
		o.Log = stderr
	}
	o.Command = strings.TrimSpace("podium bench waitroom " + strings.Join(args, " "))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := Waitroom(ctx, o)
	if err != nil {
		return err
	}
	WriteWaitroomMarkdown(stdout, rep)
	if f := rep.Failed(); len(f) > 0 {
		names := make([]string, len(f))
		for i, q := range f {
			names[i] = q.Name + ": " + q.Got
		}
		return fmt.Errorf("waiting room bench: %d requirement(s) failed: %s", len(f), strings.Join(names, "; "))
	}
	return nil
}
