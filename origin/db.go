package origin

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// ErrUnavailable is returned when no database can serve a request: the
// primary for a write, or every replica and the primary for a read.
var ErrUnavailable = errors.New("ticket database unavailable")

// errGTIDTimeout means a replica did not apply a presented GTID within
// Config.GTIDWait; the read then goes to the primary.
var errGTIDTimeout = errors.New("replica did not reach the presented GTID in time")

// errGTIDBusy means every usable replica already runs as many GTID waits
// as Config.GTIDWaitConns allows; the read then goes to the primary.
var errGTIDBusy = errors.New("every replica's GTID waits are taken")

// querier is what a read needs; *sql.DB and *sql.Conn both satisfy it.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

var (
	_ querier = (*sql.DB)(nil)
	_ querier = (*sql.Conn)(nil)
)

// replica is one read replica and its health as last seen. Safe for
// concurrent use: every field after construction is an atomic.
type replica struct {
	name string // host:port, for logs and metric labels
	db   *sql.DB

	// healthy is the verdict of the last health check.
	healthy atomic.Bool
	// skipUntil (unix nanoseconds) keeps a replica whose query just failed
	// out of rotation until then, even if a health check says it is fine:
	// one check may pass between two failures of a flapping node.
	skipUntil atomic.Int64
	// lagSeconds is Seconds_Behind_Master at the last check, -1 if unknown.
	lagSeconds atomic.Int64
	// timeouts counts the checks in a row that timed out while the replica
	// was in rotation (checkTimeoutsToDown). Guarded by cluster.checkMu.
	timeouts int
	// gtidWaits holds a token per MASTER_GTID_WAIT running on this
	// replica: each holds a connection for up to GTIDWait, so without a
	// bound a few dozen requests a second presenting GTIDs the replica has
	// not applied would take its whole pool.
	gtidWaits chan struct{}
}

func (r *replica) usable(now time.Time) bool {
	return r.healthy.Load() && now.UnixNano() >= r.skipUntil.Load()
}

// cluster routes queries: writes to the primary, reads to a healthy replica
// with a fallback to the primary. Safe for concurrent use; must not be
// copied after first use.
type cluster struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	primary *sql.DB
	// sales is the purchase batches' pool on the primary (sale.go).
	sales *sql.DB
	// primaryName is host:port of the primary, for logs.
	primaryName string
	replicas    []*replica
	// primaryUp is the verdict of the primary pings.
	primaryUp atomic.Bool
	// checkMu runs one health check at a time (the loop's, and
	// Server.CheckDatabases').
	checkMu sync.Mutex
	// primaryTimeouts counts the pings in a row that timed out while the
	// primary was up (checkTimeoutsToDown). Guarded by checkMu.
	primaryTimeouts int
	// rr spreads reads round-robin; the value Add returns picks the start.
	rr atomic.Uint64
	// pos is the primary's GTID position as last seen, against which the
	// GTIDs that clients present are checked.
	pos primaryPosition
	// sale holds the purchase batches and the sold-out marks (sale.go).
	sale saleBook
	// idsByToken makes batches read their orders' ids back by token, as
	// they do on a primary whose multi-row INSERTs do not number rows
	// consecutively (innodb_autoinc_lock_mode 2): tests set it to run that
	// path.
	idsByToken atomic.Bool
}

// openDB opens a pool for dsn with the driver settings the origin relies on:
// UTC times, fast dial failure, bounded reads and writes, interpolated
// parameters (one round trip per statement instead of prepare+execute).
func openDB(dsn string, conns int, cfg Config, vars map[string]string, opts ...func(*mysql.Config)) (*sql.DB, string, error) {
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, "", fmt.Errorf("parsing DSN: %w", err)
	}
	mc.ParseTime = true
	mc.Loc = time.UTC
	mc.Timeout = cfg.DialTimeout
	mc.ReadTimeout = cfg.QueryTimeout
	mc.WriteTimeout = cfg.QueryTimeout
	mc.InterpolateParams = true
	mc.Collation = "utf8mb4_unicode_ci"
	if mc.Params == nil {
		mc.Params = map[string]string{}
	}
	mc.Params["time_zone"] = "'+00:00'"
	for k, v := range vars {
		mc.Params[k] = v
	}
	for _, o := range opts {
		o(mc)
	}
	connector, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, "", fmt.Errorf("configuring driver: %w", err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	// Recycle connections so that a replica that came back, or a primary
	// that restarted, gets fresh sessions and no pool holds a dead one long.
	db.SetConnMaxLifetime(5 * time.Minute)
	db.SetConnMaxIdleTime(time.Minute)
	return db, mc.Addr, nil
}

