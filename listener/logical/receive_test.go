package logical

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// A receive reads with no context (see receive), so a stop must reach it through the read
// deadline: a daemon that stops while the stream is quiet returns at once, not at the next status
// report, however far off that is.
func TestStopInterruptsQuietReceive(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE quiet (id int PRIMARY KEY); CREATE PUBLICATION quiet_pub FOR TABLE quiet`)
	rc, err := connectRepl(ctx, dsn)
	require.NoError(t, err)
	defer rc.close(ctx)
	lsn, err := rc.createSlot(ctx, "quiet_slot")
	require.NoError(t, err)
	t.Cleanup(func() { DropTestSlot(dsn, "quiet_slot") })
	require.NoError(t, rc.start(ctx, "quiet_slot", "quiet_pub", lsn))

	sctx, cancel := context.WithCancel(ctx)
	stop := rc.interrupt(sctx)
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := rc.receive(sctx, time.Now().Add(time.Minute)); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.True(t, errors.Is(err, context.Canceled), "got %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("a stop did not interrupt a receive waiting for a minute")
	}
	stop()
	// The connection stays usable: the deadline is cleared and a timed-out read closes nothing.
	_, err = rc.receive(ctx, time.Now().Add(100*time.Millisecond))
	require.NoError(t, err)
}
