package status

import (
	"regexp"
	"strings"
)

// hidden replaces error text that /status does not show without status.token.
const hidden = "details hidden: set status.token to see them here, or run matcol status"

var sqlstate = regexp.MustCompile(`SQLSTATE ([0-9A-Z]{5})`)

// redacted returns r without the error texts that can quote row values (a unique violation's
// key, the text a cast rejected): each keeps only its condition name or SQLSTATE. /status
// serves it when no token guards it; matcol status, which reads the database with matcol's
// credentials, shows the full text.
func redacted(r *Report) *Report {
	out := *r
	out.Matviews = make([]Matview, len(r.Matviews))
	for i, m := range r.Matviews {
		if m.LastError != nil {
			// The scheduler stores "condition_name: message (detail)".
			name, _, _ := strings.Cut(*m.LastError, ":")
			s := name + ": " + hidden
			m.LastError = &s
		}
		out.Matviews[i] = m
	}
	out.Backfills = make([]Backfill, len(r.Backfills))
	for i, b := range r.Backfills {
		if b.Error != nil {
			s := "error: " + hidden
			if m := sqlstate.FindStringSubmatch(*b.Error); m != nil {
				s = "SQLSTATE " + m[1] + ": " + hidden
			}
			b.Error = &s
		}
		out.Backfills[i] = b
	}
	return &out
}
