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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/podium-edge/podium/discovery/consul"
	"github.com/podium-edge/podium/origin"
)

// runOrigin runs the ticket service: `podium origin [flags]`, or
// `podium origin migrate [flags]` to apply the schema migrations and exit.
// Every flag falls back to an environment variable (named in its usage), so
// that `eval "$(scripts/mariadb-cluster.sh env)"` is all a shell needs.
func runOrigin(args []string) error {
	if len(args) > 0 && args[0] == "migrate" {
		return runOriginMigrate(args[1:])
	}
	fs := flag.NewFlagSet("podium origin", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: podium origin [flags]\n       podium origin migrate [-migrate-dsn DSN]\n\nflags (each falls back to the environment variable in brackets):\n")
		fs.PrintDefaults()
	}
	var cfg origin.Config
	fs.StringVar(&cfg.Listen, "listen", originEnv("PODIUM_ORIGIN_LISTEN", origin.DefaultListen), "HTTP listen `address` [PODIUM_ORIGIN_LISTEN]")
	fs.StringVar(&cfg.PrimaryDSN, "primary", originEnv("PODIUM_DB_PRIMARY", ""), "primary database `DSN`, user:pass@tcp(host:port)/podium [PODIUM_DB_PRIMARY]")
	replicas := fs.String("replicas", originEnv("PODIUM_DB_REPLICAS", ""), "comma-separated replica `DSNs` [PODIUM_DB_REPLICAS]")
	migrateDSN := fs.String("migrate-dsn", originEnv("PODIUM_DB_MIGRATE", ""), "if set, apply schema migrations with this `DSN` (a user with CREATE/ALTER) before serving [PODIUM_DB_MIGRATE]")
	fs.IntVar(&cfg.MaxPerOrder, "max-per-order", originEnvInt("PODIUM_ORIGIN_MAX_PER_ORDER", origin.DefaultMaxPerOrder), "most tickets in one purchase [PODIUM_ORIGIN_MAX_PER_ORDER]")
	fs.DurationVar(&cfg.ListingMaxAge, "listing-max-age", originEnvDuration("PODIUM_ORIGIN_LISTING_MAX_AGE", origin.DefaultListingMaxAge), "Cache-Control max-age of listings and details [PODIUM_ORIGIN_LISTING_MAX_AGE]")
	fs.DurationVar(&cfg.ReplicaMaxLag, "replica-max-lag", originEnvDuration("PODIUM_ORIGIN_REPLICA_MAX_LAG", origin.DefaultReplicaMaxLag), "skip a replica lagging more than this [PODIUM_ORIGIN_REPLICA_MAX_LAG]")
	fs.DurationVar(&cfg.HealthInterval, "health-interval", originEnvDuration("PODIUM_ORIGIN_HEALTH_INTERVAL", origin.DefaultHealthInterval), "database health check period [PODIUM_ORIGIN_HEALTH_INTERVAL]")
	fs.DurationVar(&cfg.GTIDWait, "gtid-wait", originEnvDuration("PODIUM_ORIGIN_GTID_WAIT", origin.DefaultGTIDWait), "longest MASTER_GTID_WAIT on a replica before reading from the primary [PODIUM_ORIGIN_GTID_WAIT]")
	fs.DurationVar(&cfg.PurchaseTimeout, "purchase-timeout", originEnvDuration("PODIUM_ORIGIN_PURCHASE_TIMEOUT", origin.DefaultPurchaseTimeout), "bound on one purchase with its retries [PODIUM_ORIGIN_PURCHASE_TIMEOUT]")
	fs.IntVar(&cfg.PrimaryConns, "primary-conns", originEnvInt("PODIUM_ORIGIN_PRIMARY_CONNS", origin.DefaultPrimaryConns), "primary connection pool size [PODIUM_ORIGIN_PRIMARY_CONNS]")
	fs.IntVar(&cfg.ReplicaConns, "replica-conns", originEnvInt("PODIUM_ORIGIN_REPLICA_CONNS", origin.DefaultReplicaConns), "connection pool size per replica [PODIUM_ORIGIN_REPLICA_CONNS]")
	fs.DurationVar(&cfg.DrainDelay, "drain", originEnvDuration("PODIUM_ORIGIN_DRAIN", origin.DefaultDrainDelay), "after SIGTERM, answer /ping 503 this long before closing the listener [PODIUM_ORIGIN_DRAIN]")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", originEnvDuration("PODIUM_ORIGIN_SHUTDOWN_TIMEOUT", origin.DefaultShutdownTimeout), "wait this long for in-flight requests at shutdown [PODIUM_ORIGIN_SHUTDOWN_TIMEOUT]")
	fs.DurationVar(&cfg.IdempotencyTTL, "idempotency-ttl", originEnvDuration("PODIUM_ORIGIN_IDEMPOTENCY_TTL", origin.DefaultIdempotencyTTL), "keep Idempotency-Keys and their answers this long [PODIUM_ORIGIN_IDEMPOTENCY_TTL]")
	fs.BoolVar(&cfg.AccessLog, "access-log", originEnvBool("PODIUM_ORIGIN_ACCESS_LOG"), "log every request, not only 5xx [PODIUM_ORIGIN_ACCESS_LOG]")
	fs.Float64Var(&cfg.AccessLogSample, "access-log-sample", originEnvFloat("PODIUM_ORIGIN_ACCESS_LOG_SAMPLE", 0), "share (0..1) of successful requests logged when -access-log is off; 5xx are always logged [PODIUM_ORIGIN_ACCESS_LOG_SAMPLE]")
	consulAddr := fs.String("consul", originEnv("PODIUM_CONSUL_ADDR", ""), "register in the Consul agent at this `host:port` (e.g. 127.0.0.1:8500); empty: do not register [PODIUM_CONSUL_ADDR]")
	consulService := fs.String("consul-service", originEnv("PODIUM_CONSUL_SERVICE", "podium-origin"), "Consul service `name` [PODIUM_CONSUL_SERVICE]")
	consulToken := fs.String("consul-token", originEnv("PODIUM_CONSUL_TOKEN", ""), "Consul ACL `token` [PODIUM_CONSUL_TOKEN]")
	weight := fs.Int("weight", originEnvInt("PODIUM_ORIGIN_WEIGHT", 1), "share of traffic relative to other origins, published as Consul meta weight [PODIUM_ORIGIN_WEIGHT]")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.AccessLogSample < 0 || cfg.AccessLogSample > 1 {
		return fmt.Errorf("-access-log-sample must be between 0 and 1, got %g", cfg.AccessLogSample)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags only; see podium origin -h)", fs.Arg(0))
	}
	cfg.ReplicaDSNs = originSplitList(*replicas)

	// JSON lines, as the edge writes them, so one request ID finds the
	// whole trail across both.
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil)).With("component", "origin")
	// The driver's own messages (a pooled connection found dead after a
	// database restart) go to the same log, marked as its.
	mysql.SetLogger(slog.NewLogLogger(log.With("component", "mysql").Handler(), slog.LevelWarn))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if *migrateDSN != "" {
		mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := origin.Migrate(mctx, *migrateDSN, log)
		cancel()
		if err != nil {
			return fmt.Errorf("migrating: %w", err)
		}
	}
	srv, err := origin.New(cfg, log)
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}
	if *consulAddr == "" {
		return srv.Run(ctx, ln)
	}
	if *weight < 1 || *weight > 1000 {
		return fmt.Errorf("-weight must be 1..1000, got %d", *weight)
	}
	// Registered once listening; on SIGTERM, critical in Consul first, so
	// no edge sends new requests, and only then /ping 503, the drain and
	// the shutdown (fabio issue #815 asks for exactly this order).
	regCtx, stopReg := context.WithCancel(context.Background())
	defer stopReg()
	svc, err := registerOrigin(regCtx, *consulAddr, *consulToken, *consulService, ln.Addr().(*net.TCPAddr), *weight, log)
	if err != nil {
		ln.Close()
		return err
	}
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	go func() {
		<-ctx.Done()
		mctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := svc.MarkCritical(mctx); err != nil {
			log.Warn("origin: could not mark this instance critical in consul", "error", err)
		}
		cancel()
		cancelRun()
	}()
	err = srv.Run(runCtx, ln)
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if derr := svc.Deregister(dctx); derr != nil {
		log.Warn("origin: could not deregister from consul", "error", derr)
	}
	return err
}

