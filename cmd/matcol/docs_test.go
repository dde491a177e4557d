package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/status"
)

// The docs must describe this build: every command, flag, config key, environment variable,
// metric and quoted log message they mention must exist in the code, and docs/cli.md must list
// every command and flag there is. config/docs_test.go checks docs/configuration.md's tables the
// same way, and status/docs_test.go docs/metrics.md's.

// pages returns README.md and docs/*.md by their path from the repository root.
func pages(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("../../docs/*.md")
	require.NoError(t, err)
	files = append(files, "../../README.md")
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		out[strings.TrimPrefix(f, "../../")] = string(b)
	}
	require.Greater(t, len(out), 10)
	return out
}

var (
	fence      = regexp.MustCompile("(?ms)^ *```([a-z]*)\n(.*?)^ *```")
	inlineCode = regexp.MustCompile("`([^`\n]+)`")
)

// snippet is a piece of code in a page: a line of a fenced block, or an inline span.
type snippet struct {
	text, lang string
	inline     bool
}

func snippets(page string) []snippet {
	var out []snippet
	for _, m := range fence.FindAllStringSubmatch(page, -1) {
		for _, line := range strings.Split(m[2], "\n") {
			out = append(out, snippet{text: line, lang: m[1]})
		}
	}
	for _, m := range inlineCode.FindAllStringSubmatch(fence.ReplaceAllString(page, ""), -1) {
		out = append(out, snippet{text: m[1], inline: true})
	}
	return out
}

func tree() *cobra.Command {
	root := newRoot()
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	return root
}

