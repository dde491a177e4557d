package status_test

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	yamlv3 "go.yaml.in/yaml/v3"

	"github.com/matcol/matcol/status"
)

var metricRef = regexp.MustCompile(`matcol_[a-z_]+`)

// exportedSeries maps every series name /metrics can carry to its metric.
func exportedSeries() map[string]status.Metric {
	out := map[string]status.Metric{}
	for _, m := range status.Metrics() {
		out[m.Name] = m
		if m.Type == "histogram" {
			for _, s := range []string{"_bucket", "_count", "_sum"} {
				out[m.Name+s] = m
			}
		}
	}
	return out
}

type alertRules struct {
	Groups []struct {
		Rules []struct {
			Alert string `yaml:"alert"`
			Expr  string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readAlerts(t *testing.T) alertRules {
	var rules alertRules
	b, err := os.ReadFile("../docs/prometheus-alerts.yaml")
	require.NoError(t, err)
	require.NoError(t, yamlv3.Unmarshal(b, &rules))
	return rules
}

// The dashboard and the alert rules only use metrics the server exports, and no rule depends on
// how the scrape config names the job.
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	exported := exportedSeries()
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &dash))
	require.NotEmpty(t, dash.Panels)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, p.Title)
		for _, tg := range p.Targets {
			refs := metricRef.FindAllString(tg.Expr, -1)
			require.NotEmpty(t, refs, "panel %q queries no matcol metric", p.Title)
			for _, m := range refs {
				require.Contains(t, exported, m, "panel %q uses unknown metric %s", p.Title, m)
				used[exported[m].Name] = true
			}
		}
	}
	n := 0
	for _, g := range readAlerts(t).Groups {
		for _, r := range g.Rules {
			n++
			require.NotContains(t, r.Expr, "job=", "alert %s must not assume a job name", r.Alert)
			for _, m := range metricRef.FindAllString(r.Expr, -1) {
				require.Contains(t, exported, m, "alert %s uses unknown metric %s", r.Alert, m)
				used[exported[m].Name] = true
			}
		}
	}
	require.GreaterOrEqual(t, n, 5)
	for _, want := range []string{"matcol_oldest_pending_seconds", "matcol_stale_rows", "matcol_failures",
		"matcol_rows_materialized_total", "matcol_freshness_seconds", "matcol_build_info"} {
		require.True(t, used[want], "neither the dashboard nor the alerts use %s", want)
	}
}

var docRow = regexp.MustCompile("^\\| `([^`]+)` \\| (.*) \\|$")

// section returns the table rows under a "## title" heading of docs/metrics.md, cell by cell.
func section(t *testing.T, doc, title string) map[string][]string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, "\n## "+title+"\n")
	require.True(t, ok, "docs/metrics.md has no section %q", title)
	if i := strings.Index(rest, "\n## "); i >= 0 {
		rest = rest[:i]
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(rest, "\n") {
		if m := docRow.FindStringSubmatch(line); m != nil {
			cells := strings.Split(m[2], " | ")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			rows[m[1]] = cells
		}
	}
	require.NotEmpty(t, rows, "section %q has no table", title)
	return rows
}

func metricsDoc(t *testing.T) string {
	b, err := os.ReadFile("../docs/metrics.md")
	require.NoError(t, err)
	return string(b)
}

// docs/metrics.md lists every metric with its type and labels, and nothing else.
func TestMetricsDocListsEveryMetric(t *testing.T) {
	doc := metricsDoc(t)
	rows := section(t, doc, "Metrics")
	var problems []string
	for _, m := range status.Metrics() {
		row, ok := rows[m.Name]
		if !ok {
			problems = append(problems, m.Name+" is not in docs/metrics.md")
			continue
		}
		delete(rows, m.Name)
		labels := "none"
		if len(m.Labels) > 0 {
			labels = "`" + strings.Join(m.Labels, "`, `") + "`"
		}
		if row[0] != m.Type || row[1] != labels {
			problems = append(problems, fmt.Sprintf("%s: docs say %s with labels %s; it is a %s with %s", m.Name, row[0], row[1], m.Type, labels))
		}
		if m.Reporter != strings.Contains(row[2], "Reporter only.") {
			problems = append(problems, fmt.Sprintf("%s: docs must say \"Reporter only.\" exactly when only the reporter exports it", m.Name))
		}
	}
	for name := range rows {
		problems = append(problems, "docs/metrics.md lists "+name+", which matcol does not export")
	}
	sort.Strings(problems)
	require.Empty(t, problems)

	// The alert table names exactly the rules.
	documented := map[string]bool{}
	for key := range section(t, doc, "Alerts") {
		documented[key] = true
	}
	for _, g := range readAlerts(t).Groups {
		for _, r := range g.Rules {
			require.True(t, documented[r.Alert], "docs/metrics.md does not describe alert %s", r.Alert)
			delete(documented, r.Alert)
		}
	}
	require.Empty(t, documented, "docs/metrics.md describes alerts the rules do not have")
	require.Contains(t, doc, "(grafana-dashboard.json)")
	require.Contains(t, doc, "(prometheus-alerts.yaml)")
}

// jsonFields lists the JSON paths of a type: objects by field, arrays as name[].
func jsonFields(t reflect.Type, prefix string, out map[string]bool) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		if t.Kind() == reflect.Slice {
			prefix += "[]"
		}
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t.PkgPath() == "time" {
		return
	}
	if prefix != "" {
		prefix += "."
	}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		ft := t.Field(i).Type
		path := prefix + name
		if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			path += "[]"
		}
		out[path] = true
		jsonFields(ft, prefix+name, out)
	}
}

// docs/metrics.md describes every /status field, and only those.
func TestStatusDocListsEveryField(t *testing.T) {
	rows := section(t, metricsDoc(t), "`/status`")
	fields := map[string]bool{}
	jsonFields(reflect.TypeOf(status.Report{}), "", fields)
	var problems []string
	for f := range fields {
		if _, ok := rows[f]; !ok {
			problems = append(problems, f+" is not described in docs/metrics.md")
		}
	}
	for f := range rows {
		if !fields[f] {
			problems = append(problems, "docs/metrics.md describes "+f+", which /status does not have")
		}
	}
	sort.Strings(problems)
	require.Empty(t, problems)
	require.Greater(t, len(fields), 40)
}
