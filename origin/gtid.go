package origin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// gtidComponent is one domain's part of a MariaDB GTID position:
// domain-server-sequence. MariaDB's own types bound each number: domain and
// server ids are 32-bit, sequence numbers 64-bit, all unsigned.
type gtidComponent struct {
	Domain uint32
	Server uint32
	Seq    uint64
}

// gtidPos is a GTID position: at most one component per domain, in the
// order given. The zero value is the empty position.
type gtidPos []gtidComponent

// maxGTIDDomains bounds the components a client may present; a cluster has
// one domain per independent primary, a handful at most.
const maxGTIDDomains = 16

// errMalformedGTID is the answer to anything parseGTID does not accept.
var errMalformedGTID = errors.New("not a GTID position")

// parseGTID reads a GTID position as MASTER_GTID_WAIT takes it: components
// domain-server-sequence, comma separated, no spaces, each domain at most
// once (MariaDB refuses a repeated domain), numbers within their types.
// It is the one parser of the X-Podium-GTID header and the podium_gtid
// cookie; what it returns formats back (String) to the canonical text that
// the database is given.
func parseGTID(s string) (gtidPos, error) {
	if s == "" || len(s) > 512 {
		return nil, errMalformedGTID
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxGTIDDomains {
		return nil, errMalformedGTID
	}
	p := make(gtidPos, 0, len(parts))
	for _, part := range parts {
		d, rest, ok1 := strings.Cut(part, "-")
		sv, q, ok2 := strings.Cut(rest, "-")
		if !ok1 || !ok2 || !digits(d) || !digits(sv) || !digits(q) {
			return nil, errMalformedGTID
		}
		domain, err1 := strconv.ParseUint(d, 10, 32)
		server, err2 := strconv.ParseUint(sv, 10, 32)
		seq, err3 := strconv.ParseUint(q, 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, errMalformedGTID
		}
		if slices.ContainsFunc(p, func(c gtidComponent) bool { return c.Domain == uint32(domain) }) {
			return nil, errMalformedGTID
		}
		p = append(p, gtidComponent{Domain: uint32(domain), Server: uint32(server), Seq: seq})
	}
	return p, nil
}

// digits reports whether s is 1..20 ASCII digits (ParseUint alone would
// take a sign).
func digits(s string) bool {
	if len(s) == 0 || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// validGTID reports whether s is a GTID position a client may present.
func validGTID(s string) bool {
	_, err := parseGTID(s)
	return err == nil
}

func (p gtidPos) String() string {
	var b strings.Builder
	for i, c := range p {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d-%d-%d", c.Domain, c.Server, c.Seq)
	}
	return b.String()
}

// primaryPosition is what this origin knows of the primary's GTID position:
// the highest sequence number seen in each domain. Sequence numbers only
// grow within a domain (the cluster runs gtid_strict_mode), so the primary
// has written every GTID at or below them, and none above.
//
// It is refreshed by each health check, by each purchase this origin
// commits, and on demand when a client presents a GTID it does not cover
// yet (the purchase may have gone through another origin a moment ago).
// Safe for concurrent use; must not be copied.
type primaryPosition struct {
	mu sync.Mutex
	// seqs maps domain to the highest sequence number seen. Replaced, never
	// modified, so a reader may keep the map it got.
	seqs map[uint32]uint64
	// fetchedAt is when the query that last read the primary's position
	// began: everything committed before then is covered.
	fetchedAt time.Time
	// fetching is closed when the query in flight ends; nil when none is.
	fetching chan struct{}
	// failedAt is when the last query that failed began, and failed its
	// error: callers that waited for that query get its error rather
	// than queueing another one each behind a primary that is down.
	failedAt time.Time
	failed   error
}

// merge raises the known position to include p.
func (pp *primaryPosition) merge(p gtidPos) {
	if len(p) == 0 {
		return
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	next := make(map[uint32]uint64, len(pp.seqs)+len(p))
	for d, s := range pp.seqs {
		next[d] = s
	}
	changed := false
	for _, c := range p {
		if s, ok := next[c.Domain]; !ok || c.Seq > s {
			next[c.Domain], changed = c.Seq, true
		}
	}
	if changed {
		pp.seqs = next
	}
}

// fetched records a position read from the primary by a query begun at
// start.
func (pp *primaryPosition) fetched(p gtidPos, start time.Time) {
	pp.merge(p)
	pp.mu.Lock()
	if start.After(pp.fetchedAt) {
		pp.fetchedAt = start
	}
	pp.mu.Unlock()
}

// covers reports which domain of p, if any, the known position lacks, and
// whether every component is at or below it.
func (pp *primaryPosition) covers(p gtidPos) (unknownDomain uint32, known, reached bool) {
	pp.mu.Lock()
	seqs := pp.seqs
	pp.mu.Unlock()
	reached = true
	for _, c := range p {
		s, ok := seqs[c.Domain]
		if !ok {
			return c.Domain, false, false
		}
		if c.Seq > s {
			reached = false
		}
	}
	return 0, true, reached
}

// refresh makes sure the known position comes from a query begun at or
// after since, running one if needed. Concurrent callers share queries:
// one runs at a time, and a caller waits for one that began after it
// arrived. So however many clients present unknown GTIDs, the primary
// answers one position query at a time, not one per request.
func (pp *primaryPosition) refresh(ctx context.Context, since time.Time, query func(context.Context) (gtidPos, error)) error {
	for {
		pp.mu.Lock()
		if !pp.fetchedAt.Before(since) {
			pp.mu.Unlock()
			return nil
		}
		if !pp.failedAt.Before(since) {
			err := pp.failed
			pp.mu.Unlock()
			return err
		}
		if wait := pp.fetching; wait != nil {
			pp.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		done := make(chan struct{})
		pp.fetching = done
		start := time.Now()
		pp.mu.Unlock()

		p, err := query(ctx)
		if err == nil {
			pp.fetched(p, start)
		}
		pp.mu.Lock()
		if err != nil {
			pp.failedAt, pp.failed = start, err
		}
		pp.fetching = nil
		close(done)
		pp.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// errGTIDRefused wraps the reasons a presented GTID is refused: the
// message is for the client's 400.
type errGTIDRefused struct{ msg string }

func (e errGTIDRefused) Error() string { return e.msg }

// checkGTID parses a GTID a client presented and checks it against the
// cluster: each domain must be one the primary has written, and each
// sequence number at or below the primary's position. It returns the
// canonical text for MASTER_GTID_WAIT, or an errGTIDRefused.
//
// A GTID from the future is refused rather than ignored: no purchase ever
// answered with one (the primary wrote every GTID it handed out, and
// positions only grow), so its sender is probing, or holds a GTID from a
// cluster that was restored from a backup, whose write is lost; waiting
// for it could only time out, and answering as if it were absent would
// hide the client's bug. The page cookie's caller ignores the refusal, as a
// browser cannot fix a cookie.
//
// When the primary cannot be asked (it is down), a GTID the known position
// does not cover is let through: the write may be real, and the bound on
// concurrent waits (Config.GTIDWaitConns) still caps what it can cost.
func (c *cluster) checkGTID(ctx context.Context, raw string) (string, error) {
	p, err := parseGTID(raw)
	if err != nil {
		return "", errGTIDRefused{"is not a GTID position; want one such as 0-1-42 from a purchase's answer"}
	}
	if !c.primaryUp.Load() {
		return p.String(), nil // fail open; see above
	}
	arrived := time.Now()
	// At most two refreshes: the first may have begun before the GTID was
	// committed elsewhere; any query begun after the first ended covers it.
	for range 2 {
		if _, known, reached := c.pos.covers(p); known && reached {
			return p.String(), nil
		}
		if err := c.pos.refresh(ctx, arrived, c.boundedPositionQuery); err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return p.String(), nil // fail open; see above
		}
		arrived = time.Now()
	}
	domain, known, _ := c.pos.covers(p)
	if !known {
		return "", errGTIDRefused{fmt.Sprintf("names domain %d, which this cluster does not have; send the GTID a purchase answered with, or none", domain)}
	}
	return "", errGTIDRefused{"names a position this cluster has not reached; send the GTID a purchase answered with, or none"}
}

// boundedPositionQuery reads the primary's position for a refresh. The
// query is shared by every caller waiting for it, so the first caller
// going away must not cancel it; and a GTID read is ready to spend
// GTIDWait waiting, not more.
func (c *cluster) boundedPositionQuery(ctx context.Context) (gtidPos, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.GTIDWait)
	defer cancel()
	return c.queryPrimaryPosition(ctx)
}

// queryPrimaryPosition reads the primary's position.
func (c *cluster) queryPrimaryPosition(ctx context.Context) (gtidPos, error) {
	var pos string
	if err := c.primary.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		return nil, err
	}
	return parsePrimaryPosition(pos)
}

// parsePrimaryPosition reads @@gtid_binlog_pos: empty before the first
// write.
func parsePrimaryPosition(pos string) (gtidPos, error) {
	if pos == "" {
		return nil, nil
	}
	p, err := parseGTID(pos)
	if err != nil {
		return nil, fmt.Errorf("reading the primary's GTID position %q: %w", pos, err)
	}
	return p, nil
}