func newCluster(cfg Config, log *slog.Logger, m *metrics) (*cluster, error) {
	// A purchase that waits this long for another one's lock on the same
	// Idempotency-Key row gives up with 409 instead of hanging (the InnoDB
	// default is 50s); a wait on a game row this long is retried.
	primary, name, err := openDB(cfg.PrimaryDSN, cfg.PrimaryConns, cfg, map[string]string{"innodb_lock_wait_timeout": "5"})
	if err != nil {
		return nil, fmt.Errorf("primary: %w", err)
	}
	// The purchase batches' own pool on the primary, a session per lane
	// (and as many spare): READ COMMITTED (see takeSeats), autocommit off
	// so that a batch's first statement begins its transaction, and
	// several statements per round trip so that its last one stores the
	// keys, commits and reads the GTID. The parameters are interpolated
	// and escaped by the driver; no statement text comes from a client.
	sales, _, err := openDB(cfg.PrimaryDSN, 2*cfg.PurchaseLanes, cfg,
		map[string]string{"innodb_lock_wait_timeout": "5", "tx_isolation": "'READ-COMMITTED'", "autocommit": "0"},
		func(mc *mysql.Config) { mc.MultiStatements = true })
	if err != nil {
		primary.Close()
		return nil, fmt.Errorf("primary (purchases): %w", err)
	}
	c := &cluster{cfg: cfg, log: log, m: m, primary: primary, sales: sales, primaryName: name}
	for range cfg.PurchaseLanes {
		c.sale.lanes = append(c.sale.lanes, &lane{})
	}
	c.primaryUp.Store(true) // optimistic until the first check says otherwise
	// Pool usage (open, in use, idle, waits) as database/sql keeps it:
	// go_sql_* series labelled db_name.
	m.reg.MustRegister(collectors.NewDBStatsCollector(primary, "primary"), collectors.NewDBStatsCollector(sales, "sales"))
	for i, dsn := range cfg.ReplicaDSNs {
		db, name, err := openDB(dsn, cfg.ReplicaConns, cfg, nil)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("replica %d: %w", i+1, err)
		}
		r := &replica{name: name, db: db, gtidWaits: make(chan struct{}, cfg.GTIDWaitConns)}
		r.lagSeconds.Store(-1)
		m.reg.MustRegister(collectors.NewDBStatsCollector(db, fmt.Sprintf("replica%d", i+1)))
		c.replicas = append(c.replicas, r)
	}
	return c, nil
}

func (c *cluster) close() {
	c.primary.Close()
	c.sales.Close()
	for _, r := range c.replicas {
		r.db.Close()
	}
}

// canRead reports whether some database is believed to answer reads.
func (c *cluster) canRead() bool {
	if c.primaryUp.Load() {
		return true
	}
	now := time.Now()
	for _, r := range c.replicas {
		if r.usable(now) {
			return true
		}
	}
	return false
}

// checkTimeoutsToDown is how many health checks in a row must time out
// before a node in use is taken out of it (HAProxy's "fall"): one slow
// answer on a busy machine is not an outage, and taking the primary and
// both replicas out at once for it turned the origin's /ping to 503 and
// emptied the edge's pool (seen with the whole suite beside CPU hogs).
// A refused or broken connection, an error from the server, or a replica
// that says it is not replicating takes a node out at the first check.
const checkTimeoutsToDown = 2

// stillInUse counts in *timeouts the checks in a row of a node in use that
// timed out, and reports whether this one leaves it in use; any other
// outcome resets the count.
func stillInUse(timeouts *int, timedOut, inUse bool) bool {
	if !timedOut || !inUse {
		*timeouts = 0
		return false
	}
	*timeouts++
	return *timeouts < checkTimeoutsToDown
}

// healthLoop checks the primary and the replicas every HealthInterval until
// ctx ends. A panic in a check is logged and the loop goes on.
func (c *cluster) healthLoop(ctx context.Context) {
	c.every(ctx, c.cfg.HealthInterval, "database health check", c.check)
}

func (c *cluster) checkSafely(ctx context.Context) {
	c.safely("database health check", func() { c.check(ctx) })
}

