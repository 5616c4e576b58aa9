package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/discovery"
	"github.com/podium-edge/podium/discovery/consul"
	"github.com/podium-edge/podium/healthcheck"
	"github.com/podium-edge/podium/proxy"
	"github.com/valyala/fasthttp"
)

// edgeFlags are the command-line overrides of the config file. They are
// applied again on every reload, so a reload never undoes a flag.
type edgeFlags struct {
	config, upstreams, listen, admin string
}

// notEmpty refuses a config file with no setting in it (nothing, or only
// blanks and comments) on reload. Loaded as is, it would be the embedded
// defaults: another listener and the default upstreams in place of the
// running ones. A reload reads such a file when it lands between a save's
// truncation and its write (seen: a debounced reload read a file the next
// save had just truncated, and the edge answered 503 until the write), or
// when a file was emptied by mistake; either way the running config is the
// one to keep. path "" (no -config) is the embedded defaults, and fine.
func notEmpty(path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil // LoadFile reports it, with context
	}
	for _, line := range strings.Split(string(b), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return nil
		}
	}
	return fmt.Errorf("%s: the file has no settings (a save in progress, or emptied by mistake?); the running config stays until it has", path)
}

func (f edgeFlags) load() (*config.Edge, error) {
	cfg := config.DefaultEdge()
	if f.config != "" {
		var err error
		if cfg, err = config.LoadFile(f.config); err != nil {
			return nil, err
		}
	}
	if f.upstreams != "" {
		cfg.Discovery.Static = nil
		for _, u := range strings.Split(f.upstreams, ",") {
			cfg.Discovery.Static = append(cfg.Discovery.Static, config.StaticUpstream{Addr: strings.TrimSpace(u), Weight: 1})
		}
	}
	if f.listen != "" {
		cfg.Listen = f.listen
	}
	if f.admin != "" {
		cfg.Admin = f.admin
	}
	// Flags go through the same validation as the file.
	if err := cfg.Validate("flags"); err != nil {
		return nil, err
	}
	return cfg, nil
}

func runEdge(args []string) error {
	fs := flag.NewFlagSet("podium edge", flag.ContinueOnError)
	var f edgeFlags
	fs.StringVar(&f.config, "config", "", "edge YAML config file (default: the embedded defaults); reloaded on SIGHUP and when it changes")
	fs.StringVar(&f.upstreams, "upstreams", "", "comma-separated host:port list overriding discovery.static")
	fs.StringVar(&f.listen, "listen", "", "override listen (host:port)")
	fs.StringVar(&f.admin, "admin", "", "override admin (host:port)")
	check := fs.Bool("check", false, "validate the config, print it and exit")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	drain := fs.Duration("drain", 5*time.Second, "on SIGTERM, how long /ping answers 503 draining (and every answer closes its connection) before the listener closes")
	shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "after the drain, how long requests under way may take before the edge exits anyway")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: podium edge [-config edge.yaml] [flags]\n\nRuns the Podium edge reverse proxy. With no -config it runs the embedded\ndefaults: listen %s, admin %s, upstreams %s.\n\n", config.DefaultListen, config.DefaultAdmin, strings.Join(config.DefaultStaticUpstreams, ","))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: level})).With("component", "edge")
	cfg, err := f.load()
	if err != nil {
		return err
	}
	if *check {
		for _, n := range cfg.Notices() {
			fmt.Fprintln(os.Stderr, "podium edge -check: note:", n)
		}
		out, _ := cfg.Redacted()
		fmt.Print(string(out))
		return nil
	}
	logNotices(log, cfg, "start")
	return serveEdge(f, cfg, log, *drain, *shutdownTimeout)
}

// logNotices logs what validation assumed (config.Edge.Notices), so an
// operator learns of a fallback from the log, not from a surprise.
func logNotices(log *slog.Logger, cfg *config.Edge, trigger string) {
	for _, n := range cfg.Notices() {
		log.Warn("config note", "trigger", trigger, "note", n)
	}
}

// listen opens a TCP listener, with SO_REUSEPORT when asked, so a second
// edge process can bind the same port and take over while this one drains
// (README, "Zero-downtime restart").
func listen(addr string, reusePort bool) (net.Listener, error) {
	lc := net.ListenConfig{}
	if reusePort {
		lc.Control = reusePortControl
	}
	return lc.Listen(context.Background(), "tcp", addr)
}

// edge is the running edge process: the proxy and what feeds it.
type edge struct {
	p     *proxy.Proxy
	log   *slog.Logger
	flags edgeFlags

	prober    atomic.Pointer[healthcheck.Prober]
	upstreams feed // the running discovery.Source, feeding updatePool

	mu         sync.Mutex // guards what follows: reloads are serialised
	cfg        *config.Edge
	stopProber context.CancelFunc
}

