package logical

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// nameRe is what slot and publication names may be: they are spliced into replication commands,
// which take no parameters.
var nameRe = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// slotState is the slot's row in pg_replication_slots, as the WAL guard needs it.
type slotState struct {
	exists      bool
	active      bool
	confirmed   pglogrepl.LSN
	retained    int64
	walStatus   string
	serverLSN   pglogrepl.LSN
	otherDB     bool
	wrongPlugin bool
}

// readSlot reads the slot's state. wal_status exists from PostgreSQL 13, matcol's floor.
func readSlot(ctx context.Context, conn *pgx.Conn, slot string) (slotState, error) {
	var s slotState
	var confirmed, current *string
	var retained *int64
	var status *string
	var plugin *string
	// One round trip: a hold reads the slot four times a second.
	err := conn.QueryRow(ctx, `
		SELECT s.active, s.confirmed_flush_lsn::text, (pg_current_wal_lsn() - s.restart_lsn)::bigint,
		       s.wal_status, pg_current_wal_lsn()::text, s.plugin::text, s.database IS DISTINCT FROM current_database()
		FROM pg_replication_slots s WHERE s.slot_name = $1`, slot).
		Scan(&s.active, &confirmed, &retained, &status, &current, &plugin, &s.otherDB)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	s.exists = true
	if confirmed != nil {
		s.confirmed, _ = pglogrepl.ParseLSN(*confirmed)
	}
	if current != nil {
		s.serverLSN, _ = pglogrepl.ParseLSN(*current)
	}
	if retained != nil {
		s.retained = *retained
	}
	if status != nil {
		s.walStatus = *status
	}
	s.wrongPlugin = plugin == nil || *plugin != "pgoutput"
	return s, nil
}

// needsRecreate says why an existing slot cannot be resumed, or "".
func (s slotState) needsRecreate(maxRetained int64) string {
	switch {
	case s.walStatus == "lost":
		return "slot lost its WAL"
	case s.retained > maxRetained:
		return "slot retains more WAL than invalidation.max_retained_wal"
	case s.confirmed == 0:
		return "slot has no confirmed position"
	}
	return ""
}

// dropSlot drops the slot; the caller holds leadership, so nobody else streams from it.
func dropSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot); err != nil {
		return fmt.Errorf("drop replication slot %s: %w", slot, err)
	}
	return nil
}
