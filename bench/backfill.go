package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/listener/trigger"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

// defaultJobs is matcol backfill's default --jobs.
const defaultJobs = 2

// Orders with a few lines each: the enrichment is light, so matcol's own cost per row (reading
// keys, joining them to the result, the write) weighs most against the set-based UPDATE.
const orderSchema = `
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer text NOT NULL,
    line_count int, total numeric, materialized_at timestamptz);
CREATE TABLE order_line (
    order_id bigint NOT NULL, line int NOT NULL, price numeric NOT NULL,
    PRIMARY KEY (order_id, line));
`

const orderEnrichment = `SELECT o.id, count(l.line)::int AS line_count, sum(l.price) AS total
FROM orders o LEFT JOIN order_line l ON l.order_id = o.id
WHERE o.id = ANY($1) GROUP BY o.id`

const orderSetBased = `UPDATE orders o SET line_count = s.n, total = s.t
FROM (SELECT order_id, count(*)::int AS n, sum(price) AS t FROM order_line GROUP BY order_id) s
WHERE o.id = s.order_id`

// backfillCase is one full-backfill comparison.
type backfillCase struct {
	conn     *pgx.Conn
	dsn      string
	def      registry.Enrichment
	setBased string
	reset    string // empties the enrichment's columns
	table    string
}

type backfillTimes struct {
	setBased, jobs1, byDefault time.Duration
}

// run times the set-based UPDATE (best of two, before matcol is installed, so it pays for no
// trigger), then installs matcol as apply does and times matcol backfill with --jobs 1 and with
// the default, each on emptied columns.
func (c backfillCase) run(ctx context.Context) (backfillTimes, error) {
	var bt backfillTimes
	var err error
	if bt.setBased, err = timed(ctx, c.conn, c.setBased); err != nil {
		return bt, err
	}
	if again, err := timed(ctx, c.conn, c.setBased); err != nil {
		return bt, err
	} else if again < bt.setBased {
		bt.setBased = again
	}
	if err := c.empty(ctx); err != nil {
		return bt, err
	}
	p, err := c.install(ctx)
	if err != nil {
		return bt, err
	}
	if bt.jobs1, err = c.backfill(ctx, p, 1); err != nil {
		return bt, err
	}
	if err := c.empty(ctx); err != nil {
		return bt, err
	}
	if bt.byDefault, err = c.backfill(ctx, p, defaultJobs); err != nil {
		return bt, err
	}
	return bt, nil
}