// every runs fn each interval until ctx ends. The origin's background loops
// share it, so each logs a panic with its stack and keeps going.
func (c *cluster) every(ctx context.Context, interval time.Duration, what string, fn func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.safely(what, func() { fn(ctx) })
		}
	}
}

func (c *cluster) safely(what string, fn func()) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("origin: panic in "+what, "panic", p, "stack", string(debug.Stack()))
		}
	}()
	fn()
}

// check runs one round of health checks: the primary first, because a
// replica's verdict depends on it, then the replicas in parallel so that one
// hung node does not delay the verdict on the others.
func (c *cluster) check(ctx context.Context) {
	c.checkMu.Lock()
	defer c.checkMu.Unlock()
	timeout := min(c.cfg.HealthInterval, 2*time.Second)
	if timeout < 500*time.Millisecond {
		timeout = 500 * time.Millisecond
	}
	// The primary's GTID position is the ping: one round trip that says
	// the primary answers and keeps the known position current.
	pctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now()
	var pos string
	err := c.primary.QueryRowContext(pctx, "SELECT @@gtid_binlog_pos").Scan(&pos)
	cancel()
	up := err == nil
	if stillInUse(&c.primaryTimeouts, !up && errors.Is(err, context.DeadlineExceeded), c.primaryUp.Load()) {
		c.log.Warn("origin: primary health check timed out; it stays in use unless the next one does too", "primary", c.primaryName, "timeout", timeout)
		up = true
	}
	if err == nil {
		if p, perr := parsePrimaryPosition(pos); perr != nil {
			c.log.Warn("origin: "+perr.Error(), "primary", c.primaryName)
		} else {
			c.pos.fetched(p, start)
		}
	}
	if c.primaryUp.Swap(up) != up {
		if up {
			c.log.Info("origin: primary is up", "primary", c.primaryName)
		} else {
			c.log.Warn("origin: primary is down", "primary", c.primaryName, "err", err)
		}
	}
	c.m.dbUp.WithLabelValues("primary", c.primaryName).Set(b2f(up))

	var wg sync.WaitGroup
	for _, r := range c.replicas {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			c.checkReplica(cctx, r)
		})
	}
	wg.Wait()
}

// checkReplica decides whether r may serve reads. A replica is skipped when
// it does not answer, when its SQL thread is stopped (it would serve a
// frozen past), when it lags more than ReplicaMaxLag, or when its IO thread
// is disconnected while the primary is up (it cannot be current). With the
// primary down, a replica that applied all it received is the freshest data
// there is, and keeps serving.
func (c *cluster) checkReplica(ctx context.Context, r *replica) {
	ok, lag, reason := c.replicaStatus(ctx, r)
	if stillInUse(&r.timeouts, !ok && errors.Is(ctx.Err(), context.DeadlineExceeded), r.healthy.Load()) {
		c.log.Warn("origin: replica health check timed out; it stays in rotation unless the next one does too", "replica", r.name)
		return // the last verdict and lag stand
	}
	r.lagSeconds.Store(lag)
	c.m.replicaLag.WithLabelValues(r.name).Set(float64(lag))
	c.m.dbUp.WithLabelValues("replica", r.name).Set(b2f(ok))
	if r.healthy.Swap(ok) != ok {
		if ok {
			c.log.Info("origin: replica back in rotation", "replica", r.name)
		} else {
			c.log.Warn("origin: replica out of rotation", "replica", r.name, "reason", reason)
		}
	}
}

func (c *cluster) replicaStatus(ctx context.Context, r *replica) (ok bool, lag int64, reason string) {
	rows, err := r.db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return false, -1, err.Error()
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return false, -1, err.Error()
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return false, -1, err.Error()
		}
		return false, -1, "not configured as a replica (SHOW SLAVE STATUS is empty)"
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return false, -1, err.Error()
	}
	var ioRunning, sqlRunning string
	lag = -1
	for i, col := range cols {
		switch col {
		case "Slave_IO_Running":
			ioRunning = string(vals[i])
		case "Slave_SQL_Running":
			sqlRunning = string(vals[i])
		case "Seconds_Behind_Master":
			if vals[i] != nil {
				lag, _ = strconv.ParseInt(string(vals[i]), 10, 64)
			}
		}
	}
	switch {
	case sqlRunning != "Yes":
		return false, lag, "replication SQL thread is not running"
	case lag > int64(c.cfg.ReplicaMaxLag/time.Second):
		return false, lag, fmt.Sprintf("lagging %ds behind the primary", lag)
	case ioRunning != "Yes" && c.primaryUp.Load():
		return false, lag, "replication IO thread is " + ioRunning + " while the primary is up"
	}
	return true, lag, ""
}

