package main

import (
	"context"
	"errors"
	"os"
	"runtime/debug"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/internal/dial"
)

// Build details, set with -ldflags "-X main.version=… -X main.commit=… -X main.date=…".
var (
	version = "dev"
	commit  = ""
	date    = ""
)

type globals struct {
	configPath string
}

// exitError carries a specific exit code, such as 1 for drift found by verify.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "matcol",
		Short:         "Keep materialized columns in PostgreSQL fresh",
		Long:          "matcol recomputes derived columns of PostgreSQL tables row by row, in small batches, whenever their inputs change.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&g.configPath, "config", "c", os.Getenv("MATCOL_CONFIG"), "config file (YAML); env MATCOL_CONFIG")
	pf.String("database-url", "", "PostgreSQL connection string; env MATCOL_DATABASE_URL")
	pf.String("log-level", "", "trace, debug, info, warn or error; env MATCOL_LOG_LEVEL")
	pf.String("log-format", "", "auto, json or text; env MATCOL_LOG_FORMAT")
	root.AddCommand(
		newInstall(g), newApply(g), newRun(g), newVerify(g), newSchedule(g), newDemo(g), newVersion(),
		newBackfill(g), newFailures(g), newRetry(g), newPause(g, true), newPause(g, false), newStatus(g),
	)
	return root
}

// load reads and validates the config.
func (g *globals) load(cmd *cobra.Command) (*config.Config, error) {
	cfg, err := config.Load(g.configPath, cmd.Flags())
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// connect loads the config and opens one connection named for role.
func (g *globals) connect(cmd *cobra.Command, role string) (*pgx.Conn, error) {
	cfg, err := g.load(cmd)
	if err != nil {
		return nil, err
	}
	return dial.Connect(cmd.Context(), cfg.DatabaseURL, role)
}

// logger builds the root logger: human-readable on a terminal, JSON otherwise.
func logger(cfg *config.Config) hclog.Logger {
	jsonOut := cfg.LogFormat == "json" || (cfg.LogFormat == "auto" && !isatty.IsTerminal(os.Stderr.Fd()))
	return hclog.New(&hclog.LoggerOptions{
		Name:       "matcol",
		Level:      hclog.LevelFromString(cfg.LogLevel),
		Output:     os.Stderr,
		JSONFormat: jsonOut,
		Color:      hclog.AutoColor,
	})
}

// context0 is a context for cleanup that outlives a cancelled command.
func context0(cmd *cobra.Command) context.Context { return context.WithoutCancel(cmd.Context()) }

func buildInfo() (string, string, string) {
	v, c, d := version, commit, date
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			switch {
			case s.Key == "vcs.revision" && c == "":
				c = s.Value
			case s.Key == "vcs.time" && d == "":
				d = s.Value
			}
		}
	}
	return v, c, d
}
