package plan

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/registry"
)

func targetWith(settings ...registry.Settings) *Target {
	t := &Target{Table: pgident.Table{Schema: "public", Name: "venue"}}
	for i, s := range settings {
		t.Enrichments = append(t.Enrichments, &Enrichment{Enrichment: registry.Enrichment{
			Name: string(rune('a' + i)), Settings: s}, Target: t})
	}
	return t
}

func TestBatchSettingsRule(t *testing.T) {
	got := targetWith(
		registry.Settings{StatementTimeout: 10 * time.Second, WorkMem: "64MB", BatchSize: 500, Priority: -1,
			GUCs: map[string]string{"jit": "on"}},
		registry.Settings{LockTimeout: time.Second, WorkMem: "1GB", Priority: -3, MinInterval: time.Minute},
		registry.Settings{StatementTimeout: time.Minute, WorkMem: "65536", BatchSize: 50, Priority: 2,
			GUCs: map[string]string{"random_page_cost": "2"}},
	).BatchSettings()
	require.Equal(t, registry.Settings{StatementTimeout: time.Minute, LockTimeout: time.Second, WorkMem: "1GB",
		BatchSize: 50, Priority: 2, MinInterval: time.Minute,
		GUCs: map[string]string{"jit": "on", "random_page_cost": "2"}}, got)

	// Nothing set: the defaults hold.
	require.Equal(t, registry.Settings{Priority: -2}, targetWith(registry.Settings{Priority: -2}, registry.Settings{Priority: -5}).BatchSettings())
	require.Empty(t, targetWith(registry.Settings{}, registry.Settings{}).SettingsProblems())
}

func TestSettingsProblems(t *testing.T) {
	probs := targetWith(
		registry.Settings{GUCs: map[string]string{"jit": "on", "random_page_cost": "2"}},
		registry.Settings{WorkMem: "a lot", GUCs: map[string]string{"jit": "on", "random_page_cost": "3"}},
	).SettingsProblems()
	require.Equal(t, []string{
		`enrichment b: work_mem "a lot" is not a size such as 64MB`,
		`enrichments a and b of public.venue set random_page_cost differently ("2" and "3"); a batch computes both in one statement: give them the same value, or set it in one of them only`,
	}, probs)
}

func TestMemoryKB(t *testing.T) {
	for in, want := range map[string]int64{"64MB": 64 << 10, "512kB": 512, "1GB": 1 << 20, "4096": 4096, "2048B": 2, " 8 MB ": 8 << 10} {
		got, ok := memoryKB(in)
		require.True(t, ok, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "lots", "-1MB", "1.5GB"} {
		_, ok := memoryKB(in)
		require.False(t, ok, in)
	}
}
