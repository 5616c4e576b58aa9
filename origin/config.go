// Package origin is the Olympic ticket service behind the Podium edge: the
// JSON API and server-rendered pages for the games, and purchases that never
// oversell, stored on a MariaDB primary with read replicas.
//
// Writes and purchases go to the primary in one transaction each; reads go
// to a healthy replica and fall back to the primary. A purchase answers with
// the GTID of its commit, and a read that presents it waits for that GTID on
// its replica (MASTER_GTID_WAIT) before reading, so a buyer never sees the
// seats as they were before their own purchase.
package origin

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Defaults for Config, one place each. Zero fields of a Config take these.
const (
	DefaultListen          = "127.0.0.1:9001"
	DefaultMaxPerOrder     = 10
	DefaultMaxPerBuyer     = 8
	DefaultPageLimit       = 100
	MaxPageLimit           = 500
	DefaultListingMaxAge   = 2 * time.Second
	DefaultReplicaMaxLag   = 5 * time.Second
	DefaultHealthInterval  = time.Second
	DefaultReplicaCooldown = 3 * time.Second
	DefaultGTIDWait        = 500 * time.Millisecond
	DefaultPurchaseTimeout = 10 * time.Second
	DefaultPurchaseRetries = 3
	// DefaultPurchaseBatchMax bounds a batch of one game's purchases: one
	// transaction of 256 orders is a few milliseconds on the primary, so
	// the buyers at the back of a batch wait no longer than that.
	DefaultPurchaseBatchMax = 256
	// DefaultPurchaseLanes is how many batches commit at once: a game's
	// purchases go to lane id modulo lanes, so buyers spread over many
	// games share batches. One lane makes the largest batches, and the
	// primary's CPU per purchase falls with the batch: spread over 624
	// games, 64 buyers at once, origin direct on a quiet machine, 1 lane
	// sold 3,946/s (batches of 32), 2 lanes 3,545/s, 4 lanes 2,868/s and
	// 8 lanes 2,417/s (batches of 4.5), runs of 8 s. More lanes pay only
	// where the primary has cores to spare and commits are slow.
	DefaultPurchaseLanes = 1
	// DefaultSoldOutTTL is how long a game seen sold out is refused
	// without the primary before a batch looks again.
	DefaultSoldOutTTL      = time.Second
	DefaultPrimaryConns    = 64
	DefaultReplicaConns    = 32
	DefaultDialTimeout     = time.Second
	DefaultQueryTimeout    = 10 * time.Second
	DefaultDrainDelay      = 2 * time.Second
	DefaultShutdownTimeout = 20 * time.Second
	DefaultIdempotencyTTL  = 24 * time.Hour
	// DefaultIdempotencyRefusalTTL keeps a refusal's key long enough for a
	// client's retries, not a day: it protects no sale.
	DefaultIdempotencyRefusalTTL = time.Hour
	// DefaultIdempotencyKeysPerHour is generous for a fan (a form submit
	// each is one key) and bounds what one buyer can make the origin store.
	DefaultIdempotencyKeysPerHour = 60
)

