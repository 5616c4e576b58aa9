package origin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"net/http"
	"strings"
	"time"
)

// Game is one session on sale, as the API shows it.
type Game struct {
	ID         int64     `json:"id"`
	Sport      string    `json:"sport"`
	Event      string    `json:"event"`
	Venue      string    `json:"venue"`
	City       string    `json:"city"`
	StartsAt   time.Time `json:"starts_at"`
	PriceCents int64     `json:"price_cents"`
	Currency   string    `json:"currency"`
	Capacity   int64     `json:"capacity"`
	Remaining  int64     `json:"remaining"`
	SoldOut    bool      `json:"sold_out"`
}

const gameColumns = "id, sport, event, venue, city, starts_at, price_cents, currency, capacity, remaining"

func scanGame(s interface{ Scan(...any) error }) (Game, error) {
	var g Game
	err := s.Scan(&g.ID, &g.Sport, &g.Event, &g.Venue, &g.City, &g.StartsAt, &g.PriceCents, &g.Currency, &g.Capacity, &g.Remaining)
	g.StartsAt = g.StartsAt.UTC()
	g.SoldOut = g.Remaining == 0
	return g, err
}

// gameFilter selects a page of the listing. Games are ordered by
// (starts_at, id), which is unique, so pages never overlap or skip.
type gameFilter struct {
	Sport string
	// From and To bound starts_at: [From, To). Zero means unbounded.
	From, To time.Time
	// After is the keyset cursor: the last game of the previous page.
	AfterStart time.Time
	AfterID    int64
	Limit      int
}