func child(c *cobra.Command, name string) *cobra.Command {
	for _, s := range c.Commands() {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

func hasFlag(c *cobra.Command, name string) bool {
	if name == "help" || name == "h" {
		return true
	}
	if len(name) == 1 {
		return c.Flags().ShorthandLookup(name) != nil || c.InheritedFlags().ShorthandLookup(name) != nil
	}
	return c.Flags().Lookup(name) != nil || c.InheritedFlags().Lookup(name) != nil
}

var (
	invocation = regexp.MustCompile(`(?:^|[\s(\[$'"])matcol((?: [a-z][a-z0-9-]*(?:\|[a-z][a-z0-9-]*)*)+)`)
	flagToken  = regexp.MustCompile(`(?:^|[\s\[(|/=])(--?[a-zA-Z][a-zA-Z0-9-]*)`)
	dialRole   = regexp.MustCompile(`dial\.(?:Connect|Pool)\([^,]+, [^,]+, "([a-z]+)"`)
)

// sources returns the repository's Go files (tests too when withTests) by path.
func sources(t *testing.T, withTests bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir("../..", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(p, ".go") && (withTests || !strings.HasSuffix(p, "_test.go")) {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[p] = string(b)
		}
		return nil
	})
	require.NoError(t, err)
	return out
}

// appNames are the words after "matcol" in the application_name of its connections
// ("matcol worker"), which pages quote without meaning a command.
func appNames(t *testing.T) map[string]bool {
	out := map[string]bool{}
	for _, src := range sources(t, false) {
		for _, m := range dialRole.FindAllStringSubmatch(src, -1) {
			out[m[1]] = true
		}
	}
	require.True(t, out["worker"] && out["listener"], "found the connection roles")
	return out
}

// flagsAfter returns the flags of an invocation's remainder, up to a comment or the next
// invocation.
func flagsAfter(rest string) []string {
	if i := strings.Index(rest, "#"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.Index(rest, " matcol "); i >= 0 {
		rest = rest[:i]
	}
	var out []string
	for _, m := range flagToken.FindAllStringSubmatch(rest, -1) {
		out = append(out, strings.TrimLeft(m[1], "-"))
	}
	return out
}

// looksLikeCommandLine tells a command line that names an unknown command (`matcol frob --all`,
// `matcol frob`) from prose that names matcol: it starts the snippet and is short or has flags.
func looksLikeCommandLine(text string, at int) bool {
	head := strings.TrimSpace(text[:at])
	if head != "" && head != "$" {
		return false
	}
	return strings.Contains(text, " -") || len(strings.Fields(text)) <= 3
}

// Every `matcol COMMAND [--flag]` a page shows exists, and so does every flag it names alone.
func TestDocsMentionOnlyExistingCommandsAndFlags(t *testing.T) {
	root := tree()
	apps := appNames(t)
	var all []*cobra.Command
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		all = append(all, c)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	var problems []string
	seen := 0
	for name, page := range pages(t) {
		for _, s := range snippets(page) {
			for _, loc := range invocation.FindAllStringSubmatchIndex(s.text, -1) {
				words := strings.Fields(s.text[loc[2]:loc[3]])
				if child(root, strings.Split(words[0], "|")[0]) == nil && !looksLikeCommandLine(s.text, loc[0]) {
					continue // prose that names matcol: "matcol is starting", "schema matcol is at version"
				}
				cmds := []*cobra.Command{root}
				for i, w := range words {
					if len(cmds) != 1 || len(cmds[0].Commands()) == 0 || cmds[0].Name() == "help" {
						break
					}
					var next []*cobra.Command
					for _, alt := range strings.Split(w, "|") {
						if c := child(cmds[0], alt); c != nil {
							next = append(next, c)
						} else if i == 0 && apps[alt] {
							next = nil
							break
						} else if i == 0 || len(cmds[0].Commands()) > 0 {
							problems = append(problems, fmt.Sprintf("%s: `%s`: %s has no command %q", name, s.text, cmds[0].CommandPath(), alt))
						}
					}
					if len(next) == 0 {
						cmds = nil
						break
					}
					cmds = next
				}
				if len(cmds) == 0 || cmds[0] == root {
					continue
				}
				seen++
				for _, f := range flagsAfter(s.text[loc[3]:]) {
					if !slices.ContainsFunc(cmds, func(c *cobra.Command) bool { return hasFlag(c, f) }) {
						problems = append(problems, fmt.Sprintf("%s: `%s`: %s has no flag -%s", name, s.text, cmds[0].CommandPath(), f))
					}
				}
			}
			if s.inline && strings.HasPrefix(s.text, "-") {
				for _, f := range flagsAfter(s.text) {
					if !slices.ContainsFunc(all, func(c *cobra.Command) bool { return hasFlag(c, f) }) {
						problems = append(problems, fmt.Sprintf("%s: `%s`: no command has a flag -%s", name, s.text, f))
					}
				}
			}
		}
	}
	sort.Strings(problems)
	require.Empty(t, problems)
	require.Greater(t, seen, 50, "the pages' invocations were found")
}

var (
	cliHeading = regexp.MustCompile("(?m)^## `(matcol[a-z -]*)`$")
	flagRow    = regexp.MustCompile("^\\| `(-[a-z], )?--([a-z-]+)[^`]*` \\|([^|]*)\\|")
)

// docs/cli.md lists every command, and in each the flags it has, with their defaults.
func TestCLIReferenceListsEveryCommandAndFlag(t *testing.T) {
	raw, err := os.ReadFile("../../docs/cli.md")
	require.NoError(t, err)
	doc := string(raw)
	sections := map[string]string{}
	locs := cliHeading.FindAllStringSubmatchIndex(doc, -1)
	for i, l := range locs {
		end := len(doc)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		sections[doc[l[2]:l[3]]] = doc[l[1]:end]
	}
	_, global, ok := strings.Cut(doc, "## Global flags\n")
	require.True(t, ok)
	global, _, _ = strings.Cut(global, "\n## ")
	sections["matcol"] = global

	var problems []string
	check := func(path string, flags *pflag.FlagSet) {
		body, ok := sections[path]
		if !ok {
			problems = append(problems, fmt.Sprintf("docs/cli.md has no section ## `%s`", path))
			return
		}
		delete(sections, path)
		documented := map[string]string{}
		for _, line := range strings.Split(body, "\n") {
			if m := flagRow.FindStringSubmatch(line); m != nil {
				documented[m[2]] = strings.TrimSpace(m[3])
			}
		}
		flags.VisitAll(func(f *pflag.Flag) {
			if f.Name == "help" {
				return
			}
			def, ok := documented[f.Name]
			if !ok {
				problems = append(problems, fmt.Sprintf("docs/cli.md: %s --%s is not documented", path, f.Name))
				return
			}
			delete(documented, f.Name)
			switch f.DefValue {
			case "", "0", "false", "0s", "[]":
			default:
				if !strings.Contains(def, "`"+f.DefValue+"`") {
					problems = append(problems, fmt.Sprintf("docs/cli.md: %s --%s defaults to %s, not %s", path, f.Name, f.DefValue, def))
				}
			}
		})
		for f := range documented {
			problems = append(problems, fmt.Sprintf("docs/cli.md: %s has no flag --%s", path, f))
		}
	}
	root := tree()
	check("matcol", root.PersistentFlags())
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, s := range c.Commands() {
			if s.Hidden || s.Name() == "help" {
				continue
			}
			check(s.CommandPath(), s.LocalNonPersistentFlags())
			walk(s)
		}
	}
	walk(root)
	for path := range sections {
		problems = append(problems, fmt.Sprintf("docs/cli.md documents %s, which is not a command", path))
	}
	sort.Strings(problems)
	require.Empty(t, problems)
}

// keyPaths lists every config key as the docs write it: materializer.workers,
// enrichments[].depends_on[].sql.
func keyPaths(t reflect.Type, prefix string, out map[string]bool) {
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("mapstructure")
		if tag == "" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		out[key] = true
		ft := t.Field(i).Type
		switch {
		case ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Duration(0)):
			keyPaths(ft, key, out)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out[key+"[]"] = true
			keyPaths(ft.Elem(), key+"[]", out)
		}
	}
}

