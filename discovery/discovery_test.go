package discovery_test

import (
	"context"
	"os"
	"testing"

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
