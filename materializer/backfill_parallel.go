package materializer

import (
	"context"
	"errors"
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
	end := plan.RangeEndSQL(t, b.spec.Where)
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
		seq int
		s   span
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
				r := result{seq: c.seq}
				start := time.Now()
				var f filled
				f, r.err = b.writeChunk(ctx, conn, c.s)
				r.n, r.skipped, r.failed, r.took = f.n, f.skipped, f.failed, time.Since(start)
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
			// Only the chunk's last key: the writer reads the keys themselves.
			var n int
			hi := make([]*string, width)
			dest := []any{&n}
			for i := range hi {
				dest = append(dest, &hi[i])
			}
			err := b.conn.QueryRow(ctx, end, span{lo: cursor, limit: size}.args(width)...).Scan(dest...)
			if errors.Is(err, pgx.ErrNoRows) {
				exhausted = true
				continue
			}
			if err != nil {
				return nil, 0, fmt.Errorf("read next keys: %w", err)
			}
			lo := cursor
			cursor = hi
			lasts[seq] = cursor
			select {
			case chunks <- chunk{seq: seq, s: span{lo: lo, hi: hi}}:
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
		if err := b.backOff(ctx, r.n, r.took); err != nil {
			return nil, 0, err
		}
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
func (b *Backfill) writeChunk(ctx context.Context, conn *pgx.Conn, s span) (f filled, err error) {
	for attempt := 1; ; attempt++ {
		f, err = b.fill(ctx, conn, s, nil)
		if !isBusy(err) || attempt == 10 {
			return f, err
		}
		b.log.Info("rows are busy; retrying the batch", "table", b.spec.Target.Table.String(), "attempt", attempt)
		select {
		case <-ctx.Done():
			return filled{}, ctx.Err()
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
}
