package origin

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// cursor encodes a listing cursor as encodeCursor does, for any values.
func cursor(sec int64, id int64) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d.%d", sec, id))
}

// Issue 22.3: a date or cursor outside what a DATETIME holds made the
// driver fail while filling in the parameter; the read path took that for
// a sick replica, skipped every replica for the cooldown and answered 500
// (which the edge counts toward ejecting the origin). Such input is a 400
// now, and the replicas stay in rotation.
func TestListingRejectsOutOfRangeDates(t *testing.T) {
	s := startServer(t, func(c *Config) { c.ReplicaCooldown = time.Hour })
	s.CheckDatabases(context.Background())
	for _, tt := range []struct {
		name, query string
		want        string
	}{
		{"year zero", "date=0000-01-01", "between 1000-01-01 and 9999-12-31"},
		{"before DATETIME", "date=0999-12-31", "between 1000-01-01 and 9999-12-31"},
		{"cursor far future", "after=" + cursor(1<<62, 1), "after"},
		{"cursor max int64", "after=" + cursor(9223372036854775807, 1), "after"},
		{"cursor negative", "after=" + cursor(-62167219200, 1), "after"},
		{"cursor year 10000", "after=" + cursor(253402300800, 1), "after"},
		{"cursor year 999", "after=" + cursor(-30610224001, 1), "after"},
		{"sport not UTF-8", "sport=%FF%FE", "sport"},
		{"sport with a control character", "sport=Judo%00", "sport"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, "GET", s.URL+"/api/games?"+tt.query, "")
			var e errorBody
			if r.Status != http.StatusBadRequest || jsonStrict(r.Body, &e) != nil || !strings.Contains(e.Error, tt.want) {
				t.Fatalf("GET /api/games?%s: %d %.200s, want 400 naming %q", tt.query, r.Status, r.Body, tt.want)
			}
			if page := do(t, "GET", s.URL+"/games?"+tt.query, ""); page.Status >= 500 {
				t.Errorf("GET /games?%s: %d", tt.query, page.Status)
			}
		})
	}
	// The edges of the range are fine: no games there, and no error.
	for _, q := range []string{"date=1000-01-01", "date=9999-12-31", "after=" + cursor(253402300799, 1), "after=" + cursor(-30610224000, 1)} {
		r := do(t, "GET", s.URL+"/api/games?"+q, "")
		var l gameList
		if r.Status != http.StatusOK || jsonStrict(r.Body, &l) != nil {
			t.Errorf("GET /api/games?%s: %d %.200s, want 200", q, r.Status, r.Body)
		}
	}
	// (The health check's verdict may change under load, as a replica
	// lags; what bad input must not do is set a replica aside.)
	for _, r := range s.db.replicas {
		if r.skipUntil.Load() != 0 {
			t.Errorf("replica %s was set aside by bad input", r.name)
		}
	}
	if r := do(t, "GET", s.URL+"/api/games?limit=1", ""); r.Status != 200 {
		t.Fatalf("listing after bad input: %d %s", r.Status, r.Body)
	}
}

// A read that fails because of what it asked (here a time the driver cannot
// encode, past any validation) is not the replica's fault: the replica stays
// in rotation, and the error comes back.
func TestRequestErrorDoesNotSkipReplica(t *testing.T) {
	s := startServer(t, func(c *Config) { c.ReplicaCooldown = time.Hour })
	s.CheckDatabases(context.Background())
	var tried []querier
	err := s.db.read(context.Background(), "", func(ctx context.Context, db querier) error {
		tried = append(tried, db)
		var n int
		return db.QueryRowContext(ctx, "SELECT COUNT(*) FROM games WHERE starts_at < ?", time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)).Scan(&n)
	})
	if err == nil || !strings.Contains(err.Error(), "year") {
		t.Fatalf("read with a year-0 parameter: %v, want the driver's error", err)
	}
	if len(tried) > 2 {
		t.Errorf("the failing read ran on %d databases; a request error fails the same everywhere", len(tried))
	}
	for _, r := range s.db.replicas {
		if r.skipUntil.Load() != 0 {
			t.Errorf("replica %s set aside after a request error", r.name)
		}
	}
}

// A replica that cannot be reached is still set aside for the cooldown,
// and the read is answered by another database.
func TestUnreachableReplicaIsSkipped(t *testing.T) {
	dead := tc.replicas[0]
	cfg, err := mysql.ParseDSN(dead)
	if err != nil {
		t.Fatal(err)
	}
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = "127.0.0.1:" + ports[0] // nothing listens there
	s := startServer(t, func(c *Config) {
		c.ReplicaDSNs = []string{cfg.FormatDSN(), tc.replicas[1]}
		c.ReplicaCooldown = time.Hour
		c.HealthInterval = time.Hour
	})
	// Once the server answers, its first health check is over (Run checks
	// before it serves); then, as if that check had found both well:
	do(t, "GET", s.URL+"/ping", "")
	s.db.replicas[0].healthy.Store(true)
	s.db.replicas[1].healthy.Store(true)
	for range 4 {
		if r := do(t, "GET", s.URL+"/api/games/1", ""); r.Status != 200 {
			t.Fatalf("read with one replica unreachable: %d %s", r.Status, r.Body)
		}
	}
	if s.db.replicas[0].skipUntil.Load() <= time.Now().UnixNano() {
		t.Error("the unreachable replica was not set aside")
	}
	if s.db.replicas[1].skipUntil.Load() != 0 {
		t.Error("the reachable replica was set aside")
	}
}

func TestReplicaFaultClassification(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{mysql.ErrInvalidConn, true},
		{&mysql.MySQLError{Number: 1040, Message: "Too many connections"}, true},
		{&mysql.MySQLError{Number: 1146, Message: "Table 'podium.games' doesn't exist"}, true},
		{&mysql.MySQLError{Number: 1927, Message: "Connection was killed"}, true},
		{&mysql.MySQLError{Number: 1969, Message: "Query execution was interrupted (max_statement_time exceeded)"}, true},
		{fmt.Errorf("listing games: %w", errors.New("year is not in the range [1, 9999]: 0")), false},
		{&mysql.MySQLError{Number: 1292, Message: "Incorrect datetime value"}, false},
		{&mysql.MySQLError{Number: 1366, Message: "Incorrect string value"}, false},
		{&mysql.MySQLError{Number: 1064, Message: "You have an error in your SQL syntax"}, false},
		{context.Canceled, false},
	} {
		if got := replicaFault(tt.err); got != tt.want {
			t.Errorf("replicaFault(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