// listGames returns up to f.Limit games and whether more follow.
func (c *cluster) listGames(ctx context.Context, gtid string, f gameFilter) ([]Game, bool, error) {
	defer c.m.observeQuery("list_games", time.Now())
	var where []string
	var args []any
	if f.Sport != "" {
		where = append(where, "sport = ?")
		args = append(args, f.Sport)
	}
	if !f.From.IsZero() {
		where = append(where, "starts_at >= ?")
		args = append(args, f.From)
	}
	if !f.To.IsZero() {
		where = append(where, "starts_at < ?")
		args = append(args, f.To)
	}
	if f.AfterID != 0 {
		where = append(where, "(starts_at > ? OR (starts_at = ? AND id > ?))")
		args = append(args, f.AfterStart, f.AfterStart, f.AfterID)
	}
	q := "SELECT " + gameColumns + " FROM games"
	if f.Sport == "" {
		// Without the hint the optimizer scans and filesorts the whole
		// table for the unfiltered first page (624 rows): measured 8x
		// slower than walking the (starts_at, id) index with mariadb-slap.
		q += " FORCE INDEX (games_starts_at)"
	}
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY starts_at, id LIMIT ?"
	args = append(args, f.Limit+1)

	var games []Game
	err := c.read(ctx, gtid, func(ctx context.Context, db querier) error {
		games = games[:0]
		rows, err := db.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			g, err := scanGame(rows)
			if err != nil {
				return err
			}
			games = append(games, g)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, false, fmt.Errorf("listing games: %w", err)
	}
	more := len(games) > f.Limit
	if more {
		games = games[:f.Limit]
	}
	return games, more, nil
}

// getGame returns one game; an unknown id is sql.ErrNoRows.
func (c *cluster) getGame(ctx context.Context, gtid string, id int64) (Game, error) {
	defer c.m.observeQuery("get_game", time.Now())
	var g Game
	err := c.read(ctx, gtid, func(ctx context.Context, db querier) error {
		var err error
		g, err = scanGame(db.QueryRowContext(ctx, "SELECT "+gameColumns+" FROM games WHERE id = ?", id))
		return err
	})
	if err != nil {
		return Game{}, fmt.Errorf("reading game %d: %w", id, err)
	}
	return g, nil
}

// listSports returns the distinct sports, for the pages' filter links.
func (c *cluster) listSports(ctx context.Context, gtid string) ([]string, error) {
	defer c.m.observeQuery("list_sports", time.Now())
	var sports []string
	err := c.read(ctx, gtid, func(ctx context.Context, db querier) error {
		sports = sports[:0]
		rows, err := db.QueryContext(ctx, "SELECT DISTINCT sport FROM games ORDER BY sport")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				return err
			}
			sports = append(sports, s)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("listing sports: %w", err)
	}
	return sports, nil
}

// purchaseRequest is a validated order.
type purchaseRequest struct {
	GameID         int64
	Quantity       int
	Email          string
	IdempotencyKey string // "" when the client sent none
	RequestID      string // echoed in a stored error body
}

// hash identifies the order for Idempotency-Key reuse checks: the same key
// with another hash is a different request.
func (p purchaseRequest) hash() []byte {
	h := sha256.Sum256(fmt.Appendf(nil, "game=%d\x00quantity=%d\x00email=%s", p.GameID, p.Quantity, p.Email))
	return h[:]
}

// Order is the body of a successful purchase (201).
type Order struct {
	OrderID   int64    `json:"order_id"`
	GameID    int64    `json:"game_id"`
	Email     string   `json:"email"`
	Quantity  int      `json:"quantity"`
	Tickets   []string `json:"tickets"`
	CreatedAt string   `json:"created_at"`
}

// ticketNumbers derives the printed ticket numbers of an order: unique
// because the order id is.
func ticketNumbers(gameID, orderID int64, quantity int) []string {
	out := make([]string, quantity)
	for i := range out {
		out[i] = fmt.Sprintf("PAR24-%04d-%08d-%02d", gameID, orderID, i+1)
	}
	return out
}

// errorBody is every JSON error the origin sends.
type errorBody struct {
	Error     string `json:"error"`
	RequestID string `json:"request_id"`
	// Remaining is set on 409 sold-out answers: how many seats are left.
	Remaining *int64 `json:"remaining,omitempty"`
	// Code names a refusal a client may branch on: limit_per_buyer,
	// idempotency_keys_per_hour.
	Code string `json:"code,omitempty"`
}

// purchaseOutcome is the HTTP answer to a purchase, stored verbatim for
// Idempotency-Key replays so that a replay is byte-identical.
type purchaseOutcome struct {
	Status int
	Body   []byte
	// GTID of the commit that wrote the outcome, "" if nothing was written.
	GTID string
	// Replayed is true when the outcome comes from an earlier request with
	// the same Idempotency-Key.
	Replayed bool
	// RetryAfter, when positive, is the Retry-After of a 429, in seconds.
	RetryAfter int
	// Result is the metrics label of the outcome.
	Result string
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the types above are marshalled; they cannot fail.
		panic(fmt.Sprintf("origin: marshalling %T: %v", v, err))
	}
	return append(b, '\n')
}

// purchase sells p.Quantity seats of p.GameID, or says why not, in one
// transaction on the primary: claim the Idempotency-Key, take the seats with
// a conditional UPDATE (never read-then-write), insert the order, store the
// answer, commit. Deadlocks, lock wait timeouts and lost connections are
// retried up to PurchaseRetries times; what still fails returns an error
// wrapping ErrUnavailable, with nothing written.
func (c *cluster) purchase(ctx context.Context, p purchaseRequest) (purchaseOutcome, error) {
	defer c.m.observeQuery("purchase", time.Now())
	ctx, cancel := context.WithTimeout(ctx, c.cfg.PurchaseTimeout)
	defer cancel()
	// One token for every attempt of this request: if an attempt's COMMIT
	// succeeded but its answer was lost with the connection, the retry's
	// ticket INSERT collides with it, rolls back, and returns that order.
	var token [16]byte
	rand.Read(token[:])
	hash := p.hash()
	var lastErr error
	for attempt := 0; attempt <= c.cfg.PurchaseRetries; attempt++ {
		if attempt > 0 {
			// Exponential backoff with full jitter: the contenders of a
			// deadlock must not collide again in lockstep.
			d := time.Duration(mathrand.Int64N(int64(10*time.Millisecond) << attempt))
			select {
			case <-ctx.Done():
				return purchaseOutcome{}, fmt.Errorf("%w: purchase of game %d: %w (after: %w)", ErrUnavailable, p.GameID, ctx.Err(), lastErr)
			case <-time.After(d):
			}
		}
		out, err := c.purchaseOnce(ctx, p, token[:], hash)
		if err == nil {
			// The client may present this GTID to any origin next; this
			// one knows at once that the primary has reached it.
			if pos, perr := parseGTID(out.GTID); perr == nil {
				c.pos.merge(pos)
			}
			return out, nil
		}
		lastErr = err
		reason := retryReason(err)
		if reason == "" || ctx.Err() != nil {
			break
		}
		c.m.retries.WithLabelValues(reason).Inc()
	}
	return purchaseOutcome{}, fmt.Errorf("%w: purchase of game %d: %w", ErrUnavailable, p.GameID, lastErr)
}

