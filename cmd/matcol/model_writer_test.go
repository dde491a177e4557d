package main_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// modelWriter is one application connection writing at random: single statements and
// transactions of several, some rolled back.
type modelWriter struct {
	s     *modelSchema
	dsn   string
	r     *rand.Rand
	ops   []modelOp
	total int
	stats *modelStats
	// truncated paces truncations across writers: at most one every two seconds.
	truncated *atomic.Int64
}

type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

type modelOp struct {
	name   string
	weight int
	// broad operations change rows of many parents at once; the quiet tail leaves them out.
	broad bool
	run   func(ctx context.Context, x execer) error
}

func newModelWriter(s *modelSchema, dsn string, seed uint64, i int, stats *modelStats, truncated *atomic.Int64) *modelWriter {
	w := &modelWriter{s: s, dsn: dsn, r: rand.New(rand.NewPCG(seed, uint64(i))), stats: stats, truncated: truncated}
	w.ops = w.buildOps()
	for _, op := range w.ops {
		w.total += op.weight
	}
	return w
}

// run writes until ctx ends. From tail on it writes slowly, one narrow statement at a time:
// then the last change to each row is as likely to be of one kind as of another, where a
// flood of writes would hide a lost invalidation behind a later one for the same row.
func (w *modelWriter) run(ctx context.Context, tail time.Time) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	// Statements run to their end when the round does: a cancelled one returns at once, but its
	// backend may still commit it after the round's check for freshness.
	stmt := context.WithoutCancel(ctx)
	for ctx.Err() == nil {
		if conn == nil || conn.IsClosed() {
			c, err := w.connect(ctx)
			if err != nil {
				w.stats.add("connect", err)
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
			conn = c
		}
		quiet := time.Now().After(tail)
		switch {
		case quiet:
			op := w.pick()
			for op.broad {
				op = w.pick()
			}
			w.stats.add(op.name, op.run(stmt, conn))
			sleepCtx(ctx, time.Duration(20+w.r.IntN(80))*time.Millisecond)
		case w.r.IntN(4) == 0:
			w.stats.add("transaction", w.transaction(stmt, conn, 2+w.r.IntN(3)))
		default:
			op := w.pick()
			w.stats.add(op.name, op.run(stmt, conn))
		}
		sleepCtx(ctx, time.Duration(w.r.IntN(8))*time.Millisecond)
	}
}

func (w *modelWriter) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(w.dsn)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = "model_writer"
	cfg.RuntimeParams["lock_timeout"] = "2s"
	cfg.RuntimeParams["statement_timeout"] = "10s"
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return pgx.ConnectConfig(cctx, cfg)
}

// transaction runs n operations in one transaction; one in twenty rolls back.
func (w *modelWriter) transaction(ctx context.Context, conn *pgx.Conn, n int) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit it does nothing
	for i := 0; i < n; i++ {
		op := w.pick()
		if err := op.run(ctx, tx); err != nil {
			return fmt.Errorf("%s: %w", op.name, err)
		}
	}
	if w.r.IntN(20) == 0 {
		return tx.Rollback(ctx)
	}
	return tx.Commit(ctx)
}

func (w *modelWriter) pick() modelOp {
	n := w.r.IntN(w.total)
	for _, op := range w.ops {
		if n < op.weight {
			return op
		}
		n -= op.weight
	}
	return w.ops[len(w.ops)-1]
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// parentRef draws a parent key, now and then one that does not exist (yet).
func (w *modelWriter) parentRef() []any {
	if w.s.composite {
		return []any{int32(1 + w.r.IntN(modelRegions+1)), int32(1 + w.r.IntN(modelParents+2))}
	}
	return []any{int32(1 + w.r.IntN(modelRegions*modelParents+4))}
}

func (w *modelWriter) ids(max int) []int32 {
	n := 1 + w.r.IntN(4)
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(1 + w.r.IntN(max))
	}
	return out
}

// setRefs renders "a = $i, b = $i+1" for t's reference columns, from parameter i.
func (w *modelWriter) setRefs(t modelTable, prefix string, i int) string {
	return w.refsEqual(t, prefix, i, ", ")
}

