package origin

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Purchases are committed in batches.
//
// Every purchase joins a lane: lane game id mod PurchaseLanes. One
// goroutine per lane with buyers waiting (started by the first of them,
// gone when the lane is empty) takes up to PurchaseBatchMax requests off
// the front of the lane, commits them in one transaction, hands each its
// own answer, and takes the next batch: while a batch commits, the next one
// gathers, as in MariaDB's binlog group commit. There is no timer: a lone
// buyer is committed at once, and under load a batch is whatever arrived
// during the previous commit. Lanes commit side by side; the buyers of
// many games share a lane's batches.
//
// Fairness: all buyers of a game reach the same lane, which is first in,
// first out, and a batch decides its buyers in the order they joined it,
// so the buyers of one game that reach one origin are served in arrival
// order; a buyer refused for lack of seats does not hold up a later one
// who asks for fewer. Batches of different origins queue on the game's row
// lock, which InnoDB grants in request order.
//
// One batch is one transaction on the primary, READ COMMITTED, on a
// session of the sales pool (autocommit off, several statements per round
// trip): three round trips in the common case.
//
//  1. UPDATE games SET remaining = remaining - Σq WHERE id = ? AND
//     remaining >= Σq (one UPDATE ... CASE over the batch's games, in id
//     order) takes the row locks and, in the common case, every seat the
//     batch asks for. In the same round trip, under those locks (so the
//     checks of one game run one batch at a time, across origins), one
//     query reads for every request: its order token (an earlier attempt
//     whose COMMIT answer was lost), its stored Idempotency-Key answer,
//     what its email already holds of the game, how many keys the email
//     stored in the last hour, and which requests of the batch are by the
//     same email (as the database compares emails). When a game has fewer
//     seats left than asked, the UPDATE is undone and SELECT ... FOR UPDATE
//     reads the rows instead.
//  2. Each request gets its outcome in arrival order: a replay, the order
//     an earlier attempt committed, 429 for too many keys, 404, 409 sold
//     out or limit per buyer, or a sale. Seats not sold are given back (or,
//     after the FOR UPDATE, the seats sold are taken), and one multi-row
//     INSERT writes the orders.
//  3. One multi-row INSERT stores the Idempotency-Keys with their final
//     answers, then COMMIT, then the GTIDs.
//
// A batch that fails with a deadlock, a lock wait timeout or a lost
// connection is retried whole with the same order tokens, so an attempt
// whose COMMIT went through sells once. A batch the database refuses for
// a value one request carries (a constraint, a value out of range:
// requestFault) is split and each request runs alone, so one request the
// database refuses never fails its neighbours; a batch that fails for a
// fault of the server is answered 503 whole, at once.

// saleReq is one purchase waiting for its batch. Owned by its batch once
// taken off the queue; done is closed when out and err are set.
type saleReq struct {
	p    purchaseRequest
	hash []byte
	// token is the order's order_token: the same for every attempt.
	token []byte
	out   purchaseOutcome
	err   error
	done  chan struct{}
}

// batchQueue is a first-in, first-out queue of items waiting for a batch,
// drained by one goroutine at a time. Safe for concurrent use; must not be
// copied.
type batchQueue[T comparable] struct {
	mu      sync.Mutex
	pending []T
	// running is true while a goroutine drains the queue.
	running bool
}

// push appends x, and reports whether the caller must start the draining
// goroutine (none runs).
func (q *batchQueue[T]) push(x T) (start bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, x)
	start = !q.running
	q.running = true
	return start
}

// drain hands batches of up to max items, in order, to commit until the
// queue is empty.
func (q *batchQueue[T]) drain(max int, commit func([]T)) {
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		n := min(len(q.pending), max)
		batch := make([]T, n)
		copy(batch, q.pending)
		// Copy the rest down so the array does not grow without bound
		// under a steady stream of arrivals.
		q.pending = append(q.pending[:0], q.pending[n:]...)
		q.mu.Unlock()
		commit(batch)
	}
}

// withdraw takes x off the queue if no batch has taken it yet.
func (q *batchQueue[T]) withdraw(x T) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, y := range q.pending {
		if y == x {
			q.pending = append(q.pending[:i], q.pending[i+1:]...)
			return true
		}
	}
	return false
}

// lane is the queue of the purchases of the games whose id is its index
// modulo the number of lanes.
type lane = batchQueue[*saleReq]

// saleBook holds the lanes and the sold-out marks. Safe for concurrent
// use; must not be copied.
type saleBook struct {
	lanes []*lane
	// soldOut maps a game id to its soldOutMark.
	soldOut sync.Map
	lookups batchQueue[*keyLookup]
}

func (b *saleBook) lane(game int64) *lane {
	return b.lanes[uint64(game)%uint64(len(b.lanes))]
}

// soldOutMark says that a batch saw the game with no seat left. Seats only
// ever go down (no code path gives any back outside the transaction that
// took them), so the mark stays true; it lapses after SoldOutTTL all the
// same, so that an operator who adds seats by hand sells them again within
// that time, and a later batch sets it anew.
type soldOutMark struct {
	until time.Time
	// gtid is the primary's position when the mark was set: every
	// Idempotency-Key stored before the sell-out is covered by it.
	gtid string
}