func (c *cluster) purchaseOnce(ctx context.Context, p purchaseRequest, token, hash []byte) (out purchaseOutcome, err error) {
	// A dedicated connection: @@last_gtid after COMMIT is per session.
	conn, err := c.primary.Conn(ctx)
	if err != nil {
		return out, err
	}
	defer conn.Close()
	// READ COMMITTED: the only read is the seats-left figure for a refusal;
	// it takes no gap locks, so concurrent buyers of one game queue on the
	// game row alone.
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return out, err
	}
	committed := false
	defer func() {
		if !committed {
			tx.Rollback() //nolint:errcheck // nothing to do; the session may be gone
		}
	}()
	now := time.Now().UTC().Truncate(time.Microsecond)

	if p.IdempotencyKey != "" {
		// Keys are scoped to the buyer (see replay for what that means to
		// someone trying another buyer's key).
		_, err := tx.ExecContext(ctx,
			"INSERT INTO idempotency_keys (buyer, idem_key, request_hash, status, response, created_at, expires_at) VALUES (?, ?, ?, 0, '', ?, ?)",
			p.Email, p.IdempotencyKey, hash, now, now.Add(c.cfg.IdempotencyTTL))
		switch mysqlErrNumber(err) {
		case 0:
			if err != nil {
				return out, err
			}
			if refusal, err := c.overKeysPerHour(ctx, tx, p, now); err != nil {
				return out, err
			} else if refusal != nil {
				tx.Rollback() //nolint:errcheck // the key is not stored
				committed = true
				return *refusal, nil
			}
		case erDupEntry:
			// The key was claimed by a request that has committed: replay it.
			tx.Rollback() //nolint:errcheck
			committed = true
			return c.replay(ctx, conn, p, hash)
		case erLockWaitTimeout:
			// Another request with this key holds the row and has not
			// finished within innodb_lock_wait_timeout.
			return purchaseOutcome{
				Status: http.StatusConflict, Result: "key_in_flight",
				Body: jsonBody(errorBody{
					Error:     "a request with this Idempotency-Key is still being processed; retry with the same key in a few seconds to get its result",
					RequestID: p.RequestID,
				}),
			}, nil
		default:
			return out, err
		}
	}

	res, err := tx.ExecContext(ctx,
		"UPDATE games SET remaining = remaining - ? WHERE id = ? AND remaining >= ?",
		p.Quantity, p.GameID, p.Quantity)
	if err != nil {
		return out, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return out, err
	}
	if n == 0 {
		var remaining int64
		err := tx.QueryRowContext(ctx, "SELECT remaining FROM games WHERE id = ?", p.GameID).Scan(&remaining)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			out = purchaseOutcome{Status: http.StatusNotFound, Result: "not_found", Body: jsonBody(errorBody{
				Error:     fmt.Sprintf("no game with id %d; GET /api/games lists them", p.GameID),
				RequestID: p.RequestID,
			})}
		case err != nil:
			return out, err
		default:
			msg := fmt.Sprintf("sold out: no seats left for game %d", p.GameID)
			if remaining > 0 {
				msg = fmt.Sprintf("not enough seats: %d requested, %d left for game %d; order at most %d", p.Quantity, remaining, p.GameID, remaining)
			}
			out = purchaseOutcome{Status: http.StatusConflict, Result: "sold_out", Body: jsonBody(errorBody{
				Error: msg, RequestID: p.RequestID, Remaining: &remaining,
			})}
		}
	} else if refusal, err := c.overBuyerLimit(ctx, tx, p); err != nil {
		return out, err
	} else if refusal != nil {
		// An earlier attempt of this request may have committed with its
		// answer lost: its order then counts toward the limit, and it is
		// the answer, not the refusal.
		var earlier int
		switch err := tx.QueryRowContext(ctx, "SELECT 1 FROM tickets WHERE order_token = ?", token).Scan(&earlier); {
		case err == nil:
			tx.Rollback() //nolint:errcheck
			committed = true
			return c.recoverOrder(ctx, conn, p, token)
		case !errors.Is(err, sql.ErrNoRows):
			return out, err
		}
		out, n = *refusal, 0
	} else {
		res, err := tx.ExecContext(ctx,
			"INSERT INTO tickets (game_id, email, quantity, order_token, created_at) VALUES (?, ?, ?, ?, ?)",
			p.GameID, p.Email, p.Quantity, token, now)
		if mysqlErrNumber(err) == erDupEntry {
			// An earlier attempt of this request committed; its answer was
			// lost with its connection. Undo this attempt and return that.
			tx.Rollback() //nolint:errcheck
			committed = true
			return c.recoverOrder(ctx, conn, p, token)
		}
		if err != nil {
			return out, err
		}
		id, err := res.LastInsertId()
		if err != nil {
			return out, err
		}
		out = purchaseOutcome{Status: http.StatusCreated, Result: "sold", Body: jsonBody(Order{
			OrderID: id, GameID: p.GameID, Email: p.Email, Quantity: p.Quantity,
			Tickets:   ticketNumbers(p.GameID, id, p.Quantity),
			CreatedAt: now.Format(createdAtLayout),
		})}
	}

	wrote := n > 0
	if out.Result == "limit_per_buyer" && p.IdempotencyKey == "" {
		// The seats were taken and given back: nothing to keep.
		tx.Rollback() //nolint:errcheck
		committed = true
		return out, nil
	}
	if p.IdempotencyKey != "" {
		// A sale's answer is kept the whole TTL; a refusal protects no
		// sale, and is kept only for the client's retries.
		expires := now.Add(c.cfg.IdempotencyTTL)
		if out.Status != http.StatusCreated {
			expires = now.Add(c.cfg.IdempotencyRefusalTTL)
		}
		if _, err := tx.ExecContext(ctx,
			"UPDATE idempotency_keys SET status = ?, response = ?, expires_at = ? WHERE buyer = ? AND idem_key = ?",
			out.Status, out.Body, expires, p.Email, p.IdempotencyKey); err != nil {
			return purchaseOutcome{}, err
		}
		wrote = true
	}
	if err := tx.Commit(); err != nil {
		return purchaseOutcome{}, err
	}
	committed = true
	if wrote {
		// The GTID is a convenience for read-your-writes; failing to read
		// it must not turn a committed sale into an error.
		var gtid sql.NullString
		if err := conn.QueryRowContext(ctx, "SELECT @@last_gtid").Scan(&gtid); err == nil {
			out.GTID = gtid.String
		}
	}
	return out, nil
}

