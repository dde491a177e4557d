package status_test

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	yamlv3 "go.yaml.in/yaml/v3"
)

// The dashboard and the alert rules only use metrics the server exports.
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	exported := map[string]bool{}
	for _, m := range []string{"matcol_stale_rows", "matcol_stale_rows_exact", "matcol_oldest_pending_seconds",
		"matcol_pending_invalidations", "matcol_failures", "matcol_rows_materialized_total", "matcol_last_batch_seconds",
		"matcol_replication_slot_retained_wal_bytes", "matcol_replication_slot_wal_status", "matcol_backfill_rows_done",
		"matcol_paused", "matcol_replica_lag_known", "matcol_status_up", "matcol_freshness_seconds_bucket"} {
		exported[m] = true
	}
	re := regexp.MustCompile(`matcol_[a-z_]+`)
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &dash))
	require.NotEmpty(t, dash.Panels)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range re.FindAllString(tg.Expr, -1) {
				require.True(t, exported[m], "dashboard uses unknown metric %s", m)
			}
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	b, err = os.ReadFile("../docs/prometheus-alerts.yaml")
	require.NoError(t, err)
	require.NoError(t, yamlv3.Unmarshal(b, &rules))
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			for _, m := range re.FindAllString(r.Expr, -1) {
				require.True(t, exported[m], "alert %s uses unknown metric %s", r.Alert, m)
			}
		}
	}
	require.GreaterOrEqual(t, n, 5)
}
