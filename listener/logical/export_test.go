package logical

// SetNoAck makes l keep reporting its start position, as if it crashed after every apply and
// before any ack.
func SetNoAck(l *Listener, v bool) { l.noAck = v }
