package config

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// ByteSize is a size in bytes that reads "64MB", "1GB", "512kB" or a plain number.
type ByteSize int64

// ParseByteSize parses sizes with B, kB, MB, GB or TB suffixes (powers of 1024, as PostgreSQL).
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	upper := strings.ToUpper(t)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(upper, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size such as 64MB", s)
	}
	return ByteSize(n * mult), nil
}

func (b ByteSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}} {
		if int64(b) >= u.mult && int64(b)%u.mult == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.mult, u.suffix)
		}
	}
	return fmt.Sprintf("%dB", int64(b))
}

// ParseDuration accepts Go durations plus a "d" (day) unit (7d, 1d12h), and a plain number as
// seconds (10, 0.5).
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(t, 64); err == nil {
		return seconds(f)
	}
	var days int64
	if i := strings.Index(t, "d"); i > 0 {
		n, err := strconv.ParseInt(t[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration such as 30s, 10m, 24h or 7d", s)
		}
		days = n
		t = t[i+1:]
	}
	var d time.Duration
	if t != "" {
		var err error
		if d, err = time.ParseDuration(t); err != nil {
			return 0, fmt.Errorf("%q is not a duration such as 30s, 10m, 24h or 7d", s)
		}
	}
	return time.Duration(days)*24*time.Hour + d, nil
}

// seconds converts a plain number of seconds, fractions included, to a duration.
func seconds(f float64) (time.Duration, error) {
	if math.IsNaN(f) || math.Abs(f) > math.MaxInt64/float64(time.Second) {
		return 0, fmt.Errorf("%v is not a number of seconds", f)
	}
	return time.Duration(math.Round(f * float64(time.Second))), nil
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	byteSizeType = reflect.TypeOf(ByteSize(0))
)

// decodeHook reads durations and sizes, and refuses fractions where a whole number is wanted
// rather than dropping them: workers: 4.7 is an error, not 4.
func decodeHook() mapstructure.DecodeHookFunc {
	return func(from reflect.Type, to reflect.Type, data any) (any, error) {
		switch to {
		case durationType:
			switch v := data.(type) {
			case string:
				return ParseDuration(v)
			case int:
				return seconds(float64(v))
			case int64:
				return seconds(float64(v))
			case uint64:
				return seconds(float64(v))
			case float64:
				return seconds(v)
			}
		case byteSizeType:
			switch v := data.(type) {
			case string:
				return ParseByteSize(v)
			case int:
				return ByteSize(v), nil
			case int64:
				return ByteSize(v), nil
			case uint64:
				return ByteSize(v), nil
			case float64:
				if v != math.Trunc(v) {
					return nil, fmt.Errorf("%v is not a whole number of bytes", v)
				}
				return ByteSize(v), nil
			}
		}
		switch to.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			switch v := data.(type) {
			case float64:
				if v != math.Trunc(v) || math.IsInf(v, 0) {
					return nil, fmt.Errorf("%v is not a whole number", v)
				}
			case string:
				if _, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err != nil {
					return nil, fmt.Errorf("%q is not a whole number", v)
				}
				return strings.TrimSpace(v), nil
			}
		}
		return data, nil
	}
}

// Load reads the config file (optional when path is empty), MATCOL_* env and flags, then applies
// defaults. It does not validate; call Validate.
func Load(path string, flags *pflag.FlagSet) (*Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	setDefaults(v, "", reflect.ValueOf(Defaults()))
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if err := checkYAML(path, raw); err != nil {
			return nil, err
		}
		if err := v.ReadConfig(bytes.NewReader(raw)); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	v.SetEnvPrefix("MATCOL")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if flags != nil {
		for _, name := range []string{"database_url", "log_level", "log_format"} {
			if f := flags.Lookup(strings.ReplaceAll(name, "_", "-")); f != nil {
				if err := v.BindPFlag(name, f); err != nil {
					return nil, err
				}
			}
		}
	}
	// A bad value from the environment is named by its variable: the decode error below would
	// blame the file.
	if probs := checkEnv(); len(probs) > 0 {
		return nil, &ValidationError{Problems: probs}
	}
	var cfg Config
	if err := v.Unmarshal(&cfg, decoderOptions); err != nil {
		return nil, decodeProblems(path, err)
	}
	// An empty MATCOL_* variable counts as unset, except this one: empty is how the environment
	// says "no status server".
	if val, ok := os.LookupEnv("MATCOL_STATUS_LISTEN"); ok && val == "" {
		cfg.Status.Listen = ""
	}
	return &cfg, nil
}

func decoderOptions(dc *mapstructure.DecoderConfig) {
	dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(decodeHook(), mapstructure.StringToSliceHookFunc(","))
	dc.WeaklyTypedInput = true
}

// checkEnv decodes every MATCOL_* variable that names a scalar key, and reports those that do
// not fit the key, each by its variable.
func checkEnv() []string {
	var probs []string
	for key, t := range scalarKeys(reflect.TypeOf(Config{}), "") {
		name := EnvName(key)
		val, ok := os.LookupEnv(name)
		if !ok || val == "" {
			continue
		}
		out := reflect.New(t)
		dc := &mapstructure.DecoderConfig{Result: out.Interface()}
		decoderOptions(dc)
		dec, err := mapstructure.NewDecoder(dc)
		if err == nil {
			err = dec.Decode(val)
		}
		if err != nil {
			probs = append(probs, name+": "+innermost(err))
		}
	}
	sort.Strings(probs)
	return probs
}

