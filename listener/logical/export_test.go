package logical

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// SetNoAck makes l keep reporting its start position, as if it crashed after every apply and
// before any ack.
func SetNoAck(l *Listener, v bool) { l.noAck = v }

// DropTestSlot drops a test's slot, waiting up to 10 s for its walsender to exit: a closed
// replication connection leaves the slot active until the server notices.
func DropTestSlot(dsn, slot string) {
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		return
	}
	defer c.Close(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_, err := c.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
		if err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