const createdAtLayout = "2006-01-02T15:04:05.000000Z07:00"

// overBuyerLimit checks, after the purchase took its seats, that the buyer
// does not then hold more than MaxPerBuyer seats of the game. When they
// would, it gives the seats back in the same transaction and returns the
// refusal (409, code limit_per_buyer); nil when the order fits.
//
// Why this cannot be raced: the conditional UPDATE before it holds the
// game's row lock until the transaction ends, and every purchase of the
// game takes that lock before inserting an order. So the checks of one
// game run one at a time, and each SUM (a fresh READ COMMITTED snapshot,
// taken after the lock was granted) sees every order committed before it,
// however many purchases one email sends at once. The seats are taken
// first and given back on a refusal, rather than counted first, so that
// the hot path stays one UPDATE that never reads before it writes.
func (c *cluster) overBuyerLimit(ctx context.Context, tx *sql.Tx, p purchaseRequest) (*purchaseOutcome, error) {
	limit := int64(c.cfg.MaxPerBuyer)
	if limit <= 0 {
		return nil, nil
	}
	var held int64
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(SUM(quantity), 0) FROM tickets WHERE game_id = ? AND email = ?",
		p.GameID, p.Email).Scan(&held); err != nil {
		return nil, err
	}
	if held+int64(p.Quantity) <= limit {
		return nil, nil
	}
	if _, err := tx.ExecContext(ctx, "UPDATE games SET remaining = remaining + ? WHERE id = ?", p.Quantity, p.GameID); err != nil {
		return nil, err
	}
	msg := fmt.Sprintf("limit per buyer: one email may hold at most %d tickets for game %d, and %s already holds %d; order at most %d",
		limit, p.GameID, p.Email, held, max(limit-held, 0))
	if held >= limit {
		msg = fmt.Sprintf("limit per buyer: one email may hold at most %d tickets for game %d, and %s already holds %d",
			limit, p.GameID, p.Email, held)
	}
	return &purchaseOutcome{Status: http.StatusConflict, Result: "limit_per_buyer", Body: jsonBody(errorBody{
		Error: msg, RequestID: p.RequestID, Code: "limit_per_buyer",
	})}, nil
}

