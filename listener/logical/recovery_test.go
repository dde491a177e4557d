package logical_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// The daemon is stopped and restarted three times while writers keep going.
func TestRestartDaemonUnderLoad(t *testing.T) {
	b := setup(t)
	r := startDaemon(t, b, "matcol")
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
	stopLoad := make(chan struct{})
	wait := load(t, b.dsn, 3, stopLoad)
	for i := 0; i < 3; i++ {
		time.Sleep(time.Second)
		r.stop(t)
		time.Sleep(500 * time.Millisecond) // writes land while no daemon runs
		r = startDaemon(t, b, "matcol")
	}
	time.Sleep(time.Second)
	close(stopLoad)
	writes := wait()
	require.Greater(t, writes, 50)
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
	t.Logf("%d writes, fresh after 3 daemon restarts", writes)
}

// pg_ctl restart -m immediate under load: the daemon reconnects by itself and loses nothing.
func TestPostgresImmediateRestartUnderLoad(t *testing.T) {
	c := pgtest.Cluster(t)
	if c == nil {
		t.Skip("needs the throwaway cluster")
	}
	b := setup(t)
	r := startDaemon(t, b, "matcol")
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
	stopLoad := make(chan struct{})
	wait := load(t, b.dsn, 3, stopLoad)
	time.Sleep(2 * time.Second)
	require.NoError(t, c.Restart(context.Background(), "immediate"))
	time.Sleep(3 * time.Second)
	close(stopLoad)
	writes := wait()
	require.Greater(t, writes, 50)
	b.conn = pgtest.Connect(t, b.dsn)
	waitFresh(t, b.conn, r.d.Mat.Plan(), 90*time.Second)
	t.Logf("%d writes, fresh after an immediate restart", writes)
}

// A slot dropped while the daemon is down: the daemon recreates it and resyncs every target, so
// changes made meanwhile are not lost.
func TestSlotDroppedWhileDown(t *testing.T) {
	b := setup(t)
	r := startDaemon(t, b, "matcol")
	waitStreaming(t, r, 20*time.Second)
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
	r.stop(t)
	pgtest.Exec(t, b.conn, `UPDATE event SET seat_count = seat_count + 7 WHERE id % 10 = 0`)
	pgtest.Exec(t, b.conn, `UPDATE cinema SET name = 'Gone ' || id`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := b.conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, b.slot)
		if err == nil {
			break
		}
		t.Logf("drop slot: %v", err)
		require.True(t, time.Now().Before(deadline), "drop slot: %v", err)
		time.Sleep(100 * time.Millisecond)
	}
	r = startDaemon(t, b, "matcol")
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
	require.GreaterOrEqual(t, r.d.Logical.Stats().Resyncs, 1)
}

// The WAL guard: a slot that retains more than max_retained_wal is recreated and every target
// resynced, loudly, rather than left to fill the disk.
func TestRetainedWALCapRecreatesSlot(t *testing.T) {
	b := setup(t)
	b.cfg.Invalidation.MaxRetainedWAL = 16 << 20
	r := startDaemon(t, b, "matcol")
	waitStreaming(t, r, 20*time.Second)
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
	// An open transaction pins restart_lsn while WAL accumulates behind it.
	// Its first WAL record is where decoding must restart, until it ends.
	pgtest.Exec(t, b.conn, `CREATE TABLE pin (x int)`)
	holder := pgtest.Connect(t, b.dsn)
	pgtest.Exec(t, holder, `BEGIN`)
	pgtest.Exec(t, holder, `INSERT INTO pin VALUES (1)`)
	pgtest.Exec(t, b.conn, `CREATE TABLE noise AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 200000) g`)
	pgtest.Exec(t, b.conn, `UPDATE event SET seat_count = seat_count + 1 WHERE id < 100`)
	// Hold it until the guard stops the stream (a new slot could not be created while it runs).
	deadline := time.Now().Add(40 * time.Second)
	for r.d.Logical.Stats().Streaming {
		require.True(t, time.Now().Before(deadline), "the guard did not trip; stats %+v", r.d.Logical.Stats())
		time.Sleep(100 * time.Millisecond)
	}
	pgtest.Exec(t, holder, `COMMIT`)
	for r.d.Logical.Stats().Resyncs < 2 {
		require.True(t, time.Now().Before(deadline), "slot was not recreated; stats %+v", r.d.Logical.Stats())
		time.Sleep(200 * time.Millisecond)
	}
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
}
