// Package plan resolves registered enrichments against the live catalog into what the listener
// and the materializer execute: key columns, owned columns, sources, and generated SQL. Build is
// also the validation behind `matcol apply`: every problem names its enrichment.
package plan

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/registry"
)

// Plan is every target and every source, resolved.
type Plan struct {
	Targets []*Target
	Sources []*Source
	// Warnings are problems that do not stop matcol, such as a missing stale-row index.
	Warnings []string
	// Templates are the registered template enrichments, as registered; Targets hold their
	// instances, one per matching schema.
	Templates []registry.Enrichment
	// Skipped names the template instances left out because they are invalid in their schema,
	// each with its problem.
	Skipped []string
	// Version is the registry version the plan was built from (registry.RegistryVersion); 0 when
	// unknown.
	Version int64
}

// Target is a table with at least one enrichment.
type Target struct {
	ID          int
	Table       pgident.Table
	OID         uint32
	Key         []discovery.Column
	Columns     []discovery.Column
	Enrichments []*Enrichment
	// Owned are all enrichment columns of the table; changes to them never invalidate.
	Owned []string
	// Self is true when some update of the row makes it stale: an enrichment leaves self unset
	// or sets it true. SelfWatch says which columns.
	Self       bool
	StaleIndex bool
	// Hash names the target in trigger names and NOTIFY payloads.
	Hash string
	// SearchPath is the quoted schema that a template instance's SQL runs in (search_path set
	// locally for each statement that runs it); empty for other targets.
	SearchPath string
	// Comparable is true when every enrichment column's type has an equality operator in
	// pg_catalog, so that a pass can leave rows whose values did not change (PassWriteSQL).
	Comparable bool
	// Relation is the table as the catalog describes it.
	Relation *discovery.Relation
}

// Enrichment is a registered enrichment bound to its target.
type Enrichment struct {
	registry.Enrichment
	Target *Target
	// Reads are the tables and columns the enrichment's SQL reads, its target included, sorted
	// by table name. Shared between plans: never modify them.
	Reads []Read
	// Calls are functions and operators outside pg_catalog that the SQL calls (see analysis).
	Calls []string
	deps  []*Dep // resolved and checked, static ones included
	// viaViews is true when Reads were found through a view.
	viaViews bool
}

// Deps returns the enrichment's resolved dependencies, static ones included.
func (e *Enrichment) Deps() []*Dep { return e.deps }

// Source is a table whose changes invalidate targets.
type Source struct {
	Table    pgident.Table
	OID      uint32
	Relation *discovery.Relation
	// Ignored are columns whose changes never invalidate: materialized_at and, when the source is
	// also a target, the columns matcol writes. Watch is the finer, read-based view.
	Ignored []string
	Deps    []*Dep
	Hash    string
}

// Partitioned reports a partitioned table, whose rows live in its partitions.
func (s *Source) Partitioned() bool { return s.Relation.Kind == 'p' }

// Partitioned reports a partitioned target, whose rows live in its partitions.
func (t *Target) Partitioned() bool { return t.Relation != nil && t.Relation.Kind == 'p' }

// Dep is one dependency of an enrichment on a source.
type Dep struct {
	registry.Dependency
	Enrichment *Enrichment
	Target     *Target
	// Reads are what the mapping SQL reads; nil for a direct or static dependency.
	Reads []Read
	// Calls are functions the mapping SQL calls outside pg_catalog.
	Calls    []string
	rel      *discovery.Relation
	viaViews bool
}

// Direct reports whether the dependency's values are target keys as they are.
func (d *Dep) Direct() bool { return strings.TrimSpace(d.SQL) == "" }

// Hash returns a short stable name for a table, usable inside identifiers of 63 bytes.
func Hash(t pgident.Table) string {
	h := sha256.Sum256([]byte(t.Schema + "\x00" + t.Name))
	return hex.EncodeToString(h[:8])
}

// ValidationError lists every problem Build found.
type ValidationError struct{ Problems []string }

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0]
	}
	return "invalid enrichments:\n  - " + strings.Join(e.Problems, "\n  - ")
}

// Build resolves defs against the catalog and validates them, inside tx. Statements are only
// prepared, never executed, each under a savepoint so that a failing one leaves tx usable.
func Build(ctx context.Context, tx pgx.Tx, defs []registry.Enrichment) (*Plan, error) {
	return BuildWith(ctx, tx, defs, Options{})
}

// Options tune Build.
type Options struct {
	// Connect, when set, opens a fresh connection for each InstancesPerConn template instances
	// to be validated on, closed afterwards: a backend caches every table it touches, and one
	// backend validating thousands of schemas would hold hundreds of MB.
	Connect func(context.Context) (*pgx.Conn, error)
	// InstancesPerConn defaults to 250.
	InstancesPerConn int
}

// BuildWith is Build with options.
func BuildWith(ctx context.Context, tx pgx.Tx, defs []registry.Enrichment, opts Options) (*Plan, error) {
	if opts.InstancesPerConn <= 0 {
		opts.InstancesPerConn = 250
	}
	b := &builder{ctx: ctx, conn: tx, rels: map[pgident.Table]*discovery.Relation{}, p: &Plan{}, arrays: map[uint32]uint32{},
		types: map[uint32]string{}, folded: map[string]*folded{}, opts: opts}
	if err := b.build(defs); err != nil {
		return nil, err
	}
	if b.err != nil {
		return nil, b.err
	}
	if len(b.problems) > 0 {
		return nil, &ValidationError{Problems: b.problems}
	}
	return b.p, nil
}

// TemplateTable names the template an instance comes from, as written (tenant_*.item); empty
// for other enrichments.
func (e *Enrichment) TemplateTable() string {
	if e.Schema == "" {
		return ""
	}
	return e.Pattern + "." + pgident.Quote(e.Target.Table.Name)
}

// Definitions returns the enrichments with every table name resolved as in the catalog, and the
// templates as registered (not their instances).
func (p *Plan) Definitions() []registry.Enrichment {
	out := slices.Clone(p.Templates)
	for _, t := range p.Targets {
		for _, e := range t.Enrichments {
			if e.Schema == "" {
				out = append(out, e.Enrichment)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
