package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/pgcluster"
)

// The roles of the catch-up and tpcb scenarios. The application's tables belong to appRole,
// which the application (pgbench) also writes as. matcol runs as one of two roles with exactly
// the grants of docs/security.md: triggerRole for trigger mode, logicalRole for logical mode,
// which adds REPLICATION and, for the publication and replica identities, membership in the
// tables' owning role.
const (
	appRole     = "app"
	triggerRole = "matcol"
	logicalRole = "matcol_logical"
)

func createRoles(ctx context.Context, admin *pgx.Conn) error {
	for _, stmt := range []string{
		`CREATE ROLE ` + pgx.Identifier{appRole}.Sanitize() + ` LOGIN`,
		`CREATE ROLE ` + pgx.Identifier{triggerRole}.Sanitize() + ` LOGIN`,
		`CREATE ROLE ` + pgx.Identifier{logicalRole}.Sanitize() + ` LOGIN REPLICATION`,
		`GRANT ` + pgx.Identifier{appRole}.Sanitize() + ` TO ` + pgx.Identifier{logicalRole}.Sanitize(),
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("create roles: %w", err)
		}
	}
	return nil
}

// grantMatcol gives role what docs/security.md lists for the mode, on database db (conn is a
// superuser's connection to it). Logical mode's role already has REPLICATION and the owner's
// rights; it needs no TRIGGER of its own beyond those.
func grantMatcol(ctx context.Context, conn *pgx.Conn, db, role, mode string, targets, sources []string) error {
	r := pgx.Identifier{role}.Sanitize()
	list := func(tables []string) string {
		q := make([]string, len(tables))
		for i, t := range tables {
			q[i] = pgx.Identifier{"public", t}.Sanitize()
		}
		return strings.Join(q, ", ")
	}
	trigger := ", TRIGGER"
	if mode == "logical" {
		trigger = ""
	}
	stmts := []string{
		`GRANT CREATE ON DATABASE ` + pgx.Identifier{db}.Sanitize() + ` TO ` + r,
		`GRANT USAGE ON SCHEMA public TO ` + r,
		`GRANT SELECT, UPDATE` + trigger + ` ON ` + list(targets) + ` TO ` + r,
		// The monitoring grant docs/security.md recommends: the throttle reads the application's
		// WAL waits in pg_stat_activity.
		`GRANT pg_read_all_stats TO ` + r,
	}
	if len(sources) > 0 {
		stmts = append(stmts, `GRANT SELECT`+trigger+` ON `+list(sources)+` TO `+r)
	}
	for _, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("grant %s: %w", role, err)
		}
	}
	return nil
}

// dsnAs is the DSN of database db for role (the cluster trusts 127.0.0.1).
func dsnAs(cl *pgcluster.Cluster, role, db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", role, cl.Port, db)
}

// connectAs connects to db as role, named so that matcol's figures never count it.
func connectAs(ctx context.Context, cl *pgcluster.Cluster, role, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsnAs(cl, role, db))
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = "bench"
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s as %s: %w", db, role, err)
	}
	return c, nil
}
