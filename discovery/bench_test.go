package discovery_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgtest"
)

// BenchmarkScanManySchemas measures the rescan's catalog query over MATCOL_BENCH_SCHEMAS schemas
// (10,000 by default) of 10 tables each, every one with materialized_at and a primary key:
//
//	go test ./discovery -run XXX -bench ScanManySchemas -benchtime 5x -timeout 60m
func BenchmarkScanManySchemas(b *testing.B) {
	schemas := 10000
	if s := os.Getenv("MATCOL_BENCH_SCHEMAS"); s != "" {
		var err error
		if schemas, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	conn := pgtest.Connect(b, pgtest.NewDB(b))
	ctx := context.Background()
	start := time.Now()
	for i := 0; i < schemas; i += 100 {
		pgtest.Exec(b, conn, fmt.Sprintf(`DO $$ BEGIN FOR s IN %d..%d LOOP
			EXECUTE format('CREATE SCHEMA tenant_%%s', s);
			FOR t IN 1..10 LOOP
				EXECUTE format('CREATE TABLE tenant_%%s.t%%s (id bigint PRIMARY KEY, v int, materialized_at timestamptz)', s, t);
			END LOOP;
		END LOOP; END $$`, i, min(i+100, schemas)-1))
	}
	b.Logf("%d schemas × 10 tables created in %s", schemas, time.Since(start).Round(time.Second))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tables, err := discovery.Scan(ctx, conn)
		if err != nil {
			b.Fatal(err)
		}
		if len(tables) != schemas*10 {
			b.Fatalf("found %d tables, want %d", len(tables), schemas*10)
		}
	}
}
