package plan

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Querier runs a query; pgx connections, pools and transactions all fit.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// CollectKeys runs a statement that returns width text columns (keys, and sometimes a stamp) and
// returns them column by column, the shape ArrayLiteral takes back.
func CollectKeys(ctx context.Context, q Querier, sql string, width int, args ...any) ([][]*string, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols := make([][]*string, width)
	dest := make([]any, width)
	for rows.Next() {
		vals := make([]*string, width)
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		for i, v := range vals {
			cols[i] = append(cols[i], v)
		}
	}
	return cols, rows.Err()
}
