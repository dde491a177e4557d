package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

const shopSchema = `
CREATE SCHEMA "Shop";
CREATE TABLE "Shop"."Order" (
    "Region"          text NOT NULL,
    "Order No"        int NOT NULL,
    "Customer"        text,
    "Total Cents"     bigint,
    "Line Count"      int,
    "Kunde Größe"     text,
    materialized_at   timestamptz,
    PRIMARY KEY ("Region", "Order No")
);
CREATE INDEX ON "Shop"."Order" ("Region", "Order No") WHERE materialized_at IS NULL;
CREATE TABLE "Shop"."Line Item" (
    id          serial PRIMARY KEY,
    "Region"    text NOT NULL,
    "Order No"  int NOT NULL,
    "Cents"     bigint NOT NULL
);
CREATE TABLE "Shop"."Kunde ""Ä""" (name text PRIMARY KEY, "Größe" text);
INSERT INTO "Shop"."Order" ("Region", "Order No", "Customer")
  SELECT r, n, 'c' || (n % 5) FROM unnest(ARRAY['eu', 'US']) r, generate_series(1, 50) n;
INSERT INTO "Shop"."Line Item" ("Region", "Order No", "Cents")
  SELECT r, 1 + n % 50, n * 10 FROM unnest(ARRAY['eu', 'US']) r, generate_series(1, 400) n;
INSERT INTO "Shop"."Kunde ""Ä""" SELECT 'c' || n, 'size ' || n FROM generate_series(0, 4) n;
`

const shopConfig = `
enrichments:
  - name: order_totals
    table: '"Shop"."Order"'
    columns: ["Total Cents", "Line Count"]
    sql: |
      SELECT o."Region", o."Order No", sum(l."Cents")::bigint AS "Total Cents", count(l.id)::int AS "Line Count"
      FROM "Shop"."Order" o
      LEFT JOIN "Shop"."Line Item" l ON l."Region" = o."Region" AND l."Order No" = o."Order No"
      WHERE (o."Region", o."Order No") IN (SELECT * FROM unnest($1::text[], $2::int[]))
      GROUP BY 1, 2
    depends_on:
      - table: '"Shop"."Line Item"'
        columns: ["Region", "Order No"]
  - name: order_customer
    table: '"Shop"."Order"'
    columns: ["Kunde Größe"]
    sql: |
      SELECT o."Region", o."Order No", k."Größe" AS "Kunde Größe"
      FROM "Shop"."Order" o JOIN "Shop"."Kunde ""Ä""" k ON k.name = o."Customer"
      WHERE (o."Region", o."Order No") IN (SELECT * FROM unnest($1::text[], $2::int[]))
    depends_on:
      - table: '"Shop"."Kunde ""Ä"""'
        columns: [name]
        sql: SELECT "Region", "Order No" FROM "Shop"."Order" WHERE "Customer" = ANY($1)
`

// Quoted, mixed-case and unicode names, a composite key, a mapping dependency and key-changing
// writes.
func TestQuotedCompositeKeys(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, shopSchema)
	d := startDaemon(t, loadConfig(t, dsn, shopConfig))
	waitFresh(t, conn, d, 30*time.Second)

	// Move line items between orders and regions; both old and new orders must be recomputed.
	pgtest.Exec(t, conn, `UPDATE "Shop"."Line Item" SET "Region" = 'US', "Order No" = 7 WHERE "Region" = 'eu' AND "Order No" = 3`)
	pgtest.Exec(t, conn, `UPDATE "Shop"."Kunde ""Ä""" SET "Größe" = 'XL' WHERE name = 'c2'`)
	pgtest.Exec(t, conn, `UPDATE "Shop"."Order" SET "Customer" = 'c2' WHERE "Region" = 'eu' AND "Order No" = 1`)
	pgtest.Exec(t, conn, `DELETE FROM "Shop"."Line Item" WHERE "Region" = 'US' AND "Order No" = 9`)
	waitFresh(t, conn, d, 10*time.Second)

	var cents *int64
	var lines int
	require.NoError(t, conn.QueryRow(ctx, `SELECT "Total Cents", "Line Count" FROM "Shop"."Order" WHERE "Region" = 'eu' AND "Order No" = 3`).Scan(&cents, &lines))
	require.Nil(t, cents)
	require.Zero(t, lines)
	var size string
	require.NoError(t, conn.QueryRow(ctx, `SELECT "Kunde Größe" FROM "Shop"."Order" WHERE "Region" = 'eu' AND "Order No" = 1`).Scan(&size))
	require.Equal(t, "XL", size)
}