// purchase sells p.Quantity seats of p.GameID, or says why not. A game
// this origin knows to be sold out is answered without a transaction
// (soldOutAnswer); every other purchase joins its game's next batch and
// waits for its own answer. A purchase that could not be committed within
// PurchaseTimeout returns an error wrapping ErrUnavailable, with nothing
// written.
func (c *cluster) purchase(ctx context.Context, p purchaseRequest) (purchaseOutcome, error) {
	defer c.m.observeQuery("purchase", time.Now())
	ctx, cancel := context.WithTimeout(ctx, c.cfg.PurchaseTimeout)
	defer cancel()
	if out, ok, err := c.soldOutAnswer(ctx, p); ok || err != nil {
		return out, err
	}
	// One token for every attempt of this request: if an attempt's COMMIT
	// succeeded but its answer was lost with the connection, the retry
	// finds the order by its token and returns it.
	token := make([]byte, 16)
	rand.Read(token)
	r := &saleReq{p: p, hash: p.hash(), token: token, done: make(chan struct{})}
	c.enqueue(r)
	select {
	case <-r.done:
	case <-ctx.Done():
		if c.withdraw(r) {
			return purchaseOutcome{}, fmt.Errorf("%w: purchase of game %d: waited %s in the queue: %w", ErrUnavailable, p.GameID, c.cfg.PurchaseTimeout, ctx.Err())
		}
		// Its batch has it: the answer is the truth, whatever the
		// client's patience. The batch is bounded by PurchaseTimeout.
		<-r.done
	}
	if r.err != nil {
		return purchaseOutcome{}, r.err
	}
	return r.out, nil
}

// enqueue adds r to its lane, starting the lane's batch goroutine when
// none runs.
func (c *cluster) enqueue(r *saleReq) {
	l := c.sale.lane(r.p.GameID)
	if l.push(r) {
		go l.drain(c.cfg.PurchaseBatchMax, c.commitBatch)
	}
}

// withdraw takes r off its lane if no batch has taken it yet.
func (c *cluster) withdraw(r *saleReq) bool {
	return c.sale.lane(r.p.GameID).withdraw(r)
}

// settleTimeout bounds the one more attempt a batch gets when its own
// budget ran out (commitBatch): long enough for a lock wait that the first
// attempt met to end, short enough that the answer still reaches a client
// whose write timeout is PurchaseTimeout + 10 s.
const settleTimeout = 5 * time.Second

// commitBatch runs one batch and answers every request in it, whatever
// happens (a panic included).
func (c *cluster) commitBatch(batch []*saleReq) {
	start := time.Now()
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("origin: purchase batch panicked", "size", len(batch), "panic", v)
			for _, r := range batch {
				if r.done != nil {
					select {
					case <-r.done:
					default:
						r.err = fmt.Errorf("purchase of game %d: internal error", r.p.GameID)
						close(r.done)
					}
				}
			}
		}
	}()
	c.m.batchSize.Observe(float64(len(batch)))
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.PurchaseTimeout)
	defer cancel()
	res, err := c.commitWithRetries(ctx, batch)
	if err != nil && ctx.Err() != nil {
		// The batch's budget ran out, perhaps while its COMMIT was on the
		// wire: the driver drops the connection, and the server may still
		// commit. A 503 then would hide a sale, and a buyer without a key
		// who retries would buy twice. One more attempt with the same
		// order tokens, on a short budget of its own, settles it: orders
		// that committed are found by token and answered as sold; if
		// nothing committed, the batch commits now or fails as before.
		c.log.Warn("origin: purchase batch ran out of time; settling it with the same order tokens", "size", len(batch), "err", err)
		settle, cancelSettle := context.WithTimeout(context.Background(), settleTimeout)
		defer cancelSettle()
		res, err = c.commitWithRetries(settle, batch)
	}
	c.m.observeQuery("purchase_batch", start)
	if err != nil && len(batch) > 1 && requestFault(err) && ctx.Err() == nil {
		// A value in one request made the database refuse the batch: each
		// request runs alone, so that only the culprit fails. A fault of
		// the server (gone, read-only, full, out of connections, lock
		// waits past their retries) fails them all alike, at once: no
		// split then.
		c.m.batchSplits.Inc()
		c.log.Warn("origin: purchase batch failed, running its requests one by one", "size", len(batch), "err", err)
		for _, r := range batch {
			one, err := c.commitWithRetries(ctx, []*saleReq{r})
			c.answer(r, one, 0, err)
		}
		return
	}
	for i, r := range batch {
		c.answer(r, res, i, err)
	}
}

func (c *cluster) answer(r *saleReq, res batchResult, i int, err error) {
	if err != nil {
		r.err = fmt.Errorf("%w: purchase of game %d: %w", ErrUnavailable, r.p.GameID, err)
	} else {
		r.out = res.outs[i]
	}
	close(r.done)
}

// batchResult is a committed batch: one outcome per request, in order.
type batchResult struct {
	outs  []purchaseOutcome
	wrote bool
	// gtid is the batch's commit, "" when it wrote nothing; pos the
	// primary's position after it.
	gtid, pos string
}

// commitWithRetries runs batchOnce until it commits, retrying what
// retryReason allows, with jittered backoff, up to PurchaseRetries times.
func (c *cluster) commitWithRetries(ctx context.Context, batch []*saleReq) (batchResult, error) {
	var lastErr error
	for attempt := 0; attempt <= c.cfg.PurchaseRetries; attempt++ {
		if attempt > 0 {
			// Exponential backoff with full jitter: the contenders of a
			// deadlock must not collide again in lockstep.
			d := time.Duration(mathrand.Int64N(int64(10*time.Millisecond) << attempt))
			select {
			case <-ctx.Done():
				return batchResult{}, fmt.Errorf("%w (after: %w)", ctx.Err(), lastErr)
			case <-time.After(d):
			}
		}
		res, soldOut, err := c.batchOnce(ctx, batch)
		if err == nil {
			if pos, perr := parseGTID(res.gtid); perr == nil {
				// The client may present this GTID to any origin next;
				// this one knows at once that the primary has reached it.
				c.pos.merge(pos)
			}
			for _, game := range soldOut {
				c.markSoldOut(game, res.pos)
			}
			return res, nil
		}
		lastErr = err
		reason := retryReason(err)
		if reason == "" || ctx.Err() != nil {
			break
		}
		c.m.retries.WithLabelValues(reason).Inc()
	}
	return batchResult{}, lastErr
}

