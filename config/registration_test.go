package config

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRegistration(t *testing.T) {
	cfg, err := Load(write(t, example), nil)
	require.NoError(t, err)
	require.Equal(t, "yaml", cfg.Registration, "default")

	cfg.Registration = "sql"
	require.ErrorContains(t, cfg.Validate(), "enrichments: must be empty with registration: sql")
	cfg.Enrichments = nil
	require.NoError(t, cfg.Validate())

	cfg.Registration = "migrations"
	require.ErrorContains(t, cfg.Validate(), `registration: "migrations" is not one of yaml, sql`)
}
