// Command matcol keeps materialized columns in PostgreSQL fresh.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := 0
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "matcol:", err)
		code = exitCode(err)
	}
	stop()
	os.Exit(code)
}
