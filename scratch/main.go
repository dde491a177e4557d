package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgcluster"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/plan"
)

func main() {
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Stop()
	dsn := c.DSN("postgres")
	conn, _ := pgx.Connect(ctx, dsn)
	rows := 50000
	fmt.Sscan(os.Args[1], &rows)
	var n int
	fmt.Sscan(os.Args[2], &n)
	_, err = conn.Exec(ctx, fmt.Sprintf(`
CREATE TABLE event_seat_state_change (id bigint PRIMARY KEY, event_id bigint NOT NULL,
    sold_count int, reserved_count int, empty_count int, blocked_count int, held_count int, materialized_at timestamptz);
CREATE TABLE seat_state (change_id bigint NOT NULL, seat_id int NOT NULL, state text NOT NULL, PRIMARY KEY (change_id, seat_id));
INSERT INTO event_seat_state_change (id, event_id) SELECT g, g FROM generate_series(1, %d) g;
INSERT INTO seat_state SELECT c, s, (ARRAY['SOLD','RESERVED','EMPTY','BLOCKED','HELD'])[1 + (c+s) %% 5] FROM generate_series(1, %d) c, generate_series(1, 50) s;
CREATE INDEX ON event_seat_state_change (id) WHERE materialized_at IS NULL;
ANALYZE;`, rows, rows))
	if err != nil {
		panic(err)
	}
	f, _ := os.CreateTemp("", "cfg*.yaml")
	f.WriteString(`enrichments:
  - name: seat_counts
    table: public.event_seat_state_change
    columns: [sold_count, reserved_count, empty_count, blocked_count, held_count]
    sql: |
      SELECT c.id,
       count(*) FILTER (WHERE s.state = 'SOLD')::int AS sold_count,
       count(*) FILTER (WHERE s.state = 'RESERVED')::int AS reserved_count,
       count(*) FILTER (WHERE s.state = 'EMPTY')::int AS empty_count,
       count(*) FILTER (WHERE s.state = 'BLOCKED')::int AS blocked_count,
       count(*) FILTER (WHERE s.state = 'HELD')::int AS held_count
      FROM event_seat_state_change c LEFT JOIN seat_state s ON s.change_id = c.id
      WHERE c.id = ANY($1) GROUP BY c.id
    depends_on: [{table: public.seat_state, columns: [change_id]}]
`)
	f.Close()
	cfg, err := config.Load(f.Name(), nil)
	if err != nil {
		panic(err)
	}
	cfg.DatabaseURL = dsn
	if _, err := daemon.Apply(ctx, cfg, hclog.NewNullLogger()); err != nil {
		panic(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: os.Stderr})
	pool, _ := dial.Pool(ctx, dsn, "worker", dial.PoolOptions{MaxConns: 8})
	p, _, _ := daemon.LoadPlan(ctx, conn)
	m := materializer.New(pool, p, materializer.Config{Workers: 1}, log)
	conn.Exec(ctx, `UPDATE event_seat_state_change SET materialized_at = now(); DELETE FROM matcol.pending`); conn.Exec(ctx, `VACUUM ANALYZE`)
	step := rows / n
	// warm the cache as a second run would
	conn.Exec(ctx, fmt.Sprintf(`SELECT count(*) FROM seat_state WHERE change_id %% %d = 0`, step))
	start := time.Now()
	conn.Exec(ctx, fmt.Sprintf(`UPDATE seat_state SET state = 'SOLD' WHERE seat_id = 1 AND change_id %% %d = 0`, step))
	fmt.Println("writer", time.Since(start))
	{
		tx, _ := conn.Begin(ctx)
		r, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) "+plan.QueueTakeSQL(p.Targets[0]), p.Targets[0].ID, 500)
		if err != nil {
			panic(err)
		}
		for r.Next() {
			var l string
			r.Scan(&l)
			fmt.Println(l)
		}
		tx.Rollback(ctx)
	}
	start = time.Now()
	m.Drain(ctx)
	fmt.Println("drain", time.Since(start))
	start = time.Now()
	k, err := m.MaterializeAll(ctx)
	fmt.Println("materialize", k, err, time.Since(start))
	conn.Exec(ctx, fmt.Sprintf(`UPDATE seat_state SET state = 'EMPTY' WHERE seat_id = 1 AND change_id %% %d = 0`, step))
	start = time.Now()
	conn.Exec(ctx, fmt.Sprintf(`UPDATE event_seat_state_change c SET sold_count = x.sold_count, reserved_count = x.reserved_count, empty_count = x.empty_count,
	  blocked_count = x.blocked_count, held_count = x.held_count, materialized_at = now()
	  FROM (SELECT c.id, count(*) FILTER (WHERE s.state = 'SOLD')::int AS sold_count,
       count(*) FILTER (WHERE s.state = 'RESERVED')::int AS reserved_count,
       count(*) FILTER (WHERE s.state = 'EMPTY')::int AS empty_count,
       count(*) FILTER (WHERE s.state = 'BLOCKED')::int AS blocked_count,
       count(*) FILTER (WHERE s.state = 'HELD')::int AS held_count
      FROM event_seat_state_change c LEFT JOIN seat_state s ON s.change_id = c.id
      WHERE c.id %% %d = 0 GROUP BY c.id) x WHERE x.id = c.id`, step))
	fmt.Println("setbased", time.Since(start))
}