// whereRefs is setRefs joined with AND.
func (w *modelWriter) whereRefs(t modelTable, prefix string, i int) string {
	return w.refsEqual(t, prefix, i, " AND ")
}

func (w *modelWriter) refsEqual(t modelTable, prefix string, i int, sep string) string {
	var parts []string
	for j, c := range w.s.refs(prefix) {
		parts = append(parts, fmt.Sprintf("%s = $%d", t.c(c), i+j))
	}
	return strings.Join(parts, sep)
}

// insertRows inserts 1–4 rows into t with unnest, one array parameter per column; row gives
// each row's values in the order of cols (logical names).
func (w *modelWriter) insertRows(ctx context.Context, x execer, table string, t modelTable, cols []string, types []string, row func() []any) error {
	n := 1 + w.r.IntN(4)
	arrays := make([][]any, len(cols))
	for i := 0; i < n; i++ {
		for j, v := range row() {
			arrays[j] = append(arrays[j], v)
		}
	}
	params := make([]string, len(cols))
	args := make([]any, len(cols))
	for j := range cols {
		params[j] = fmt.Sprintf("$%d::%s[]", j+1, types[j])
		args[j] = arrays[j]
	}
	_, err := x.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) SELECT * FROM unnest(%s) ON CONFLICT DO NOTHING",
		table, t.list(cols...), strings.Join(params, ", ")), args...)
	return err
}

func refTypes(s *modelSchema, typ string) []string {
	if s.composite {
		return []string{typ, typ}
	}
	return []string{typ}
}