// purchaseOnce runs one attempt of a single purchase, as its own batch,
// with the order token given: what a retry after a lost COMMIT does.
func (c *cluster) purchaseOnce(ctx context.Context, p purchaseRequest, token, hash []byte) (purchaseOutcome, error) {
	res, _, err := c.batchOnce(ctx, []*saleReq{{p: p, hash: hash, token: token}})
	if err != nil {
		return purchaseOutcome{}, err
	}
	return res.outs[0], nil
}

// saleSession is what a batch runs its statements on: a *sql.Conn of the
// sales pool, whose session holds the transaction.
type saleSession interface {
	querier
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

var _ saleSession = (*sql.Conn)(nil)

// errKeyRace is a batch's Idempotency-Key INSERT colliding with a key that
// another transaction stored after the batch looked: retried, the batch
// sees it and replays it.
var errKeyRace = errors.New("idempotency key stored by a concurrent purchase")

// reqFacts is what the database says about one request of a batch.
type reqFacts struct {
	// buyer is the index of the batch's first request by the same email.
	buyer int
	// held is what the email holds of the game already.
	held int64
	// keysInHour counts the email's keys stored in the last hour, and
	// oldestKey is the oldest of them.
	keysInHour int
	oldestKey  sql.NullTime
	// stored is the key's stored answer, when the key was used before.
	stored     bool
	storedHash []byte
	storedCode int
	storedBody []byte
	// order is the order an earlier attempt of this request committed.
	orderID      int64
	orderCreated time.Time
}

// gameSeats is one game of a batch.
type gameSeats struct {
	want  int64 // seats the batch asks for
	taken int64 // seats the conditional UPDATE took (fast path)
	// avail is the seats left to hand out: taken on the fast path, the
	// row's remaining on the slow one.
	avail  int64
	sold   int64
	exists bool
}

// batchOnce is one attempt at committing a batch. soldOut lists the games
// the batch left without a seat, seen under their row lock.
func (c *cluster) batchOnce(ctx context.Context, batch []*saleReq) (res batchResult, soldOut []int64, err error) {
	// A dedicated session of the sales pool (autocommit off: the first
	// statement begins the transaction, one round trip saved; several
	// statements per round trip at the end). @@last_gtid is per session.
	conn, err := c.sales.Conn(ctx)
	if err != nil {
		return res, nil, err
	}
	ended := false
	defer func() {
		if !ended {
			endSession(conn)
		}
		conn.Close()
	}()
	seats := map[int64]*gameSeats{}
	var ids []int64
	for _, r := range batch {
		g := seats[r.p.GameID]
		if g == nil {
			g = &gameSeats{exists: true}
			seats[r.p.GameID] = g
			ids = append(ids, r.p.GameID)
		}
		g.want += int64(r.p.Quantity)
	}
	// Rows are locked in id order, by every batch of every origin, so
	// two batches never wait for each other's rows in a cycle.
	slices.Sort(ids)

	// 2. What the database knows of each request, read in the same round
	// trip as step 1, under its locks.
	now := time.Now().UTC().Truncate(time.Microsecond)
	fq, fargs := factsQuery(batch, now)
	fast, facts, err := takeSeats(ctx, conn, ids, seats, fq, fargs, len(batch))
	if err != nil {
		return res, nil, err
	}

	// 3. Outcomes, in arrival order.
	outs := make([]purchaseOutcome, len(batch))
	// written marks the outcomes this batch stores; past those that an
	// earlier commit stored (replays, recovered orders).
	written := make([]bool, len(batch))
	past := make([]bool, len(batch))
	type holding struct {
		game  int64
		buyer int
	}
	held := map[holding]int64{} // seats held, this batch's sales included
	newKeys := map[int]int{}    // by buyer: keys this batch stores
	firstKey := map[string]int{}
	dupOf := map[int]int{}
	var sold []int // requests that buy seats
	var keyed []int
	limit := int64(c.cfg.MaxPerBuyer)
	keysLimit := c.cfg.IdempotencyKeysPerHour
	for i, r := range batch {
		p, f, g := r.p, &facts[i], seats[r.p.GameID]
		h := holding{p.GameID, f.buyer}
		if _, ok := held[h]; !ok {
			held[h] = f.held
		}
		if p.IdempotencyKey != "" {
			// A key stored before this batch answers every use of it from
			// the stored row, each compared with what was stored: a
			// genuine retry behind a mismatched use of the same key is a
			// replay, not a duplicate of the mismatch.
			if f.stored {
				outs[i] = storedAnswer(p, r.hash, f.storedHash, f.storedCode, f.storedBody, "")
				past[i] = outs[i].Replayed
				continue
			}
			kk := strconv.Itoa(f.buyer) + "\x00" + p.IdempotencyKey
			if j, ok := firstKey[kk]; ok {
				dupOf[i] = j
				continue
			}
			firstKey[kk] = i
		}
		if f.orderID != 0 {
			// An earlier attempt of this request committed; its answer
			// was lost with its connection.
			outs[i] = purchaseOutcome{Status: http.StatusCreated, Result: "sold", Body: orderBody(p, f.orderID, f.orderCreated)}
			past[i] = true
			continue
		}
		if p.IdempotencyKey != "" && keysLimit > 0 && f.keysInHour+newKeys[f.buyer]+1 > keysLimit {
			outs[i] = keysPerHourRefusal(p, keysLimit, f.oldestKey, now)
			continue
		}
		switch {
		case !g.exists:
			outs[i] = purchaseOutcome{Status: http.StatusNotFound, Result: "not_found", Body: jsonBody(errorBody{
				Error:     fmt.Sprintf("no game with id %d; GET /api/games lists them", p.GameID),
				RequestID: p.RequestID,
			})}
		case int64(p.Quantity) > g.avail:
			outs[i] = soldOutRefusal(p, g.avail)
		case limit > 0 && held[h]+int64(p.Quantity) > limit:
			outs[i] = buyerLimitRefusal(p, limit, held[h])
		default:
			g.avail -= int64(p.Quantity)
			g.sold += int64(p.Quantity)
			held[h] += int64(p.Quantity)
			sold = append(sold, i)
			written[i] = true
		}
		if p.IdempotencyKey != "" {
			newKeys[f.buyer]++
			keyed = append(keyed, i)
			written[i] = true
		}
	}

	// 4. Seats, orders, keys.
	if err := settleSeats(ctx, conn, ids, seats, fast); err != nil {
		return res, nil, err
	}
	if len(sold) > 0 {
		if err := c.insertOrders(ctx, conn, batch, sold, outs, now); err != nil {
			return res, nil, err
		}
	}
	for i, j := range dupOf {
		outs[i] = duplicateAnswer(batch[i], batch[j], outs[j])
		past[i] = outs[i].Replayed
	}
	wrote := len(sold) > 0 || len(keyed) > 0
	// The keys, COMMIT (or ROLLBACK when there is nothing to keep: the
	// seats taken are given back) and the GTIDs, in one round trip.
	var end strings.Builder
	var args []any
	end.WriteString("ROLLBACK")
	if wrote {
		end.Reset()
		if q, a := c.keysStatement(batch, keyed, outs, now); q != "" {
			end.WriteString(q + "; ")
			args = a
		}
		end.WriteString("COMMIT")
	}
	end.WriteString("; SELECT @@last_gtid, @@gtid_binlog_pos")
	last, pos, err := finish(ctx, conn, end.String(), args)
	if err != nil {
		return res, nil, err
	}
	ended = true
	res = batchResult{outs: outs, wrote: wrote, pos: pos}
	if wrote {
		res.gtid = last
	}
	if !fast {
		// No seat left, read under the lock: sold out as of now.
		for _, id := range ids {
			if g := seats[id]; g.exists && g.avail == 0 {
				soldOut = append(soldOut, id)
			}
		}
	}
	for i := range outs {
		switch {
		case written[i]:
			outs[i].GTID = last
		case past[i]:
			// The primary's position covers the original commit, so a
			// read that waits for it sees it.
			outs[i].GTID = pos
		}
	}
	return res, soldOut, nil
}

// takeSeats begins the batch's transaction in db's session and takes the
// games' row locks (step 1), then runs factsQ (step 2) in the same round
// trip. On the fast path one conditional UPDATE takes every seat asked for
// (taken = want). When some game has fewer seats left than asked, that
// UPDATE is rolled back and the rows are read with SELECT ... FOR UPDATE
// instead (avail = remaining), and the facts read again under those locks,
// for settleSeats to take what is handed out; a game without a row has
// exists false.
func takeSeats(ctx context.Context, db saleSession, ids []int64, seats map[int64]*gameSeats, factsQ string, factsArgs []any, n int) (fast bool, facts []reqFacts, err error) {
	// The session is READ COMMITTED (set when the pool connects): the
	// reads under the locks take no gap locks, so concurrent buyers of a
	// game queue on its row alone.
	var q string
	var args []any
	if len(ids) == 1 {
		w := seats[ids[0]].want
		q, args = "UPDATE games SET remaining = remaining - ? WHERE id = ? AND remaining >= ?", []any{w, ids[0], w}
	} else {
		byGame, a := caseByID(ids, func(id int64) int64 { return seats[id].want })
		q, args = "UPDATE games SET remaining = remaining - "+byGame+" WHERE id IN ("+idList(ids)+") AND remaining >= "+byGame+" ORDER BY id", append(a, a...)
	}
	var changed int64
	facts, err = readFacts(ctx, db, q+"; SELECT ROW_COUNT(); "+factsQ, append(args, factsArgs...), n, func(rows *sql.Rows) error {
		if !rows.Next() {
			return errors.New("ROW_COUNT() returned no row")
		}
		return rows.Scan(&changed)
	})
	if err != nil {
		return false, nil, err
	}
	if changed == int64(len(ids)) {
		for _, id := range ids {
			seats[id].taken, seats[id].avail = seats[id].want, seats[id].want
		}
		return true, facts, nil
	}
	if changed > 0 {
		// Some games were taken, some not, and which is not known: undo
		// and lock them all to read.
		if _, err := db.ExecContext(ctx, "ROLLBACK"); err != nil {
			return false, nil, err
		}
	}
	for _, id := range ids {
		seats[id].exists = false
	}
	facts, err = readFacts(ctx, db, "SELECT id, remaining FROM games WHERE id IN ("+idList(ids)+") ORDER BY id FOR UPDATE; "+factsQ, factsArgs, n, func(rows *sql.Rows) error {
		for rows.Next() {
			var id, remaining int64
			if err := rows.Scan(&id, &remaining); err != nil {
				return err
			}
			if g := seats[id]; g != nil {
				g.exists, g.avail = true, remaining
			}
		}
		return nil
	})
	if err != nil {
		return false, nil, err
	}
	return false, facts, nil
}

// readFacts runs q, whose statements lock the batch's rows and end with
// factsQuery, in one round trip: the result set of factsQuery gives the
// facts of the batch's n requests, and lock reads the one result set with
// rows before it (ROW_COUNT() after the UPDATE, or the rows read FOR
// UPDATE). The two are told apart by their number of columns.
func readFacts(ctx context.Context, db saleSession, q string, args []any, n int, lock func(*sql.Rows) error) (facts []reqFacts, err error) {
	err = queryResults(ctx, db, q, args, func(cols int, rows *sql.Rows) error {
		switch cols {
		case 0:
			return nil
		case factsColumns:
			facts, err = scanFacts(rows, n)
			return err
		}
		return lock(rows)
	})
	if err != nil {
		return nil, err
	}
	if facts == nil {
		return nil, errors.New("reading the batch's buyers: no result")
	}
	return facts, nil
}

// queryResults runs the statements of q and hands each result set to
// read with its number of columns (0 for a statement without rows), which
// tells the sets of one query apart.
func queryResults(ctx context.Context, db saleSession, q string, args []any, read func(cols int, rows *sql.Rows) error) error {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for {
		cols, err := rows.Columns()
		if err != nil {
			return err
		}
		if err := read(len(cols), rows); err != nil {
			return err
		}
		if !rows.NextResultSet() {
			break
		}
	}
	return rows.Err()
}

// settleSeats makes the games' rows agree with what the batch sold: on the
// fast path it gives back the seats taken but not sold; on the slow path
// it takes the seats sold.
func settleSeats(ctx context.Context, db saleSession, ids []int64, seats map[int64]*gameSeats, fast bool) error {
	var change []int64
	delta := func(id int64) int64 {
		if g := seats[id]; fast {
			return g.taken - g.sold // given back
		} else {
			return g.sold // taken
		}
	}
	for _, id := range ids {
		if seats[id].exists && delta(id) > 0 {
			change = append(change, id)
		}
	}
	if len(change) == 0 {
		return nil
	}
	byGame, args := caseByID(change, delta)
	op, check := "+", ""
	if !fast {
		op = "-"
		check = " AND remaining >= " + byGame
		args = append(args, args...)
	}
	res, err := db.ExecContext(ctx, "UPDATE games SET remaining = remaining "+op+" "+byGame+" WHERE id IN ("+idList(change)+")"+check, args...)
	if err != nil {
		return fmt.Errorf("settling the seats of %d games: %w", len(change), err)
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(change)) {
		// Cannot be: the rows are locked since the batch's first statement.
		return fmt.Errorf("settling the seats of %d games under their locks changed %d rows: %w", len(change), n, err)
	}
	return nil
}

// caseByID returns "CASE id WHEN ? THEN ? ... END" and its arguments.
func caseByID(ids []int64, v func(int64) int64) (string, []any) {
	var b strings.Builder
	args := make([]any, 0, 2*len(ids))
	b.WriteString("CASE id")
	for _, id := range ids {
		b.WriteString(" WHEN ? THEN ?")
		args = append(args, id, v(id))
	}
	b.WriteString(" END")
	return b.String(), args
}

// idList returns the ids as a SQL list; they are integers, not input.
func idList(ids []int64) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatInt(id, 10))
	}
	return b.String()
}

