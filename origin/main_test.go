package origin

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/internal/testport"
)

// seedGames is the number of sessions migration 0002 seeds (ids 1..624).
const seedGames = 624

// The tests run against a real MariaDB primary and two GTID replicas that
// TestMain starts with scripts/mariadb-cluster.sh in a temporary state
// directory on free loopback ports, and stops at the end.
var tc struct {
	script     string
	stateDir   string
	primary    string
	replicas   []string
	migrate    string
	primaryDB  *sql.DB // the app user on the primary, for checks and fixtures
	replicaDBs []*sql.DB
	httpClient *http.Client
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	// A fuzz worker (go test -fuzz starts them with -test.fuzzworker) runs
	// one Fuzz target's inputs, and none of those needs the database; a
	// cluster per worker would only slow fuzzing down. The coordinating
	// process runs the tests, and the cluster, as usual.
	if len(os.Args) > 1 && os.Args[1] == "-test.fuzzworker" {
		return m.Run()
	}
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin tests:", err)
		return 1
	}
	tc.script = filepath.Join(root, "scripts", "mariadb-cluster.sh")
	tc.stateDir, err = os.MkdirTemp("", "podium-origin-db-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin tests:", err)
		return 1
	}
	defer os.RemoveAll(tc.stateDir)
	ports, err := freePorts(3)
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin tests: picking ports:", err)
		return 1
	}
	env := append(os.Environ(),
		"PODIUM_DB_PRIMARY_PORT="+ports[0], "PODIUM_DB_REPLICA1_PORT="+ports[1], "PODIUM_DB_REPLICA2_PORT="+ports[2])
	// If this binary dies without running its deferred stop (a -timeout
	// panic, a kill), a watchdog in its own session stops the cluster and
	// removes its state dir, so no mariadbd outlives the test run.
	watchdog := exec.Command("sh", "-c",
		`while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3" >/dev/null 2>&1; rm -rf "$3"`,
		"watchdog", strconv.Itoa(os.Getpid()), tc.script, tc.stateDir)
	watchdog.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := watchdog.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "origin tests: starting the cluster watchdog:", err)
		return 1
	}
	go watchdog.Wait() //nolint:errcheck // reaps it if it ends first
	start := exec.Command(tc.script, "start", tc.stateDir)
	start.Env = env
	start.Stdout, start.Stderr = os.Stderr, os.Stderr
	if err := start.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "origin tests: starting the MariaDB cluster:", err)
		stopCluster()
		return 1
	}
	defer stopCluster()
	if err := loadClusterEnv(); err != nil {
		fmt.Fprintln(os.Stderr, "origin tests:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := Migrate(ctx, tc.migrate, slog.New(slog.DiscardHandler)); err != nil {
		fmt.Fprintln(os.Stderr, "origin tests: migrating:", err)
		return 1
	}
	// The tests read through replicas: let them apply the migrations first.
	if out, err := exec.Command(tc.script, "wait", tc.stateDir).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "origin tests: waiting for the replicas: %v\n%s", err, out)
		return 1
	}
	tc.primaryDB, _, err = openDB(tc.primary, 16, Config{}.withDefaults(), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin tests:", err)
		return 1
	}
	defer tc.primaryDB.Close()
	for _, dsn := range tc.replicas {
		// MASTER_GTID_WAIT may block for 30s: above the default driver timeout.
		db, _, err := openDB(dsn, 4, Config{QueryTimeout: time.Minute}.withDefaults(), nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, "origin tests:", err)
			return 1
		}
		defer db.Close()
		tc.replicaDBs = append(tc.replicaDBs, db)
	}
	tc.httpClient = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: 30 * time.Second,
		},
	}
	return m.Run()
}

func stopCluster() {
	stop := exec.Command(tc.script, "stop", tc.stateDir)
	stop.Stdout, stop.Stderr = os.Stderr, os.Stderr
	if err := stop.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "origin tests: stopping the MariaDB cluster:", err)
	}
}

// freePorts picks n free loopback ports for the MariaDB nodes
// (internal/testport says why not ":0").
func freePorts(n int) ([]string, error) {
	got, err := testport.Free(n, false)
	if err != nil {
		return nil, err
	}
	var ports []string
	for _, p := range got {
		ports = append(ports, strconv.Itoa(p))
	}
	return ports, nil
}

