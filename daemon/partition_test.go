package daemon_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/internal/pgtest"
)

const partSchema = `
CREATE TABLE venue (id bigint PRIMARY KEY, seats bigint, materialized_at timestamptz);
CREATE INDEX ON venue (id) WHERE materialized_at IS NULL;
CREATE TABLE event (id bigint NOT NULL, venue_id bigint NOT NULL, seats int NOT NULL, PRIMARY KEY (id))
  PARTITION BY RANGE (id);
CREATE TABLE event_1 PARTITION OF event FOR VALUES FROM (0) TO (1000);
CREATE TABLE event_2 PARTITION OF event FOR VALUES FROM (1000) TO (2000);
INSERT INTO venue (id) SELECT generate_series(1, 50);
INSERT INTO event SELECT g, 1 + g % 50, 10 FROM generate_series(1, 1999) g;
`

const partConfig = `
enrichments:
  - name: venue_seats
    table: public.venue
    columns: [seats]
    sql: SELECT v.id, (SELECT sum(seats) FROM event e WHERE e.venue_id = v.id)::bigint AS seats FROM venue v WHERE v.id = ANY($1)
    depends_on: [{table: public.event, columns: [venue_id]}]
`

// A partitioned source invalidates through writes to its partitioned table, through writes that
// name a partition, and through partitions attached later, in both modes.
func TestPartitionedSource(t *testing.T) {
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			dsn := pgtest.NewDB(t)
			conn := pgtest.Connect(t, dsn)
			pgtest.Exec(t, conn, partSchema)
			cfg := configFor(t, dsn, mode, partConfig)
			startDaemon(t, cfg)
			waitExactTables(t, dsn, []string{"venue"}, 30*time.Second)

			// Each step changes other venues' sums, and is checked alone.
			for _, step := range []string{
				`UPDATE event SET seats = seats + 1 WHERE venue_id = 3`,
				`UPDATE event_1 SET seats = seats + 2 WHERE venue_id = 4`,
				`UPDATE event_2 SET venue_id = 6 WHERE venue_id = 5 AND id % 2 = 0`,
				`DELETE FROM event_1 WHERE venue_id = 7`,
				`INSERT INTO event_2 VALUES (1000 + 50 * 19 + 8, 8, 0) ON CONFLICT (id) DO UPDATE SET seats = 500`,
				`CREATE TABLE event_3 (LIKE event INCLUDING ALL);
				 ALTER TABLE event ATTACH PARTITION event_3 FOR VALUES FROM (2000) TO (3000)`,
				`INSERT INTO event_3 SELECT g, 9, 3 FROM generate_series(2000, 2009) g`,
				`UPDATE event_3 SET seats = 4, venue_id = 10 WHERE id % 2 = 0`,
				`INSERT INTO event SELECT g, 11, 1 FROM generate_series(2100, 2109) g`,
				`TRUNCATE event_3`,
				`TRUNCATE event_2`,
				// Rows that arrive or leave with a partition fire no trigger and decode to nothing.
				`CREATE TABLE event_4 (LIKE event INCLUDING ALL);
				 INSERT INTO event_4 SELECT g, 12, 7 FROM generate_series(3000, 3009) g;
				 ALTER TABLE event ATTACH PARTITION event_4 FOR VALUES FROM (3000) TO (4000)`,
				`ALTER TABLE event DETACH PARTITION event_1`,
			} {
				if mode == "trigger" && step == `TRUNCATE event_3` {
					// TRUNCATE has no row triggers to clone: the daemon adds the new partition's.
					waitFor(t, 20*time.Second, "a TRUNCATE trigger on event_3", func() bool {
						var n int
						err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_trigger
							WHERE tgrelid = 'event_3'::regclass AND tgname LIKE 'matcol%' AND tgtype & 32 <> 0`).Scan(&n)
						return err == nil && n > 0
					})
				}
				pgtest.Exec(t, conn, step)
				waitExactTables(t, dsn, []string{"venue"}, 20*time.Second)
			}
		})
	}
}

func waitFor(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !ok(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %s", what, within)
		}
	}
}

const partTargetSchema = `
CREATE TABLE acct (id bigint PRIMARY KEY, total bigint, materialized_at timestamptz) PARTITION BY RANGE (id);
CREATE INDEX ON acct (id) WHERE materialized_at IS NULL;
CREATE TABLE acct_1 PARTITION OF acct FOR VALUES FROM (0) TO (1000);
CREATE TABLE tx (id bigserial PRIMARY KEY, acct_id bigint NOT NULL, amount bigint NOT NULL);
INSERT INTO acct (id) SELECT generate_series(1, 50);
INSERT INTO tx (acct_id, amount) SELECT 1 + g % 60, g FROM generate_series(1, 600) g;
INSERT INTO tx (acct_id, amount) SELECT 1000 + g % 10, g FROM generate_series(1, 100) g;
`

const partTargetConfig = `
enrichments:
  - name: acct_total
    table: public.acct
    columns: [total]
    sql: SELECT a.id, (SELECT sum(amount) FROM tx WHERE tx.acct_id = a.id)::bigint AS total FROM acct a WHERE a.id = ANY($1)
    depends_on: [{table: public.tx, columns: [acct_id]}]
`

// partTargetDB makes a database with partTargetSchema, and its config in mode.
func partTargetDB(t *testing.T, mode string) (*pgx.Conn, string, *config.Config) {
	t.Helper()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, partTargetSchema)
	return conn, dsn, configFor(t, dsn, mode, partTargetConfig)
}

// As the role docs/security.md describes, with no event trigger (that needs a superuser), the
// rescan finds a partition attached with wrongly stamped rows, and the daemon reads and writes
// them through the parent, whose grants are all it has on them: the partition was created and
// attached by its owner, and got the parent's triggers from PostgreSQL without a grant.
func TestPartitionedTargetAttachAsDocumentedRole(t *testing.T) {
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			conn, dsn, _ := partTargetDB(t, mode)
			cfg := documentedRoleConfig(t, conn, dsn, mode)
			startDaemon(t, cfg)
			waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)

			pgtest.Exec(t, conn, `CREATE TABLE acct_2 (LIKE acct INCLUDING ALL);
				INSERT INTO acct_2 SELECT g, -1, now() FROM generate_series(1000, 1200) g;
				ALTER TABLE acct ATTACH PARTITION acct_2 FOR VALUES FROM (1000) TO (20000)`)
			waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)
			pgtest.Exec(t, conn, `UPDATE tx SET amount = amount + 1 WHERE acct_id IN (5, 1005)`)
			waitExactTables(t, dsn, []string{"acct"}, 20*time.Second)
		})
	}
}

// documentedRoleConfig makes a login role with exactly the grants docs/security.md asks for on
// partTargetSchema's tables (and docs/logical.md's in logical mode), and returns a config that
// runs the daemon as it, with the rescan every second: without a superuser there is no event
// trigger, so only the rescan sees partitions come and go.
func documentedRoleConfig(t *testing.T, conn *pgx.Conn, dsn, mode string) *config.Config {
	t.Helper()
	var db string
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT current_database()`).Scan(&db))
	role := "matcol_" + strings.TrimPrefix(db, "matcol_test_")
	roleDSN := pgtest.LoginRole(t, dsn, role)
	pgtest.Exec(t, conn, fmt.Sprintf(`GRANT CREATE ON DATABASE %[2]s TO %[1]s;
		GRANT USAGE ON SCHEMA public TO %[1]s;
		GRANT SELECT, TRIGGER ON acct, tx TO %[1]s;
		GRANT TRIGGER ON acct_1 TO %[1]s;
		GRANT UPDATE ON acct TO %[1]s`, role, pgx.Identifier{db}.Sanitize()))
	if mode == "logical" {
		// docs/logical.md: REPLICATION, and the published tables (tx, and acct for its key
		// changes) owned by a role it is a member of; tx gets REPLICA IDENTITY FULL from its owner.
		owner := role + "_owner"
		pgtest.LoginRole(t, dsn, owner)
		pgtest.Exec(t, conn, fmt.Sprintf(`ALTER ROLE %[1]s REPLICATION;
			GRANT %[2]s TO %[1]s; ALTER TABLE tx OWNER TO %[2]s; ALTER TABLE acct OWNER TO %[2]s;
			ALTER TABLE tx REPLICA IDENTITY FULL`, role, owner))
	}
	cfg := configFor(t, roleDSN, mode, partTargetConfig)
	cfg.Materializer.RescanInterval = time.Second
	cfg.Invalidation.FixReplicaIdentity = false
	return cfg
}

// Rows that arrive with a partition attached to a partitioned target carry whatever they were
// stamped with elsewhere, and no trigger or WAL record reports them: the daemon queues the keys
// of a partition that arrives with rows. Detached, a partition's rows miss every change; attached
// again, they are recomputed too. A partition created empty queues nothing.
func TestPartitionedTargetAttachWithRows(t *testing.T) {
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			conn, dsn, cfg := partTargetDB(t, mode)
			startDaemon(t, cfg)
			waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)

			// More rows than one statement queues.
			pgtest.Exec(t, conn, `CREATE TABLE acct_2 (LIKE acct INCLUDING ALL);
				INSERT INTO acct_2 SELECT g, -1, now() FROM generate_series(1000, 13000) g;
				ALTER TABLE acct ATTACH PARTITION acct_2 FOR VALUES FROM (1000) TO (20000)`)
			waitExactTables(t, dsn, []string{"acct"}, 20*time.Second)

			pgtest.Exec(t, conn, `ALTER TABLE acct DETACH PARTITION acct_1`)
			pgtest.Exec(t, conn, `UPDATE tx SET amount = amount + 100 WHERE acct_id IN (5, 6)`)
			waitExactTables(t, dsn, []string{"acct"}, 20*time.Second)
			pgtest.Exec(t, conn, `ALTER TABLE acct ATTACH PARTITION acct_1 FOR VALUES FROM (0) TO (1000)`)
			waitExactTables(t, dsn, []string{"acct"}, 20*time.Second)
			var same bool
			require.NoError(t, conn.QueryRow(ctx, `SELECT total = (SELECT sum(amount) FROM tx WHERE acct_id = 5) FROM acct WHERE id = 5`).Scan(&same))
			require.True(t, same, "the change made while acct_1 was detached")

			pgtest.Exec(t, conn, `CREATE TABLE acct_3 PARTITION OF acct FOR VALUES FROM (20000) TO (30000)`)
			time.Sleep(2 * time.Second)
			var queued int
			require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending`).Scan(&queued))
			require.Zero(t, queued, "an empty partition queues nothing")
		})
	}
}

// A partition attached while no daemon runs is compared with what the last daemon saw, which it
// recorded, not with what the next one first sees.
func TestPartitionAttachedWhileDaemonDown(t *testing.T) {
	conn, dsn, cfg := partTargetDB(t, "trigger")
	_, stop := startStoppableDaemon(t, cfg)
	waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)
	stop()

	pgtest.Exec(t, conn, `CREATE TABLE acct_2 (LIKE acct INCLUDING ALL);
		INSERT INTO acct_2 SELECT g, -1, now() FROM generate_series(1000, 1009) g;
		ALTER TABLE acct ATTACH PARTITION acct_2 FOR VALUES FROM (1000) TO (2000)`)
	startDaemon(t, cfg)
	waitExactTables(t, dsn, []string{"acct"}, 20*time.Second)
}

// Writers change a partitioned target's sources while its partitions are detached and attached
// again, and new ones arrive with rows stamped elsewhere; when the writes stop every row is right.
// As a superuser the event trigger reports each attach at once; as the documented role only the
// rescan does, while the writers go on.
func TestPartitionedTargetUnderWritersAndAttaches(t *testing.T) {
	for _, run := range []struct {
		mode   string
		asRole bool
	}{{"trigger", false}, {"logical", false}, {"trigger", true}, {"logical", true}} {
		name := run.mode
		if run.asRole {
			name += "/as documented role"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			conn, dsn, cfg := partTargetDB(t, run.mode)
			if run.asRole {
				cfg = documentedRoleConfig(t, conn, dsn, run.mode)
			}
			cfg.Materializer.BatchSize = 20
			startDaemon(t, cfg)
			waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)

			wctx, stop := context.WithTimeout(ctx, 6*time.Second)
			var wg sync.WaitGroup
			defer func() { stop(); wg.Wait() }() // a failed DDL must not leave writers on closed connections
			for i := 0; i < 3; i++ {
				wg.Add(1)
				go func(seed uint64) {
					defer wg.Done()
					wc := pgtest.Connect(t, dsn)
					r := rand.New(rand.NewPCG(seed, 7))
					for wctx.Err() == nil {
						acct := 1 + r.IntN(60)
						if r.IntN(2) == 0 {
							acct = 1000 + 100*r.IntN(4) + r.IntN(10)
						}
						var err error
						switch r.IntN(3) {
						case 0:
							_, err = wc.Exec(wctx, `INSERT INTO tx (acct_id, amount) VALUES ($1, $2)`, acct, r.IntN(100))
						case 1:
							_, err = wc.Exec(wctx, `UPDATE tx SET amount = amount + 1 WHERE acct_id = $1`, acct)
						default:
							_, err = wc.Exec(wctx, `DELETE FROM tx WHERE id = (SELECT min(id) FROM tx WHERE acct_id = $1)`, acct)
						}
						if err != nil && wctx.Err() == nil {
							t.Errorf("write: %v", err)
							return
						}
					}
				}(uint64(i))
			}
			for n := 0; wctx.Err() == nil; n++ {
				pgtest.Exec(t, conn, `ALTER TABLE acct DETACH PARTITION acct_1`)
				time.Sleep(time.Duration(100*(n%4)) * time.Millisecond)
				pgtest.Exec(t, conn, `ALTER TABLE acct ATTACH PARTITION acct_1 FOR VALUES FROM (0) TO (1000)`)
				if n < 4 {
					lo := 1000 + 100*n
					// Rows the writers name, and rows nothing but the attach brings to matcol.
					pgtest.Exec(t, conn, fmt.Sprintf(`CREATE TABLE acct_%[1]d (LIKE acct INCLUDING ALL);
						INSERT INTO acct_%[1]d SELECT g, -1, now() FROM generate_series(%[1]d, %[1]d + 9) g;
						INSERT INTO acct_%[1]d SELECT g, -1, now() FROM generate_series(%[1]d + 50, %[1]d + 59) g;
						ALTER TABLE acct ATTACH PARTITION acct_%[1]d FOR VALUES FROM (%[1]d) TO (%[2]d)`, lo, lo+100))
				}
				time.Sleep(300 * time.Millisecond)
			}
			wg.Wait()
			waitExactTables(t, dsn, []string{"acct"}, 60*time.Second)
		})
	}
}