// updatePool applies a discovery snapshot and has the prober check new
// hosts at once.
func (e *edge) updatePool(ts []discovery.Target) {
	e.p.Pool().Update(targetsToConfigs(ts))
	if pr := e.prober.Load(); pr != nil {
		pr.Notify()
	}
}

func serveEdge(f edgeFlags, cfg *config.Edge, log *slog.Logger, drain, shutdownTimeout time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	p, err := proxy.New(cfg, log)
	if err != nil {
		return err
	}
	defer p.Close()
	p.SetWarming(true)
	adminLn, err := listen(cfg.Admin, false)
	if err != nil {
		return fmt.Errorf("admin listen %s: %w (pick another port with -admin)", cfg.Admin, err)
	}
	adminSrv := &fasthttp.Server{Handler: p.AdminHandler(), Name: "podium-admin", ReadTimeout: 10 * time.Second, NoDefaultServerHeader: true}
	go func() {
		if err := adminSrv.Serve(adminLn); err != nil {
			log.Error("admin listener stopped", "error", err)
		}
	}()

	e := &edge{p: p, log: log, flags: f, cfg: cfg}
	e.upstreams = feed{push: e.updatePool, log: log}
	bg, cancelBg := context.WithCancel(context.Background())
	defer cancelBg()
	e.startProber(bg, cfg)
	src, err := newSource(cfg, log)
	if err != nil {
		return err
	}
	// A source that loses its backend (a Consul agent gone) keeps the last
	// known set by not pushing until it hears from it again.
	e.upstreams.start(bg, src)
	// Warm up (Envoy's cluster warming): the public listener opens once
	// an upstream has passed its health check, or after warmUpLimit. With
	// SO_REUSEPORT the kernel hands a bound listener its share of new
	// connections at once, so an edge that joined a running one before
	// any upstream was up answered 503 (TestZeroDowntimeRestart, beside
	// CPU hogs, when its first probe timed out).
	if !warmUp(ctx, p.Pool(), warmUpLimit(cfg), log) {
		return nil // SIGTERM or Ctrl-C while warming up: nothing served yet
	}
	ln, err := listen(cfg.Listen, cfg.ReusePort)
	if err != nil {
		return fmt.Errorf("listen %s: %w (is another edge running? pick another port with -listen)", cfg.Listen, err)
	}
	p.SetWarming(false)
	var registration *consul.Service
	if cs := cfg.Discovery.Consul; cs != nil && cs.Register != nil {
		if registration, err = registerEdge(bg, cs, ln.Addr(), log); err != nil {
			return err
		}
	}
	if f.config != "" {
		go watchConfig(bg, f.config, log, e.reload)
	}

	log.Info("edge listening", "listen", ln.Addr().String(), "admin", adminLn.Addr().String(), "discovery", discoveryName(cfg), "reuse_port", cfg.ReusePort)
	srvDone := make(chan error, 1)
	go func() { srvDone <- p.Server().Serve(p.WrapListener(ln)) }()
	select {
	case err := <-srvDone:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: /ping answers 503 draining, answers close their connections", "drain", drain.String())
	p.SetDraining(true)
	if registration != nil {
		// Out of Consul first, so nothing that discovers edges there sends
		// new work while this one drains (fabio #815).
		mctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := registration.MarkCritical(mctx); err != nil {
			log.Warn("could not mark this edge critical in consul", "error", err)
		}
		cancel()
		defer func() {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := registration.Deregister(dctx); err != nil {
				log.Warn("could not deregister this edge from consul", "error", err)
			}
		}()
	}
	time.Sleep(drain)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = p.Server().ShutdownWithContext(sctx)
	_ = adminSrv.Shutdown()
	if errors.Is(err, context.DeadlineExceeded) {
		log.Warn("requests still under way at the shutdown timeout were cut", "timeout", shutdownTimeout.String())
		err = nil
	}
	log.Info("edge stopped")
	return err
}

// warmUpLimit bounds the warm-up: long enough for an upstream whose first
// probe failed to pass rise probes after it, at most 30 s.
func warmUpLimit(cfg *config.Edge) time.Duration {
	hc := cfg.HealthCheck
	d := hc.Interval.D()*time.Duration(hc.Rise+1) + hc.Timeout.D()
	return min(max(d, time.Second), 30*time.Second)
}

// warmUp waits until some upstream of pool is healthy, or limit passes,
// or ctx ends (false then).
func warmUp(ctx context.Context, pool *balancer.Pool, limit time.Duration, log *slog.Logger) bool {
	start := time.Now()
	healthy := func() bool {
		for _, h := range pool.Hosts() {
			if h.Healthy() {
				return true
			}
		}
		return false
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	logged := false
	for !healthy() {
		if time.Since(start) >= limit {
			log.Warn("no upstream passed its health check while warming up; taking traffic anyway (answers are 503 until one does)", "waited", limit.String())
			return true
		}
		if !logged && time.Since(start) >= time.Second {
			log.Info("warming up: waiting for an upstream to pass its health check before taking traffic", "at_most", limit.String())
			logged = true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}

// startProber (re)starts the active health checker with cfg's settings.
// Hosts keep their health across a restart of the prober.
func (e *edge) startProber(bg context.Context, cfg *config.Edge) {
	if e.stopProber != nil {
		e.stopProber()
	}
	ctx, cancel := context.WithCancel(bg)
	e.stopProber = cancel
	prober := &healthcheck.Prober{
		Pool:     e.p.Pool(),
		Path:     cfg.HealthCheck.Path,
		Interval: cfg.HealthCheck.Interval.D(),
		Timeout:  cfg.HealthCheck.Timeout.D(),
		Rise:     cfg.HealthCheck.Rise,
		Fall:     cfg.HealthCheck.Fall,
		Logger:   e.log,
		OnProbe:  e.p.ObserveProbe,
		OnChange: e.p.Metrics().ObserveChange,
	}
	go prober.Run(ctx)
	e.prober.Store(prober)
}

// reload loads the config file again and switches to it whole, or keeps
// the running config and says why.
func (e *edge) reload(bg context.Context, why string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := notEmpty(e.flags.config); err != nil {
		e.p.ReloadFailed()
		e.log.Error("config reload rejected; the running config stays", "trigger", why, "error", err.Error())
		return
	}
	cfg, err := e.flags.load()
	if err != nil {
		e.p.ReloadFailed()
		e.log.Error("config reload rejected; the running config stays", "trigger", why, "error", err.Error())
		return
	}
	// Switching between static and Consul, or retargeting Consul, needs a
	// restart; the running source stays until then.
	var sourceRestart bool
	if !reflect.DeepEqual(cfg.Discovery.Consul, e.cfg.Discovery.Consul) {
		sourceRestart = true
		cfg.Discovery = e.cfg.Discovery
	}
	needRestart, err := e.p.Reload(cfg)
	if err != nil {
		e.p.ReloadFailed()
		e.log.Error("config reload failed; the running config stays", "trigger", why, "error", err.Error())
		return
	}
	if sourceRestart {
		needRestart = append(needRestart, "discovery.consul")
	} else if cfg.Discovery.Consul == nil && !reflect.DeepEqual(cfg.Discovery.Static, e.cfg.Discovery.Static) {
		e.upstreams.start(bg, staticSource(cfg))
	}
	if cfg.HealthCheck != e.cfg.HealthCheck {
		e.startProber(bg, cfg)
	}
	e.cfg = cfg
	logNotices(e.log, cfg, why)
	if len(needRestart) > 0 {
		e.log.Warn("config reloaded; some changes need a restart to take effect", "trigger", why, "restart_for", needRestart)
		return
	}
	e.log.Info("config reloaded", "trigger", why)
}

func consulConfig(cs *config.Consul) consul.Config {
	return consul.Config{Address: cs.Address, Token: cs.Token, Datacenter: cs.Datacenter,
		Service: cs.Service, Tag: cs.Tag, AllowStale: cs.AllowStale}
}

// registerEdge registers this edge in Consul with a check on its /ping.
func registerEdge(ctx context.Context, cs *config.Consul, listenAddr net.Addr, log *slog.Logger) (*consul.Service, error) {
	client, err := consulConfig(cs).NewClient()
	if err != nil {
		return nil, err
	}
	r := cs.Register
	tcp, _ := listenAddr.(*net.TCPAddr)
	addr := r.Address
	if addr == "" {
		addr = "127.0.0.1"
		if tcp != nil && !tcp.IP.IsUnspecified() {
			addr = tcp.IP.String()
		}
	}
	name := r.Name
	if name == "" {
		name = "podium-edge"
	}
	port := 0
	if tcp != nil {
		port = tcp.Port
	}
	svc, err := consul.Register(ctx, client, consul.Registration{
		Name: name, Addr: addr, Port: port, Tags: r.Tags,
		Meta:                    map[string]string{"version": version},
		CheckPath:               "/ping",
		CheckInterval:           r.CheckInterval.D(),
		CheckTimeout:            r.CheckTimeout.D(),
		DeregisterCriticalAfter: r.DeregisterCriticalAfter.D(),
		Logger:                  log,
	})
	if err != nil {
		return nil, fmt.Errorf("registering the edge in consul: %w", err)
	}
	log.Info("registered in consul", "service", name, "id", svc.ID(), "addr", fmt.Sprintf("%s:%d", addr, port))
	return svc, nil
}