// overKeysPerHour bounds the Idempotency-Keys one buyer may have stored
// in any hour to IdempotencyKeysPerHour: called after this request's key
// was inserted (so that a replay of a stored key, which collides first, is
// never refused), it counts the buyer's keys of the last hour, this one
// included, and returns a 429 when there are too many; the caller rolls
// the key back. A buyer's concurrent requests count one another only once
// committed, so a burst may store up to its own concurrency (bounded by the
// primary's pool) past the bound, once: after it, every new key that hour
// is refused.
func (c *cluster) overKeysPerHour(ctx context.Context, tx *sql.Tx, p purchaseRequest, now time.Time) (*purchaseOutcome, error) {
	limit := c.cfg.IdempotencyKeysPerHour
	if limit <= 0 {
		return nil, nil
	}
	var n int
	var oldest time.Time
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*), MIN(created_at) FROM idempotency_keys WHERE buyer = ? AND created_at > ?",
		p.Email, now.Add(-time.Hour)).Scan(&n, &oldest); err != nil {
		return nil, err
	}
	if n <= limit {
		return nil, nil
	}
	// The oldest key of the hour leaves it first.
	retry := int(oldest.Add(time.Hour).Sub(now)/time.Second) + 1
	return &purchaseOutcome{Status: http.StatusTooManyRequests, Result: "key_limit", RetryAfter: min(max(retry, 1), 3600),
		Body: jsonBody(errorBody{
			Error: fmt.Sprintf("too many Idempotency-Keys: one buyer may use at most %d new keys an hour; retry with a key you already used to get its answer, or wait %d s",
				limit, min(max(retry, 1), 3600)),
			RequestID: p.RequestID, Code: "idempotency_keys_per_hour",
		})}, nil
}

// replay answers a request whose Idempotency-Key this buyer already used.
//
// Keys are scoped to the buyer, as Stripe scopes them to an account: the
// row is found by (email, key), so a request naming another buyer's key
// under its own email finds nothing, and is a new purchase of its own. It
// learns nothing of the other buyer's order: not its existence (no 422),
// not its body. To see someone's stored answer one must send their email,
// their key, and their game and quantity; keys are meant to be random
// (UUIDs), so that is a guess of the key.
func (c *cluster) replay(ctx context.Context, conn *sql.Conn, p purchaseRequest, hash []byte) (purchaseOutcome, error) {
	var storedHash, body []byte
	var status int
	var pos sql.NullString
	err := conn.QueryRowContext(ctx,
		"SELECT request_hash, status, response, @@gtid_binlog_pos FROM idempotency_keys WHERE buyer = ? AND idem_key = ?",
		p.Email, p.IdempotencyKey).Scan(&storedHash, &status, &body, &pos)
	if err != nil {
		// sql.ErrNoRows cannot be: the row made our INSERT fail and keys
		// are never deleted while they can be replayed.
		return purchaseOutcome{}, fmt.Errorf("reading stored answer of Idempotency-Key: %w", err)
	}
	if string(storedHash) != string(hash) {
		return purchaseOutcome{Status: http.StatusUnprocessableEntity, Result: "key_mismatch", Body: jsonBody(errorBody{
			Error:     "you already used this Idempotency-Key with a different request (game, quantity or the email's spelling); use a new key for a new order",
			RequestID: p.RequestID,
		})}, nil
	}
	if status == 0 {
		return purchaseOutcome{Status: http.StatusConflict, Result: "key_in_flight", Body: jsonBody(errorBody{
			Error:     "a request with this Idempotency-Key is still being processed; retry with the same key in a few seconds to get its result",
			RequestID: p.RequestID,
		})}, nil
	}
	// The primary's position covers the original commit, so a read that
	// waits for it sees the original purchase.
	return purchaseOutcome{Status: status, Body: body, GTID: pos.String, Replayed: true, Result: "replayed"}, nil
}