// registerOrigin registers the origin with an HTTP check on its /ping.
func registerOrigin(ctx context.Context, addr, token, service string, at *net.TCPAddr, weight int, log *slog.Logger) (*consul.Service, error) {
	client, err := consul.Config{Address: addr, Token: token}.NewClient()
	if err != nil {
		return nil, err
	}
	host := at.IP.String()
	if at.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	svc, err := consul.Register(ctx, client, consul.Registration{
		Name: service, Addr: host, Port: at.Port,
		Tags:   []string{"origin"},
		Meta:   map[string]string{consul.MetaWeight: strconv.Itoa(weight), "version": version},
		Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("registering in consul at %s: %w (is the agent running? scripts/consul.sh start)", addr, err)
	}
	log.Info("origin: registered in consul", "service", service, "id", svc.ID())
	return svc, nil
}

func runOriginMigrate(args []string) error {
	fs := flag.NewFlagSet("podium origin migrate", flag.ContinueOnError)
	dsn := fs.String("migrate-dsn", originEnv("PODIUM_DB_MIGRATE", ""), "migration `DSN`: a user with CREATE, ALTER, INDEX and DML on the database [PODIUM_DB_MIGRATE]")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dsn == "" {
		return errors.New("migrate: no DSN: pass -migrate-dsn or set PODIUM_DB_MIGRATE (scripts/mariadb-cluster.sh env prints it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done, err := origin.Migrate(ctx, *dsn, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		return err
	}
	if len(done) == 0 {
		fmt.Println("migrations: already up to date")
		return nil
	}
	fmt.Printf("migrations: applied %v\n", done)
	return nil
}

func originEnv(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// The env fallbacks below ignore a malformed value with a warning rather
// than failing: the flag is the place to be strict, and it still is.
func originEnvFloat(name string, def float64) float64 {
	v := originEnv(name, "")
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "podium origin: ignoring %s=%q: not a number\n", name, v)
		return def
	}
	return f
}

func originEnvInt(name string, def int) int {
	v := originEnv(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "podium origin: ignoring %s=%q: not an integer\n", name, v)
		return def
	}
	return n
}

func originEnvDuration(name string, def time.Duration) time.Duration {
	v := originEnv(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "podium origin: ignoring %s=%q: not a duration like 500ms\n", name, v)
		return def
	}
	return d
}

func originEnvBool(name string) bool {
	b, _ := strconv.ParseBool(originEnv(name, "false"))
	return b
}

func originSplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
