package plan

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SampleInstances is how many schemas of each template Sample runs in.
const SampleInstances = 20

// Sample runs each enrichment on a few existing rows, inside tx and under a savepoint that is
// rolled back, to catch at apply time what preparing cannot: SQL that fails on real data, or
// that returns a key more than once. Nothing it does is kept, and rolling back releases its
// locks, however many tables it samples. A template instance that fails is only a warning: its
// rows will be quarantined like any failing row, and the other schemas go on.
func Sample(ctx context.Context, tx pgx.Tx, p *Plan, rows int) error {
	var problems []string
	perTemplate := map[string]int{}
	for _, t := range p.Targets {
		if t.SearchPath != "" {
			// A template is sampled in its first SampleInstances schemas only: thousands of
			// tenants would make apply slow, and an instance failing later is quarantined.
			name := t.Enrichments[0].Name
			if perTemplate[name]++; perTemplate[name] > SampleInstances {
				continue
			}
		}
		if _, err := tx.Exec(ctx, "SAVEPOINT matcol_sample_keys"); err != nil {
			return err
		}
		args := make([]any, len(t.Key)+2) // no cursor: from the start
		args[len(t.Key)], args[len(t.Key)+1] = false, rows
		keys, err := CollectKeys(ctx, tx, NextKeysSQL(t, ""), len(t.Key), args...)
		if err != nil {
			return fmt.Errorf("sample keys of %s: %w", t.Table, err)
		}
		if len(keys[0]) > 0 {
			args = make([]any, len(keys))
			for i, c := range keys {
				args[i] = ArrayLiteral(c)
			}
			for _, e := range t.Enrichments {
				set := "SAVEPOINT matcol_sample"
				if t.SearchPath != "" {
					set += "; SET LOCAL search_path TO " + t.SearchPath
				}
				if _, err := tx.Exec(ctx, set); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, WriteSQL(t, []*Enrichment{e}, false), args...)
				if _, rbErr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT matcol_sample"); rbErr != nil {
					return rbErr
				}
				if err == nil {
					continue
				}
				if contention(err) {
					// The sample writes (and rolls back) rows the application may be writing:
					// a deadlock or a lock wait says nothing about the definition.
					p.Warnings = append(p.Warnings, fmt.Sprintf("enrichment %s: not sampled on rows of %s, which the application held: %s",
						e.Name, t.Table, pgMessage(err)))
					continue
				}
				msg := fmt.Sprintf("enrichment %s: fails on existing rows of %s: %s", e.Name, t.Table, pgMessage(err))
				if e.Schema != "" {
					p.Warnings = append(p.Warnings, msg)
				} else {
					problems = append(problems, msg)
				}
			}
		}
		if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT matcol_sample_keys; RELEASE SAVEPOINT matcol_sample_keys"); err != nil {
			return err
		}
	}
	if len(problems) > 0 {
		return &ValidationError{Problems: problems}
	}
	return nil
}

// contention reports a deadlock, a serialization failure or a lock not granted in time.
func contention(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "40P01", "40001", "55P03":
		return true
	}
	return false
}
