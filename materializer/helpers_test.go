package materializer_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/listener/trigger"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

func tableName(schema, name string) pgident.Table { return pgident.Table{Schema: schema, Name: name} }

func applyDefs(t *testing.T, conn *pgx.Conn, defs []registry.Enrichment) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		p, err := plan.Build(ctx, tx, defs)
		if err != nil {
			return err
		}
		if _, err := registry.Sync(ctx, tx, p.Definitions()); err != nil {
			return err
		}
		loaded, err := registry.Load(ctx, tx)
		if err != nil {
			return err
		}
		p, err = plan.Build(ctx, tx, loaded)
		if err != nil {
			return err
		}
		_, _, err = trigger.Sync(ctx, tx, p)
		return err
	}))
}

type planT = plan.Plan

func loadPlanFrom(ctx context.Context, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}) (*plan.Plan, error) {
	var p *plan.Plan
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		defs, err := registry.Load(ctx, tx)
		if err != nil {
			return err
		}
		p, err = plan.Build(ctx, tx, defs)
		return err
	})
	return p, err
}
