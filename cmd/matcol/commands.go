package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
	"github.com/matcol/matcol/verify"
)

func newInstall(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "install",
		Short: "Create or upgrade schema matcol (the registry)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadDB(cmd)
			if err != nil {
				return err
			}
			conn, err := dial.Connect(cmd.Context(), cfg.DatabaseURL, "install")
			if err != nil {
				return err
			}
			defer conn.Close(cmd.Context())
			applied, err := registry.Install(cmd.Context(), conn)
			if err != nil {
				return err
			}
			for _, m := range applied {
				fmt.Fprintf(cmd.OutOrStdout(), "applied migration %d (%s)\n", m.Version, m.Name)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "schema matcol is at version %d\n", registry.LatestVersion())
			return nil
		},
	}
}

func newApply(g *globals) *cobra.Command {
	var explain bool
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Sync the config's enrichments into the registry and validate them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load(cmd)
			if err != nil {
				return err
			}
			log := logger(cfg)
			out := cmd.OutOrStdout()
			if explain {
				rep, err := daemon.Explain(cmd.Context(), cfg, log)
				if err != nil {
					return err
				}
				fmt.Fprint(out, rep.Plan.Explain())
				for _, w := range rep.Plan.Warnings {
					fmt.Fprintf(out, "\nwarning: %s\n", w)
				}
				for _, s := range rep.Plan.Skipped {
					fmt.Fprintf(out, "\nskipped: %s\n", s)
				}
				return nil
			}
			rep, err := daemon.Apply(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			for _, n := range rep.Changes.Added {
				fmt.Fprintf(out, "added enrichment %s\n", n)
			}
			for _, n := range rep.Changes.Updated {
				fmt.Fprintf(out, "updated enrichment %s\n", n)
			}
			for _, n := range rep.Changes.Removed {
				fmt.Fprintf(out, "removed enrichment %s\n", n)
			}
			for _, n := range rep.Changes.Backfill {
				fmt.Fprintf(out, "enrichment %s: rows stamped before this apply keep the values of its previous definition until a backfill: %s\n",
					n, backfillHint(rep.Plan, n))
			}
			for _, c := range rep.Triggers {
				fmt.Fprintf(out, "%s on %s\n", c.Action, c.Table)
			}
			for _, n := range rep.Matviews.Added {
				fmt.Fprintf(out, "scheduled matview %s\n", n)
			}
			for _, n := range rep.Matviews.Updated {
				fmt.Fprintf(out, "updated the schedule of matview %s\n", n)
			}
			for _, n := range rep.Matviews.Removed {
				fmt.Fprintf(out, "unscheduled matview %s\n", n)
			}
			for _, c := range rep.Publication {
				fmt.Fprintln(out, c)
			}
			fmt.Fprintf(out, "%d enrichments on %d tables are registered\n", len(rep.Plan.Definitions()), len(rep.Plan.Targets))
			return nil
		},
	}
	cmd.Flags().BoolVar(&explain, "explain", false,
		"validate and print what each enrichment reads and what makes its rows stale; write nothing")
	return cmd
}

func newRun(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Run the daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load(cmd)
			if err != nil {
				return err
			}
			v, _, _ := buildInfo()
			return daemon.Run(cmd.Context(), cfg, logger(cfg), v)
		},
	}
}

func newVerify(g *globals) *cobra.Command {
	var enrichment string
	var sample, rate int
	var all, asJSON, includeStale bool
	var settle time.Duration
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Compare stored values with fresh ones; exit 1 on drift",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all && sample > 0 {
				return errors.New("--all and --sample exclude each other")
			}
			if settle < 0 {
				return fmt.Errorf("--settle %s: give 0 or a positive duration", settle)
			}
			if !all && sample == 0 {
				sample = 1000
			}
			if all {
				sample = 0
			}
			cfg, err := g.loadDB(cmd)
			if err != nil {
				return err
			}
			conn, err := dial.Connect(cmd.Context(), cfg.DatabaseURL, "verify")
			if err != nil {
				return err
			}
			defer conn.Close(cmd.Context())
			p, _, err := daemon.LoadPlan(cmd.Context(), conn)
			if err != nil {
				return err
			}
			drift, checked, err := verify.Run(cmd.Context(), conn, p, verify.Options{
				Enrichment: enrichment, Sample: sample, RowsPerSecond: rate, IncludeStale: includeStale, Settle: settle,
				Note: func(msg string) { fmt.Fprintln(cmd.ErrOrStderr(), msg) }})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if drift == nil {
					drift = []verify.Drift{}
				}
				if err := enc.Encode(map[string]any{"rows_checked": checked, "drift": drift}); err != nil {
					return err
				}
			} else {
				for _, d := range drift {
					fmt.Fprintf(out, "drift: %s %s key (%s) column %s: stored %s, fresh %s\n", d.Enrichment, d.Table,
						strings.Join(d.Key, ", "), d.Column, show(d.Stored), show(d.Fresh))
				}
				fmt.Fprintf(out, "%d rows checked, %d values differ\n", checked, len(drift))
			}
			if len(drift) > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d values differ from a fresh computation", len(drift))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&enrichment, "enrichment", "", "check only this enrichment")
	f.BoolVar(&all, "all", false, "check every row")
	f.IntVar(&sample, "sample", 0, "check this many random rows per table (default 1000)")
	f.IntVar(&rate, "rate", 5000, "rows per second at most; 0 for no limit")
	f.BoolVar(&includeStale, "include-stale", false, "also check rows waiting for matcol (materialized_at IS NULL, or a key queued)")
	f.DurationVar(&settle, "settle", 10*time.Second, "compare differing values again once the invalidations queued for their tables are applied, waiting this long at most; 0 reports them at once")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func show(s *string) string {
	if s == nil {
		return "NULL"
	}
	return fmt.Sprintf("%q", *s)
}

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version and build details",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			v, c, d := buildInfo()
			if c == "" {
				c = "unknown"
			}
			if d == "" {
				d = "unknown"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "matcol %s\ncommit: %s\nbuilt: %s\ngo: %s %s/%s\nregistry schema: %d\n",
				v, c, d, runtime.Version(), runtime.GOOS, runtime.GOARCH, registry.LatestVersion())
		},
	}
}

// loadDB loads the config for commands that only need the database.
func (g *globals) loadDB(cmd *cobra.Command) (*config.Config, error) {
	cfg, err := g.load(cmd)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// backfillHint is the command that brings the rows stamped before an apply up to enrichment
// name's definition.
func backfillHint(p *plan.Plan, name string) string {
	cmd := "matcol backfill --enrichment " + name
	for _, t := range p.Targets {
		for _, e := range t.Enrichments {
			if e.Name == name && e.Schema != "" {
				return cmd + " --table " + t.Table.String() + ", and so for each table of the template"
			}
		}
	}
	return cmd + " (--async: by the running daemon)"
}
