package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgcluster"
)

func newDemo(g *globals) *cobra.Command {
	var scale, writers, rate int
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run matcol on a throwaway local PostgreSQL with the cinema example",
		Long: `demo starts a throwaway PostgreSQL cluster, loads the cinema schema, registers its
enrichments and runs the daemon under a small write load, printing stale rows and rows
materialized per second until Ctrl-C (or --duration). Everything is removed afterwards.

It needs the PostgreSQL server binaries, and takes no -c/--config or --database-url: it never
touches your database. --log-level (default warn here) and --log-format apply.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd, scale, writers, rate, duration)
		},
	}
	f := cmd.Flags()
	f.IntVar(&scale, "scale", 1, "data size: 100 venues, 2,000 events and 1,000 seat snapshots per unit")
	f.IntVar(&writers, "writers", 2, "concurrent writer connections")
	f.IntVar(&rate, "rate", 100, "writes per second across all writers")
	f.DurationVar(&duration, "duration", 0, "stop after running this long, setup aside (0: until Ctrl-C)")
	return cmd
}

func runDemo(cmd *cobra.Command, scale, writers, rate int, duration time.Duration) error {
	cfg, err := demoConfig(cmd)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, "starting a throwaway PostgreSQL cluster…")
	cl, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "removing the throwaway cluster")
		_ = cl.Stop()
	}()
	dsn := cl.DSN("postgres")
	conn, err := dial.Connect(ctx, dsn, "demo")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	fmt.Fprintf(out, "PostgreSQL %d on 127.0.0.1:%d; loading the cinema schema at scale %d…\n", cl.Version, cl.Port, scale)
	if _, err := conn.Exec(ctx, demo.Schema); err != nil {
		return fmt.Errorf("load demo schema: %w", err)
	}
	if err := demo.Seed(ctx, conn, scale); err != nil {
		return err
	}
	cfg.DatabaseURL = dsn
	log := logger(cfg)
	fmt.Fprintln(out, "registering enrichments venue_counts, venue_cinema and seat_counts, and starting the daemon")
	d, err := daemon.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	if duration > 0 { // from here: the cluster's start does not count
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := d.Wait(ctx); err != nil && ctx.Err() == nil { // --duration ends it with a deadline
			fmt.Fprintln(cmd.ErrOrStderr(), "daemon:", err)
		}
	}()
	var writes atomic.Int64
	per := time.Duration(float64(time.Second) * float64(writers) / float64(max(rate, 1)))
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			wc, err := pgx.Connect(ctx, dsn)
			if err != nil {
				return
			}
			defer wc.Close(context.Background())
			r := rand.New(rand.NewPCG(seed, 7))
			tick := time.NewTicker(per)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if demo.Write(ctx, wc, scale, r) == nil {
					writes.Add(1)
				}
			}
		}(uint64(i + 1))
	}
	fmt.Fprintf(out, "writing about %d changes/s; press Ctrl-C to stop\n\n", rate)
	fmt.Fprintf(out, "%8s  %11s  %15s  %8s  %9s  %15s\n", "elapsed", "stale venue", "stale snapshots", "queued", "writes/s", "materialized/s")
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastRows, lastWrites := d.Mat.Stats.RowsMaterialized.Load(), writes.Load()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			fmt.Fprintf(out, "\nstopped: %d rows materialized, %d writes\n", d.Mat.Stats.RowsMaterialized.Load(), writes.Load())
			return nil
		case <-tick.C:
		}
		var sv, ss, q int64
		err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM venue WHERE materialized_at IS NULL),
			(SELECT count(*) FROM event_seat_state_change WHERE materialized_at IS NULL),
			(SELECT count(*) FROM matcol.pending)`).Scan(&sv, &ss, &q)
		if err != nil {
			continue
		}
		rows, w := d.Mat.Stats.RowsMaterialized.Load(), writes.Load()
		fmt.Fprintf(out, "%7.0fs  %11d  %15d  %8d  %9d  %15d\n", time.Since(start).Seconds(), sv, ss, q, w-lastWrites, rows-lastRows)
		lastRows, lastWrites = rows, w
	}
}

// demoConfig is the cinema example's config with the log flags applied, checked before anything
// starts. The database flags are refused rather than ignored: demo never uses the caller's
// database.
func demoConfig(cmd *cobra.Command) (*config.Config, error) {
	for _, name := range []string{"config", "database-url"} {
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
			return nil, fmt.Errorf("demo runs on a throwaway PostgreSQL of its own and takes no --%s; "+
				"to try matcol on your database, use install, apply and run (docs/getting-started.md)", name)
		}
	}
	f, err := os.CreateTemp("", "matcol-demo-*.yaml")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(demo.Config); err != nil {
		return nil, err
	}
	_ = f.Close()
	cfg, err := config.Load(f.Name(), cmd.Flags())
	if err != nil {
		return nil, err
	}
	if !cmd.Flags().Changed("log-level") && os.Getenv("MATCOL_LOG_LEVEL") == "" {
		cfg.LogLevel = "warn" // the table is the demo's output
	}
	cfg.DatabaseURL = "postgres://127.0.0.1/demo" // replaced by the throwaway cluster's
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}
