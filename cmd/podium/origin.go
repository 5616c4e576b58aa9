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
	fs := newEnvFlagSet("podium origin")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: podium origin [flags]\n       podium origin migrate [-migrate-dsn DSN]\n\n%s", envFlagsHelp)
		fs.PrintDefaults()
	}
	var cfg origin.Config
	fs.StringVar(&cfg.Listen, "listen", origin.DefaultListen, "HTTP listen `address`"+fs.env("listen", "PODIUM_ORIGIN_LISTEN"))
	fs.StringVar(&cfg.PrimaryDSN, "primary", "", "primary database `DSN`, user:pass@tcp(host:port)/podium"+fs.env("primary", "PODIUM_DB_PRIMARY"))
	replicas := fs.String("replicas", "", "comma-separated replica `DSNs`"+fs.env("replicas", "PODIUM_DB_REPLICAS"))
	migrateDSN := fs.String("migrate-dsn", "", "if set, apply schema migrations with this `DSN` (a user with CREATE/ALTER) before serving"+fs.env("migrate-dsn", "PODIUM_DB_MIGRATE"))
	fs.IntVar(&cfg.MaxPerOrder, "max-per-order", origin.DefaultMaxPerOrder, "most tickets in one purchase"+fs.env("max-per-order", "PODIUM_ORIGIN_MAX_PER_ORDER"))
	maxPerBuyer := fs.Int("max-per-buyer", origin.DefaultMaxPerBuyer, "most tickets one email may hold of one game, over all its orders; 0: no limit (an order is capped by the smaller of this and -max-per-order)"+fs.env("max-per-buyer", "PODIUM_ORIGIN_MAX_PER_BUYER"))
	fs.DurationVar(&cfg.ListingMaxAge, "listing-max-age", origin.DefaultListingMaxAge, "Cache-Control max-age of listings and details"+fs.env("listing-max-age", "PODIUM_ORIGIN_LISTING_MAX_AGE"))
	fs.DurationVar(&cfg.ReplicaMaxLag, "replica-max-lag", origin.DefaultReplicaMaxLag, "skip a replica lagging more than this"+fs.env("replica-max-lag", "PODIUM_ORIGIN_REPLICA_MAX_LAG"))
	fs.DurationVar(&cfg.HealthInterval, "health-interval", origin.DefaultHealthInterval, "database health check period"+fs.env("health-interval", "PODIUM_ORIGIN_HEALTH_INTERVAL"))
	fs.DurationVar(&cfg.GTIDWait, "gtid-wait", origin.DefaultGTIDWait, "longest MASTER_GTID_WAIT on a replica before reading from the primary"+fs.env("gtid-wait", "PODIUM_ORIGIN_GTID_WAIT"))
	fs.IntVar(&cfg.GTIDWaitConns, "gtid-wait-conns", 0, "most MASTER_GTID_WAITs at once per replica, each holding a connection; the excess reads from the primary (0: half of -replica-conns)"+fs.env("gtid-wait-conns", "PODIUM_ORIGIN_GTID_WAIT_CONNS"))
	fs.DurationVar(&cfg.PurchaseTimeout, "purchase-timeout", origin.DefaultPurchaseTimeout, "bound on one purchase with its retries"+fs.env("purchase-timeout", "PODIUM_ORIGIN_PURCHASE_TIMEOUT"))
	fs.IntVar(&cfg.PurchaseBatchMax, "purchase-batch-max", origin.DefaultPurchaseBatchMax, "most purchases of one game committed in one transaction; 1: each alone"+fs.env("purchase-batch-max", "PODIUM_ORIGIN_PURCHASE_BATCH_MAX"))
	fs.IntVar(&cfg.PurchaseLanes, "purchase-lanes", origin.DefaultPurchaseLanes, "purchase batches committing at once; games are shared among them by id"+fs.env("purchase-lanes", "PODIUM_ORIGIN_PURCHASE_LANES"))
	fs.DurationVar(&cfg.SoldOutTTL, "sold-out-ttl", origin.DefaultSoldOutTTL, "refuse a game seen sold out this long without asking the primary"+fs.env("sold-out-ttl", "PODIUM_ORIGIN_SOLD_OUT_TTL"))
	fs.IntVar(&cfg.PrimaryConns, "primary-conns", origin.DefaultPrimaryConns, "primary connection pool size"+fs.env("primary-conns", "PODIUM_ORIGIN_PRIMARY_CONNS"))
	fs.IntVar(&cfg.ReplicaConns, "replica-conns", origin.DefaultReplicaConns, "connection pool size per replica"+fs.env("replica-conns", "PODIUM_ORIGIN_REPLICA_CONNS"))
	fs.DurationVar(&cfg.DrainDelay, "drain", origin.DefaultDrainDelay, "after SIGTERM, answer /ping 503 this long before closing the listener"+fs.env("drain", "PODIUM_ORIGIN_DRAIN"))
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", origin.DefaultShutdownTimeout, "wait this long for in-flight requests at shutdown"+fs.env("shutdown-timeout", "PODIUM_ORIGIN_SHUTDOWN_TIMEOUT"))
	fs.DurationVar(&cfg.IdempotencyTTL, "idempotency-ttl", origin.DefaultIdempotencyTTL, "keep the Idempotency-Key of a sale and its answer this long"+fs.env("idempotency-ttl", "PODIUM_ORIGIN_IDEMPOTENCY_TTL"))
	fs.DurationVar(&cfg.IdempotencyRefusalTTL, "idempotency-refusal-ttl", origin.DefaultIdempotencyRefusalTTL, "keep the Idempotency-Key of a refused purchase (sold out, unknown game, limit) this long, at most -idempotency-ttl"+fs.env("idempotency-refusal-ttl", "PODIUM_ORIGIN_IDEMPOTENCY_REFUSAL_TTL"))
	keysPerHour := fs.Int("idempotency-keys-per-hour", origin.DefaultIdempotencyKeysPerHour, "most new Idempotency-Keys one buyer (email) may store in an hour; past it a new key gets 429; 0: no bound"+fs.env("idempotency-keys-per-hour", "PODIUM_ORIGIN_IDEMPOTENCY_KEYS_PER_HOUR"))
	fs.StringVar(&cfg.FormSecret, "form-secret", "", "`key` (32+ bytes) signing the buy form's anti-forgery tokens, the same on every origin; empty: the key the migrations stored in the database"+fs.env("form-secret", "PODIUM_ORIGIN_FORM_SECRET"))
	fs.BoolVar(&cfg.AccessLog, "access-log", false, "log every request, not only 5xx"+fs.env("access-log", "PODIUM_ORIGIN_ACCESS_LOG"))
	fs.Float64Var(&cfg.AccessLogSample, "access-log-sample", 0, "share (0..1) of successful requests logged when -access-log is off; 5xx are always logged"+fs.env("access-log-sample", "PODIUM_ORIGIN_ACCESS_LOG_SAMPLE"))
	consulAddr := fs.String("consul", "", "register in the Consul agent at this `host:port` (e.g. 127.0.0.1:8500); empty: do not register"+fs.env("consul", "PODIUM_CONSUL_ADDR"))
	consulService := fs.String("consul-service", "podium-origin", "Consul service `name`"+fs.env("consul-service", "PODIUM_CONSUL_SERVICE"))
	consulToken := fs.String("consul-token", "", "Consul ACL `token`"+fs.env("consul-token", "PODIUM_CONSUL_TOKEN"))
	weight := fs.Int("weight", 1, "share of traffic relative to other origins, published as Consul meta weight"+fs.env("weight", "PODIUM_ORIGIN_WEIGHT"))
	if err := fs.parse(args); err != nil {
		return err
	}
	if cfg.AccessLogSample < 0 || cfg.AccessLogSample > 1 {
		return fmt.Errorf("-access-log-sample must be between 0 and 1, got %g", cfg.AccessLogSample)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags only; see podium origin -h)", fs.Arg(0))
	}
	cfg.ReplicaDSNs = originSplitList(*replicas)
	// The flags' 0 is "no limit"; the Config's 0 is its default.
	cfg.MaxPerBuyer, cfg.IdempotencyKeysPerHour = *maxPerBuyer, *keysPerHour
	if cfg.MaxPerBuyer <= 0 {
		cfg.MaxPerBuyer = -1
	}
	if cfg.IdempotencyKeysPerHour <= 0 {
		cfg.IdempotencyKeysPerHour = -1
	}

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
	fs := newEnvFlagSet("podium origin migrate")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: podium origin migrate [-migrate-dsn DSN]\n\n%s", envFlagsHelp)
		fs.PrintDefaults()
	}
	dsn := fs.String("migrate-dsn", "", "migration `DSN`: a user with CREATE, ALTER, INDEX and DML on the database"+fs.env("migrate-dsn", "PODIUM_DB_MIGRATE"))
	if err := fs.parse(args); err != nil {
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

// envFlagsHelp heads the flag list of -h.
const envFlagsHelp = "flags (a flag not given takes the environment variable in brackets, when set;\nvalues from the environment are never printed):\n"

// envFlagSet is a FlagSet whose flags fall back to environment variables.
// The defaults that -h prints stay the built-in ones: a variable's value is
// applied only after parsing, so a DSN's password or a Consul token never
// reaches a terminal, a CI log or a bug report through the help text.
// The help says which variables are set, not what they hold.
type envFlagSet struct {
	*flag.FlagSet
	// vars maps a flag name to the variable it falls back to.
	vars map[string]string
}

func newEnvFlagSet(name string) *envFlagSet {
	return &envFlagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), vars: map[string]string{}}
}

// env binds the flag name to variable and returns the suffix of the flag's usage:
// the variable's name, and whether it is set.
func (fs *envFlagSet) env(name, variable string) string {
	fs.vars[name] = variable
	if os.Getenv(variable) != "" {
		return " [" + variable + " is set]"
	}
	return " [" + variable + "]"
}

// parse parses args, then gives each flag that args did not set the value
// of its variable, when that is set and not empty. A malformed value is
// ignored with a warning that names the variable but not its value (which
// may be a secret): the flag is the place to be strict, and it still is.
func (fs *envFlagSet) parse(args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for name, variable := range fs.vars {
		v := os.Getenv(variable)
		if given[name] || v == "" {
			continue
		}
		if err := fs.Set(name, v); err != nil {
			fmt.Fprintf(fs.Output(), "%s: ignoring %s: not a valid value for -%s\n", fs.Name(), variable, name)
		}
	}
	return nil
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