// EnvName is the environment variable of a scalar key: MATCOL_ + the path in upper case, with _
// for the dots.
func EnvName(key string) string {
	return "MATCOL_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// scalarKeys maps the path of every key that env can set to its type.
func scalarKeys(t reflect.Type, prefix string) map[string]reflect.Type {
	out := map[string]reflect.Type{}
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
		switch {
		case f.Type.Kind() == reflect.Struct:
			for k, ft := range scalarKeys(f.Type, key) {
				out[k] = ft
			}
		case f.Type.Kind() == reflect.Slice, f.Type.Kind() == reflect.Map:
			// lists and maps come only from the file
		default:
			out[key] = f.Type
		}
	}
	return out
}

// decodeProblems turns a decode error into one problem per key, each named by its file and key.
func decodeProblems(path string, err error) error {
	var probs []string
	seen := map[string]bool{}
	leaves(err, "", func(key, msg string) {
		p := displayPath(path) + ": " + msg
		if key != "" {
			p = displayPath(path) + ": " + key + ": " + msg
		}
		if !seen[p] {
			seen[p] = true
			probs = append(probs, p)
		}
	})
	return &ValidationError{Problems: probs}
}

// innermost is the message of the deepest error in err's chain, without mapstructure's framing.
func innermost(err error) string {
	var out []string
	leaves(err, "", func(_, msg string) { out = append(out, msg) })
	return strings.Join(out, "; ")
}

// leaves walks mapstructure's nested and joined errors down to the ones that say what is wrong,
// each with the key of the closest DecodeError above it.
func leaves(err error, key string, emit func(key, msg string)) {
	if de, ok := err.(*mapstructure.DecodeError); ok {
		leaves(de.Unwrap(), de.Name(), emit)
		return
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			leaves(e, key, emit)
		}
		return
	}
	if pe, ok := err.(*mapstructure.ParseError); ok {
		emit(key, fmt.Sprintf("%q is not a valid %s", fmt.Sprint(pe.Value), pe.Expected.Type()))
		return
	}
	if next := errors.Unwrap(err); next != nil {
		leaves(next, key, emit)
		return
	}
	emit(key, err.Error())
}

func displayPath(p string) string {
	if p == "" {
		return "(flags)"
	}
	return p
}

// setDefaults registers every scalar key so that MATCOL_* env vars reach it.
func setDefaults(v *viper.Viper, prefix string, val reflect.Value) {
	t := val.Type()
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
		fv := val.Field(i)
		switch fv.Kind() {
		case reflect.Struct:
			setDefaults(v, key, fv)
		case reflect.Slice:
			// lists come only from the file
		default:
			switch x := fv.Interface().(type) {
			case time.Duration:
				v.SetDefault(key, x.String())
			case ByteSize:
				v.SetDefault(key, x.String())
			default:
				v.SetDefault(key, x)
			}
		}
	}
}

// checkYAML parses raw strictly enough to name the culprit: syntax errors with their line, and
// unknown keys with a did-you-mean.
func checkYAML(path string, raw []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: malformed YAML: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	var probs []string
	walkKeys(doc.Content[0], reflect.TypeOf(Config{}), "", &probs)
	if len(probs) > 0 {
		return &ValidationError{Problems: prefixAll(path, probs)}
	}
	return nil
}

func prefixAll(path string, probs []string) []string {
	out := make([]string, len(probs))
	for i, p := range probs {
		out[i] = path + ": " + p
	}
	return out
}

func walkKeys(n *yaml.Node, t reflect.Type, prefix string, probs *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if !(n.Kind == yaml.ScalarNode && n.Tag == "!!null") {
				*probs = append(*probs, fmt.Sprintf("line %d: %s should be a mapping", n.Line, orRoot(prefix)))
			}
			return
		}
		fields := map[string]reflect.Type{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			if tag := t.Field(i).Tag.Get("mapstructure"); tag != "" {
				fields[tag] = t.Field(i).Type
				names = append(names, tag)
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			key := k
			if prefix != "" {
				key = prefix + "." + k
			}
			ft, ok := fields[k]
			if !ok {
				msg := fmt.Sprintf("line %d: unknown key %q", n.Content[i].Line, key)
				if s := suggest(k, names); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				*probs = append(*probs, msg)
				continue
			}
			walkKeys(n.Content[i+1], ft, key, probs)
		}
	case reflect.Slice:
		if t.Elem().Kind() != reflect.Struct {
			return
		}
		if n.Kind != yaml.SequenceNode {
			if !(n.Kind == yaml.ScalarNode && n.Tag == "!!null") {
				*probs = append(*probs, fmt.Sprintf("line %d: %s should be a list", n.Line, prefix))
			}
			return
		}
		for i, item := range n.Content {
			walkKeys(item, t.Elem(), fmt.Sprintf("%s[%d]", prefix, i), probs)
		}
	}
}

func orRoot(s string) string {
	if s == "" {
		return "the document"
	}
	return s
}

func suggest(k string, names []string) string {
	best, bestD := "", 1<<30
	for _, n := range names {
		if d := levenshtein(strings.ToLower(k), n); d < bestD {
			best, bestD = n, d
		}
	}
	if bestD <= 2 || (bestD <= len(k)/3 && bestD <= 4) {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
