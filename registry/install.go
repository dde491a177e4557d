// Package registry owns schema matcol: its versioned migrations, and the enrichments registered
// there so that every daemon instance and every CLI call agrees.
package registry

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/internal/pgident"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migration is one versioned step of the registry schema.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns every migration in version order.
func Migrations() []Migration {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		panic(err)
	}
	var out []Migration
	for _, e := range entries {
		base := strings.TrimSuffix(e.Name(), ".sql")
		num, name, _ := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			panic("migration file without a version: " + e.Name())
		}
		b, err := migrationFS.ReadFile("migrations/" + e.Name())
		if err != nil {
			panic(err)
		}
		out = append(out, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out
}

// LatestVersion is the schema version this build installs.
func LatestVersion() int {
	m := Migrations()
	return m[len(m)-1].Version
}

// lockInstall serialises install and apply across instances.
const lockInstall = 0x6d6174636f6c0001

// Install creates or upgrades schema matcol. It is idempotent and safe to run from several
// processes at once. It returns the migrations it applied.
func Install(ctx context.Context, conn interface {
	Begin(context.Context) (pgx.Tx, error)
}) ([]Migration, error) {
	var applied []Migration
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(lockInstall)); err != nil {
			return err
		}
		if err := createSchema(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS matcol.schema_migration (
				version    int PRIMARY KEY,
				name       text NOT NULL,
				applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT version FROM matcol.schema_migration`)
		if err != nil {
			return err
		}
		have, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return err
		}
		done := map[int]bool{}
		for _, v := range have {
			if int(v) > LatestVersion() {
				return fmt.Errorf("schema matcol is at version %d, newer than this matcol (%d): upgrade matcol", v, LatestVersion())
			}
			done[int(v)] = true
		}
		// Every missing version is applied, not only those above the highest: a version merged
		// after a later one still runs.
		for _, m := range Migrations() {
			if done[m.Version] {
				continue
			}
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return fmt.Errorf("migration %d (%s): %w", m.Version, m.Name, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO matcol.schema_migration (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
				return err
			}
			applied = append(applied, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("install schema matcol: %w", err)
	}
	return applied, nil
}

// createSchema creates schema matcol unless it exists. CREATE SCHEMA IF NOT EXISTS would not do:
// PostgreSQL checks CREATE on the database before it looks for the schema, so a role that owns
// a schema matcol created for it, without CREATE on the database, would be refused.
func createSchema(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	var role string
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'matcol'), current_user`).Scan(&exists, &role); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := tx.Exec(ctx, `CREATE SCHEMA matcol`); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42501" {
			return fmt.Errorf("create schema matcol: %w; either grant this role CREATE on the database, or create the schema for it: CREATE SCHEMA matcol AUTHORIZATION %s", err, pgident.Quote(role))
		}
		return fmt.Errorf("create schema matcol: %w", err)
	}
	return nil
}

// Version returns the installed schema version, 0 when schema matcol does not exist.
func Version(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('matcol.schema_migration') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, fmt.Errorf("read schema matcol version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := q.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM matcol.schema_migration`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema matcol version: %w", err)
	}
	return v, nil
}

// LockPlan is the advisory lock that orders registry changes against work done with a plan: a
// change takes it exclusively (matcol.bump_registry_version), and every batch, drain and
// backfill step takes it shared without waiting, then compares RegistryVersion with its plan's.
const LockPlan = 0x6d6174636f6c0002

// RegistryVersion returns the registry's version, which every change to an enrichment or a
// dependency bumps.
func RegistryVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int64, error) {
	var v int64
	if err := q.QueryRow(ctx, `SELECT version FROM matcol.registry_version`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read registry version: %w", err)
	}
	return v, nil
}
