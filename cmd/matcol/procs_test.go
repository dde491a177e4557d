package main

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// matcol runs Go on one processor unless GOMAXPROCS asks for more.
func TestOneProcUnlessAsked(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(2)
	t.Setenv("GOMAXPROCS", "")
	oneProc()
	require.Equal(t, 1, runtime.GOMAXPROCS(0))

	runtime.GOMAXPROCS(2)
	t.Setenv("GOMAXPROCS", "2")
	oneProc()
	require.Equal(t, 2, runtime.GOMAXPROCS(0), "an operator's GOMAXPROCS wins")
}