// recoverOrder rebuilds the answer of an attempt that committed but whose
// connection died before the answer arrived. Only a purchase without an
// Idempotency-Key gets here: with one, the retry's key INSERT collides first
// and replays the stored answer.
func (c *cluster) recoverOrder(ctx context.Context, conn *sql.Conn, p purchaseRequest, token []byte) (purchaseOutcome, error) {
	var id int64
	var created time.Time
	var pos sql.NullString
	err := conn.QueryRowContext(ctx, "SELECT id, created_at, @@gtid_binlog_pos FROM tickets WHERE order_token = ?", token).Scan(&id, &created, &pos)
	if err != nil {
		return purchaseOutcome{}, fmt.Errorf("reading the order of an earlier attempt: %w", err)
	}
	out := purchaseOutcome{Status: http.StatusCreated, Result: "sold", GTID: pos.String, Body: jsonBody(Order{
		OrderID: id, GameID: p.GameID, Email: p.Email, Quantity: p.Quantity,
		Tickets:   ticketNumbers(p.GameID, id, p.Quantity),
		CreatedAt: created.UTC().Format(createdAtLayout),
	})}
	return out, nil
}

// sweepBatch bounds one DELETE of expired keys: a short transaction that
// does not hold purchases up behind a long one.
const sweepBatch = 1000

// sweepKeys deletes the Idempotency-Keys whose time is up (expires_at, set
// by the outcome: IdempotencyTTL for a sale, IdempotencyRefusalTTL for a
// refusal), in batches, and returns how many it deleted. A row without
// expires_at (written by an origin from before migration 0005, during a
// rolling upgrade) goes IdempotencyTTL after it was created. Several
// origins may sweep at once: a DELETE of rows another already deleted
// deletes nothing.
func (c *cluster) sweepKeys(ctx context.Context, now time.Time) (int64, error) {
	var total int64
	for _, q := range []struct {
		sql    string
		cutoff time.Time
	}{
		{"DELETE FROM idempotency_keys WHERE expires_at < ? ORDER BY expires_at LIMIT ?", now},
		{"DELETE FROM idempotency_keys WHERE expires_at IS NULL AND created_at < ? ORDER BY created_at LIMIT ?", now.Add(-c.cfg.IdempotencyTTL)},
	} {
		for {
			res, err := c.primary.ExecContext(ctx, q.sql, q.cutoff, sweepBatch)
			if err != nil {
				return total, fmt.Errorf("deleting expired idempotency keys: %w", err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return total, fmt.Errorf("deleting expired idempotency keys: %w", err)
			}
			total += n
			if n < sweepBatch {
				break
			}
		}
	}
	return total, nil
}

// sweepLoop runs sweepKeys every few minutes until ctx ends.
func (c *cluster) sweepLoop(ctx context.Context) {
	c.every(ctx, 5*time.Minute, "sweeping idempotency keys", func(ctx context.Context) {
		if n, err := c.sweepKeys(ctx, time.Now()); err != nil {
			c.log.Warn("origin: sweeping idempotency keys", "err", err)
		} else if n > 0 {
			c.log.Info("origin: expired idempotency keys deleted", "count", n)
		}
	})
}
