package origin

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migration is one schema or data change, from origin/migrations/NNNN_name.sql.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the embedded migrations in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("reading embedded migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		name := e.Name()
		num, rest, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_description.sql", name)
		}
		body, err := migrationFiles.ReadFile("migrations/" + name)
		if err != nil {
			return nil, fmt.Errorf("reading migration %s: %w", name, err)
		}
		ms = append(ms, Migration{Version: v, Name: rest, SQL: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i := 1; i < len(ms); i++ {
		if ms[i].Version == ms[i-1].Version {
			return nil, fmt.Errorf("migrations %d_%s and %d_%s share a version", ms[i].Version, ms[i].Name, ms[i-1].Version, ms[i-1].Name)
		}
	}
	return ms, nil
}

// Migrate applies the embedded migrations that the schema_migrations table
// of the database at dsn does not list yet, and records each. It is safe to
// run twice and from several processes at once: a named lock (GET_LOCK)
// serialises migrators, applied versions are skipped, and each file is
// idempotent on its own because MariaDB commits DDL implicitly. The DSN's
// user needs CREATE, ALTER, INDEX and DML on the database, not DROP.
// It returns the versions it applied.
func Migrate(ctx context.Context, dsn string, log *slog.Logger) ([]int, error) {
	if log == nil {
		log = slog.Default()
	}
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("parsing migration DSN: %w", err)
	}
	// A migration file holds many statements.
	mc.MultiStatements = true
	mc.ParseTime = true
	if mc.Params == nil {
		mc.Params = map[string]string{}
	}
	mc.Params["time_zone"] = "'+00:00'"
	connector, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, fmt.Errorf("configuring migration connection: %w", err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s to migrate: %w", mc.Addr, err)
	}
	defer conn.Close()

	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK('podium_migrate', 60)").Scan(&got); err != nil {
		return nil, fmt.Errorf("taking the migration lock: %w", err)
	}
	if !got.Valid || got.Int64 != 1 {
		return nil, fmt.Errorf("taking the migration lock: another migrator held it for 60s")
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "DO RELEASE_LOCK('podium_migrate')") //nolint:errcheck // the lock also ends with the session

	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INT UNSIGNED NOT NULL PRIMARY KEY,
		name       VARCHAR(200) NOT NULL,
		applied_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
	) ENGINE=InnoDB`); err != nil {
		return nil, fmt.Errorf("creating schema_migrations: %w", err)
	}
	applied := map[int]bool{}
	rows, err := conn.QueryContext(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading schema_migrations: %w", err)
		}
		applied[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}

	var done []int
	for _, m := range ms {
		if applied[m.Version] {
			continue
		}
		// Data migrations (the seed) commit atomically with their version
		// row; DDL commits implicitly, which its IF NOT EXISTS makes safe.
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return done, fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
		}
		if err := execAll(ctx, tx, m.SQL); err != nil {
			tx.Rollback() //nolint:errcheck // the error that matters is err
			return done, fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", m.Version, m.Name); err != nil {
			tx.Rollback() //nolint:errcheck
			return done, fmt.Errorf("recording migration %04d_%s: %w", m.Version, m.Name, err)
		}
		if err := tx.Commit(); err != nil {
			return done, fmt.Errorf("committing migration %04d_%s: %w", m.Version, m.Name, err)
		}
		log.Info("origin: migration applied", "version", m.Version, "name", m.Name)
		done = append(done, m.Version)
	}
	return done, nil
}

// execAll runs a multi-statement script and drains every result set, so
// that an error in the fifth statement is reported, not lost.
func execAll(ctx context.Context, tx *sql.Tx, script string) error {
	rows, err := tx.QueryContext(ctx, script)
	if err != nil {
		return err
	}
	for {
		for rows.Next() {
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return err
	}
	return rows.Close()
}
