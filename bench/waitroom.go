package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/podium-edge/podium/waitroom"
	"github.com/valyala/fasthttp"
)

// `podium bench waitroom`: issue 18's load test and cost figure of the
// waiting room, on loopback, against an edge it starts itself in front
// of the synthetic upstream. waitroom_load.go runs the visitors and
// attackers, waitroom_cost.go the cost rounds, waitroom_figures.go
// reduces what they recorded, waitroom_report.go writes it.

// WaitroomOptions configures a waiting-room bench. Zero values take the
// defaults named on each field.
type WaitroomOptions struct {
	// Podium is the edge binary: default this executable. Exe and Env
	// start the synthetic upstream, as CompareOptions's.
	Podium string
	Exe    []string
	Env    []string
	// Taskset, LoadCPU, ProxyCPU and Priority as CompareOptions's: the
	// edge on ProxyCPU ("1"), the upstream on LoadCPU ("0"); run this
	// process itself on LoadCPU (scripts/bench-waitroom.sh does). Priority
	// defaults to normal here: the run lasts minutes on a shared machine.
	Taskset, LoadCPU, ProxyCPU, Priority string
	// ResultsDir receives waitroom.md, waitroom.json and waitroom/
	// (configs, logs, the room's state): default "bench-results".
	ResultsDir string

	// Visitors arrive evenly over Arrival: default 20,000 over 10 s.
	Visitors int
	Arrival  time.Duration
	// AdmitPerSecond is the room's rate (500) and Refresh its refresh
	// interval (5 s): the Retry-After a waiting visitor is given.
	AdmitPerSecond float64
	Refresh        time.Duration
	// Jitter: a visitor comes back after Retry-After × (1 + U[0, Jitter]);
	// default 0.1.
	Jitter float64
	// Connections bounds the client's connections to the edge: default 512.
	Connections int
	// Attacks is how many requests of each attack (forged, copied,
	// replayed) are sent: default Visitors/40, at least 10.
	Attacks int

	// CostRate and CostDuration pace each cost round (2,000 req/s for
	// 10 s); CostRounds rounds of listing then waiting page (3), the
	// median reported. CostQueue identities wait in the paused room during
	// the waiting-page rounds: default Visitors. MaxRatio is the
	// requirement (1.5). SkipCost runs the load figure alone.
	CostRate     float64
	CostDuration time.Duration
	CostRounds   int
	CostQueue    int
	MaxRatio     float64
	SkipCost     bool

	Log     io.Writer // progress lines; default discard
	Command string    // the command line, recorded in the report
}

// Defaults of WaitroomOptions, one place each.
const (
	DefaultRoomVisitors    = 20_000
	DefaultRoomArrival     = 10 * time.Second
	DefaultRoomAdmitRate   = 500
	DefaultRoomRefresh     = 5 * time.Second
	DefaultRoomJitter      = 0.1
	DefaultRoomConnections = 512
	DefaultRoomCostRate    = 2000
	DefaultRoomCostTime    = 10 * time.Second
	DefaultRoomCostRounds  = 3
	DefaultRoomMaxRatio    = 1.5
	// roomName names the bench's room: its cookie, metrics and admin URL.
	roomName = "sale"
	// roomBuyPath is the guarded path the visitors POST to.
	roomBuyPath = "/api/games/1/buy"
)

func (o *WaitroomOptions) defaults() error {
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
	if o.Taskset == "" {
		o.Taskset = "taskset"
	}
	if o.LoadCPU == "" {
		o.LoadCPU = "0"
	}
	if o.ProxyCPU == "" {
		o.ProxyCPU = "1"
	}
	if o.Priority == "" {
		o.Priority = PriorityNormal
	}
	if o.ResultsDir == "" {
		o.ResultsDir = "bench-results"
	}
	setDefault(&o.Visitors, DefaultRoomVisitors)
	setDefault(&o.Arrival, DefaultRoomArrival)
	setDefault(&o.AdmitPerSecond, DefaultRoomAdmitRate)
	setDefault(&o.Refresh, DefaultRoomRefresh)
	setDefault(&o.Jitter, DefaultRoomJitter)
	setDefault(&o.Connections, DefaultRoomConnections)
	setDefault(&o.Attacks, max(o.Visitors/40, 10))
	setDefault(&o.CostRate, DefaultRoomCostRate)
	setDefault(&o.CostDuration, DefaultRoomCostTime)
	setDefault(&o.CostRounds, DefaultRoomCostRounds)
	setDefault(&o.CostQueue, o.Visitors)
	setDefault(&o.MaxRatio, DefaultRoomMaxRatio)
	if o.Log == nil {
		o.Log = io.Discard
	}
	switch {
	case o.Visitors < 1 || o.Visitors > maxRoomIdentities:
		return fmt.Errorf("visitors %d: want 1 to %d (each has its own address in 198.18.0.0/16)", o.Visitors, maxRoomIdentities)
	case o.CostQueue < 1 || o.CostQueue > maxRoomIdentities:
		return fmt.Errorf("cost queue %d: want 1 to %d (each has its own address in 198.19.0.0/16)", o.CostQueue, maxRoomIdentities)
	case o.Refresh < time.Second || o.Refresh > time.Minute || o.Refresh%time.Second != 0:
		return fmt.Errorf("refresh %s: want whole seconds from 1s to 1m, as the edge's refresh", o.Refresh)
	case !(o.AdmitPerSecond > 0) || math.IsInf(o.AdmitPerSecond, 0):
		return fmt.Errorf("admit rate %v: want a positive number of visitors a second", o.AdmitPerSecond)
	case o.Arrival <= 0 || o.CostDuration <= 0 || o.CostRate <= 0 || o.CostRounds < 1 || o.Connections < 1 || o.Jitter < 0:
		return errors.New("arrival, cost duration, cost rate, cost rounds and connections must be positive, jitter not negative")
	}
	switch o.Priority {
	case PriorityRealtime, PriorityNice, PriorityNormal:
	default:
		return fmt.Errorf("priority %q: want %s, %s or %s", o.Priority, PriorityRealtime, PriorityNice, PriorityNormal)
	}
	return nil
}

