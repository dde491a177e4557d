// Command matcol keeps materialized columns in PostgreSQL fresh.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

func main() {
	oneProc()
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

// oneProc runs Go on one processor unless GOMAXPROCS says otherwise. matcol's work is waiting on
// PostgreSQL; with a second processor the Go scheduler also wakes a second thread to look for work
// at wake-ups from the network, context switches that cost the cores the application runs on
// (docs/operations.md).
func oneProc() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}