// loadClusterEnv reads the DSNs that `mariadb-cluster.sh env` prints.
func loadClusterEnv() error {
	out, err := exec.Command(tc.script, "env", tc.stateDir).Output()
	if err != nil {
		return fmt.Errorf("reading cluster env: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name, value, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if !ok {
			continue
		}
		value = strings.Trim(value, "'")
		switch name {
		case "PODIUM_DB_PRIMARY":
			tc.primary = value
		case "PODIUM_DB_REPLICAS":
			tc.replicas = strings.Split(value, ",")
		case "PODIUM_DB_MIGRATE":
			tc.migrate = value
		}
	}
	if tc.primary == "" || len(tc.replicas) != 2 || tc.migrate == "" {
		return fmt.Errorf("cluster env incomplete:\n%s", out)
	}
	return nil
}

// clusterCmd runs a mariadb-cluster.sh subcommand on the test cluster.
func clusterCmd(t testing.TB, args ...string) string {
	t.Helper()
	args = append(args, tc.stateDir)
	out, err := exec.Command(tc.script, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testServer is an origin serving on a loopback port.
type testServer struct {
	*Server
	URL  string
	logs *lockedWriter
}

// startServer runs an origin on the test cluster until the test ends.
func startServer(t testing.TB, mod func(*Config)) *testServer {
	t.Helper()
	cfg := Config{
		PrimaryDSN:  tc.primary,
		ReplicaDSNs: tc.replicas,
		DrainDelay:  time.Millisecond,
		// A 10,000-request storm from hundreds of goroutines on 2 cores
		// may queue behind the hot row for longer than the default.
		PurchaseTimeout: 30 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	logs := &lockedWriter{}
	s, err := New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("origin Run: %v", err)
		}
		s.Close()
		if t.Failed() {
			t.Logf("origin logs:\n%s", logs.String())
		}
	})
	// Run checks the databases once before it serves, then on its own
	// clock: wait for that first check, or it may land in the middle of
	// the test (a test that pauses replication and means the replicas to
	// stay in rotation saw its reads sent to the primary, under load).
	for i := 0; !strings.Contains(logs.String(), "origin: serving"); i++ {
		if i == 3000 {
			t.Fatalf("the origin does not serve after 30 s:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &testServer{Server: s, URL: "http://" + ln.Addr().String(), logs: logs}
}

// response is a read HTTP answer.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func do(t testing.TB, method, url string, body string, headers ...string) response {
	t.Helper()
	r, err := doErr(method, url, body, headers...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func doErr(method, url string, body string, headers ...string) (response, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return response{}, err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := tc.httpClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// createGame inserts a game with capacity seats for one test, and waits
// until both replicas have it, so that pages and API reads find it.
func createGame(t testing.TB, capacity int) int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := tc.primaryDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	res, err := conn.ExecContext(ctx, `INSERT INTO games (sport, event, venue, city, starts_at, price_cents, currency, capacity, remaining)
		VALUES ('Test', ?, 'Test Arena', 'Testville', '2030-01-01 10:00:00', 1000, 'EUR', ?, ?)`, t.Name(), capacity, capacity)
	if err != nil {
		t.Fatal(err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		t.Fatal(err)
	}
	var gtid string
	if err := conn.QueryRowContext(ctx, "SELECT @@last_gtid").Scan(&gtid); err != nil {
		t.Fatal(err)
	}
	waitReplicas(t, gtid)
	return id
}

// waitReplicas waits up to 30s for every replica to apply gtid.
func waitReplicas(t testing.TB, gtid string) {
	t.Helper()
	for i, db := range tc.replicaDBs {
		var res sql.NullInt64
		if err := db.QueryRow("SELECT MASTER_GTID_WAIT(?, 30)", gtid).Scan(&res); err != nil || res.Int64 != 0 {
			t.Fatalf("replica %d did not apply %s: %v (result %v)", i+1, gtid, err, res)
		}
	}
}

// gameState reads a game's seats and orders from the primary.
func gameState(t testing.TB, id int64) (remaining, sold, orders, distinctIDs int64) {
	t.Helper()
	err := tc.primaryDB.QueryRow(`SELECT g.remaining, COALESCE(SUM(t.quantity), 0), COUNT(t.id), COUNT(DISTINCT t.id)
		FROM games g LEFT JOIN tickets t ON t.game_id = g.id WHERE g.id = ? GROUP BY g.id`, id).Scan(&remaining, &sold, &orders, &distinctIDs)
	if err != nil {
		t.Fatal(err)
	}
	return
}

// lockedWriter serialises writes from the server's goroutines into a buffer.
type lockedWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
