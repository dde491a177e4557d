package logical

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// A slot of the same name in another database, or with another output plugin, is not matcol's
// to resume: readSlot says so from its one query.
func TestReadSlotTellsOtherDatabaseAndPlugin(t *testing.T) {
	ctx := context.Background()
	here := pgtest.Connect(t, pgtest.NewDB(t))
	otherDSN := pgtest.NewDB(t)
	other := pgtest.Connect(t, otherDSN)
	pgtest.Exec(t, other, `SELECT pg_create_logical_replication_slot('elsewhere_slot', 'pgoutput')`)
	t.Cleanup(func() { pgtest.DropSlot(otherDSN, "elsewhere_slot") })
	pgtest.Exec(t, here, `SELECT pg_create_logical_replication_slot('plugin_slot', 'test_decoding')`)
	t.Cleanup(func() { pgtest.DropSlot(otherDSN, "plugin_slot") })

	st, err := readSlot(ctx, here, "elsewhere_slot")
	require.NoError(t, err)
	require.True(t, st.exists)
	require.True(t, st.otherDB)
	require.False(t, st.wrongPlugin)
	st, err = readSlot(ctx, other, "elsewhere_slot")
	require.NoError(t, err)
	require.False(t, st.otherDB)

	st, err = readSlot(ctx, here, "plugin_slot")
	require.NoError(t, err)
	require.False(t, st.otherDB)
	require.True(t, st.wrongPlugin)
	st, err = readSlot(ctx, here, "no_such_slot")
	require.NoError(t, err)
	require.False(t, st.exists)
}
