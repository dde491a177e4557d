package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"
)

// report collects docs/benchmarks.md. Each "## " section names the command that produced it, so
// a run of some scenarios (-only) replaces their sections in the file and keeps the others.
type report struct {
	lines      []string
	targets    []targetRow
	provenance string // the "Produced by" line under each heading
	section    string // key of the section being written
	partial    bool   // -only: merge into the existing file
}

// targetRow is one figure against its target, in the summary at the end.
type targetRow struct {
	section, figure, measured, goal, verdict string
}

const targetsHeading = "## Against the targets"

func (r *report) add(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	fmt.Println(line)
	r.lines = append(r.lines, line)
}

// heading starts a section: its title, then the command that produced it.
func (r *report) heading(format string, args ...any) {
	h := fmt.Sprintf(format, args...)
	r.section = sectionKey(h)
	r.add("## %s", h)
	r.add("")
	r.add("%s", r.provenance)
	r.add("")
}

// target records one figure against its target for the summary; why is one of the whys.
func (r *report) target(figure, measured, goal string, met bool, why string) {
	verdict := "met"
	if !met {
		verdict = fmt.Sprintf("**missed** (%s)", whyTitle(why))
	}
	r.targets = append(r.targets, targetRow{section: r.section, figure: figure, measured: measured, goal: goal, verdict: verdict})
}

// sectionKey is a heading without its sizes: "Catch-up after a change (200000 rows)" and the same
// heading at another size are one section.
func sectionKey(heading string) string {
	heading = strings.TrimPrefix(heading, "## ")
	if i := strings.Index(heading, " ("); i > 0 {
		heading = heading[:i]
	}
	return heading
}

type section struct {
	key   string
	lines []string // heading included, trailing blank lines trimmed
}

// split cuts lines into the part before the first section and the sections.
func split(lines []string) (head []string, secs []section) {
	for _, l := range lines {
		if strings.HasPrefix(l, "## ") {
			secs = append(secs, section{key: sectionKey(l)})
		}
		if len(secs) == 0 {
			head = append(head, l)
		} else {
			secs[len(secs)-1].lines = append(secs[len(secs)-1].lines, l)
		}
	}
	for i := range secs {
		for len(secs[i].lines) > 0 && strings.TrimSpace(secs[i].lines[len(secs[i].lines)-1]) == "" {
			secs[i].lines = secs[i].lines[:len(secs[i].lines)-1]
		}
	}
	return head, secs
}

// parseTargets reads the summary table's rows back.
func parseTargets(s section) []targetRow {
	var rows []targetRow
	for _, l := range s.lines {
		cells := strings.Split(strings.Trim(l, "| "), " | ")
		if !strings.HasPrefix(l, "| ") || len(cells) != 5 || cells[0] == "section" || strings.HasPrefix(cells[0], "---") {
			continue
		}
		rows = append(rows, targetRow{section: cells[0], figure: cells[1], measured: cells[2], goal: cells[3], verdict: cells[4]})
	}
	return rows
}

// finish writes the report to out: the whole file, or with r.partial its sections merged into
// the file there.
func (r *report) finish(out string, began time.Time) error {
	_, secs := split(r.lines)
	targets := r.targets
	if r.partial && out != "" {
		old, err := os.ReadFile(out)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		_, oldSecs := split(strings.Split(string(old), "\n"))
		secs, targets = merge(oldSecs, secs, targets)
	}
	var b strings.Builder
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("Every ratio is against a baseline timed in the same run on the same data. `go run ./bench` runs every\n")
	b.WriteString("scenario and rewrites this file; `go run ./bench -only catchup,tpcb` (or `backfill`, `freshness`,\n")
	b.WriteString("`writes`) runs some and replaces only their sections. Each section names the command and the\n")
	b.WriteString("machine that produced it. See `go run ./bench -h` for the flags that run each scenario smaller.\n")
	fmt.Fprintf(&b, "The cluster uses huge pages when the machine has %.1f GiB of them free (`sysctl -w vm.nr_hugepages=%d` or more),\n",
		float64(hugePagesWanted)/(1<<30), (hugePagesWanted+(2<<20)-1)/(2<<20))
	b.WriteString("and each section's first line says whether it did (one that does not say ran without): without them matcol's workers pay page faults\n")
	b.WriteString("that a baseline's connection has mostly paid already ([operations.md](operations.md#huge-pages)). Transparent huge pages\n")
	b.WriteString("for shared memory (`shared memory THP always` in that line) do the same without reserving memory.\n")
	for _, s := range secs {
		if s.key == sectionKey(targetsHeading) {
			continue
		}
		b.WriteString("\n" + strings.Join(s.lines, "\n") + "\n")
	}
	b.WriteString("\n" + targetsHeading + "\n\n")
	b.WriteString("| section | figure | measured | target | verdict |\n|---|---|---|---|---|\n")
	var missed []string
	for _, t := range targets {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", t.section, t.figure, t.measured, t.goal, t.verdict)
		if i := strings.Index(t.verdict, "(") + 1; strings.HasPrefix(t.verdict, "**missed**") && i > 0 {
			if title := strings.TrimSuffix(t.verdict[i:], ")"); !slices.Contains(missed, title) {
				missed = append(missed, title)
			}
		}
	}
	for _, w := range whys {
		if slices.Contains(missed, whyTitle(w)) {
			b.WriteString("\n" + w + "\n")
		}
	}
	fmt.Printf("\nthis run took %s\n", time.Since(began).Round(time.Second))
	if out == "" {
		fmt.Print(b.String())
		return nil
	}
	return os.WriteFile(out, []byte(b.String()), 0o644)
}

// merge puts the new sections in place of the old ones with the same key (new ones go last) and
// replaces the old sections' target rows with the new rows.
func merge(old, fresh []section, freshTargets []targetRow) ([]section, []targetRow) {
	var oldTargets []targetRow
	byKey := map[string]bool{}
	for _, s := range fresh {
		byKey[s.key] = true
	}
	var out []section
	used := map[string]bool{}
	for _, s := range old {
		switch {
		case s.key == sectionKey(targetsHeading):
			oldTargets = parseTargets(s)
		case byKey[s.key]:
			for _, f := range fresh {
				if f.key == s.key && !used[f.key] {
					out = append(out, f)
					used[f.key] = true
				}
			}
		default:
			out = append(out, s)
		}
	}
	for _, f := range fresh {
		if !used[f.key] {
			out = append(out, f)
		}
	}
	// Target rows follow the sections' order.
	var targets []targetRow
	for _, s := range out {
		src := oldTargets
		if byKey[s.key] {
			src = freshTargets
		}
		for _, t := range src {
			if t.section == s.key {
				targets = append(targets, t)
			}
		}
	}
	return out, targets
}

// times formats a ratio with two significant digits however small it is: 0.0031×, 0.45×, 41×.
func times(x float64) string {
	switch {
	case x >= 10:
		return fmt.Sprintf("%.0f×", x)
	case x >= 0.1:
		return fmt.Sprintf("%.2f×", x)
	default:
		return fmt.Sprintf("%#.2g×", x)
	}
}
