package logical

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

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
	t.Cleanup(func() { pgtest.DropSlot(dsn, "quiet_slot") })
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

// countingConn counts the reads of a socket.
type countingConn struct {
	net.Conn
	reads atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.Conn.Read(p)
}

// The walsender sends each message as it decodes it. A stream of many small transactions is read
// many messages to a read, not one read (and one wake-up of the daemon) per message.
func TestStreamReadsManyMessagesAtOnce(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE busy (id int PRIMARY KEY); CREATE PUBLICATION busy_pub FOR TABLE busy`)
	var counted *countingConn
	rc, err := connectReplWith(ctx, dsn, func(c net.Conn) net.Conn {
		counted = &countingConn{Conn: c}
		return counted
	})
	require.NoError(t, err)
	defer rc.close(ctx)
	lsn, err := rc.createSlot(ctx, "busy_slot")
	require.NoError(t, err)
	t.Cleanup(func() { pgtest.DropSlot(dsn, "busy_slot") })
	require.NoError(t, rc.start(ctx, "busy_slot", "busy_pub", lsn))

	const txs = 2000
	go func() {
		// One statement, committing each row: a steady stream of small transactions.
		_, _ = conn.Exec(ctx, `SET synchronous_commit = off`)
		_, _ = conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN FOR i IN 1..%d LOOP INSERT INTO busy VALUES (i); COMMIT; END LOOP; END $$`, txs))
	}()
	before := counted.reads.Load()
	commits := 0
	limit := time.Now().Add(time.Minute)
	for commits < txs && time.Now().Before(limit) {
		msg, err := rc.receive(ctx, time.Now().Add(time.Second))
		require.NoError(t, err)
		if msg != nil && len(msg.Data) > 0 && msg.Data[0] == pglogrepl.XLogDataByteID {
			xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
			require.NoError(t, err)
			if len(xld.WALData) > 0 && xld.WALData[0] == 'C' {
				commits++
			}
		}
	}
	require.Equal(t, txs, commits)
	reads := counted.reads.Load() - before
	t.Logf("%d transactions (%d messages) in %d reads", txs, 3*txs, reads)
	require.Less(t, reads, int64(txs/4), "messages must be read many to a read")
}
