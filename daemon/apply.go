// Package daemon wires matcol's parts: it applies the config to the registry, then runs the
// listener and the materializer until its context ends.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/listener/logical"
	"github.com/matcol/matcol/listener/trigger"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/refresh"
	"github.com/matcol/matcol/registry"
)

// Report says what Apply did.
type Report struct {
	Installed []registry.Migration
	Changes   registry.Changes
	Triggers  []trigger.Change
	// Publication lists what logical mode changed: the publication, replica identities.
	Publication []string
	Plan        *plan.Plan
	// Unregistered are tables that carry materialized_at but have no enrichment.
	Unregistered []pgident.Table
	// Matviews is what the sync of matviews: into the refresh schedule changed.
	Matviews refresh.Changes
	// DDLTrigger is true when the event trigger that reports new schemas exists (superuser only).
	DDLTrigger bool
}

// Definitions turns the config's enrichments into registry entries. Table names are parsed here;
// an unqualified one is resolved through search_path later.
func Definitions(cfg *config.Config) ([]registry.Enrichment, error) {
	var out []registry.Enrichment
	for _, e := range cfg.Enrichments {
		t, template, err := pgident.ParseTemplate(e.Table)
		if err != nil {
			return nil, fmt.Errorf("enrichment %s: table: %w", e.Name, err)
		}
		d := registry.Enrichment{Name: e.Name, Target: t, Template: template, Columns: e.Columns, SQL: e.SQL,
			ExpiresAfter: e.ExpiresAfter, Self: e.Self,
			Settings: registry.Settings{BatchSize: e.BatchSize, StatementTimeout: e.StatementTimeout,
				LockTimeout: e.LockTimeout, WorkMem: e.WorkMem, GUCs: e.Settings, Priority: e.Priority,
				MinInterval: e.MinInterval}}
		for _, dep := range e.DependsOn {
			st, err := pgident.ParseTable(dep.Table)
			if err != nil {
				return nil, fmt.Errorf("enrichment %s: depends_on table: %w", e.Name, err)
			}
			d.DependsOn = append(d.DependsOn, registry.Dependency{Source: st, Columns: dep.Columns, SQL: dep.SQL, Static: dep.Static})
		}
		out = append(out, d)
	}
	return out, nil
}

// Apply installs or upgrades schema matcol, validates the config's enrichments against the live
// catalog, syncs them into the registry and generates the triggers, all in one transaction: on
// any problem nothing is written.
func Apply(ctx context.Context, cfg *config.Config, log hclog.Logger) (*Report, error) {
	return apply(ctx, cfg, log, false)
}

// Explain validates the config as Apply does, up to the triggers, inside a transaction that it
// rolls back: it writes nothing and takes no lock that writers wait for. The report's Plan says
// what each enrichment reads and what makes its rows stale (plan.Plan.Explain).
func Explain(ctx context.Context, cfg *config.Config, log hclog.Logger) (*Report, error) {
	return apply(ctx, cfg, log, true)
}

// errExplained rolls back Explain's transaction.
var errExplained = errors.New("explained")