// factsQuery is the query of step 2: for each request of the batch, in
// one query run under the games' row locks, its first request by the same
// email, what that email holds of its game, its keys of the last hour, its
// key's stored answer and the order of an earlier attempt. The batch's
// emails and keys go in as a table of literals, so that the database
// compares emails as its columns do (utf8mb4_unicode_ci: case and accents
// aside). Both lookups by email name their index: the optimizer does not
// see that a column of the literal table can key an index, and alone it
// took tickets_game for what a buyer holds, reading every order of the
// game for every request. On a hot game with 90,000 orders that made a
// batch take 220 ms instead of a few.
func factsQuery(batch []*saleReq, now time.Time) (string, []any) {
	var q strings.Builder
	args := make([]any, 0, 5*len(batch)+2)
	q.WriteString("WITH b (i, g, email, k, token) AS (VALUES ")
	for i, r := range batch {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?, ?, ?)")
		var key any
		if r.p.IdempotencyKey != "" {
			key = []byte(r.p.IdempotencyKey)
		}
		args = append(args, i, r.p.GameID, r.p.Email, key, r.token)
	}
	q.WriteString(`)
SELECT b.i,
  (SELECT MIN(b2.i) FROM b b2 WHERE b2.email = b.email),
  (SELECT COALESCE(SUM(t.quantity), 0) FROM tickets t FORCE INDEX (tickets_game_email) WHERE t.game_id = b.g AND t.email = b.email),
  IF(b.k IS NULL, 0, (SELECT COUNT(*) FROM idempotency_keys h FORCE INDEX (idempotency_keys_buyer_created) WHERE h.buyer = b.email AND h.created_at > ?)),
  IF(b.k IS NULL, NULL, (SELECT MIN(h.created_at) FROM idempotency_keys h FORCE INDEX (idempotency_keys_buyer_created) WHERE h.buyer = b.email AND h.created_at > ?)),
  k.request_hash, k.status, k.response,
  o.id, o.created_at
FROM b
LEFT JOIN idempotency_keys k ON k.buyer = b.email AND k.idem_key = b.k
LEFT JOIN tickets o ON o.order_token = b.token`)
	hourAgo := now.Add(-time.Hour)
	args = append(args, hourAgo, hourAgo)
	return q.String(), args
}