// Config holds the origin's settings. A Config is a plain value: copy it
// freely; the Server keeps its own copy. Every zero field means its Default.
type Config struct {
	// Listen is the HTTP listener address (DefaultListen).
	Listen string
	// PrimaryDSN is the go-sql-driver DSN of the primary, for writes and as
	// the fallback for reads. Required.
	PrimaryDSN string
	// ReplicaDSNs are the read replicas. None means every read goes to the
	// primary.
	ReplicaDSNs []string

	// MaxPerOrder caps the quantity of one purchase (DefaultMaxPerOrder),
	// and is lowered to MaxPerBuyer when that is smaller: no single order
	// may exceed what one buyer may hold.
	MaxPerOrder int
	// MaxPerBuyer caps the seats one email may hold of one game, over all
	// its orders (DefaultMaxPerBuyer), so that one buyer cannot empty a
	// game. Emails compare as the tickets table does, case-insensitively.
	// Negative means no limit.
	MaxPerBuyer int
	// ListingMaxAge is the Cache-Control max-age of listings and details
	// (DefaultListingMaxAge): short, because seats left change by the second.
	ListingMaxAge time.Duration

	// ReplicaMaxLag is how far behind the primary a replica may be before
	// reads skip it (DefaultReplicaMaxLag).
	ReplicaMaxLag time.Duration
	// HealthInterval is the period of the primary ping and replica lag
	// checks (DefaultHealthInterval).
	HealthInterval time.Duration
	// ReplicaCooldown is how long a replica whose query failed is skipped
	// before the next health check may bring it back (DefaultReplicaCooldown).
	ReplicaCooldown time.Duration
	// GTIDWait bounds MASTER_GTID_WAIT for a read-your-writes read; past it
	// the read goes to the primary (DefaultGTIDWait).
	GTIDWait time.Duration
	// GTIDWaitConns bounds the MASTER_GTID_WAITs running at once on one
	// replica, each holding a connection for up to GTIDWait. A read that
	// finds every replica's waits taken reads from the primary. Zero means
	// half of ReplicaConns (at least 1), so that plain reads always keep
	// the other half of the pool.
	GTIDWaitConns int

	// PurchaseTimeout bounds one purchase including its retries
	// (DefaultPurchaseTimeout).
	PurchaseTimeout time.Duration
	// PurchaseRetries is how many times a purchase that hit a deadlock, a
	// lock wait timeout or a lost connection is tried again
	// (DefaultPurchaseRetries). Negative means never.
	PurchaseRetries int
	// PurchaseBatchMax bounds how many purchases of one game commit in one
	// transaction (DefaultPurchaseBatchMax); 1 commits each alone.
	PurchaseBatchMax int
	// PurchaseLanes is how many purchase batches may commit at once
	// (DefaultPurchaseLanes). The games are shared among them by id.
	PurchaseLanes int
	// SoldOutTTL is how long a game that a batch saw without a seat left
	// is refused with 409 without asking the primary (DefaultSoldOutTTL).
	// Seats never come back on their own; the bound is for an operator
	// who adds some by hand.
	SoldOutTTL time.Duration

	// PrimaryConns and ReplicaConns size the connection pools
	// (DefaultPrimaryConns, DefaultReplicaConns per replica).
	PrimaryConns int
	ReplicaConns int
	// DialTimeout bounds a new database connection (DefaultDialTimeout): a
	// stopped primary must fail fast, not hang a purchase.
	DialTimeout time.Duration
	// QueryTimeout is the driver's read/write timeout on a database
	// connection (DefaultQueryTimeout).
	QueryTimeout time.Duration

	// DrainDelay is how long /ping answers 503 after SIGTERM before the
	// listener closes, so that edges stop sending first (DefaultDrainDelay).
	DrainDelay time.Duration
	// ShutdownTimeout bounds the wait for in-flight requests at shutdown
	// (DefaultShutdownTimeout).
	ShutdownTimeout time.Duration
	// IdempotencyTTL is how long an Idempotency-Key and its stored answer
	// are kept after a sale (DefaultIdempotencyTTL); older keys are deleted
	// in the background, and a request reusing one is a new purchase.
	IdempotencyTTL time.Duration
	// IdempotencyRefusalTTL is how long a key whose answer refused the
	// purchase (sold out, unknown game, limit per buyer) is kept
	// (DefaultIdempotencyRefusalTTL), at most IdempotencyTTL.
	IdempotencyRefusalTTL time.Duration
	// IdempotencyKeysPerHour bounds the keys one buyer (email) may have
	// stored in any hour (DefaultIdempotencyKeysPerHour): a new key past it
	// is refused with 429 and stored nowhere. Negative means no bound.
	IdempotencyKeysPerHour int
	// FormSecret is the key that signs the buy form's anti-forgery tokens.
	// Every origin of a cluster needs the same one, since a form rendered
	// by one origin may be posted through the edge to another. Empty means
	// the key that migration 0003 stored in the database (origin_secrets),
	// which every origin of the cluster reads. When set, at least 32 bytes.
	FormSecret string
	// AccessLog logs every request at Info level when true; by default only
	// 5xx answers and panics are logged.
	AccessLog bool
	// AccessLogSample, between 0 and 1, is the share of the other requests
	// logged when AccessLog is false (5xx are always logged). Zero logs none.
	AccessLogSample float64
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxPerOrder == 0 {
		c.MaxPerOrder = DefaultMaxPerOrder
	}
	if c.MaxPerBuyer == 0 {
		c.MaxPerBuyer = DefaultMaxPerBuyer
	}
	if c.MaxPerBuyer > 0 && c.MaxPerOrder > c.MaxPerBuyer {
		c.MaxPerOrder = c.MaxPerBuyer
	}
	if c.PurchaseRetries == 0 {
		c.PurchaseRetries = DefaultPurchaseRetries
	} else if c.PurchaseRetries < 0 {
		c.PurchaseRetries = 0
	}
	if c.PurchaseBatchMax == 0 {
		c.PurchaseBatchMax = DefaultPurchaseBatchMax
	}
	if c.PurchaseLanes == 0 {
		c.PurchaseLanes = DefaultPurchaseLanes
	}
	if c.PrimaryConns == 0 {
		c.PrimaryConns = DefaultPrimaryConns
	}
	if c.ReplicaConns == 0 {
		c.ReplicaConns = DefaultReplicaConns
	}
	if c.GTIDWaitConns == 0 {
		c.GTIDWaitConns = max(c.ReplicaConns/2, 1)
	}
	set(&c.ListingMaxAge, DefaultListingMaxAge)
	set(&c.ReplicaMaxLag, DefaultReplicaMaxLag)
	set(&c.HealthInterval, DefaultHealthInterval)
	set(&c.ReplicaCooldown, DefaultReplicaCooldown)
	set(&c.GTIDWait, DefaultGTIDWait)
	set(&c.PurchaseTimeout, DefaultPurchaseTimeout)
	set(&c.SoldOutTTL, DefaultSoldOutTTL)
	set(&c.DialTimeout, DefaultDialTimeout)
	set(&c.QueryTimeout, DefaultQueryTimeout)
	set(&c.DrainDelay, DefaultDrainDelay)
	set(&c.ShutdownTimeout, DefaultShutdownTimeout)
	set(&c.IdempotencyTTL, DefaultIdempotencyTTL)
	set(&c.IdempotencyRefusalTTL, DefaultIdempotencyRefusalTTL)
	c.IdempotencyRefusalTTL = min(c.IdempotencyRefusalTTL, c.IdempotencyTTL)
	if c.IdempotencyKeysPerHour == 0 {
		c.IdempotencyKeysPerHour = DefaultIdempotencyKeysPerHour
	}
	return c
}