// jsonPaths adds the JSON paths of t: objects by field, arrays as name[].
func jsonPaths(t reflect.Type, prefix string, out map[string]bool) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t.PkgPath() == "time" {
		return
	}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		ft := t.Field(i).Type
		if ft.Kind() == reflect.Slice {
			path += "[]"
		}
		out[path] = true
		jsonPaths(ft, path, out)
	}
}

var (
	configKey = regexp.MustCompile(`^((?:database|invalidation|status|materializer|throttle|enrichments|matviews)(?:\[\])?\.[a-z_.\[\]]+)(?:$|[: =])`)
	envName   = regexp.MustCompile(`\bMATCOL_[A-Z0-9_]*[A-Z0-9]`)
)

// Config keys and MATCOL_* variables the pages name exist; YAML configs they show load.
func TestDocsMentionOnlyExistingConfigKeys(t *testing.T) {
	keys := map[string]bool{}
	keyPaths(reflect.TypeOf(config.Config{}), "", keys)
	envs := map[string]bool{}
	for k := range keys {
		envs[config.EnvName(k)] = true
	}
	// /status fields share the look of keys (enrichments[].stale_rows) and are names too.
	jsonPaths(reflect.TypeOf(status.Report{}), "", keys)
	// Variables the code reads by name: MATCOL_CONFIG, test and benchmark knobs.
	for _, src := range sources(t, true) {
		for _, m := range envName.FindAllString(src, -1) {
			envs[m] = true
		}
	}
	if b, err := os.ReadFile("../../Makefile"); err == nil {
		for _, m := range envName.FindAllString(string(b), -1) {
			envs[m] = true
		}
	}
	var problems []string
	configs := 0
	for name, page := range pages(t) {
		for _, s := range snippets(page) {
			if m := configKey.FindStringSubmatch(strings.TrimSpace(s.text)); m != nil && s.inline {
				if k := strings.TrimRight(m[1], "."); !keys[k] {
					problems = append(problems, fmt.Sprintf("%s: `%s` is not a config key", name, s.text))
				}
			}
		}
		for _, m := range envName.FindAllString(page, -1) {
			if !envs[m] {
				problems = append(problems, fmt.Sprintf("%s: %s is not a variable matcol reads", name, m))
			}
		}
		for _, m := range fence.FindAllStringSubmatch(page, -1) {
			if m[1] != "yaml" || strings.Contains(m[2], "apiVersion:") {
				continue
			}
			configs++
			f := filepath.Join(t.TempDir(), "c.yaml")
			require.NoError(t, os.WriteFile(f, []byte(m[2]), 0o600))
			cfg, err := config.Load(f, nil)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: a YAML example does not load: %v", name, err))
				continue
			}
			problems = append(problems, overInvalidation(name, cfg)...)
		}
	}
	cfg, err := config.Load("../../config.example.yaml", nil)
	require.NoError(t, err)
	problems = append(problems, overInvalidation("config.example.yaml", cfg)...)
	sort.Strings(problems)
	require.Empty(t, problems)
	require.Greater(t, configs, 3)
}

// overInvalidation names the dependencies of an example whose table its enrichment's SQL never
// reads: every change there would recompute rows for nothing.
func overInvalidation(where string, cfg *config.Config) []string {
	var out []string
	for _, e := range cfg.Enrichments {
		for _, d := range e.DependsOn {
			name := d.Table[strings.LastIndex(d.Table, ".")+1:]
			if !regexp.MustCompile(`(?i)\b` + regexp.QuoteMeta(strings.Trim(name, `"`)) + `\b`).MatchString(e.SQL) {
				out = append(out, fmt.Sprintf("%s: enrichment %s depends on %s, which its sql does not read", where, e.Name, d.Table))
			}
		}
	}
	return out
}

var metricSuffix = regexp.MustCompile(`_(total|seconds|bytes|rows|info|up|exact|status|done|bucket|count|sum|leader|paused|failures|invalidations)$`)