// factsColumns is how many columns factsQuery returns.
const factsColumns = 10

// scanFacts reads factsQuery's rows for a batch of n requests.
func scanFacts(rows *sql.Rows, n int) ([]reqFacts, error) {
	facts := make([]reqFacts, n)
	seen := 0
	for rows.Next() {
		var i int
		var f reqFacts
		var hash, body []byte
		var code sql.NullInt64
		var orderID sql.NullInt64
		var created sql.NullTime
		if err := rows.Scan(&i, &f.buyer, &f.held, &f.keysInHour, &f.oldestKey, &hash, &code, &body, &orderID, &created); err != nil {
			return nil, fmt.Errorf("reading the batch's buyers: %w", err)
		}
		if i < 0 || i >= n {
			return nil, fmt.Errorf("reading the batch's buyers: row for request %d of %d", i, n)
		}
		if code.Valid {
			f.stored, f.storedHash, f.storedCode, f.storedBody = true, hash, int(code.Int64), body
		}
		if orderID.Valid {
			f.orderID, f.orderCreated = orderID.Int64, created.Time
		}
		facts[i] = f
		seen++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the batch's buyers: %w", err)
	}
	if seen != n {
		return nil, fmt.Errorf("reading the batch's buyers: %d rows for %d requests", seen, n)
	}
	return facts, nil
}