func (w *modelWriter) buildOps() []modelOp {
	s, f := w.s, w.s.f
	var ops []modelOp
	add := func(name string, weight int, run func(ctx context.Context, x execer) error) {
		ops = append(ops, modelOp{name: name, weight: weight, run: run})
	}
	broad := func() { ops[len(ops)-1].broad = true }
	exec := func(ctx context.Context, x execer, sql string, args ...any) error {
		_, err := x.Exec(ctx, sql, args...)
		return err
	}
	nref := len(s.refs(""))
	c, p, t := s.child, s.parent, s.top

	// child: a source of parent, and a target.
	childCols := append(append([]string{"id"}, s.refs("p_")...), "qty", "note")
	childTypes := append(append([]string{"int"}, refTypes(s, "int")...), "int", "text")
	add("child insert", 6, func(ctx context.Context, x execer) error {
		return w.insertRows(ctx, x, s.q(c), c, childCols, childTypes, func() []any {
			return append(append([]any{int32(1 + w.r.IntN(300))}, w.parentRef()...), int32(w.r.IntN(26)-5), fmt.Sprintf("n%d", w.r.IntN(50)))
		})
	})
	add("child move", 6, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s WHERE %s = ANY($%d)", s.q(c), w.setRefs(c, "p_", 1), c.c("id"), nref+1),
			append(w.parentRef(), w.ids(300))...)
	})
	add("child move many", 2, func(ctx context.Context, x execer) error {
		set := fmt.Sprintf("%s = %s %% %d + 1", c.c("p_id"), c.c("p_id"), modelParents*modelRegions)
		if s.composite {
			set = fmt.Sprintf("%s = %s %% %d + 1, %s = 3 - %s", c.c("p_id"), c.c("p_id"), modelParents, c.c("p_region"), c.c("p_region"))
		}
		lo := int32(1 + w.r.IntN(300))
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s WHERE %s BETWEEN $1 AND $1 + 15", s.q(c), set, c.c("id")), lo)
	})
	broad()
	add("child qty by parent", 4, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = %s + $1 WHERE %s", s.q(c), c.c("qty"), c.c("qty"), w.whereRefs(c, "p_", 2)),
			append([]any{int32(w.r.IntN(7) - 3)}, w.parentRef()...)...)
	})
	add("child qty", 3, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = ANY($2)", s.q(c), c.c("qty"), c.c("id")), int32(w.r.IntN(26)-5), w.ids(300))
	})
	add("child note", 3, func(ctx context.Context, x execer) error {
		var note *string
		if w.r.IntN(4) > 0 {
			v := fmt.Sprintf("n%d", w.r.IntN(50))
			note = &v
		}
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = ANY($2)", s.q(c), c.c("note"), c.c("id")), note, w.ids(300))
	})
	add("child delete", 3, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1)", s.q(c), c.c("id")), w.ids(300))
	})
	add("child delete by parent", 1, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s", s.q(c), w.whereRefs(c, "p_", 1)), w.parentRef()...)
	})

	// parent: a target, a source of top (and of child, with lookup).
	pk := s.pkey()
	pkWhere := fmt.Sprintf("%s = $1", p.c("id"))
	if s.composite {
		pkWhere = fmt.Sprintf("%s = $1 AND %s = $2", p.c("region"), p.c("id"))
	}
	add("parent insert", 2, func(ctx context.Context, x execer) error {
		cols := append(append([]string{}, pk...), "name", "w", "top_id")
		vals := make([]string, len(cols))
		for i := range vals {
			vals[i] = fmt.Sprintf("$%d", i+1)
		}
		args := append(w.parentRef(), fmt.Sprintf("new %d", w.r.IntN(100)), int32(w.r.IntN(9)), int32(1+w.r.IntN(modelTops+1)))
		return exec(ctx, x, fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT DO NOTHING", s.q(p), p.list(cols...), strings.Join(vals, ", ")), args...)
	})
	add("parent rename", 3, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $%d WHERE %s", s.q(p), p.c("name"), nref+1, pkWhere),
			append(w.parentRef(), fmt.Sprintf("name %d", w.r.IntN(100)))...)
	})
	add("parent weigh many", 3, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = %s + $1 WHERE %s <= $2", s.q(p), p.c("w"), p.c("w"), p.c("id")),
			int32(w.r.IntN(5)-2), int32(1+w.r.IntN(modelParents)))
	})
	broad()
	add("parent move", 3, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $%d WHERE %s", s.q(p), p.c("top_id"), nref+1, pkWhere),
			append(w.parentRef(), int32(1+w.r.IntN(modelTops+1)))...)
	})
	add("parent unchanged", 1, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = %s WHERE %s", s.q(p), p.c("name"), p.c("name"), pkWhere), w.parentRef()...)
	})
	add("parent delete", 1, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s", s.q(p), pkWhere), w.parentRef()...)
	})

	// top: a target.
	add("top insert", 1, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("INSERT INTO %s (%s, %s) VALUES ($1, 'top') ON CONFLICT DO NOTHING", s.q(t), t.c("id"), t.c("name")),
			int32(1+w.r.IntN(modelTops+1)))
	})
	add("top rename", 1, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = $2", s.q(t), t.c("name"), t.c("id")),
			fmt.Sprintf("top %d", w.r.IntN(9)), int32(1+w.r.IntN(modelTops+1)))
	})
	add("top delete", 1, func(ctx context.Context, x execer) error {
		if w.r.IntN(2) == 0 {
			return nil
		}
		return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s = $1", s.q(t), t.c("id")), int32(1+w.r.IntN(modelTops+1)))
	})

	if f["mapped"] {
		g := s.grand
		add("grand insert", 4, func(ctx context.Context, x execer) error {
			return w.insertRows(ctx, x, s.q(g), g, []string{"id", "c_id", "amount"}, []string{"int", "int", "int"}, func() []any {
				return []any{int32(1 + w.r.IntN(600)), int32(1 + w.r.IntN(310)), int32(w.r.IntN(30))}
			})
		})
		add("grand move", 3, func(ctx context.Context, x execer) error {
			return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = ANY($2)", s.q(g), g.c("c_id"), g.c("id")), int32(1+w.r.IntN(310)), w.ids(600))
		})
		add("grand amount", 3, func(ctx context.Context, x execer) error {
			return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = %s + 1 WHERE %s = $1", s.q(g), g.c("amount"), g.c("amount"), g.c("c_id")), int32(1+w.r.IntN(310)))
		})
		add("grand delete", 2, func(ctx context.Context, x execer) error {
			return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1)", s.q(g), g.c("id")), w.ids(600))
		})
	}

	// part: a source of parent; partitioned with the partition feature.
	sp := s.part
	partCols := append(append([]string{"id", "part"}, s.refs("p_")...), "v")
	partTypes := append(append([]string{"int", "int"}, refTypes(s, "int")...), "int")
	partValue := func() int32 {
		parts := s.writableParts()
		return int32(parts[w.r.IntN(len(parts))].value)
	}
	add("part insert", 4, func(ctx context.Context, x execer) error {
		return w.insertRows(ctx, x, s.q(sp), sp, partCols, partTypes, func() []any {
			return append(append([]any{int32(1 + w.r.IntN(300)), partValue()}, w.parentRef()...), int32(w.r.IntN(20)))
		})
	})
	add("part v", 2, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = %s + 1 WHERE %s", s.q(sp), sp.c("v"), sp.c("v"), w.whereRefs(sp, "p_", 1)), w.parentRef()...)
	})
	add("part move parent", 2, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s WHERE %s = ANY($%d)", s.q(sp), w.setRefs(sp, "p_", 1), sp.c("id"), nref+1),
			append(w.parentRef(), w.ids(300))...)
	})
	add("part move partition", 2, func(ctx context.Context, x execer) error {
		// Across partitions when partitioned; a key taken there is a unique violation.
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = ANY($2)", s.q(sp), sp.c("part"), sp.c("id")), partValue(), w.ids(300))
	})
	add("part delete", 1, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1)", s.q(sp), sp.c("id")), w.ids(300))
	})
	if f["partition"] {
		// The same writes naming one partition: the parent's statement triggers do not fire.
		partition := func() modelPartition {
			parts := s.writableParts()
			return parts[w.r.IntN(len(parts))]
		}
		add("partition insert", 3, func(ctx context.Context, x execer) error {
			pt := partition()
			return w.insertRows(ctx, x, s.qn(pt.name), sp, partCols, partTypes, func() []any {
				return append(append([]any{int32(1 + w.r.IntN(300)), int32(pt.value)}, w.parentRef()...), int32(w.r.IntN(20)))
			})
		})
		add("partition v", 2, func(ctx context.Context, x execer) error {
			return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = ANY($2)", s.qn(partition().name), sp.c("v"), sp.c("id")), int32(w.r.IntN(20)), w.ids(300))
		})
		add("partition move parent", 2, func(ctx context.Context, x execer) error {
			return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s WHERE %s = ANY($%d)", s.qn(partition().name), w.setRefs(sp, "p_", 1), sp.c("id"), nref+1),
				append(w.parentRef(), w.ids(300))...)
		})
		add("partition delete", 1, func(ctx context.Context, x execer) error {
			return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1)", s.qn(partition().name), sp.c("id")), w.ids(300))
		})
	}

	if f["textkeys"] {
		n := s.note
		ref := func() []any {
			out := w.parentRef()
			for i, v := range out {
				switch w.r.IntN(10) {
				case 0:
					out[i] = []string{"abc", "", "x1", "1.5", "99999999999"}[w.r.IntN(5)]
				case 1:
					out[i] = fmt.Sprintf(" %d", v) // casts to the same integer
				default:
					out[i] = fmt.Sprint(v)
				}
			}
			return out
		}
		noteCols := append(append([]string{"id"}, s.refs("ref_")...), "body")
		noteTypes := append(append([]string{"int"}, refTypes(s, "text")...), "text")
		add("note insert", 3, func(ctx context.Context, x execer) error {
			return w.insertRows(ctx, x, s.q(n), n, noteCols, noteTypes, func() []any {
				return append(append([]any{int32(1 + w.r.IntN(150))}, ref()...), "b")
			})
		})
		add("note move", 2, func(ctx context.Context, x execer) error {
			return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s WHERE %s = ANY($%d)", s.q(n), w.setRefs(n, "ref_", 1), n.c("id"), nref+1),
				append(ref(), w.ids(150))...)
		})
		add("note delete", 1, func(ctx context.Context, x execer) error {
			return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1)", s.q(n), n.c("id")), w.ids(150))
		})
	}

	// extra: read only after an apply event adds it as a dependency.
	xt := s.extra
	add("extra insert", 2, func(ctx context.Context, x execer) error {
		return w.insertRows(ctx, x, s.q(xt), xt, []string{"id", "c_id", "val"}, []string{"int", "int", "int"}, func() []any {
			return []any{int32(1 + w.r.IntN(150)), int32(1 + w.r.IntN(310)), int32(w.r.IntN(20))}
		})
	})
	add("extra val", 2, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = ANY($2)", s.q(xt), xt.c("val"), xt.c("id")), int32(w.r.IntN(20)), w.ids(150))
	})
	add("extra move", 2, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = ANY($2)", s.q(xt), xt.c("c_id"), xt.c("id")), int32(1+w.r.IntN(310)), w.ids(150))
	})
	add("extra delete", 1, func(ctx context.Context, x execer) error {
		return exec(ctx, x, fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1)", s.q(xt), xt.c("id")), w.ids(150))
	})

	if f["truncate"] {
		tables := []string{s.q(c), s.q(sp), s.q(xt), s.q(p), s.q(t)}
		if f["mapped"] {
			tables = append(tables, s.q(s.grand))
		}
		if f["textkeys"] {
			tables = append(tables, s.q(s.note))
		}
		add("truncate", 2, func(ctx context.Context, x execer) error {
			now := time.Now().UnixNano()
			last := w.truncated.Load()
			if now-last < int64(2*time.Second) || !w.truncated.CompareAndSwap(last, now) {
				return nil
			}
			table := tables[w.r.IntN(len(tables))]
			if f["partition"] && w.r.IntN(3) == 0 {
				parts := s.writableParts()
				table = s.qn(parts[w.r.IntN(len(parts))].name)
			}
			return exec(ctx, x, "TRUNCATE "+table)
		})
		broad()
	}
	return ops
}