// empty clears the columns as matcol's own write would, so the self trigger leaves rows fresh.
func (c backfillCase) empty(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, c.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config($1, 'on', true)`, plan.OwnWriteSetting); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, c.reset)
		return err
	})
	if err != nil {
		return err
	}
	_, err = c.conn.Exec(ctx, `VACUUM `+c.table)
	return err
}

func (c backfillCase) install(ctx context.Context) (*plan.Plan, error) {
	err := pgx.BeginFunc(ctx, c.conn, func(tx pgx.Tx) error {
		if _, err := registry.Install(ctx, tx); err != nil {
			return err
		}
		p, err := plan.Build(ctx, tx, []registry.Enrichment{c.def})
		if err != nil {
			return err
		}
		_, err = registry.Sync(ctx, tx, p.Definitions())
		return err
	})
	if err != nil {
		return nil, err
	}
	p, _, err := daemon.LoadPlan(ctx, c.conn)
	if err != nil {
		return nil, err
	}
	if _, err := trigger.SyncAll(ctx, c.conn, p, true); err != nil {
		return nil, err
	}
	return p, nil
}

func (c backfillCase) backfill(ctx context.Context, p *plan.Plan, jobs int) (time.Duration, error) {
	if _, err := c.conn.Exec(ctx, `CHECKPOINT`); err != nil {
		return 0, err
	}
	bconn, err := dial.Connect(ctx, c.dsn, "backfill")
	if err != nil {
		return 0, err
	}
	defer bconn.Close(context.Background())
	t := p.Targets[0]
	start := time.Now()
	spec := materializer.BackfillSpec{Target: t, Enrichments: t.Enrichments, Jobs: jobs,
		Connect: func(ctx context.Context) (*pgx.Conn, error) { return dial.Connect(ctx, c.dsn, "backfill") }}
	b, err := materializer.OpenBackfill(ctx, bconn, spec, true, hclog.NewNullLogger())
	if err != nil {
		return 0, err
	}
	var prog func(materializer.BackfillProgress)
	if os.Getenv("BENCH_VERBOSE") != "" {
		prog = func(p materializer.BackfillProgress) { fmt.Printf("  %d rows %.0f rows/s\n", p.Done, p.Rate) }
	}
	if err := b.Run(ctx, prog); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// report adds the comparison's table and targets.
func (bt backfillTimes) report(r *report, name string, rows int) {
	rate := func(d time.Duration) float64 { return float64(rows) / d.Seconds() }
	r.add("| method | time | rows/s | matcol ÷ set-based | target |")
	r.add("|---|---|---|---|---|")
	r.add("| set-based `UPDATE … FROM (aggregate over all rows)` | %s | %.0f | | |", bt.setBased.Round(time.Millisecond), rate(bt.setBased))
	r.add("| `matcol backfill --enrichment %s` (default: 2 jobs) | %s | %.0f | **%.2f×** | ≥ 0.7× |", name,
		bt.byDefault.Round(time.Millisecond), rate(bt.byDefault), rate(bt.byDefault)/rate(bt.setBased))
	r.add("| `matcol backfill --enrichment %s --jobs 1` | %s | %.0f | %.2f× | |", name,
		bt.jobs1.Round(time.Millisecond), rate(bt.jobs1), rate(bt.jobs1)/rate(bt.setBased))
	x := rate(bt.byDefault) / rate(bt.setBased)
	r.target(fmt.Sprintf("backfill of %s (%d rows), default", name, rows), fmt.Sprintf("%.2f× the set-based UPDATE", x), "≥ 0.7×", x >= 0.7, whyBackfill)
}

// loadedCase is a backfill comparison on a database of its own, loaded for it.
type loadedCase struct {
	db, schema string
	load       []string // statements that fill the tables
	def        registry.Enrichment
	setBased   string
	table      string
	reset      string
	wrong      string // counts rows with a wrong value or left stale
	rows       int
	title      string // the report's heading
	about      string // the report's description
}

func (lc loadedCase) run(ctx context.Context, r *report, admin *pgx.Conn, o liveOpts) error {
	fmt.Printf("loading %s…\n", lc.db)
	conn, err := createDB(ctx, admin, o.cl, lc.db, lc.schema)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, stmt := range lc.load {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("load %s: %w", lc.db, err)
		}
	}
	fmt.Printf("backfilling %s…\n", lc.db)
	c := backfillCase{conn: conn, dsn: o.cl.DSN(lc.db), def: lc.def, setBased: lc.setBased, table: lc.table, reset: lc.reset}
	bt, err := c.run(ctx)
	if err != nil {
		return err
	}
	var wrong int
	if err := conn.QueryRow(ctx, lc.wrong).Scan(&wrong); err != nil {
		return err
	}
	if wrong > 0 {
		return fmt.Errorf("%s backfill left %d wrong or stale rows", lc.db, wrong)
	}
	r.heading("%s", lc.title)
	r.add("%s", lc.about)
	r.add("")
	bt.report(r, lc.def.Name, lc.rows)
	r.add("")
	return nil
}

// enrichmentOn is an enrichment of public.target that depends on public.source's column.
func enrichmentOn(name, target, source, column, sql string, columns ...string) registry.Enrichment {
	def := registry.Enrichment{Name: name, Self: new(true), SQL: sql, Columns: columns,
		DependsOn: []registry.Dependency{{Columns: []string{column}}}}
	def.Target.Schema, def.Target.Name = "public", target
	def.DependsOn[0].Source.Schema, def.DependsOn[0].Source.Name = "public", source
	return def
}

// ordersCase: orders × lines, each order's lines together.
func ordersCase(orders, lines int) loadedCase {
	return loadedCase{db: "orders", schema: orderSchema,
		load: []string{
			// Rows are fresh but for the new columns, as after ALTER TABLE … ADD COLUMN.
			fmt.Sprintf(`INSERT INTO orders (id, customer, materialized_at) SELECT g, 'customer ' || g %% 1000, now() FROM generate_series(1, %d) g`, orders),
			fmt.Sprintf(`INSERT INTO order_line SELECT o, l, (o * 7 + l) %% 100 + 0.99 FROM generate_series(1, %d) o, generate_series(1, %d) l ORDER BY o, l`, orders, lines),
			`VACUUM (ANALYZE) orders`, `VACUUM (ANALYZE) order_line`,
		},
		def:      enrichmentOn("order_totals", "orders", "order_line", "order_id", orderEnrichment, "line_count", "total"),
		setBased: orderSetBased, table: "orders", reset: `UPDATE orders SET line_count = NULL, total = NULL`,
		wrong: `SELECT count(*) FROM orders o LEFT JOIN (SELECT order_id, count(*)::int AS n, sum(price) AS t
			FROM order_line GROUP BY order_id) s ON s.order_id = o.id
			WHERE (o.line_count, o.total) IS DISTINCT FROM (coalesce(s.n, 0), s.t) OR o.materialized_at IS NULL`,
		rows:  orders,
		title: fmt.Sprintf("Full backfill of a light enrichment (%d orders × %d lines)", orders, lines),
		about: "A new pair of columns on `orders`, every row otherwise fresh: `line_count` and `total` over the order's lines (`order_totals`). Each batch's cost is mostly matcol's own: reading the keys, joining them to the result, the write.",
	}
}

// Customers and their purchases, each customer's spread over the table as they come: the shape
// of the acceptance check (a 300k-row table gains a column) with an ordinary foreign-key index.
const purchaseSchema = `
CREATE TABLE customer (id bigint PRIMARY KEY, name text NOT NULL, spent numeric, materialized_at timestamptz);
CREATE TABLE purchase (id bigint PRIMARY KEY, customer_id bigint NOT NULL, amount numeric NOT NULL);
`

const purchaseEnrichment = `SELECT c.id, coalesce(sum(p.amount), 0) AS spent
FROM customer c LEFT JOIN purchase p ON p.customer_id = c.id
WHERE c.id = ANY($1) GROUP BY c.id`

const purchaseSetBased = `UPDATE customer c SET spent = coalesce(s.t, 0)
FROM (SELECT customer_id, sum(amount) AS t FROM purchase GROUP BY customer_id) s
WHERE c.id = s.customer_id`

// purchasesCase: customers × purchases, each customer's purchases spread over the table.
func purchasesCase(customers, each int) loadedCase {
	return loadedCase{db: "purchases", schema: purchaseSchema,
		load: []string{
			fmt.Sprintf(`INSERT INTO customer (id, name, materialized_at) SELECT g, 'customer ' || g, now() FROM generate_series(1, %d) g`, customers),
			// Purchase g belongs to a customer picked by a stride, so a customer's purchases are
			// spread over the table.
			fmt.Sprintf(`INSERT INTO purchase SELECT g, 1 + (g * 7919) %% %d, g %% 97 + 0.5 FROM generate_series(1::bigint, %d) g`, customers, customers*each),
			`CREATE INDEX ON purchase (customer_id)`,
			`VACUUM (ANALYZE) customer`, `VACUUM (ANALYZE) purchase`,
		},
		def:      enrichmentOn("customer_spent", "customer", "purchase", "customer_id", purchaseEnrichment, "spent"),
		setBased: purchaseSetBased, table: "customer", reset: `UPDATE customer SET spent = NULL`,
		wrong: `SELECT count(*) FROM customer c LEFT JOIN (SELECT customer_id, sum(amount) AS t
			FROM purchase GROUP BY customer_id) s ON s.customer_id = c.id
			WHERE c.spent IS DISTINCT FROM coalesce(s.t, 0) OR c.materialized_at IS NULL`,
		rows:  customers,
		title: fmt.Sprintf("Full backfill of a new column (%d customers × %d purchases, spread)", customers, each),
		about: "`customer` gains `spent`, the sum of the customer's purchases, every row otherwise fresh. A customer's purchases lie all over `purchase`, found through an index on `customer_id`.",
	}
}
