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
// PostgreSQL; with a second processor the Go scheduler wakes a second thread to look for work on
// every wake-up from the network, and on a virtual machine those context switches were most of the
// daemon's CPU on the cores the application runs on (docs/operations.md).
func oneProc() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}
