package main_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// demo never touches the caller's database: the flags that name one are refused, not ignored.
func TestDemoRefusesDatabaseFlags(t *testing.T) {
	r := matcol(t, nil, "demo", "-c", writeConfig(t, "log_level: info\n"))
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "takes no --config")
	r = matcol(t, nil, "demo", "--database-url", "postgres://127.0.0.1/app")
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "takes no --database-url")
	r = matcol(t, nil, "demo", "--log-level", "loud")
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, `log_level: "loud" is not one of`)
	require.NotContains(t, r.stdout, "starting a throwaway", "flags are checked before anything starts")
}

// --log-level and --log-format reach the demo's daemon.
func TestDemoHonoursLogFlags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "demo", "--duration", "4s", "--log-level", "info", "--log-format", "json")
	cmd.Env = append(os.Environ(), "MATCOL_STATUS_LISTEN=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, stderr.String())
	require.Contains(t, string(out), "rows materialized")
	var running bool
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var entry map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &entry), "not a JSON line: %q", line)
		running = running || entry["@message"] == "matcol running"
	}
	require.True(t, running, "an info line from the daemon: %s", stderr.String())
}
