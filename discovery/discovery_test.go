package discovery_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestScan(t *testing.T) {
	conn := pgtest.Connect(t, pgtest.NewDB(t))
	pgtest.Exec(t, conn, `
		CREATE SCHEMA "Tenant A";
		CREATE TABLE "Tenant A".item (k1 text, k2 int, v int, materialized_at timestamptz, PRIMARY KEY (k2, k1));
		CREATE INDEX ON "Tenant A".item (k2) WHERE materialized_at IS NULL;
		CREATE TABLE public.nopk (x int, materialized_at timestamptz);
		CREATE TABLE public.wrongtype (id int PRIMARY KEY, materialized_at date);
		CREATE TABLE public.plain (id int PRIMARY KEY);
		CREATE TABLE public.parted (id int, materialized_at timestamptz, PRIMARY KEY (id)) PARTITION BY RANGE (id);
		CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (100);`)
	tables, err := discovery.Scan(context.Background(), conn)
	require.NoError(t, err)
	byName := map[pgident.Table]discovery.Table{}
	for _, tb := range tables {
		byName[tb.Name] = tb
	}
	require.Len(t, tables, 4, "partitions are covered by their parent")
	item := byName[pgident.Table{Schema: "Tenant A", Name: "item"}]
	require.True(t, item.StampOK)
	require.True(t, item.StaleIndex)
	require.Equal(t, []string{"k2", "k1"}, []string{item.Key[0].Name, item.Key[1].Name}, "key order, not column order")
	require.Empty(t, byName[pgident.Table{Schema: "public", Name: "nopk"}].Key)
	require.False(t, byName[pgident.Table{Schema: "public", Name: "nopk"}].StaleIndex)
	require.False(t, byName[pgident.Table{Schema: "public", Name: "wrongtype"}].StampOK)
	require.True(t, byName[pgident.Table{Schema: "public", Name: "parted"}].Partitioned)
}

func TestLookupRelations(t *testing.T) {
	conn := pgtest.Connect(t, pgtest.NewDB(t))
	pgtest.Exec(t, conn, `
		CREATE SCHEMA "Tenant A"; CREATE SCHEMA b;
		CREATE TABLE "Tenant A".item (k1 text, k2 int, v int, PRIMARY KEY (k2, k1));
		CREATE TABLE b.item (id int PRIMARY KEY, w text)`)
	ctx := context.Background()
	a, bi := pgident.Table{Schema: "Tenant A", Name: "item"}, pgident.Table{Schema: "b", Name: "item"}
	got, err := discovery.LookupRelations(ctx, conn, []pgident.Table{a, bi, {Schema: "c", Name: "item"}})
	require.NoError(t, err)
	require.Len(t, got, 2)
	for _, name := range []pgident.Table{a, bi} {
		one, err := discovery.LookupRelation(ctx, conn, name)
		require.NoError(t, err)
		require.Equal(t, one, got[name], "as LookupRelation reads it")
	}
}

// A DETACH PARTITION that queues behind another transaction while the partitions' bounds are
// read gets its locks in its own order, parent first, and neither it nor the read dies in a
// deadlock.
func TestFilledPartitionsBesideADetach(t *testing.T) {
	for _, c := range []struct{ held, detach, gone string }{
		{held: "p", detach: "ALTER TABLE p DETACH PARTITION p_1", gone: "p_1"},
		{held: "p_m", detach: "ALTER TABLE p_m DETACH PARTITION p_m1", gone: "p_m1"},
	} {
		t.Run(c.gone, func(t *testing.T) {
			ctx := context.Background()
			dsn := pgtest.NewDB(t)
			conn := pgtest.Connect(t, dsn)
			pgtest.Exec(t, conn, `
				CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id);
				CREATE TABLE p_1 PARTITION OF p FOR VALUES FROM (0) TO (100);
				CREATE TABLE p_m PARTITION OF p FOR VALUES FROM (100) TO (200) PARTITION BY RANGE (id);
				CREATE TABLE p_m1 PARTITION OF p_m FOR VALUES FROM (100) TO (150);
				CREATE TABLE p_m2 PARTITION OF p_m FOR VALUES FROM (150) TO (200);
				INSERT INTO p SELECT g FROM generate_series(0, 199) g`)
			var oids []uint32
			require.NoError(t, conn.QueryRow(ctx, `SELECT array_agg(oid ORDER BY oid) FROM pg_class
				WHERE relname IN ('p_1', 'p_m1', 'p_m2')`).Scan(&oids))

			holder := pgtest.Connect(t, dsn)
			pgtest.Exec(t, holder, `BEGIN; LOCK TABLE ONLY `+c.held+` IN ACCESS SHARE MODE`)
			ddl := pgtest.Connect(t, dsn)
			pgtest.Exec(t, ddl, `SET deadlock_timeout = '50ms'`)
			reader := pgtest.Connect(t, dsn)
			pgtest.Exec(t, reader, `SET deadlock_timeout = '50ms'`)
			waiting := func(pid uint32) func() bool {
				return func() bool {
					var n int
					require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted`, pid).Scan(&n))
					return n > 0
				}
			}

			detached := make(chan error, 1)
			go func() { _, err := ddl.Exec(ctx, c.detach); detached <- err }()
			require.Eventually(t, waiting(ddl.PgConn().PID()), 10*time.Second, 5*time.Millisecond)
			type result struct {
				parts []discovery.FilledPartition
				err   error
			}
			read := make(chan result, 1)
			go func() {
				parts, err := discovery.FilledPartitions(ctx, reader, oids)
				read <- result{parts, err}
			}()
			require.Eventually(t, waiting(reader.PgConn().PID()), 10*time.Second, 5*time.Millisecond)
			pgtest.Exec(t, holder, `COMMIT`)

			require.NoError(t, <-detached)
			r := <-read
			require.NoError(t, r.err)
			var names []string
			for _, p := range r.parts {
				names = append(names, p.Name)
			}
			require.NotContains(t, names, c.gone, "a detached table is no partition")
			require.Len(t, names, 2)
		})
	}
}
