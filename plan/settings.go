package plan

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/matcol/matcol/registry"
)

// BatchSettings are the settings a batch of t runs with. A batch computes every enrichment of
// its table in one statement, so one value of each has to serve them all:
//   - statement_timeout and lock_timeout: the longest that any enrichment sets, so that each
//     gets the time it asked for (an enrichment that sets none leaves the choice to the others;
//     when none sets one, the defaults hold);
//   - work_mem: the largest that any enrichment sets;
//   - batch_size: the smallest that any enrichment sets;
//   - priority and min_interval: the highest and the longest;
//   - further settings: each as its enrichment sets it. Two enrichments of one table that set
//     one differently are refused when the plan is built (SettingsProblems).
func (t *Target) BatchSettings() registry.Settings {
	var out registry.Settings
	var workMem int64
	for i, e := range t.Enrichments {
		s := e.Settings
		out.StatementTimeout = max(out.StatementTimeout, s.StatementTimeout)
		out.LockTimeout = max(out.LockTimeout, s.LockTimeout)
		out.MinInterval = max(out.MinInterval, s.MinInterval)
		if i == 0 || s.Priority > out.Priority {
			out.Priority = s.Priority
		}
		if s.BatchSize > 0 && (out.BatchSize == 0 || s.BatchSize < out.BatchSize) {
			out.BatchSize = s.BatchSize
		}
		if n, ok := memoryKB(s.WorkMem); ok && n > workMem {
			workMem, out.WorkMem = n, strings.TrimSpace(s.WorkMem)
		}
		for k, v := range s.GUCs {
			if out.GUCs == nil {
				out.GUCs = map[string]string{}
			}
			if _, set := out.GUCs[k]; !set {
				out.GUCs[k] = v
			}
		}
	}
	return out
}

// SettingsProblems names what BatchSettings cannot reconcile: a work_mem that is not a size,
// and a further setting that two enrichments of t set to different values.
func (t *Target) SettingsProblems() []string {
	var probs []string
	table := t.Table.String()
	first := map[string]*Enrichment{}
	for _, e := range t.Enrichments {
		if tt := e.TemplateTable(); tt != "" {
			table = tt
		}
		if w := e.Settings.WorkMem; w != "" {
			if _, ok := memoryKB(w); !ok {
				probs = append(probs, fmt.Sprintf("enrichment %s: work_mem %q is not a size such as 64MB", e.Name, w))
			}
		}
		for _, k := range slices.Sorted(maps.Keys(e.Settings.GUCs)) {
			o := first[k]
			if o == nil {
				first[k] = e
				continue
			}
			if a, b := o.Settings.GUCs[k], e.Settings.GUCs[k]; a != b {
				probs = append(probs, fmt.Sprintf(
					"enrichments %s and %s of %s set %s differently (%q and %q); a batch computes both in one statement: give them the same value, or set it in one of them only",
					o.Name, e.Name, table, k, a, b))
			}
		}
	}
	return probs
}

// memoryKB reads a PostgreSQL memory setting (64MB, 512kB, 1GB, or a plain number of kB) in kB.
func memoryKB(s string) (int64, bool) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, false
	}
	unit := int64(1)
	lower := strings.ToLower(t)
	for _, u := range []struct {
		suffix string
		kb     int64
	}{{"tb", 1 << 30}, {"gb", 1 << 20}, {"mb", 1 << 10}, {"kb", 1}, {"b", 0}} {
		if strings.HasSuffix(lower, u.suffix) {
			unit, t = u.kb, strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	if unit == 0 { // bytes
		return n / 1024, true
	}
	return n * unit, true
}
