package logical

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/matcol/matcol/internal/dial"
)

// replConn is the thin layer: a walsender connection (replication=database) and the few
// replication commands matcol uses.
type replConn struct {
	pg   *pgconn.PgConn
	sock *coalescingConn
}

func connectRepl(ctx context.Context, dsn string) (*replConn, error) {
	return connectReplWith(ctx, dsn, nil)
}

// connectReplWith is connectRepl whose socket is wrap(socket) when wrap is set.
func connectReplWith(ctx context.Context, dsn string, wrap func(net.Conn) net.Conn) (*replConn, error) {
	cfg, err := dial.Config(dsn, "listener")
	if err != nil {
		return nil, err
	}
	pc := cfg.Config.Copy()
	pc.RuntimeParams["replication"] = "database"
	// A walsender refuses these session settings; they only matter for SQL sessions.
	delete(pc.RuntimeParams, "plan_cache_mode")
	var sock *coalescingConn
	d := pc.DialFunc
	pc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if wrap != nil {
			c = wrap(c)
		}
		sock = newCoalescingConn(c)
		return sock, nil
	}
	pg, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, dial.Describe(err, cfg)
	}
	return &replConn{pg: pg, sock: sock}, nil
}

func (c *replConn) close(ctx context.Context) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = c.pg.Close(cctx)
}

// createSlot creates a persistent pgoutput slot; its consistent point is where decoding starts.
func (c *replConn) createSlot(ctx context.Context, slot string) (pglogrepl.LSN, error) {
	res, err := pglogrepl.CreateReplicationSlot(ctx, c.pg, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		return 0, fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	return lsn, nil
}

// start begins streaming from lsn. Protocol version 1 without streaming of in-progress
// transactions: see docs/logical.md for why matcol lets the server spill large transactions.
func (c *replConn) start(ctx context.Context, slot, publication string, lsn pglogrepl.LSN) error {
	err := pglogrepl.StartReplication(ctx, c.pg, slot, lsn, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"},
	})
	if err != nil {
		return fmt.Errorf("start replication on slot %s: %w", slot, err)
	}
	if c.sock != nil {
		c.sock.coalesce.Store(true)
	}
	return nil
}

// ack reports lsn as written, flushed and applied: explicit positions, so nothing is reported
// beyond what is durable.
func (c *replConn) ack(ctx context.Context, lsn pglogrepl.LSN, reply bool) error {
	err := pglogrepl.SendStandbyStatusUpdate(ctx, c.pg, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ReplyRequested: reply})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

// receive waits until deadline for one message; it returns nil, nil on timeout. It reads with
// no context: pgconn hands each context to a watcher goroutine and takes it back, two wake-ups
// for every message, which under a steady stream cost the daemon more CPU than decoding. A read
// deadline bounds the wait instead, and interrupt (set up by stream) ends it when ctx ends.
func (c *replConn) receive(ctx context.Context, deadline time.Time) (*pgproto3.CopyData, error) {
	if err := c.pg.Conn().SetReadDeadline(deadline); err != nil {
		return nil, fmt.Errorf("receive replication message: %w", err)
	}
	// After the deadline is set: a cancel from here on moves it to now (interrupt).
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	msg, err := c.pg.ReceiveMessage(context.Background())
	if err != nil {
		if pgconn.Timeout(err) && ctx.Err() == nil {
			return nil, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("receive replication message: %w", err)
	}
	switch msg := msg.(type) {
	case *pgproto3.CopyData:
		return msg, nil
	case *pgproto3.ErrorResponse:
		return nil, fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
	default:
		return nil, fmt.Errorf("replication stream: unexpected message %T", msg)
	}
}

// interrupt makes a receive in progress return when ctx ends; stop undoes it and clears the read
// deadline for whatever uses the connection next.
func (c *replConn) interrupt(ctx context.Context) (stop func()) {
	unregister := context.AfterFunc(ctx, func() { _ = c.pg.Conn().SetReadDeadline(time.Now()) })
	return func() {
		unregister()
		_ = c.pg.Conn().SetReadDeadline(time.Time{})
	}
}
