package plan

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReplaceParams(t *testing.T) {
	with := []string{"K1", "K2"}
	for _, c := range []struct{ in, want string }{
		{`WHERE id = ANY($1)`, `WHERE id = ANY((K1))`},
		{`unnest($1, $2) AS u(a, b)`, `unnest((K1), (K2)) AS u(a, b)`},
		{`WHERE id = ANY($1::bigint[])`, `WHERE id = ANY((K1)::bigint[])`},
		{`SELECT '$1', 'it''s $1', $1`, `SELECT '$1', 'it''s $1', (K1)`},
		{`SELECT E'\'$1', $1`, `SELECT E'\'$1', (K1)`},
		{`SELECT "col$1", "a""$1", $1`, `SELECT "col$1", "a""$1", (K1)`},
		{`SELECT a$1 FROM t$1 WHERE x = $2`, `SELECT a$1 FROM t$1 WHERE x = (K2)`},
		{"SELECT 1 -- $1\n, $1", "SELECT 1 -- $1\n, (K1)"},
		{`SELECT /* $1 /* $2 */ $1 */ $1`, `SELECT /* $1 /* $2 */ $1 */ (K1)`},
		{`SELECT $$ $1 $$, $f$ $1 $$ $f$, $1`, `SELECT $$ $1 $$, $f$ $1 $$ $f$, (K1)`},
		{`SELECT ümlaut$1, $1`, `SELECT ümlaut$1, (K1)`},
	} {
		got, err := ReplaceParams(c.in, with)
		require.NoError(t, err, c.in)
		require.Equal(t, c.want, got, c.in)
	}
	_, err := ReplaceParams(`SELECT $3`, with)
	require.ErrorContains(t, err, "$3")
	_, err = ReplaceParams(`SELECT $10`, with)
	require.ErrorContains(t, err, "$10")
}