// insertOrders writes the orders of the sold requests in one INSERT and
// fills in their 201 answers.
func (c *cluster) insertOrders(ctx context.Context, db saleSession, batch []*saleReq, sold []int, outs []purchaseOutcome, now time.Time) error {
	var q strings.Builder
	args := make([]any, 0, 5*len(sold))
	q.WriteString("INSERT INTO tickets (game_id, email, quantity, order_token, created_at) VALUES ")
	for n, i := range sold {
		if n > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?, ?, ?)")
		p := batch[i].p
		args = append(args, p.GameID, p.Email, p.Quantity, batch[i].token, now)
	}
	// The ids of one multi-row INSERT are consecutive, in steps of the
	// session's auto_increment_increment, under innodb_autoinc_lock_mode
	// 0 or 1, and LAST_INSERT_ID() is the first. Both settings are read
	// in the same round trip as the INSERT, never cached: an operator may
	// change the step (new sessions take it) and a restart the lock mode.
	q.WriteString("; SELECT LAST_INSERT_ID(), @@auto_increment_increment, @@innodb_autoinc_lock_mode")
	var first, step, mode int64
	got := false
	err := queryResults(ctx, db, q.String(), args, func(cols int, rows *sql.Rows) error {
		if cols != 3 || !rows.Next() {
			return nil
		}
		got = true
		return rows.Scan(&first, &step, &mode)
	})
	if err != nil {
		return fmt.Errorf("inserting %d orders: %w", len(sold), err)
	}
	if !got {
		return fmt.Errorf("inserting %d orders: no LAST_INSERT_ID()", len(sold))
	}
	if mode != 2 && step >= 1 && !c.idsByToken.Load() {
		for n, i := range sold {
			outs[i] = purchaseOutcome{Status: http.StatusCreated, Result: "sold", Body: orderBody(batch[i].p, first+int64(n)*step, now)}
		}
		return nil
	}
	// Otherwise (innodb_autoinc_lock_mode 2 interleaves the ids of
	// concurrent INSERTs) the ids by token: one more round trip.
	q.Reset()
	args = args[:0]
	q.WriteString("SELECT order_token, id FROM tickets WHERE order_token IN (")
	for n, i := range sold {
		if n > 0 {
			q.WriteString(", ")
		}
		q.WriteString("?")
		args = append(args, batch[i].token)
	}
	q.WriteString(")")
	rows, err := db.QueryContext(ctx, q.String(), args...)
	if err != nil {
		return fmt.Errorf("reading the ids of %d orders: %w", len(sold), err)
	}
	defer rows.Close()
	ids := make(map[string]int64, len(sold))
	for rows.Next() {
		var token []byte
		var id int64
		if err := rows.Scan(&token, &id); err != nil {
			return fmt.Errorf("reading the ids of %d orders: %w", len(sold), err)
		}
		ids[string(token)] = id
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the ids of %d orders: %w", len(sold), err)
	}
	for _, i := range sold {
		id, ok := ids[string(batch[i].token)]
		if !ok {
			return fmt.Errorf("order of request %d not found after its INSERT", i)
		}
		outs[i] = purchaseOutcome{Status: http.StatusCreated, Result: "sold", Body: orderBody(batch[i].p, id, now)}
	}
	return nil
}

// insertKeys stores the Idempotency-Key of each keyed request with its
// final answer, in one INSERT. A sale's answer is kept the whole TTL; a
// refusal protects no sale, and is kept only for the client's retries. A
// 429 for too many keys is stored nowhere.
func (c *cluster) keysStatement(batch []*saleReq, keyed []int, outs []purchaseOutcome, now time.Time) (string, []any) {
	var q strings.Builder
	args := make([]any, 0, 7*len(keyed))
	q.WriteString("INSERT INTO idempotency_keys (buyer, idem_key, request_hash, status, response, created_at, expires_at) VALUES ")
	n := 0
	for _, i := range keyed {
		out := outs[i]
		if out.Result == "key_limit" {
			continue
		}
		if n > 0 {
			q.WriteString(", ")
		}
		n++
		q.WriteString("(?, ?, ?, ?, ?, ?, ?)")
		expires := now.Add(c.cfg.IdempotencyTTL)
		if out.Status != http.StatusCreated {
			expires = now.Add(c.cfg.IdempotencyRefusalTTL)
		}
		p := batch[i].p
		args = append(args, p.Email, p.IdempotencyKey, batch[i].hash, out.Status, out.Body, now, expires)
	}
	if n == 0 {
		return "", nil
	}
	return q.String(), args
}

// finish runs the batch's last round trip, stmts (the keys' INSERT, COMMIT
// or ROLLBACK, then the GTID query), and returns @@last_gtid and
// @@gtid_binlog_pos.
func finish(ctx context.Context, db saleSession, stmts string, args []any) (last, pos string, err error) {
	rows, err := db.QueryContext(ctx, stmts, args...)
	if mysqlErrNumber(err) == erDupEntry {
		return "", "", fmt.Errorf("%w: %w", errKeyRace, err)
	}
	if err != nil {
		return "", "", fmt.Errorf("committing: %w", err)
	}
	defer rows.Close()
	for {
		if cols, err := rows.Columns(); err == nil && len(cols) == 2 {
			var l, p sql.NullString
			if rows.Next() {
				if err := rows.Scan(&l, &p); err != nil {
					return "", "", fmt.Errorf("reading the commit's GTID: %w", err)
				}
			}
			last, pos = l.String, p.String
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return "", "", fmt.Errorf("committing: %w", err)
	}
	return last, pos, nil
}

// endSession rolls back whatever a failed batch left open in conn's
// session; if it cannot, the connection is dropped rather than returned to
// the pool inside a transaction that holds row locks.
func endSession(conn *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		conn.Raw(func(any) error { return driver.ErrBadConn }) //nolint:errcheck // the point is the discard
	}
}

