package materializer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/plan"
)

// runParallel reads keys in order on the backfill's own connection and hands each chunk to one
// of Jobs writer connections. The checkpoint moves past a chunk only once every chunk before it
// has committed, so a resumed run redoes at most the chunks that were in flight; writing a row
// again with the same values is harmless, and the stamp check still guards concurrent changes.
func (b *Backfill) runParallel(ctx context.Context, report func(bool)) (retry [][]*string, failed int64, err error) {
	t := b.spec.Target
	width := len(t.Key)
	next := plan.BackfillNextSQL(t, b.spec.Where)
	jobs := b.spec.Jobs
	type result struct {
		seq     int
		n       int
		skipped [][]*string
		failed  int64
		took    time.Duration
		err     error
	}
	type chunk struct {
		seq  int
		rows [][]*string
	}
	ctx, cancel := context.WithCancel(ctx)
	chunks := make(chan chunk)
	// In flight never exceeds 2×jobs, so a writer never blocks on sending its result.
	results := make(chan result, 2*jobs)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		close(chunks)
		wg.Wait()
	}()
	for i := 0; i < jobs; i++ {
		conn, err := b.spec.Connect(ctx)
		if err != nil {
			return nil, 0, fmt.Errorf("connect writer %d: %w", i+1, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close(context.WithoutCancel(ctx))
			for c := range chunks {
				r := result{seq: c.seq, n: len(c.rows[0])}
				start := time.Now()
				r.skipped, r.failed, r.err = b.writeChunk(ctx, conn, c.rows)
				r.took = time.Since(start)
				results <- r
			}
		}()
	}

	cursor := b.cursor
	lasts := map[int][]*string{}
	done := map[int]result{}
	seq, committed, inflight := 0, 0, 0
	size := b.spec.BatchSize
	exhausted := false
	start, startDone := time.Now(), b.done
	for {
		if !exhausted && inflight < 2*jobs {
			if err := b.hold(ctx); err != nil {
				return nil, 0, err
			}
			rows, err := plan.CollectKeys(ctx, b.conn, next, width+1, nextKeysArgs(cursor, width, size)...)
			if err != nil {
				return nil, 0, fmt.Errorf("read next keys: %w", err)
			}
			n := len(rows[0])
			if n == 0 {
				exhausted = true
				continue
			}
			cursor = make([]*string, width)
			for i := range cursor {
				cursor[i] = rows[i][n-1]
			}
			lasts[seq] = cursor
			select {
			case chunks <- chunk{seq: seq, rows: rows}:
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
			seq++
			inflight++
			continue
		}
		if inflight == 0 {
			return retry, failed, nil
		}
		var r result
		select {
		case r = <-results:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
		inflight--
		if r.err != nil {
			return nil, 0, r.err
		}
		failed += r.failed
		retry = append(retry, r.skipped...)
		size = b.adapt(size, r.n, r.took)
		done[r.seq] = r
		moved := false
		for {
			c, ok := done[committed]
			if !ok {
				break
			}
			b.done += int64(c.n)
			b.cursor = lasts[committed]
			delete(done, committed)
			delete(lasts, committed)
			committed++
			moved = true
		}
		if !moved {
			continue
		}
		if _, err := b.conn.Exec(ctx, `UPDATE matcol.backfill SET cursor = $2, rows_done = $3, updated_at = now() WHERE id = $1`,
			b.ID, b.cursor, b.done); err != nil {
			return nil, 0, fmt.Errorf("checkpoint: %w", err)
		}
		report(false)
		if err := b.pace(ctx, start, startDone); err != nil {
			return nil, 0, err
		}
	}
}

// writeChunk writes one chunk in its own transaction, retrying while its rows are locked.
func (b *Backfill) writeChunk(ctx context.Context, conn *pgx.Conn, rows [][]*string) (skipped [][]*string, failed int64, err error) {
	for attempt := 1; ; attempt++ {
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, batchSettingsSQL, settingsArgs(b.spec.Target)...); err != nil {
				return err
			}
			var err error
			skipped, failed, err = b.write(ctx, tx, rows)
			return err
		})
		if !isLockTimeout(err) || attempt == 10 {
			return skipped, failed, err
		}
		b.log.Info("rows are busy; retrying the batch", "table", b.spec.Target.Table.String(), "attempt", attempt)
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
}