func apply(ctx context.Context, cfg *config.Config, log hclog.Logger, explain bool) (*Report, error) {
	defs, err := Definitions(cfg)
	if err != nil {
		return nil, err
	}
	conn, err := dial.Connect(ctx, cfg.DatabaseURL, "apply")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rep := &Report{}
	// Template instances are validated on connections of their own, which must see schema
	// matcol: install it first, in a transaction of its own.
	for _, d := range defs {
		if d.Template && !explain {
			if rep.Installed, err = registry.Install(ctx, conn); err != nil {
				return nil, err
			}
			break
		}
	}
	// Triggers on more tables than one transaction should lock are created in further
	// transactions after the first commits; each starts again from the catalog.
	var moreTriggers bool
	start := time.Now()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// DDL on application tables must not queue behind a long transaction for long.
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '10s'`); err != nil {
			return err
		}
		installed, err := registry.Install(ctx, tx)
		if err != nil {
			return err
		}
		rep.Installed = append(rep.Installed, installed...)
		// With registration: sql the registry is the source of truth; the YAML declares nothing.
		opts := plan.Options{Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return dial.Connect(ctx, cfg.DatabaseURL, "apply")
		}}
		if explain {
			opts.Connect = nil // fresh connections would not see the uncommitted install
		}
		if cfg.Registration != "sql" {
			p, err := plan.BuildWith(ctx, tx, defs, opts)
			if err != nil {
				return err
			}
			log.Debug("validated the config", "elapsed", time.Since(start).Round(time.Millisecond))
			if explain {
				// The registry stays untouched: syncing it would hold the plan lock, and stop
				// running daemons' batches, until the rollback.
				rep.Plan = p
			} else {
				if rep.Changes, err = registry.Sync(ctx, tx, p.Definitions()); err != nil {
					return err
				}
				log.Debug("synced the registry", "elapsed", time.Since(start).Round(time.Millisecond))
			}
		}
		if rep.Plan == nil {
			loaded, err := registry.Load(ctx, tx)
			if err != nil {
				return err
			}
			if rep.Plan, err = plan.BuildWith(ctx, tx, loaded, opts); err != nil {
				return err
			}
			log.Debug("validated", "targets", len(rep.Plan.Targets), "elapsed", time.Since(start).Round(time.Millisecond))
		}
		if err := plan.Sample(ctx, tx, rep.Plan, 100); err != nil {
			return err
		}
		log.Debug("sampled", "elapsed", time.Since(start).Round(time.Millisecond))
		if explain {
			return errExplained
		}
		tables, err := discovery.Scan(ctx, tx)
		if err != nil {
			return err
		}
		have := map[pgident.Table]bool{}
		for _, t := range rep.Plan.Targets {
			have[t.Table] = true
		}
		for _, t := range tables {
			if !have[t.Name] {
				rep.Unregistered = append(rep.Unregistered, t.Name)
			}
		}
		// New tenants of a template, and new partitions of a partitioned source or target, are
		// heard at once.
		if rep.DDLTrigger, err = trigger.SyncDDLTrigger(ctx, tx, len(rep.Plan.Templates) > 0 ||
			slices.ContainsFunc(rep.Plan.Sources, (*plan.Source).Partitioned) ||
			slices.ContainsFunc(rep.Plan.Targets, (*plan.Target).Partitioned)); err != nil {
			return err
		}
		if cfg.Invalidation.Mode == "logical" {
			// Only the self row triggers, plus the publication.
			if rep.Triggers, moreTriggers, err = trigger.SyncSelf(ctx, tx, rep.Plan); err != nil {
				return err
			}
			if rep.Publication, err = logical.SyncPublication(ctx, tx, rep.Plan, cfg.Invalidation.Publication,
				cfg.Invalidation.FixReplicaIdentity); err != nil {
				return err
			}
		} else {
			// Trigger mode: a slot left from logical mode would retain WAL forever.
			if rep.Publication, err = logical.Retire(ctx, tx, rep.Plan, cfg.Invalidation.Slot, cfg.Invalidation.Publication); err != nil {
				return err
			}
			if rep.Triggers, moreTriggers, err = trigger.Sync(ctx, tx, rep.Plan); err != nil {
				return err
			}
		}
		// The matview refresh schedule: matviews: entries, in the same transaction.
		rep.Matviews, err = refresh.Sync(ctx, tx, cfg.Matviews)
		return err
	})
	if explain && errors.Is(err, errExplained) {
		return rep, nil
	}
	if err != nil {
		var pe interface{ SQLState() string }
		if errors.As(err, &pe) && pe.SQLState() == "55P03" {
			return nil, fmt.Errorf("apply: could not lock a table for its triggers within 10s (a long transaction holds it); retry: %w", err)
		}
		return nil, err
	}
	for moreTriggers {
		// A fresh connection for each chunk, so that no backend caches every table.
		c, err := dial.Connect(ctx, cfg.DatabaseURL, "apply")
		if err != nil {
			return rep, err
		}
		ch, more, err := syncChunk(ctx, c, rep.Plan, cfg.Invalidation.Mode != "logical")
		c.Close(context.WithoutCancel(ctx))
		rep.Triggers = append(rep.Triggers, ch...)
		if err != nil {
			return rep, fmt.Errorf("apply: triggers: %w", err)
		}
		moreTriggers = more
	}
	log.Debug("applied", "triggers", len(rep.Triggers), "elapsed", time.Since(start).Round(time.Millisecond))
	for _, w := range rep.Plan.Warnings {
		log.Warn(w)
	}
	for _, s := range rep.Plan.Skipped {
		log.Warn("template instance skipped", "problem", s)
	}
	for _, t := range rep.Unregistered {
		log.Info("table has materialized_at but no enrichment; matcol leaves it alone", "table", t.String())
	}
	return rep, nil
}

// syncChunk runs one chunk of the trigger sync in a transaction of its own.
func syncChunk(ctx context.Context, c *pgx.Conn, p *plan.Plan, stale bool) (ch []trigger.Change, more bool, err error) {
	err = pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '10s'`); err != nil {
			return err
		}
		if stale {
			ch, more, err = trigger.Sync(ctx, tx, p)
		} else {
			ch, more, err = trigger.SyncSelf(ctx, tx, p)
		}
		return err
	})
	return ch, more, err
}

// LoadPlan builds the plan of what is registered now.
func LoadPlan(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}) (*plan.Plan, []registry.Enrichment, error) {
	var p *plan.Plan
	var defs []registry.Enrichment
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		var err error
		if defs, err = registry.Load(ctx, tx); err != nil {
			return err
		}
		if p, err = plan.Build(ctx, tx, defs); err != nil {
			return err
		}
		p.Version, err = registry.RegistryVersion(ctx, tx)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return p, defs, nil
}

func retryDelay(attempt int) time.Duration { return dial.Backoff(attempt, 30*time.Second) }