// modelStats counts each operation's outcomes. Errors an application meets anyway under
// concurrency and restarts are expected; any other one is reported.
type modelStats struct {
	mu         sync.Mutex
	ok         map[string]int
	expected   map[string]int
	unexpected map[string]int
	samples    map[string]string
}

func newModelStats() *modelStats {
	return &modelStats{ok: map[string]int{}, expected: map[string]int{}, unexpected: map[string]int{}, samples: map[string]string{}}
}

func (st *modelStats) add(op string, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if err == nil {
		st.ok[op]++
		return
	}
	class, expected := classifyWriteError(err)
	if expected {
		st.expected[class]++
		return
	}
	key := op + ": " + class
	st.unexpected[key]++
	if st.samples[key] == "" {
		st.samples[key] = err.Error()
	}
}

func classifyWriteError(err error) (string, bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40P01", "40001", "55P03", "57014", "23505", "57P01", "57P02", "57P03", "53300", "25P02":
			// deadlock, serialization, lock timeout, statement timeout, a key taken by another
			// writer, shutdown and restart, too many connections, a failed transaction's tail.
			return "SQLSTATE " + pe.Code, true
		}
		return "SQLSTATE " + pe.Code, false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return "connection", true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "unexpected EOF") ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe") || strings.Contains(err.Error(), "connection refused") {
		return "connection", true
	}
	return "other", false
}

func (st *modelStats) summary() (string, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var b strings.Builder
	total := 0
	var names []string
	for k, n := range st.ok {
		names = append(names, k)
		total += n
	}
	sort.Strings(names)
	fmt.Fprintf(&b, "%d writes committed or rolled back as chosen:", total)
	for _, k := range names {
		fmt.Fprintf(&b, " %s %d;", k, st.ok[k])
	}
	if len(st.expected) > 0 {
		b.WriteString("\nexpected errors:")
		for k, n := range st.expected {
			fmt.Fprintf(&b, " %s ×%d;", k, n)
		}
	}
	for k, n := range st.unexpected {
		fmt.Fprintf(&b, "\nUNEXPECTED %s ×%d, e.g. %s", k, n, st.samples[k])
	}
	return b.String(), len(st.unexpected) == 0
}

func (st *modelStats) committed() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	n := 0
	for _, v := range st.ok {
		n += v
	}
	return n
}
