// Package pgtest gives tests a real PostgreSQL: one throwaway cluster per test binary, and a
// disposable database per test. MATCOL_TEST_DATABASE_URL points the tests at an existing server
// instead; its user must be allowed to create databases.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/pgcluster"
)

var (
	mu      sync.Mutex
	cluster *pgcluster.Cluster
	baseDSN string
	initErr error
)

// Main runs a package's tests and stops the cluster afterwards. Use it from TestMain.
func Main(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if cluster != nil {
		_ = cluster.Stop()
	}
	return code
}

// Cluster returns the shared throwaway cluster, or nil when MATCOL_TEST_DATABASE_URL is set.
func Cluster(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	base(t)
	return cluster
}

func base(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if baseDSN == "" && initErr == nil {
		if dsn := os.Getenv("MATCOL_TEST_DATABASE_URL"); dsn != "" {
			baseDSN = dsn
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cluster, initErr = pgcluster.Start(ctx, pgcluster.Options{})
			if initErr == nil {
				baseDSN = cluster.DSN("postgres")
			}
		}
	}
	if initErr != nil {
		t.Fatalf("start test PostgreSQL: %v", initErr)
	}
	return baseDSN
}

// NewDB creates an empty database for this test and returns its DSN. It is dropped at cleanup.
func NewDB(t testing.TB) string {
	t.Helper()
	dsn := base(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to test server: %v", err)
	}
	defer conn.Close(ctx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "matcol_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse test DSN: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name) + passwordParam(cfg.Password)
}

func passwordParam(p string) string {
	if p == "" {
		return ""
	}
	return "&password=" + p
}

// Connect opens a plain connection to dsn, closed at cleanup.
func Connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// Exec runs sql on dsn and fails the test on error.
func Exec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// DropSlot drops a test's replication slot, waiting up to 10 s for its walsender to exit: a
// closed replication connection leaves the slot active until the server notices, and a database
// with a slot cannot be dropped.
func DropSlot(dsn, slot string) {
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return
	}
	defer c.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if _, err := c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot); err == nil {
			return
		}
	}
}

// LoginRole creates login role name on dsn's cluster, with no privileges, and returns dsn with
// that role as its user. Cleanup drops what the role owns in dsn's database, and the role.
func LoginRole(t testing.TB, dsn, name string) string {
	t.Helper()
	role := pgx.Identifier{name}.Sanitize()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	Exec(t, conn, `CREATE ROLE `+role+` LOGIN`)
	_ = conn.Close(context.Background())
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), `DROP OWNED BY `+role+` CASCADE; DROP ROLE IF EXISTS `+role)
	})
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse dsn: %v", err)
	}
	return strings.Replace(dsn, "://"+cfg.User+"@", "://"+name+"@", 1)
}

// LogWriter writes log lines to t.Log until t's cleanups have run, and to stderr after: t.Log
// from a goroutine that outlives its test (one a failed assertion left running) panics once the
// package's tests have ended, burying the failure under a stack trace.
func LogWriter(t testing.TB) io.Writer {
	w := &logWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

type logWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	line := strings.TrimRight(string(p), "\n")
	if w.done {
		fmt.Fprintf(os.Stderr, "%s (after the test ended): %s\n", w.t.Name(), line)
		return len(p), nil
	}
	w.t.Log(line)
	return len(p), nil
}
