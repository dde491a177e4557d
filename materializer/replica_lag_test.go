package materializer_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
)

// walReceiver streams WAL over a replication connection of its own and reports each position
// as written, flushed and replayed only delay after it arrived, like a standby or a CDC tool
// that lags by delay. logical picks a temporary logical slot (test_decoding); otherwise it
// streams physically, on a temporary physical slot. It stops at cleanup. The table tick must
// exist.
func walReceiver(t *testing.T, dsn string, logical bool, delay time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mode := "true"
	if logical {
		mode = "database"
	}
	conn, err := pgconn.Connect(ctx, dsn+"&replication="+mode)
	require.NoError(t, err)
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	require.NoError(t, err)
	slot := fmt.Sprintf("lag_%d", time.Now().UnixNano())
	if logical {
		pgtest.Exec(t, pgtest.Connect(t, dsn), `CREATE PUBLICATION `+slot+` FOR TABLE tick`)
		_, err = pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{Temporary: true})
		require.NoError(t, err)
		require.NoError(t, pglogrepl.StartReplication(ctx, conn, slot, sys.XLogPos, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names '" + slot + "'"}}))
	} else {
		_, err = pglogrepl.CreateReplicationSlot(ctx, conn, slot, "",
			pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.PhysicalReplication})
		require.NoError(t, err)
		require.NoError(t, pglogrepl.StartReplication(ctx, conn, slot, sys.XLogPos,
			pglogrepl.StartReplicationOptions{Mode: pglogrepl.PhysicalReplication}))
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
		_ = conn.Close(context.Background())
	})
	go func() {
		defer close(done)
		type arrival struct {
			lsn pglogrepl.LSN
			at  time.Time
		}
		var got []arrival
		acked := sys.XLogPos
		next := time.Now()
		for ctx.Err() == nil {
			if time.Now().After(next) {
				for len(got) > 0 && time.Since(got[0].at) >= delay {
					acked, got = got[0].lsn, got[1:]
				}
				err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
					WALWritePosition: acked, WALFlushPosition: acked, WALApplyPosition: acked})
				if err != nil {
					return
				}
				next = time.Now().Add(100 * time.Millisecond)
			}
			rctx, rcancel := context.WithDeadline(ctx, next)
			msg, err := conn.ReceiveMessage(rctx)
			rcancel()
			if pgconn.Timeout(err) {
				continue
			}
			if err != nil {
				return
			}
			cd, ok := msg.(*pgproto3.CopyData)
			if !ok || len(cd.Data) == 0 || cd.Data[0] != pglogrepl.XLogDataByteID {
				continue
			}
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err == nil {
				got = append(got, arrival{max(x.ServerWALEnd, x.WALStart+pglogrepl.LSN(len(x.WALData))), time.Now()})
			}
		}
	}()
}

// ticking commits a row every 100 ms until cleanup, so that the primary keeps measuring lag.
func ticking(t *testing.T, dsn string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE IF NOT EXISTS tick (at timestamptz)`)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_, _ = conn.Exec(ctx, `INSERT INTO tick VALUES (now())`)
			time.Sleep(100 * time.Millisecond)
		}
	}()
}

// maxReplayLag is what pg_stat_replication shows a superuser: the largest replay lag of every
// walsender, logical or physical.
func maxReplayLag(t *testing.T, conn *pgx.Conn) float64 {
	var s float64
	require.NoError(t, conn.QueryRow(context.Background(),
		`SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication`).Scan(&s))
	return s
}

// A CDC tool reading a logical slot 3 s behind is no standby: with max_replica_lag at 1 s,
// matcol keeps working. The daemon's own slot in logical mode is such a walsender too.
func TestLogicalConsumersDoNotHoldWork(t *testing.T) {
	dsn := pgtest.NewDB(t)
	b := setupOn(t, dsn, materializer.Config{Workers: 1, PollInterval: 20 * time.Millisecond, MaxReplicaLag: time.Second})
	b.catchUp(t)
	ticking(t, dsn)
	walReceiver(t, dsn, true, 3*time.Second)
	require.Eventually(t, func() bool { return maxReplayLag(t, b.conn) > 2 }, 30*time.Second, 100*time.Millisecond,
		"the logical consumer never lagged")

	ctx := context.Background()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.mat.Run(runCtx) }()
	defer func() { stop(); <-done }()
	pgtest.Exec(t, b.conn, `UPDATE event SET seats = 99 WHERE id = 1`)
	require.Eventually(t, func() bool {
		var fresh bool
		_ = b.conn.QueryRow(ctx, `SELECT seat_count = 99 AND materialized_at IS NOT NULL FROM venue WHERE id = 1`).Scan(&fresh)
		return fresh
	}, 10*time.Second, 50*time.Millisecond, "a lagging logical consumer must not hold work")
	require.Greater(t, maxReplayLag(t, b.conn), 1.0, "the consumer must still lag for this to mean anything")
	require.True(t, b.mat.ReplicaLagKnown())
}

// A role without pg_read_all_stats sees standbys in pg_stat_replication but not their lag. The
// daemon says once that max_replica_lag is not enforced, and reports it until the role may read
// the lag.
func TestUnreadableReplicaLagIsSaidOnce(t *testing.T) {
	dsn := pgtest.NewDB(t)
	b := setupOn(t, dsn, materializer.Config{Workers: 1})
	ctx := context.Background()
	pool, role := rolePool(t, b)
	var logs lockedLog
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, JSONFormat: true})
	m := materializer.New(pool, b.plan, materializer.Config{Workers: 1, MaxReplicaLag: time.Second}, log)

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	defer func() { stop(); <-done }()
	time.Sleep(1500 * time.Millisecond)
	require.True(t, m.ReplicaLagKnown(), "no standby: nothing to read")
	require.NotContains(t, logs.String(), "replay lag")

	walReceiver(t, dsn, false, 0)
	require.Eventually(t, func() bool { return !m.ReplicaLagKnown() }, 10*time.Second, 50*time.Millisecond)
	time.Sleep(3 * time.Second) // several more looks
	require.Equal(t, 1, strings.Count(logs.String(), "cannot read the standbys' replay lag"), logs.String())
	require.Contains(t, logs.String(), "pg_read_all_stats")

	pgtest.Exec(t, b.conn, `GRANT pg_read_all_stats TO `+role)
	require.Eventually(t, m.ReplicaLagKnown, 10*time.Second, 50*time.Millisecond)
	require.Contains(t, logs.String(), "replay lag known again")
}
