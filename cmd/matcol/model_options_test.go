package main_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// modelFeatureList is every switchable part of the model test, so that a failure can be pinned
// on one: MATCOL_MODEL_FEATURES=all,-chain turns one off, MATCOL_MODEL_FEATURES=kill,apply keeps
// only those. Writes that every run has (inserts, deletes, key moves, multi-row statements,
// updates of columns no enrichment reads, transactions of several statements) have no switch.
var modelFeatureList = []struct{ name, what string }{
	{"composite", "the parent table has a two-column primary key"},
	{"quoted", "quoted, mixed-case, spaced and unicode schema, table and column names"},
	{"lookup", "child rows copy their parent's columns, through a dependency mapped by SQL"},
	{"mapped", "parents sum their children's grandchildren, through a dependency mapped by SQL"},
	{"chain", "top rows sum an enrichment's output column of the parent table"},
	{"partition", "a source partitioned by list, written through the parent and through partitions"},
	{"attach", "partitions created and attached while writers run (needs partition)"},
	{"textkeys", "a text source column holding the parent's integer keys, sometimes not a number"},
	{"truncate", "writers truncate sources, targets and partitions"},
	{"kill", "SIGKILL of the daemon, and a restart"},
	{"restart", "PostgreSQL restarts with -m immediate"},
	{"slotloss", "logical mode: the slot is dropped while the daemon is down, so it must resync"},
	{"apply", "matcol apply of a changed enrichment (new sql, an added dependency), then matcol backfill"},
	{"pause", "matcol pause, and matcol resume a moment later"},
	{"leastpriv", "matcol runs as a role with only the grants of docs/security.md"},
}

type modelFeatures map[string]bool

func parseModelFeatures(spec string) (modelFeatures, error) {
	f := modelFeatures{}
	known := func(name string) bool {
		return slices.ContainsFunc(modelFeatureList, func(x struct{ name, what string }) bool { return x.name == name })
	}
	all := func(on bool) {
		for _, x := range modelFeatureList {
			f[x.name] = on
		}
	}
	spec = strings.TrimSpace(spec)
	if spec == "" {
		spec = "all"
	}
	parts := strings.Split(spec, ",")
	if strings.HasPrefix(strings.TrimSpace(parts[0]), "-") {
		all(true) // "-chain" alone means all but chain
	}
	for _, p := range parts {
		p = strings.TrimSpace(p)
		switch {
		case p == "all":
			all(true)
		case p == "none" || p == "":
			all(false)
		case strings.HasPrefix(p, "-") && known(p[1:]):
			f[p[1:]] = false
		case known(p):
			f[p] = true
		default:
			return nil, fmt.Errorf("MATCOL_MODEL_FEATURES: unknown feature %q; known: %s", p, modelFeatures{}.allNames())
		}
	}
	if !f["partition"] {
		f["attach"] = false
	}
	return f, nil
}

func (modelFeatures) allNames() string {
	names := make([]string, len(modelFeatureList))
	for i, x := range modelFeatureList {
		names[i] = x.name
	}
	return strings.Join(names, ",")
}

// String lists the features that are on, in a form MATCOL_MODEL_FEATURES reads back.
func (f modelFeatures) String() string {
	var on []string
	for _, x := range modelFeatureList {
		if f[x.name] {
			on = append(on, x.name)
		}
	}
	if len(on) == 0 {
		return "none"
	}
	return strings.Join(on, ",")
}

type modelOptions struct {
	seed     uint64
	duration time.Duration
	writers  int
	features modelFeatures
}

// modelOptionsFor reads MATCOL_MODEL_*; a seed left unset is drawn at random, and printed.
func modelOptionsFor(mode string) (modelOptions, string, error) {
	o := modelOptions{seed: rand.Uint64() % 1_000_000_000, duration: 30 * time.Second, writers: 3}
	if m := os.Getenv("MATCOL_MODEL_MODE"); m != "" && m != "both" && m != mode {
		return o, "MATCOL_MODEL_MODE=" + m, nil
	}
	if s := os.Getenv("MATCOL_MODEL_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return o, "", fmt.Errorf("MATCOL_MODEL_SEED: %q is not a number", s)
		}
		o.seed = v
	}
	if s := os.Getenv("MATCOL_MODEL_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if n, nerr := strconv.Atoi(s); nerr == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
		if err != nil || d <= 0 {
			return o, "", fmt.Errorf("MATCOL_MODEL_DURATION: %q is not a duration such as 90s or 5m", s)
		}
		o.duration = d
	}
	if s := os.Getenv("MATCOL_MODEL_WRITERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 32 {
			return o, "", fmt.Errorf("MATCOL_MODEL_WRITERS: %q is not a number from 1 to 32", s)
		}
		o.writers = n
	}
	f, err := parseModelFeatures(os.Getenv("MATCOL_MODEL_FEATURES"))
	if err != nil {
		return o, "", err
	}
	o.features = f
	return o, "", nil
}

// repro is the command that runs the same seed, mode and features again.
func (o modelOptions) repro(mode string) string {
	return fmt.Sprintf("make test/model SEED=%d DURATION=%s MODE=%s FEATURES=%s", o.seed, o.duration, mode, o.features)
}

// rounds splits a run into rounds of 30 to 60 s, each ending in a verification: only the
// last changes of a round can show a lost invalidation, so a long run checks many times.
func (o modelOptions) rounds() int { return max(1, int(o.duration/(30*time.Second))) }

// tail is how long writers write slowly at the end of a round of d: a fifth, from 3 to 10 s.
func (o modelOptions) tail(d time.Duration) time.Duration {
	return min(max(d/5, 3*time.Second), 10*time.Second, d)
}
