package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/refresh"
	"github.com/matcol/matcol/registry"
)

func newSchedule(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "The materialized-view refresh schedule: add, list, remove, run-now",
	}
	cmd.AddCommand(newScheduleAdd(g), newScheduleList(g), newScheduleRemove(g), newScheduleRunNow(g))
	return cmd
}

// scheduleConn connects for a schedule command and checks that the schedule tables exist.
func (g *globals) scheduleConn(cmd *cobra.Command) (*pgx.Conn, string, error) {
	cfg, err := g.loadDB(cmd)
	if err != nil {
		return nil, "", err
	}
	conn, err := dial.Connect(cmd.Context(), cfg.DatabaseURL, "cli")
	if err != nil {
		return nil, "", err
	}
	v, err := registry.Version(cmd.Context(), conn)
	if err == nil && v < 2 {
		err = fmt.Errorf("schema matcol is at version %d, without the matview schedule: run matcol install", v)
	}
	if err != nil {
		_ = conn.Close(context.WithoutCancel(cmd.Context()))
		return nil, "", err
	}
	return conn, cfg.DatabaseURL, nil
}

func newScheduleAdd(g *globals) *cobra.Command {
	var o refresh.Options
	cmd := &cobra.Command{
		Use:   "add VIEW",
		Short: "Schedule a materialized view, or change a schedule added here",
		Long: "Schedules a materialized view. Views declared under matviews: in the config are managed by\n" +
			"apply; views added here are left alone by apply.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, _, err := g.scheduleConn(cmd)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(cmd.Context()))
			t, err := refresh.Add(cmd.Context(), conn, args[0], o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "scheduled %s every %s\n", t, o.RefreshInterval)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.RefreshInterval, "every", 0, "refresh interval, from start to start (required)")
	f.DurationVar(&o.MaximumExecutionDuration, "max-duration", 0, "statement_timeout of the refresh; 0 for none")
	f.BoolVar(&o.SkipIfUnchanged, "skip-if-unchanged", false, "skip when the source tables have not been modified")
	f.IntVar(&o.KeepExecutions, "keep", refresh.DefaultKeepExecutions, "executions kept in the history")
	_ = cmd.MarkFlagRequired("every")
	return cmd
}

func newScheduleRemove(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove VIEW",
		Short: "Unschedule a materialized view added with schedule add, and drop its history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, _, err := g.scheduleConn(cmd)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(cmd.Context()))
			t, err := refresh.Remove(cmd.Context(), conn, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unscheduled %s\n", t)
			return nil
		},
	}
}

// scheduleJSON is one entry of `schedule list --json`; durations are in seconds, times in RFC 3339.
type scheduleJSON struct {
	Name                     string     `json:"name"`
	Source                   string     `json:"source"`
	RefreshInterval          float64    `json:"refresh_interval_seconds"`
	MaximumExecutionDuration float64    `json:"maximum_execution_duration_seconds"`
	SkipIfUnchanged          bool       `json:"skip_if_unchanged"`
	KeepExecutions           int        `json:"keep_executions"`
	NextDueAt                time.Time  `json:"next_due_at"`
	LastAttemptedAt          *time.Time `json:"last_attempted_at"`
	LastSuccessAt            *time.Time `json:"last_success_at"`
	LastError                string     `json:"last_error"`
	LastErrorAt              *time.Time `json:"last_error_at"`
	ConsecutiveFailures      int        `json:"consecutive_failures"`
	LastMode                 string     `json:"last_mode"`
	Running                  bool       `json:"running"`
	Exists                   bool       `json:"exists"`
}

func newScheduleList(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show each scheduled view's last success, next due time and last error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, _, err := g.scheduleConn(cmd)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(cmd.Context()))
			views, err := refresh.List(cmd.Context(), conn)
			if err != nil {
				return err
			}
			unscheduled, err := refresh.Unscheduled(cmd.Context(), conn)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				doc := struct {
					Matviews    []scheduleJSON `json:"matviews"`
					Unscheduled []string       `json:"unscheduled"`
				}{Matviews: []scheduleJSON{}, Unscheduled: []string{}}
				for _, v := range views {
					doc.Matviews = append(doc.Matviews, scheduleJSON{Name: v.Name.String(), Source: v.Source,
						RefreshInterval: v.RefreshInterval.Seconds(), MaximumExecutionDuration: v.MaximumExecutionDuration.Seconds(),
						SkipIfUnchanged: v.SkipIfUnchanged, KeepExecutions: v.KeepExecutions, NextDueAt: v.NextDueAt,
						LastAttemptedAt: v.LastAttemptedAt, LastSuccessAt: v.LastSuccessAt, LastError: v.LastError,
						LastErrorAt: v.LastErrorAt, ConsecutiveFailures: v.ConsecutiveFailures, LastMode: v.LastMode,
						Running: v.Running, Exists: v.Exists})
				}
				for _, t := range unscheduled {
					doc.Unscheduled = append(doc.Unscheduled, t.String())
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(doc)
			}
			printSchedule(out, views)
			for _, t := range unscheduled {
				fmt.Fprintf(out, "not scheduled: %s\n", t)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printSchedule(out io.Writer, views []refresh.View) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VIEW\tEVERY\tLAST SUCCESS\tNEXT DUE\tFAILURES\tLAST ERROR")
	for _, v := range views {
		next := stamp(&v.NextDueAt)
		switch {
		case !v.Exists:
			next = "view missing"
		case v.Running:
			next = "running"
		}
		lastErr := "-"
		if v.LastError != "" {
			lastErr = v.LastError + " (at " + stamp(v.LastErrorAt) + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", v.Name, v.RefreshInterval, stamp(v.LastSuccessAt), next,
			v.ConsecutiveFailures, lastErr)
	}
	_ = w.Flush()
}

func stamp(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func newScheduleRunNow(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "run-now VIEW",
		Short: "Refresh a scheduled view now, in this process, and record it; exit 1 if it fails",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, dsn, err := g.scheduleConn(cmd)
			if err != nil {
				return err
			}
			_ = conn.Close(context.WithoutCancel(cmd.Context()))
			pool, err := dial.Pool(cmd.Context(), dsn, "cli", dial.PoolOptions{MaxConns: 2})
			if err != nil {
				return err
			}
			defer pool.Close()
			s := refresh.New(pool, refresh.Config{}, hclog.NewNullLogger())
			r, err := s.RunNow(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				doc := map[string]any{"view": r.View.String(), "mode": r.Mode,
					"duration_seconds": r.Duration.Seconds(), "error": nil}
				if r.Err != nil {
					doc["error"] = r.Err.Error()
				}
				if err := json.NewEncoder(out).Encode(doc); err != nil {
					return err
				}
			} else if r.Err == nil {
				fmt.Fprintf(out, "refreshed %s (%s) in %s\n", r.View, r.Mode, r.Duration.Round(time.Millisecond))
			}
			if r.Err != nil {
				return fmt.Errorf("refresh %s: %w", r.View, r.Err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
