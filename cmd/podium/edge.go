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
	"strings"
	"syscall"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/discovery"
	"github.com/podium-edge/podium/healthcheck"
	"github.com/podium-edge/podium/proxy"
	"github.com/valyala/fasthttp"
)

func runEdge(args []string) error {
	fs := flag.NewFlagSet("podium edge", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "edge YAML config file (default: the embedded defaults)")
	upstreams := fs.String("upstreams", "", "comma-separated host:port list overriding discovery.static")
	listen := fs.String("listen", "", "override listen (host:port)")
	admin := fs.String("admin", "", "override admin (host:port)")
	check := fs.Bool("check", false, "validate the config, print it and exit")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	drain := fs.Duration("drain", 5*time.Second, "on SIGTERM, how long /ping answers 503 draining before the listener closes")
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

	cfg := config.DefaultEdge()
	var err error
	if *cfgPath != "" {
		if cfg, err = config.LoadFile(*cfgPath); err != nil {
			return err
		}
	}
	// Flags override the file and go through the same validation.
	if *upstreams != "" {
		cfg.Discovery.Static = nil
		for _, u := range strings.Split(*upstreams, ",") {
			cfg.Discovery.Static = append(cfg.Discovery.Static, config.StaticUpstream{Addr: strings.TrimSpace(u), Weight: 1})
		}
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	if *admin != "" {
		cfg.Admin = *admin
	}
	if err := cfg.Validate("flags"); err != nil {
		return err
	}
	if *check {
		out, _ := cfg.Redacted()
		fmt.Print(string(out))
		return nil
	}
	return serveEdge(cfg, log, *drain)
}

func serveEdge(cfg *config.Edge, log *slog.Logger, drain time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	p, err := proxy.New(cfg, log)
	if err != nil {
		return err
	}
	defer p.Close()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w (is another edge running? pick another port with -listen)", cfg.Listen, err)
	}
	adminLn, err := net.Listen("tcp", cfg.Admin)
	if err != nil {
		ln.Close()
		return fmt.Errorf("admin listen %s: %w (pick another port with -admin)", cfg.Admin, err)
	}
	adminSrv := &fasthttp.Server{Handler: p.AdminHandler(), Name: "podium-admin", ReadTimeout: 10 * time.Second, NoDefaultServerHeader: true}
	go func() {
		if err := adminSrv.Serve(adminLn); err != nil {
			log.Error("admin listener stopped", "error", err)
		}
	}()

	prober := &healthcheck.Prober{
		Pool:     p.Pool(),
		Path:     cfg.HealthCheck.Path,
		Interval: cfg.HealthCheck.Interval.D(),
		Timeout:  cfg.HealthCheck.Timeout.D(),
		Rise:     cfg.HealthCheck.Rise,
		Fall:     cfg.HealthCheck.Fall,
		Logger:   log,
		OnProbe:  p.ObserveProbe,
		OnChange: p.Metrics().ObserveChange,
	}
	var source discovery.Source = staticSource(cfg)
	bgCtx, cancelBg := context.WithCancel(context.Background())
	defer cancelBg()
	go prober.Run(bgCtx)
	go func() {
		err := source.Run(bgCtx, func(ts []discovery.Target) {
			p.Pool().Update(targetsToConfigs(ts))
			prober.Notify()
			log.Info("upstream set updated", "count", len(ts))
		})
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Error("discovery stopped; keeping the last known upstreams", "error", err)
		}
	}()

	log.Info("edge listening", "listen", ln.Addr().String(), "admin", adminLn.Addr().String(), "upstreams", len(cfg.Discovery.Static))
	srvDone := make(chan error, 1)
	go func() { srvDone <- p.Server().Serve(ln) }()
	select {
	case err := <-srvDone:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: /ping answers 503 draining", "drain", drain.String())
	p.SetDraining(true)
	time.Sleep(drain)
	err = p.Server().ShutdownWithContext(context.Background())
	_ = adminSrv.Shutdown()
	log.Info("edge stopped")
	return err
}

func staticSource(cfg *config.Edge) discovery.Static {
	s := make(discovery.Static, 0, len(cfg.Discovery.Static))
	for _, u := range cfg.Discovery.Static {
		s = append(s, discovery.Target{ID: u.Addr, Addr: u.Addr, Weight: u.Weight})
	}
	return s
}

func targetsToConfigs(ts []discovery.Target) []balancer.Config {
	out := make([]balancer.Config, len(ts))
	for i, t := range ts {
		out[i] = balancer.Config{ID: t.ID, Addr: t.Addr, Weight: t.Weight}
	}
	return out
}
