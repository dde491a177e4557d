package status

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMetricsFoldTemplateInstances(t *testing.T) {
	one, two := int64(3), int64(4)
	got := aggregateTemplates([]EnrichmentStatus{
		{Name: "plain", Table: "public.venue", StaleRows: 1, StaleRowsExact: true},
		{Name: "totals", Table: "tenant_1.item", Template: "tenant_*.item", StaleRows: 2, StaleRowsExact: true,
			PendingInvalidations: 1, Failures: 1, OldestPendingSeconds: 5, RowsMaterializedTotal: &one},
		{Name: "totals", Table: `"Tenant 2".item`, Template: "tenant_*.item", StaleRows: 3, StaleRowsExact: false,
			PendingInvalidations: 2, Failures: 0, OldestPendingSeconds: 9, RowsMaterializedTotal: &two},
	})
	require.Len(t, got, 2)
	require.Equal(t, "public.venue", got[0].Table)
	agg := got[1]
	require.Equal(t, "tenant_*.item", agg.Table)
	require.Equal(t, int64(5), agg.StaleRows)
	require.False(t, agg.StaleRowsExact)
	require.Equal(t, int64(3), agg.PendingInvalidations)
	require.Equal(t, int64(1), agg.Failures)
	require.Equal(t, 9.0, agg.OldestPendingSeconds)
	require.Equal(t, int64(7), *agg.RowsMaterializedTotal)
	require.Equal(t, int64(3), one, "the input is not modified")
}