func orderBody(p purchaseRequest, id int64, created time.Time) []byte {
	return jsonBody(Order{
		OrderID: id, GameID: p.GameID, Email: p.Email, Quantity: p.Quantity,
		Tickets:   ticketNumbers(p.GameID, id, p.Quantity),
		CreatedAt: created.UTC().Format(createdAtLayout),
	})
}

// storedAnswer answers a request whose Idempotency-Key this buyer already
// used, from the key's row.
//
// Keys are scoped to the buyer, as Stripe scopes them to an account: the
// row is found by (email, key), so a request naming another buyer's key
// under its own email finds nothing, and is a new purchase of its own. It
// learns nothing of the other buyer's order: not its existence (no 422),
// not its body. To see someone's stored answer one must send their email,
// their key, and their game and quantity; keys are meant to be random
// (UUIDs), so that is a guess of the key.
func storedAnswer(p purchaseRequest, hash, storedHash []byte, status int, body []byte, gtid string) purchaseOutcome {
	if string(storedHash) != string(hash) {
		return purchaseOutcome{Status: http.StatusUnprocessableEntity, Result: "key_mismatch", Body: jsonBody(errorBody{
			Error:     "you already used this Idempotency-Key with a different request (game, quantity or the email's spelling); use a new key for a new order",
			RequestID: p.RequestID,
		})}
	}
	if status == 0 {
		// A claim by an origin that predates batches (one that inserted the
		// key first and commits its answer later), still in flight.
		return purchaseOutcome{Status: http.StatusConflict, Result: "key_in_flight", Body: jsonBody(errorBody{
			Error:     "a request with this Idempotency-Key is still being processed; retry with the same key in a few seconds to get its result",
			RequestID: p.RequestID,
		})}
	}
	return purchaseOutcome{Status: status, Body: body, GTID: gtid, Replayed: true, Result: "replayed"}
}

// duplicateAnswer answers r, which carries the same buyer and key as
// first, an earlier request of the same batch: a replay of first's answer,
// as if r had come a moment later.
func duplicateAnswer(r, first *saleReq, out purchaseOutcome) purchaseOutcome {
	if string(r.hash) != string(first.hash) {
		return storedAnswer(r.p, r.hash, first.hash, 0, nil, "")
	}
	if out.Result == "key_limit" {
		// Not stored: r is refused like first, on its own account.
		return keysPerHourLike(r.p, out)
	}
	out.Replayed, out.Result = true, "replayed"
	return out
}

func soldOutRefusal(p purchaseRequest, remaining int64) purchaseOutcome {
	msg := fmt.Sprintf("sold out: no seats left for game %d", p.GameID)
	if remaining > 0 {
		msg = fmt.Sprintf("not enough seats: %d requested, %d left for game %d; order at most %d", p.Quantity, remaining, p.GameID, remaining)
	}
	return purchaseOutcome{Status: http.StatusConflict, Result: "sold_out", SoldOut: remaining == 0, Body: jsonBody(errorBody{
		Error: msg, RequestID: p.RequestID, Remaining: &remaining,
	})}
}

// buyerLimitRefusal refuses an order that would leave the buyer holding
// more than limit seats of the game (409, code limit_per_buyer).
//
// Why this cannot be raced: the batch holds the game's row lock from its
// first statement to its end, and every purchase of the game takes that
// lock before it counts. So the checks of one game run one batch at a
// time, across origins, and each count (a fresh READ COMMITTED snapshot,
// taken after the lock was granted) sees every order committed before it;
// within a batch, the orders decided before are added in.
func buyerLimitRefusal(p purchaseRequest, limit, held int64) purchaseOutcome {
	msg := fmt.Sprintf("limit per buyer: one email may hold at most %d tickets for game %d, and %s already holds %d; order at most %d",
		limit, p.GameID, p.Email, held, max(limit-held, 0))
	if held >= limit {
		msg = fmt.Sprintf("limit per buyer: one email may hold at most %d tickets for game %d, and %s already holds %d",
			limit, p.GameID, p.Email, held)
	}
	return purchaseOutcome{Status: http.StatusConflict, Result: "limit_per_buyer", Body: jsonBody(errorBody{
		Error: msg, RequestID: p.RequestID, Code: "limit_per_buyer",
	})}
}

// keysPerHourRefusal bounds the Idempotency-Keys one buyer may have stored
// in any hour: a new key past the bound is a 429, stored nowhere. A
// buyer's requests in other games' batches count one another only once
// committed, so a burst may store up to its own concurrency past the
// bound, once: after it, every new key that hour is refused.
func keysPerHourRefusal(p purchaseRequest, limit int, oldest sql.NullTime, now time.Time) purchaseOutcome {
	retry := 3600
	if oldest.Valid {
		// The oldest key of the hour leaves it first.
		retry = int(oldest.Time.Add(time.Hour).Sub(now)/time.Second) + 1
	}
	retry = min(max(retry, 1), 3600)
	return purchaseOutcome{Status: http.StatusTooManyRequests, Result: "key_limit", RetryAfter: retry,
		Body: jsonBody(errorBody{
			Error: fmt.Sprintf("too many Idempotency-Keys: one buyer may use at most %d new keys an hour; retry with a key you already used to get its answer, or wait %d s",
				limit, retry),
			RequestID: p.RequestID, Code: "idempotency_keys_per_hour",
		})}
}

