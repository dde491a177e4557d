package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/status"
)

func newStatus(g *globals) *cobra.Command {
	var asJSON, watch bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show lag figures, read from the database (no daemon needed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			conn, err := dial.Connect(ctx, cfg.DatabaseURL, "status")
			if err != nil {
				return err
			}
			defer conn.Close(context0(cmd))
			out := cmd.OutOrStdout()
			for {
				p, _, err := daemon.LoadPlan(ctx, conn)
				if err != nil {
					return err
				}
				r, err := status.Collect(ctx, conn, p, status.Options{Mode: cfg.Invalidation.Mode, Slot: cfg.Invalidation.Slot})
				if err != nil {
					return err
				}
				if watch && !asJSON {
					fmt.Fprint(out, "\033[H\033[2J")
				}
				if asJSON {
					enc := json.NewEncoder(out)
					enc.SetIndent("", "  ")
					if err := enc.Encode(r); err != nil {
						return err
					}
				} else {
					printStatus(out, r)
				}
				if !watch {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.BoolVar(&watch, "watch", false, "keep refreshing")
	f.DurationVar(&every, "interval", 2*time.Second, "refresh interval with --watch")
	return cmd
}

func printStatus(out io.Writer, r *status.Report) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "ENRICHMENT\tTABLE\tSTALE ROWS\tQUEUED\tOLDEST PENDING\tFAILURES\n")
	for _, e := range r.Enrichments {
		stale := fmt.Sprint(e.StaleRows)
		if !e.StaleRowsExact {
			stale = "~" + stale
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%d\n", e.Name, e.Table, stale, e.PendingInvalidations,
			(time.Duration(e.OldestPendingSeconds * float64(time.Second))).Round(time.Second), e.Failures)
	}
	_ = w.Flush()
	l := r.Listener
	fmt.Fprintf(out, "\nlistener: %s", l.Mode)
	if l.Mode == "logical" {
		fmt.Fprintf(out, ", slot %s (%s), confirmed flush %s, retained WAL %d bytes", l.Slot, l.WALStatus, l.ConfirmedFlushLSN, l.RetainedWALBytes)
	}
	fmt.Fprintln(out)
	for _, b := range r.Backfills {
		total := "?"
		if b.RowsTotal != nil {
			total = fmt.Sprint(*b.RowsTotal)
		}
		fmt.Fprintf(out, "backfill %d of %s %v: %s, %d/%s rows\n", b.ID, b.Table, b.Enrichments, b.Status, b.RowsDone, total)
	}
	for _, m := range r.Matviews {
		last := "never"
		if m.LastSuccessAt != nil {
			last = m.LastSuccessAt.Local().Format(time.DateTime)
		}
		errText := ""
		if m.LastError != nil {
			errText = ", last error: " + *m.LastError
		}
		fmt.Fprintf(out, "matview %s: last success %s%s\n", m.Name, last, errText)
	}
}