// maxRoomIdentities is how many client addresses each /16 of 198.18.0.0/15
// (RFC 2544) gives: visitors take 198.18/16, the cost queue 198.19/16.
const maxRoomIdentities = 65_534

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// roomBench is one run: the edge and upstream it started and the room's
// keys to read the edge's tokens with. Not safe for concurrent use but
// by the goroutines its own methods start.
type roomBench struct {
	opts   WaitroomOptions
	c      *comparison // starts children; its opts carry the pinning
	up     *backend
	edge   *child
	listen string
	admin  string
	room   *waitroom.Room
	client *fasthttp.HostClient
}

// Waitroom runs the load figure, then the cost figure, and writes
// waitroom.md and waitroom.json into opts.ResultsDir. The report says
// which requirements failed; an error means the bench could not run.
func Waitroom(ctx context.Context, opts WaitroomOptions) (*WaitroomReport, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.ResultsDir)
	if err != nil {
		return nil, fmt.Errorf("results directory: %w", err)
	}
	scratch := filepath.Join(dir, "waitroom")
	_ = os.RemoveAll(filepath.Join(scratch, "state")) // a run's history must not carry into the next
	for _, sub := range []string{"logs", "configs", "state"} {
		if err := os.MkdirAll(filepath.Join(scratch, sub), 0o755); err != nil {
			return nil, fmt.Errorf("creating results directory: %w", err)
		}
	}
	rep := &WaitroomReport{Date: time.Now().UTC(), Command: opts.Command, LoadBefore: loadAverage()}
	co := CompareOptions{Exe: opts.Exe, Env: opts.Env, Podium: opts.Podium, HAProxy: "-", Nginx: "-", Taskset: opts.Taskset,
		LoadCPU: opts.LoadCPU, ProxyCPU: opts.ProxyCPU, Priority: opts.Priority, BodySize: 2048, Upstreams: 1}
	rep.Machine = machineInfo(co)
	delete(rep.Machine.Versions, TargetHAProxy)
	delete(rep.Machine.Versions, TargetNginx)
	b := &roomBench{opts: opts, c: &comparison{opts: co, dir: scratch}}
	if b.up, err = b.c.startUpstreams(ctx); err != nil {
		return nil, err
	}
	defer b.up.stop()
	cfgPath, err := b.startEdge(ctx, scratch)
	if err != nil {
		return nil, err
	}
	defer b.edge.stop()
	rep.Method = WaitroomMethod{LoadCPU: opts.LoadCPU, ProxyCPU: opts.ProxyCPU, Priority: opts.Priority, Connections: opts.Connections,
		EdgeConfig: cfgPath, Edge: b.listen, Admin: b.admin, Upstream: b.up.addrs[0]}
	b.client = &fasthttp.HostClient{Addr: b.listen, MaxConns: opts.Connections, MaxConnWaitTimeout: 10 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, NoDefaultUserAgentHeader: true,
		DisableHeaderNamesNormalizing: true}
	fmt.Fprintf(opts.Log, "waitroom: edge %s (admin %s) on CPU %s, upstream %s; %d visitors over %s, room admits %.0f/s, refresh %s\n",
		b.listen, b.admin, opts.ProxyCPU, b.up.addrs[0], opts.Visitors, opts.Arrival, opts.AdmitPerSecond, opts.Refresh)

	if rep.Load, err = b.load(ctx); err != nil {
		return nil, fmt.Errorf("load figure: %w", err)
	}
	rep.Requirements = append(rep.Requirements, loadRequirements(rep.Load)...)
	if !opts.SkipCost {
		if rep.Cost, err = b.cost(ctx); err != nil {
			return nil, fmt.Errorf("cost figure: %w", err)
		}
		rep.Requirements = append(rep.Requirements, costRequirements(rep.Cost)...)
	}
	if b.edge.exited() {
		rep.Requirements = append(rep.Requirements, Requirement{Name: "edge still running", Want: "yes", Got: "exited: " + b.edge.tail()})
	}
	rep.LoadAfter = loadAverage()
	rep.OK = len(rep.Failed()) == 0
	if err := writeWaitroomReport(dir, rep); err != nil {
		return rep, err
	}
	return rep, nil
}