// Validate reports every problem of c at once, each naming the setting.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.PrimaryDSN) == "" {
		errs = append(errs, errors.New("primary DSN: required (flag -primary or PODIUM_DB_PRIMARY; scripts/mariadb-cluster.sh env prints it)"))
	}
	if c.MaxPerOrder < 0 || c.MaxPerOrder > 1000 {
		errs = append(errs, fmt.Errorf("max per order: must be 1..1000, got %d", c.MaxPerOrder))
	}
	if c.MaxPerBuyer > 100000 {
		errs = append(errs, fmt.Errorf("max per buyer: must be 1..100000, or negative for no limit, got %d", c.MaxPerBuyer))
	}
	for name, d := range map[string]time.Duration{
		"listing max-age": c.ListingMaxAge, "replica max lag": c.ReplicaMaxLag,
		"health interval": c.HealthInterval, "replica cooldown": c.ReplicaCooldown,
		"gtid wait": c.GTIDWait, "purchase timeout": c.PurchaseTimeout,
		"dial timeout": c.DialTimeout, "query timeout": c.QueryTimeout,
		"drain delay": c.DrainDelay, "shutdown timeout": c.ShutdownTimeout,
		"idempotency TTL": c.IdempotencyTTL, "idempotency refusal TTL": c.IdempotencyRefusalTTL,
		"sold-out TTL": c.SoldOutTTL,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s: must be >= 0, got %s", name, d))
		}
	}
	if c.PurchaseBatchMax < 0 || c.PurchaseBatchMax > 10000 {
		errs = append(errs, fmt.Errorf("purchase batch max: must be 1..10000 (0 for the default), got %d", c.PurchaseBatchMax))
	}
	if c.PurchaseLanes < 0 || c.PurchaseLanes > 1024 {
		errs = append(errs, fmt.Errorf("purchase lanes: must be 1..1024 (0 for the default), got %d", c.PurchaseLanes))
	}
	if c.PrimaryConns < 0 || c.ReplicaConns < 0 {
		errs = append(errs, fmt.Errorf("connection pools: must be >= 1, got primary %d, replica %d", c.PrimaryConns, c.ReplicaConns))
	}
	if c.FormSecret != "" && len(c.FormSecret) < 32 {
		// The value is a secret: its length only.
		errs = append(errs, fmt.Errorf("form secret: at least 32 bytes, got %d (e.g. openssl rand -hex 32)", len(c.FormSecret)))
	}
	if c.GTIDWaitConns < 0 || (c.ReplicaConns > 0 && c.GTIDWaitConns > c.ReplicaConns) {
		errs = append(errs, fmt.Errorf("gtid wait conns: must be 0 (half the replica pool) or 1..replica conns, got %d", c.GTIDWaitConns))
	}
	return errors.Join(errs...)
}
