package plan

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Explain describes each enrichment: what its SQL reads, and what makes its rows stale. It is
// what `matcol apply --explain` prints. A template is shown once, bound to its first schema.
func (p *Plan) Explain() string {
	type entry struct {
		e *Enrichment
		n int
	}
	byName := map[string]*entry{}
	var names []string
	for _, t := range p.Targets {
		for _, e := range t.Enrichments {
			if x := byName[e.Name]; x != nil {
				x.n++
				continue
			}
			byName[e.Name] = &entry{e: e, n: 1}
			names = append(names, e.Name)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for i, name := range names {
		if i > 0 {
			b.WriteString("\n")
		}
		x := byName[name]
		explain(&b, x.e, x.n)
	}
	return b.String()
}

func explain(b *strings.Builder, e *Enrichment, instances int) {
	t := e.Target
	fmt.Fprintf(b, "enrichment %s: %s (%s)\n", e.Name, t.Table, quoteList(e.Columns))
	if e.Schema != "" {
		fmt.Fprintf(b, "  template %s, in %d schemas; shown for %s\n", e.TemplateTable(), instances, e.Schema)
	}
	b.WriteString("  reads:\n")
	for _, r := range e.Reads {
		fmt.Fprintf(b, "    %s: %s\n", r.Table, readColumns(r))
	}
	for _, c := range e.Calls {
		fmt.Fprintf(b, "    %s: a function whose body is not analyzed\n", c)
	}
	b.WriteString("  made stale by:\n")
	fmt.Fprintf(b, "    inserts into %s\n", t.Table)
	switch all, cols := e.SelfWatch(); {
	case e.Self != nil && !*e.Self:
		fmt.Fprintf(b, "    updates of %s: none (self: false)\n", t.Table)
	case e.Self != nil:
		fmt.Fprintf(b, "    updates of %s changing any column but matcol's (self: true)\n", t.Table)
	case all:
		fmt.Fprintf(b, "    updates of %s changing any column but matcol's (it reads the whole row)\n", t.Table)
	default:
		fmt.Fprintf(b, "    updates of %s changing %s\n", t.Table, quoteList(cols))
	}
	for _, d := range e.deps {
		if d.Static {
			fmt.Fprintf(b, "    %s: nothing, static (no trigger)\n", d.Source)
			continue
		}
		keys := fmt.Sprintf("keys in %s", quoteList(d.Columns))
		if !d.Direct() {
			var via []string
			for _, r := range d.Reads {
				via = append(via, fmt.Sprintf("%s (%s)", r.Table, readColumns(r)))
			}
			keys = fmt.Sprintf("keys mapped from %s by sql reading %s", quoteList(d.Columns), strings.Join(via, ", "))
		}
		watch := "every column (a whole-row read)"
		if all, cols := d.Watch(); !all {
			watch = quoteList(cols)
		}
		fmt.Fprintf(b, "    %s: %s; changes to %s\n", d.Source, keys, watch)
	}
	if e.ExpiresAfter > 0 {
		fmt.Fprintf(b, "    age: expires_after %s\n", shortDuration(e.ExpiresAfter))
	}
}

func readColumns(r Read) string {
	switch {
	case r.All:
		return "every column (a whole-row read)"
	case len(r.Columns) == 0:
		return "no column, only which rows exist"
	}
	return quoteList(r.Columns)
}

func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
