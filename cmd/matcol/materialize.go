package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/plan"
)

func newBackfill(g *globals) *cobra.Command {
	var enrichment, table, where string
	var batch, rate, jobs int
	var restart, async bool
	cmd := &cobra.Command{
		Use:   "backfill",
		Short: "Fill one enrichment's columns (or one table's) for every row",
		Long: `backfill computes only the named enrichment's columns for every row of its table, in key
order and in short batches, and checkpoints after each batch: run it again after an interruption
and it resumes (--restart starts over). materialized_at is left alone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if enrichment == "" && table == "" {
				return errors.New("give --enrichment, --table, or both (a template's enrichment on one of its tables)")
			}
			cfg, err := g.load(cmd)
			if err != nil {
				return err
			}
			log := logger(cfg)
			ctx := cmd.Context()
			conn, err := dial.Connect(ctx, cfg.DatabaseURL, "backfill")
			if err != nil {
				return err
			}
			defer conn.Close(context0(cmd))
			p, _, err := daemon.LoadPlan(ctx, conn)
			if err != nil {
				return err
			}
			spec, err := backfillSpec(p, enrichment, table)
			if err != nil {
				return err
			}
			spec.Where, spec.BatchSize, spec.Rate = where, batch, rate
			if jobs < 1 {
				return fmt.Errorf("--jobs %d: give at least 1", jobs)
			}
			spec.Jobs, spec.MaxReplicaLag, spec.LatencyFactor = jobs, cfg.Throttle.MaxReplicaLag, cfg.Throttle.LatencyFactor
			spec.Connect = func(ctx context.Context) (*pgx.Conn, error) {
				return dial.Connect(ctx, cfg.DatabaseURL, "backfill")
			}
			out := cmd.OutOrStdout()
			if async {
				if cmd.Flags().Changed("jobs") && jobs > 1 {
					return errors.New("--jobs applies to a backfill run here; --async backfills run one batch at a time")
				}
				id, err := materializer.QueueBackfill(ctx, conn, spec, restart)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "queued backfill %d of %s (%s); a running daemon will take it\n", id, spec.Target.Table,
					strings.Join(spec.EnrichmentNames(), ", "))
				return nil
			}
			tty := isatty.IsTerminal(os.Stdout.Fd())
			b, err := materializer.OpenBackfill(ctx, conn, spec, restart, log)
			var running *materializer.RunningError
			if errors.As(err, &running) {
				// Usually the daemon, which took over a run that was killed: follow it, and take it
				// over in turn if its process goes away.
				fmt.Fprintf(out, "%v\nfollowing its progress; interrupting stops following, not the backfill\n", err)
				b, err = followBackfill(ctx, conn, spec, running.ID, newProgress(out, tty, log, "backfill progress (another process)"))
				if b == nil || err != nil {
					return err
				}
			} else if err != nil {
				return err
			}
			verb := "starting"
			if b.Resumed() {
				verb = "resuming"
			}
			fmt.Fprintf(out, "%s backfill %d of %s (%s)\n", verb, b.ID, spec.Target.Table, strings.Join(spec.EnrichmentNames(), ", "))
			var final materializer.BackfillProgress
			show := newProgress(out, tty, log, "backfill progress")
			err = b.Run(ctx, func(p materializer.BackfillProgress) {
				final = p
				show.report(p)
			})
			show.end()
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "backfill %d done: %d rows in %s (%.0f rows/s)", b.ID, final.Done, final.Elapsed.Round(time.Millisecond), final.Rate)
			if final.Throttled > 0 {
				fmt.Fprintf(out, "; paused %d times while the application was busy (throttle)", final.Throttled)
			}
			if final.Failed > 0 {
				fmt.Fprintf(out, "; %d rows failed and were left stale for the daemon (see matcol failures)", final.Failed)
			}
			fmt.Fprintln(out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&enrichment, "enrichment", "", "the enrichment to backfill")
	f.StringVar(&table, "table", "", "backfill every enrichment of this table (with --enrichment: that enrichment on this table)")
	f.StringVar(&where, "where", "", "only rows matching this SQL condition")
	f.IntVar(&batch, "batch", 0, "starting rows per batch (adapts to keep row locks short)")
	f.IntVar(&rate, "rate", 0, "rows per second at most (0: no limit)")
	f.IntVar(&jobs, "jobs", 2, "batches written at once, each on its own connection (1: the gentlest)")
	f.BoolVar(&restart, "restart", false, "start over instead of resuming")
	f.BoolVar(&async, "async", false, "queue it for the running daemon and return")
	return cmd
}

func backfillSpec(p *plan.Plan, enrichment, table string) (materializer.BackfillSpec, error) {
	var name pgident.Table
	if table != "" {
		var err error
		if name, err = pgident.ParseTable(table); err != nil {
			return materializer.BackfillSpec{}, fmt.Errorf("--table: %w", err)
		}
	}
	if enrichment != "" {
		for _, t := range p.Targets {
			for _, e := range t.Enrichments {
				if e.Name != enrichment {
					continue
				}
				// A template has one instance per schema: --table picks one.
				if e.Schema != "" && table == "" {
					return materializer.BackfillSpec{}, fmt.Errorf("enrichment %s is a template (%s); add --table to name one of its tables, such as %s",
						enrichment, e.TemplateTable(), t.Table)
				}
				if table == "" || t.Table == name || (name.Schema == "" && t.Table.Name == name.Name) {
					return materializer.BackfillSpec{Target: t, Enrichments: []*plan.Enrichment{e}, PlanVersion: p.Version}, nil
				}
			}
		}
		return materializer.BackfillSpec{}, fmt.Errorf("no enrichment named %q is registered (run matcol apply first?)", enrichment)
	}
	for _, t := range p.Targets {
		if t.Table == name || (name.Schema == "" && t.Table.Name == name.Name) {
			return materializer.BackfillSpec{Target: t, Enrichments: t.Enrichments, PlanVersion: p.Version}, nil
		}
	}
	return materializer.BackfillSpec{}, fmt.Errorf("table %s has no registered enrichment", table)
}

// progress shows a backfill's progress: a bar redrawn on a terminal, else a log line every 10 s.
type progress struct {
	out   io.Writer
	tty   bool
	log   hclog.Logger
	msg   string
	last  time.Time
	shown bool
}

func newProgress(out io.Writer, tty bool, log hclog.Logger, msg string) *progress {
	return &progress{out: out, tty: tty, log: log, msg: msg}
}

func (s *progress) report(p materializer.BackfillProgress) {
	switch {
	case s.tty:
		fmt.Fprintf(s.out, "\r%s", progressBar(p))
		s.shown = true
	case time.Since(s.last) >= 10*time.Second || p.Finished:
		s.last = time.Now()
		s.log.Info(s.msg, "backfill", p.ID, "rows", p.Done, "total", p.Total, "rows_per_second", int(p.Rate))
	}
}

// end ends the bar's line, so that what follows starts on a line of its own.
func (s *progress) end() {
	if s.shown {
		fmt.Fprintln(s.out)
		s.shown = false
	}
}

// followBackfill shows, once a second, the progress of backfill id that another process runs,
// until it ends (nil, nil when it is done) or nobody holds it any more: then it is taken here.
func followBackfill(ctx context.Context, conn *pgx.Conn, spec materializer.BackfillSpec, id int64, show *progress) (*materializer.Backfill, error) {
	start := time.Now()
	first := int64(-1)
	for {
		b, err := materializer.ClaimBackfill(ctx, conn, spec, id, show.log)
		if err == nil {
			show.end()
			fmt.Fprintf(show.out, "backfill %d: its process went away; continuing here\n", id)
			return b, nil
		}
		if !errors.Is(err, materializer.ErrBackfillRunning) && !errors.Is(err, materializer.ErrBackfillEnded) {
			return nil, err
		}
		var status string
		var done int64
		var total *int64
		var failure *string
		if err := conn.QueryRow(ctx, `SELECT status, rows_done, rows_total, error FROM matcol.backfill WHERE id = $1`, id).
			Scan(&status, &done, &total, &failure); err != nil {
			return nil, err
		}
		switch status {
		case "done":
			show.end()
			fmt.Fprintf(show.out, "backfill %d done by another process: %d rows\n", id, done)
			return nil, nil
		case "failed", "cancelled":
			show.end()
			msg := ""
			if failure != nil {
				msg = ": " + *failure
			}
			return nil, fmt.Errorf("backfill %d %s in another process%s", id, status, msg)
		}
		if first < 0 {
			first = done
		}
		p := materializer.BackfillProgress{ID: id, Done: done, Elapsed: time.Since(start)}
		if secs := p.Elapsed.Seconds(); secs >= 1 {
			p.Rate = float64(done-first) / secs
		}
		if total != nil {
			p.Total = *total
		}
		show.report(p)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func progressBar(p materializer.BackfillProgress) string {
	const width = 30
	if p.Total <= 0 {
		return fmt.Sprintf("%d rows  %.0f rows/s  %s", p.Done, p.Rate, p.Elapsed.Round(time.Second))
	}
	frac := min(1, float64(p.Done)/float64(p.Total))
	filled := int(frac * width)
	eta := "?"
	if p.Rate > 0 && p.Done < p.Total {
		eta = (time.Duration(float64(p.Total-p.Done)/p.Rate) * time.Second).Round(time.Second).String()
	} else if p.Done >= p.Total {
		eta = "0s"
	}
	return fmt.Sprintf("[%s%s] %5.1f%%  %d/%d rows  %.0f rows/s  ETA %s   ",
		strings.Repeat("=", filled), strings.Repeat(" ", width-filled), frac*100, p.Done, p.Total, p.Rate, eta)
}

func newFailures(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "failures",
		Short: "List quarantined rows whose enrichment failed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.connect(cmd, "cli")
			if err != nil {
				return err
			}
			defer conn.Close(context0(cmd))
			type failure struct {
				Table         string    `json:"table"`
				Key           []string  `json:"key"`
				Enrichment    *string   `json:"enrichment"`
				Error         string    `json:"error"`
				Attempts      int       `json:"attempts"`
				FirstSeenAt   time.Time `json:"first_seen_at"`
				LastSeenAt    time.Time `json:"last_seen_at"`
				NextAttemptAt time.Time `json:"next_attempt_at"`
			}
			rows, err := conn.Query(cmd.Context(), `SELECT t.schema_name, t.table_name, f.key, f.enrichment, f.error, f.attempts,
				f.first_seen_at, f.last_seen_at, f.next_attempt_at
				FROM matcol.failure f JOIN matcol.target t ON t.id = f.target_id ORDER BY 1, 2, 3`)
			if err != nil {
				return fmt.Errorf("read failures: %w", err)
			}
			list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (failure, error) {
				var f failure
				var tb pgident.Table
				err := r.Scan(&tb.Schema, &tb.Name, &f.Key, &f.Enrichment, &f.Error, &f.Attempts, &f.FirstSeenAt, &f.LastSeenAt, &f.NextAttemptAt)
				f.Table = tb.String()
				return f, err
			})
			if err != nil {
				return fmt.Errorf("read failures: %w", err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if list == nil {
					list = []failure{}
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			if len(list) == 0 {
				fmt.Fprintln(out, "no failures")
				return nil
			}
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TABLE\tKEY\tENRICHMENT\tATTEMPTS\tNEXT ATTEMPT\tERROR")
			for _, f := range list {
				e := ""
				if f.Enrichment != nil {
					e = *f.Enrichment
				}
				fmt.Fprintf(w, "%s\t(%s)\t%s\t%d\t%s\t%s\n", f.Table, strings.Join(f.Key, ", "), e, f.Attempts,
					f.NextAttemptAt.Local().Format(time.DateTime), f.Error)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newRetry(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "retry",
		Short: "Re-queue quarantined rows for their next attempt now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.connect(cmd, "cli")
			if err != nil {
				return err
			}
			defer conn.Close(context0(cmd))
			var n int64
			err = conn.QueryRow(cmd.Context(), `WITH r AS (UPDATE matcol.failure SET next_attempt_at = now() RETURNING target_id),
				w AS (INSERT INTO matcol.pending (target_id, vals) SELECT DISTINCT target_id, '[]'::jsonb FROM r)
				SELECT count(*) FROM r`).Scan(&n)
			if err != nil {
				return fmt.Errorf("retry failures: %w", err)
			}
			if _, err := conn.Exec(cmd.Context(), `SELECT pg_notify('matcol', 'q')`); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d rows re-queued\n", n)
			return nil
		},
	}
}

func newPause(g *globals, paused bool) *cobra.Command {
	use, short := "pause", "Stop materialization on every daemon (invalidations keep queueing)"
	if !paused {
		use, short = "resume", "Restart materialization after pause"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.connect(cmd, "cli")
			if err != nil {
				return err
			}
			defer conn.Close(context0(cmd))
			if _, err := conn.Exec(cmd.Context(), `INSERT INTO matcol.setting (name, value) VALUES ('pause', jsonb_build_object('paused', $1::bool))
				ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = now()`, paused); err != nil {
				return fmt.Errorf("%s: %w", use, err)
			}
			if paused {
				fmt.Fprintln(cmd.OutOrStdout(), "materialization paused; run matcol resume to continue")
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "materialization resumed")
			}
			return nil
		},
	}
}