// keysPerHourLike is out, a 429 for too many keys, addressed to p.
func keysPerHourLike(p purchaseRequest, out purchaseOutcome) purchaseOutcome {
	var e errorBody
	if err := json.Unmarshal(out.Body, &e); err == nil {
		e.RequestID = p.RequestID
		out.Body = jsonBody(e)
	}
	return out
}

// markSoldOut records that game has no seat left, as of the primary's
// position gtid.
func (c *cluster) markSoldOut(game int64, gtid string) {
	if _, had := c.sale.soldOut.Swap(game, soldOutMark{until: time.Now().Add(c.cfg.SoldOutTTL), gtid: gtid}); !had {
		c.log.Info("origin: game sold out; refusing its buyers without the primary", "game", game, "for", c.cfg.SoldOutTTL)
	}
}

// soldOutAnswer answers a purchase of a game marked sold out, with ok
// true; ok is false when the game is not marked (or the mark lapsed).
//
// Without an Idempotency-Key the answer is 409 sold out at once. With one,
// the key may hold the answer of a purchase made before the sell-out: it is
// read from a replica that has applied everything up to the sell-out (or
// from the primary if none has, as any read-your-writes read), and
// replayed. A new key gets 409 sold out and is not stored: the game stays
// sold out, so the request's retries get the same answer again (with their
// own request_id), and the primary does not see the crowd.
func (c *cluster) soldOutAnswer(ctx context.Context, p purchaseRequest) (purchaseOutcome, bool, error) {
	v, ok := c.sale.soldOut.Load(p.GameID)
	if !ok {
		return purchaseOutcome{}, false, nil
	}
	mark := v.(soldOutMark)
	if time.Now().After(mark.until) {
		return purchaseOutcome{}, false, nil
	}
	if p.IdempotencyKey == "" {
		c.m.soldOutAnswers.WithLabelValues("no_key").Inc()
		return soldOutRefusal(p, 0), true, nil
	}
	k := &keyLookup{p: p, mark: mark, done: make(chan struct{})}
	c.lookupKey(k)
	select {
	case <-k.done:
	case <-ctx.Done():
		return purchaseOutcome{}, false, fmt.Errorf("%w: reading the Idempotency-Key of a purchase of sold-out game %d: %w", ErrUnavailable, p.GameID, ctx.Err())
	}
	switch {
	case k.err != nil:
		return purchaseOutcome{}, false, fmt.Errorf("%w: reading the Idempotency-Key of a purchase of sold-out game %d: %w", ErrUnavailable, p.GameID, k.err)
	case !k.found:
		c.m.soldOutAnswers.WithLabelValues("new_key").Inc()
		return soldOutRefusal(p, 0), true, nil
	}
	c.m.soldOutAnswers.WithLabelValues("stored_key").Inc()
	return storedAnswer(p, p.hash(), k.hash, k.status, k.body, mark.gtid), true, nil
}

// keyLookup is a keyed purchase of a sold-out game waiting for its key to
// be read. done is closed once found (and hash, status, body) or err are
// set.
type keyLookup struct {
	p     purchaseRequest
	mark  soldOutMark
	found bool
	hash  []byte
	// status and body are the key's stored answer.
	status int
	body   []byte
	err    error
	done   chan struct{}
}

// lookupKey queues k, starting the lookup goroutine when none runs. Like
// purchases, the keys of sold-out games are read in batches, one query for
// whatever arrived while the last one ran, so a storm of them costs a
// replica one query per batch rather than two per request (the GTID wait,
// the read).
func (c *cluster) lookupKey(k *keyLookup) {
	q := &c.sale.lookups
	if q.push(k) {
		go q.drain(c.cfg.PurchaseBatchMax, c.readKeys)
	}
}

// readKeys reads the stored answers of a batch of keys, from a replica
// that has applied every sell-out the batch's marks name (or the primary),
// and answers each.
func (c *cluster) readKeys(batch []*keyLookup) {
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("origin: idempotency key lookup panicked", "size", len(batch), "panic", v)
			for _, k := range batch {
				select {
				case <-k.done:
				default:
					k.err = errors.New("internal error")
					close(k.done)
				}
			}
		}
	}()
	c.m.keyLookupSize.Observe(float64(len(batch)))
	// Positions only grow: the newest mark's covers the others.
	gtid, newest := "", time.Time{}
	var q strings.Builder
	args := make([]any, 0, 3*len(batch))
	q.WriteString("WITH b (i, email, k) AS (VALUES ")
	for i, k := range batch {
		if k.mark.until.After(newest) {
			gtid, newest = k.mark.gtid, k.mark.until
		}
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?)")
		args = append(args, i, k.p.Email, []byte(k.p.IdempotencyKey))
	}
	q.WriteString(") SELECT b.i, k.request_hash, k.status, k.response FROM b JOIN idempotency_keys k ON k.buyer = b.email AND k.idem_key = b.k")
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.PurchaseTimeout)
	defer cancel()
	found := make([]*keyLookup, len(batch))
	err := c.read(ctx, gtid, func(ctx context.Context, db querier) error {
		clear(found)
		rows, err := db.QueryContext(ctx, q.String(), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var i, status int
			var hash, body []byte
			if err := rows.Scan(&i, &hash, &status, &body); err != nil {
				return err
			}
			if i < 0 || i >= len(batch) {
				return fmt.Errorf("key lookup: row for request %d of %d", i, len(batch))
			}
			found[i] = &keyLookup{found: true, hash: hash, status: status, body: body}
		}
		return rows.Err()
	})
	for i, k := range batch {
		switch {
		case err != nil:
			k.err = err
		case found[i] != nil:
			k.found, k.hash, k.status, k.body = true, found[i].hash, found[i].status, found[i].body
		}
		close(k.done)
	}
}