// Every matcol_* metric a page names is exported.
func TestDocsMentionOnlyExportedMetrics(t *testing.T) {
	exported := map[string]bool{}
	for _, m := range status.Metrics() {
		exported[m.Name] = true
		if m.Type == "histogram" {
			for _, s := range []string{"_bucket", "_count", "_sum"} {
				exported[m.Name+s] = true
			}
		}
	}
	var problems []string
	n := 0
	for name, page := range pages(t) {
		for _, m := range regexp.MustCompile(`\bmatcol_[a-z0-9_]+\b`).FindAllString(page, -1) {
			if !exported[m] && !metricSuffix.MatchString(m) {
				continue // a trigger, a test database, …
			}
			n++
			if !exported[m] {
				problems = append(problems, fmt.Sprintf("%s: %s is not a metric matcol exports", name, m))
			}
		}
	}
	sort.Strings(problems)
	require.Empty(t, problems)
	require.Greater(t, n, 20)
}

var (
	logCall  = regexp.MustCompile(`\.(?:Trace|Debug|Info|Warn|Error)\(\s*((?:"(?:[^"\\]|\\.)*"\s*\+\s*)*"(?:[^"\\]|\\.)*")`)
	goString = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)
	// Helpers that log the message they are given (warnEntry(t, "…", …)).
	helperCall   = regexp.MustCompile(`\.(?:warn|log)[A-Z][A-Za-z]*\([^"\n]*"((?:[^"\\]|\\.)*)"`)
	loggedProse  = regexp.MustCompile("(?i)\\blog(?:s|ged| line| message)?:? \\(?`([^`]+)`")
	formatString = regexp.MustCompile(`Sprintf\(\s*"((?:[^"\\]|\\.)*%(?:[^"\\]|\\.)*)"`)
	verb         = regexp.MustCompile(`%[-+# 0-9.]*[a-zA-Z]`)
	rowLead      = regexp.MustCompile("^\\| (?:(?:log|warning|info|debug|error) )?`([^`]+)`")
)

// Every log message a page quotes is one the code logs, word for word.
func TestDocsQuoteOnlyExistingLogMessages(t *testing.T) {
	messages := map[string]bool{}
	for _, src := range sources(t, false) {
		for _, m := range logCall.FindAllStringSubmatch(src, -1) {
			// A message may be split over a concatenation of literals.
			msg := ""
			for _, part := range goString.FindAllStringSubmatch(m[1], -1) {
				msg += part[1]
			}
			messages[msg] = true
		}
		for _, m := range helperCall.FindAllStringSubmatch(src, -1) {
			messages[m[1]] = true
		}
	}
	require.True(t, messages["database unreachable; retrying"], "found the log calls")
	// Some messages are built (a plan's warnings): a documented example of one matches its format.
	var formats []*regexp.Regexp
	for _, src := range sources(t, false) {
		for _, m := range formatString.FindAllStringSubmatch(src, -1) {
			parts := verb.Split(m[1], -1)
			if len(strings.Join(parts, "")) < 20 {
				continue // mostly verbs: it would match anything
			}
			for i := range parts {
				parts[i] = regexp.QuoteMeta(strings.ReplaceAll(parts[i], `\"`, `"`))
			}
			formats = append(formats, regexp.MustCompile("^"+strings.Join(parts, ".+")+"$"))
		}
	}
	known := func(msg string) bool {
		return messages[msg] || slices.ContainsFunc(formats, func(re *regexp.Regexp) bool { return re.MatchString(msg) })
	}
	var problems []string
	quoted := 0
	for name, page := range pages(t) {
		var found []string
		for _, m := range loggedProse.FindAllStringSubmatch(page, -1) {
			found = append(found, strings.Join(strings.Fields(m[1]), " ")) // a span may wrap
		}
		// Tables of log lines: a header "log message", or rows that begin "log `…`", "warning `…`".
		inLogTable := false
		for _, line := range strings.Split(page, "\n") {
			if strings.HasPrefix(line, "| ") && strings.Contains(line, " | ") && !strings.HasPrefix(line, "|--") {
				if strings.HasPrefix(line, "| log message |") {
					inLogTable = true
					continue
				}
				m := rowLead.FindStringSubmatch(line)
				lead := regexp.MustCompile("^\\| (log|warning|info|debug) `").MatchString(line)
				if m != nil && (lead || inLogTable) {
					found = append(found, m[1])
				}
			} else if !strings.HasPrefix(line, "|") {
				inLogTable = false
			}
		}
		for _, msg := range found {
			quoted++
			if !known(msg) {
				problems = append(problems, fmt.Sprintf("%s: quotes the log message %q, which matcol does not log", name, msg))
			}
		}
	}
	sort.Strings(problems)
	require.Empty(t, problems)
	require.Greater(t, quoted, 8)
}