// read runs fn on a healthy replica, or on the primary when none is usable.
// With a non-empty gtid (already validated), the replica first waits up to
// GTIDWait for that GTID to be applied; if it is not, fn runs on the primary
// instead, so a caller who presents the GTID of their write never reads
// anything older. fn may run more than once, on different databases, and
// must not keep anything from a failed attempt.
func (c *cluster) read(ctx context.Context, gtid string, fn func(context.Context, querier) error) error {
	now := time.Now()
	n := len(c.replicas)
	busy := false
	if n > 0 {
		start := int(c.rr.Add(1) % uint64(n))
		for i := range n {
			r := c.replicas[(start+i)%n]
			if !r.usable(now) {
				continue
			}
			err := c.readReplica(ctx, r, gtid, fn)
			if err == nil || isNotFound(err) {
				c.m.reads.WithLabelValues("replica").Inc()
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, errGTIDBusy) {
				busy = true
				continue
			}
			if errors.Is(err, errGTIDTimeout) {
				// Another replica is as likely to be behind; the primary is
				// the bounded answer.
				break
			}
			if !replicaFault(err) {
				// The read itself failed (say, a parameter the
				// driver could not encode): it would fail the same on
				// every replica, and setting them all aside would turn
				// one bad request into an outage. The primary gets one
				// try, in case the error is a replica's after all.
				c.log.Warn("origin: replica read failed; not the replica's fault, trying the primary", "replica", r.name, "err", err)
				break
			}
			r.skipUntil.Store(time.Now().Add(c.cfg.ReplicaCooldown).UnixNano())
			c.log.Warn("origin: replica read failed, skipping it for a while",
				"replica", r.name, "cooldown", c.cfg.ReplicaCooldown, "err", err)
		}
	}
	if busy {
		// Every usable replica had its GTID waits taken: the excess reads
		// from the primary, which is current, instead of queueing for a
		// replica connection (or failing with 503 a client who did nothing
		// wrong).
		c.m.gtidWaits.WithLabelValues("busy").Inc()
	}
	err := fn(ctx, c.primary)
	if err == nil || isNotFound(err) {
		c.m.reads.WithLabelValues("primary").Inc()
		return err
	}
	if !isConnError(err) {
		return err
	}
	// Last resort: the primary is gone too. A replica that the health
	// check set aside (lagging, or not yet re-checked since the primary
	// died) still holds an answer that is better than none, unless the
	// caller needs its own write: that read may not be stale.
	if gtid == "" {
		for _, r := range c.replicas {
			if ferr := fn(ctx, r.db); ferr == nil || isNotFound(ferr) {
				c.m.reads.WithLabelValues("replica").Inc()
				return ferr
			}
		}
	}
	return fmt.Errorf("%w: no replica usable and the primary failed: %w", ErrUnavailable, err)
}

func (c *cluster) readReplica(ctx context.Context, r *replica, gtid string, fn func(context.Context, querier) error) error {
	if gtid == "" {
		return fn(ctx, r.db)
	}
	select {
	case r.gtidWaits <- struct{}{}:
		defer func() { <-r.gtidWaits }()
	default:
		return errGTIDBusy
	}
	// MASTER_GTID_WAIT and the read must share one session: the wait says
	// nothing about another connection's snapshot.
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	var res sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", gtid, c.cfg.GTIDWait.Seconds()).Scan(&res); err != nil {
		return err
	}
	if !res.Valid || res.Int64 != 0 {
		c.m.gtidWaits.WithLabelValues("timeout").Inc()
		return errGTIDTimeout
	}
	c.m.gtidWaits.WithLabelValues("reached").Inc()
	return fn(ctx, conn)
}

// isNotFound reports the "no such row" outcome of a read: an answer, not a
// failure of the database that gave it.
func isNotFound(err error) bool { return errors.Is(err, sql.ErrNoRows) }

// MariaDB error numbers the purchase path branches on.
const (
	erDupEntry           = 1062
	erLockWaitTimeout    = 1205
	erLockDeadlock       = 1213
	erServerShutdown     = 1053
	erConnectionKilled   = 1927
	erQueryInterrupted   = 1317
	erOptionPreventsStmt = 1290 // read_only: we reached a demoted primary
)

func mysqlErrNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// isConnError reports errors that say the database or the connection to it
// is gone, as opposed to an answer from a working server.
func isConnError(err error) bool {
	// context.DeadlineExceeded is a net.Error too; running out of time is
	// the caller's budget, not a dead database.
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	switch mysqlErrNumber(err) {
	case erServerShutdown, erConnectionKilled, erQueryInterrupted, erOptionPreventsStmt:
		return true
	}
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, sql.ErrConnDone) || errors.As(err, &ne)
}

// Server-side conditions that say a replica cannot serve reads now, as
// opposed to errors of the statement (bad data, bad syntax) that any
// database would return for the same request.
var replicaFaultErrors = map[uint16]bool{
	1021: true, // ER_DISK_FULL
	1030: true, // ER_GET_ERRNO: storage engine error
	1037: true, // ER_OUTOFMEMORY
	1038: true, // ER_OUT_OF_SORTMEMORY
	1040: true, // ER_CON_COUNT_ERROR: too many connections
	1041: true, // ER_OUT_OF_RESOURCES
	1044: true, // ER_DBACCESS_DENIED_ERROR: grants missing on this node
	1045: true, // ER_ACCESS_DENIED_ERROR
	1049: true, // ER_BAD_DB_ERROR: database missing on this node
	1054: true, // ER_BAD_FIELD_ERROR: a replica that has not applied a migration
	1129: true, // ER_HOST_IS_BLOCKED
	1142: true, // ER_TABLEACCESS_DENIED_ERROR
	1146: true, // ER_NO_SUCH_TABLE: a replica without the schema
	1152: true, // ER_ABORTING_CONNECTION
	1184: true, // ER_NEW_ABORTING_CONNECTION
	1194: true, // ER_CRASHED_ON_USAGE
	1195: true, // ER_CRASHED_ON_REPAIR
	1205: true, // ER_LOCK_WAIT_TIMEOUT
	1969: true, // ER_STATEMENT_TIMEOUT: max_statement_time on an overloaded node
}

// replicaFault reports whether a failed read says that the replica, or the
// way to it, is unwell, so that reads should avoid it for a while: the
// connection is lost, refused or timed out, or the server reports a
// condition of its own (replicaFaultErrors). Anything else, a value the
// driver cannot encode or the server refuses, was caused by the request
// and says nothing about the replica.
func replicaFault(err error) bool {
	if isConnError(err) {
		return true
	}
	return replicaFaultErrors[mysqlErrNumber(err)]
}

// requestFaultErrors are the refusals a server gives a statement for a
// value in it (MariaDB error numbers): one request of a batch can cause
// them, while its neighbours would pass alone.
var requestFaultErrors = map[uint16]bool{
	1048: true, // ER_BAD_NULL_ERROR
	1062: true, // ER_DUP_ENTRY
	1264: true, // ER_WARN_DATA_OUT_OF_RANGE
	1265: true, // WARN_DATA_TRUNCATED
	1292: true, // ER_TRUNCATED_WRONG_VALUE
	1366: true, // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: a string the column cannot hold
	1406: true, // ER_DATA_TOO_LONG
	1451: true, // ER_ROW_IS_REFERENCED_2
	1452: true, // ER_NO_REFERENCED_ROW_2
	1644: true, // ER_SIGNAL_EXCEPTION: a trigger's rule about a row
	1690: true, // ER_DATA_OUT_OF_RANGE
	4025: true, // ER_CONSTRAINT_FAILED: a CHECK
}

// requestFault reports whether a failed batch may owe its failure to one
// of its requests, so that running them one by one finds it. Anything
// else is about the server (too many connections, disk full, privileges,
// read-only, lock waits and deadlocks past their retries) and would fail
// every request alike: splitting then multiplies the load on a database
// that is already failing.
func requestFault(err error) bool {
	return requestFaultErrors[mysqlErrNumber(err)]
}

// retryReason names why a purchase attempt may be tried again, or "" when
// it may not: deadlocks and lock wait timeouts roll the transaction back
// whole; a lost connection either never committed or committed with a
// ticket row whose order_token the retry finds; a key another transaction
// stored after the batch looked is found by the retry and replayed.
func retryReason(err error) string {
	switch mysqlErrNumber(err) {
	case erLockDeadlock:
		return "deadlock"
	case erLockWaitTimeout:
		return "lock_wait_timeout"
	}
	if isConnError(err) {
		return "connection"
	}
	if errors.Is(err, errKeyRace) {
		return "idempotency_key_race"
	}
	return ""
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