// edgeConfig is the edge's config: one room over the buy path, trusting
// X-Forwarded-For from the generator, rate limits out of the way (every
// visitor is one address; the cost rounds send thousands a second from a
// queue of addresses).
const edgeConfig = `# Rendered by podium bench waitroom.
listen: "{{.Listen}}"
admin: "{{.Admin}}"
discovery:
  static: ["{{.Upstream}}"]
healthcheck: {path: /ping, interval: 1s, timeout: 500ms, rise: 1, fall: 3}
access_log: {enabled: false}
trusted_proxies: ["127.0.0.1/32"]
ratelimits:
  default: {rate: 1000000, burst: 1000000}
  buy: {rate: 1000000, burst: 1000000}
waiting_room_state_dir: "{{.State}}"
waiting_rooms:
  - name: ` + roomName + `
    paths: ["/api/games/*/buy"]
    admit_per_second: {{.Rate}}
    refresh: {{.Refresh}}
    key_file: "{{.Keys}}"
`

// startEdge writes the room's key file and the edge's config into
// scratch, starts the edge on the proxy CPU and waits until it serves the
// listing. It returns the config's path.
func (b *roomBench) startEdge(ctx context.Context, scratch string) (string, error) {
	var err error
	if b.listen, err = freeAddr(); err != nil {
		return "", err
	}
	if b.admin, err = freeAddr(); err != nil {
		return "", err
	}
	var secrets [64]byte
	if _, err := rand.Read(secrets[:]); err != nil {
		return "", fmt.Errorf("making the room's keys: %w", err)
	}
	keyFile := filepath.Join(scratch, "configs", "room.keys")
	keyText := "id " + hex.EncodeToString(secrets[:32]) + "\nsign 1 " + hex.EncodeToString(secrets[32:]) + "\n"
	if err := os.WriteFile(keyFile, []byte(keyText), 0o600); err != nil {
		return "", fmt.Errorf("writing the room's key file: %w", err)
	}
	keys, err := waitroom.ParseKeys(keyFile, []byte(keyText))
	if err != nil {
		return "", err
	}
	if b.room, err = waitroom.NewRoom(roomName, 1, math.MinInt64/2, keys); err != nil {
		return "", err
	}
	var cfg bytes.Buffer
	err = template.Must(template.New("edge").Parse(edgeConfig)).Execute(&cfg, map[string]any{
		"Listen": b.listen, "Admin": b.admin, "Upstream": b.up.addrs[0], "State": filepath.Join(scratch, "state"),
		"Rate": b.opts.AdmitPerSecond, "Refresh": b.opts.Refresh.String(), "Keys": keyFile})
	if err != nil {
		return "", fmt.Errorf("rendering the edge config: %w", err)
	}
	cfgPath := filepath.Join(scratch, "configs", "edge.yaml")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", cfgPath, err)
	}
	if b.edge, err = b.c.start("edge", b.opts.ProxyCPU, nil, b.opts.Podium, "edge", "-config", cfgPath); err != nil {
		return "", err
	}
	if err := waitReady(ctx, b.edge, "http://"+b.listen+"/api/games", -1, 20*time.Second); err != nil {
		b.edge.stop()
		return "", fmt.Errorf("edge: %w", err)
	}
	return cfgPath, nil
}

// edgePIDs are the edge's processes, for its CPU time.
func (b *roomBench) edgePIDs() []int { return processTree(b.edge.cmd.Process.Pid) }

// adminPost POSTs to the edge's admin path and wants 200.
func (b *roomBench) adminPost(path string) error {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + b.admin + path)
	req.Header.SetMethod(fasthttp.MethodPost)
	if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode(), strings.TrimSpace(string(resp.Body())))
	}
	return nil
}

// loadAverage is /proc/loadavg's three load averages, what uptime shows.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unavailable"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return strings.TrimSpace(string(data))
	}
	return strings.Join(f[:3], " ")
}
