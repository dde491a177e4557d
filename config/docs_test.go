package config

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// docKey is one key of the config structs as docs/configuration.md must list it.
type docKey struct {
	env string // "" for keys inside lists, which come only from the file
	def string // the default as the doc shows it; "" for keys inside lists
}

// configKeys walks Config by its mapstructure tags: scalar keys get their env name and default,
// keys inside lists are written path[].key.
func configKeys(t reflect.Type, v reflect.Value, prefix string, inList bool, out map[string]docKey) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("mapstructure")
		if tag == "" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Duration(0)):
			var fv reflect.Value
			if v.IsValid() {
				fv = v.Field(i)
			}
			configKeys(ft, fv, key, inList, out)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out[key] = docKey{}
			configKeys(ft.Elem(), reflect.Value{}, key+"[]", true, out)
		case inList:
			out[key] = docKey{}
		default:
			out[key] = docKey{
				env: EnvName(key),
				def: showDefault(v.Field(i).Interface()),
			}
		}
	}
}

func showDefault(x any) string {
	switch d := x.(type) {
	case time.Duration:
		s := d.String()
		for _, z := range []string{"m0s", "h0m"} {
			s = strings.Replace(s, z, z[:1], 1)
		}
		return s
	case string:
		if d == "" {
			return `""`
		}
		return d
	default:
		return fmt.Sprint(d)
	}
}

var docRow = regexp.MustCompile("^\\| `([^`]+)` \\| ([^|]+) \\| ([^|]+) \\|")

func TestConfigurationDocMatchesStructs(t *testing.T) {
	raw, err := os.ReadFile("../docs/configuration.md")
	require.NoError(t, err)
	documented := map[string][2]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if m := docRow.FindStringSubmatch(line); m != nil {
			documented[m[1]] = [2]string{strings.TrimSpace(m[2]), strings.TrimSpace(m[3])}
		}
	}
	keys := map[string]docKey{}
	configKeys(reflect.TypeOf(Config{}), reflect.ValueOf(Defaults()), "", false, keys)

	var problems []string
	for key, want := range keys {
		got, ok := documented[key]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s is missing from docs/configuration.md", key))
			continue
		}
		if want.env == "" {
			if got[0] != "—" {
				problems = append(problems, fmt.Sprintf("%s: env is %q; keys inside lists have none (—)", key, got[0]))
			}
			continue
		}
		if got[0] != "`"+want.env+"`" {
			problems = append(problems, fmt.Sprintf("%s: env is %s, want `%s`", key, got[0], want.env))
		}
		if !strings.HasPrefix(got[1], "`"+want.def+"`") {
			problems = append(problems, fmt.Sprintf("%s: default is %s, want it to start with `%s`", key, got[1], want.def))
		}
	}
	for key := range documented {
		if _, ok := keys[key]; !ok {
			problems = append(problems, fmt.Sprintf("docs/configuration.md documents %s, which is not a config key", key))
		}
	}
	sort.Strings(problems)
	require.Empty(t, problems)
	require.Greater(t, len(keys), 30, "the walk found the keys")
}

// The env names the doc promises must reach the config.
func TestDocumentedEnvNamesWork(t *testing.T) {
	t.Setenv("MATCOL_INVALIDATION_MAX_RETAINED_WAL", "2GB")
	t.Setenv("MATCOL_MATERIALIZER_TARGET_BATCH_DURATION", "250ms")
	t.Setenv("MATCOL_STATUS_LISTEN", "0.0.0.0:9180")
	t.Setenv("MATCOL_REGISTRATION", "sql")
	cfg, err := Load("", nil)
	require.NoError(t, err)
	require.Equal(t, ByteSize(2<<30), cfg.Invalidation.MaxRetainedWAL)
	require.Equal(t, 250*time.Millisecond, cfg.Materializer.TargetBatchDuration)
	require.Equal(t, "0.0.0.0:9180", cfg.Status.Listen)
	require.Equal(t, "sql", cfg.Registration)
}
