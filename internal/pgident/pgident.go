// Package pgident parses and quotes PostgreSQL identifiers the way the server does: unquoted
// names fold to lower case, double-quoted names keep their case, and "" stands for one quote.
package pgident

import (
	"fmt"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5"
)

// Table is a schema-qualified relation name as stored in the catalog (no quotes).
type Table struct {
	Schema string
	Name   string
}

// Sanitize returns the quoted "schema"."name" for use in SQL.
func (t Table) Sanitize() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// String renders the name as a user would type it: quoted only where needed.
func (t Table) String() string {
	if t.Schema == "" {
		return Quote(t.Name)
	}
	return Quote(t.Schema) + "." + Quote(t.Name)
}

// Quote returns name quoted only when PostgreSQL would need the quotes.
func Quote(name string) string {
	if name != "" && isPlain(name) {
		return name
	}
	return pgx.Identifier{name}.Sanitize()
}

func isPlain(s string) bool {
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r == '_':
		case (r >= '0' && r <= '9') || r == '$':
			if i == 0 {
				return false
			}
		default:
			return false
		}
	}
	return !reserved[s]
}

// A few keywords that must be quoted as names; enough to keep String round-trippable for the
// names users commonly hit.
var reserved = map[string]bool{"user": true, "order": true, "group": true, "table": true, "select": true,
	"from": true, "where": true, "limit": true, "offset": true, "all": true, "and": true, "or": true,
	"not": true, "null": true, "true": true, "false": true, "case": true, "end": true, "default": true,
	"check": true, "column": true, "constraint": true, "primary": true, "references": true,
	"window": true, "with": true, "to": true, "in": true, "is": true, "as": true, "on": true}

// ParseName parses a (possibly dotted) SQL name into its parts.
func ParseName(s string) ([]string, error) {
	var parts []string
	i := 0
	rs := []rune(strings.TrimSpace(s))
	if len(rs) == 0 {
		return nil, fmt.Errorf("empty name")
	}
	for {
		if i >= len(rs) {
			return nil, fmt.Errorf("name %q ends with a dot", s)
		}
		var b strings.Builder
		if rs[i] == '"' {
			i++
			closed := false
			for i < len(rs) {
				if rs[i] == '"' {
					if i+1 < len(rs) && rs[i+1] == '"' {
						b.WriteRune('"')
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				if rs[i] == 0 {
					return nil, fmt.Errorf("name %q contains a NUL character", s)
				}
				b.WriteRune(rs[i])
				i++
			}
			if !closed {
				return nil, fmt.Errorf("name %q has an unterminated quote", s)
			}
			if b.Len() == 0 {
				return nil, fmt.Errorf("name %q has a zero-length quoted identifier", s)
			}
		} else {
			start := i
			for i < len(rs) && rs[i] != '.' {
				r := rs[i]
				if !(unicode.IsLetter(r) || r == '_' || (i > start && (unicode.IsDigit(r) || r == '$'))) {
					if r == '*' && i == start && (i+1 == len(rs) || rs[i+1] == '.') {
						i++
						b.WriteRune('*')
						break
					}
					return nil, fmt.Errorf("name %q: character %q needs double quotes", s, r)
				}
				b.WriteRune(unicode.ToLower(r))
				i++
			}
			if b.Len() == 0 {
				return nil, fmt.Errorf("name %q has an empty part", s)
			}
		}
		parts = append(parts, b.String())
		if i == len(rs) {
			return parts, nil
		}
		if rs[i] != '.' {
			return nil, fmt.Errorf("name %q: unexpected %q after a quoted part", s, rs[i])
		}
		i++
	}
}

// ParseTable parses "schema.table", a quoted form such as "Shop"."Order", or a bare "table"
// (Schema left empty, to be resolved by the caller).
func ParseTable(s string) (Table, error) {
	parts, err := ParseName(s)
	if err != nil {
		return Table{}, err
	}
	switch len(parts) {
	case 1:
		return Table{Name: parts[0]}, nil
	case 2:
		return Table{Schema: parts[0], Name: parts[1]}, nil
	default:
		return Table{}, fmt.Errorf("name %q has %d parts; want schema.table", s, len(parts))
	}
}

// ParseTemplate parses a target name that may be a template: an unquoted schema part containing
// '*' (tenant_*.item, *.item) is a glob over schema names, where '*' matches any run of
// characters. A quoted schema is always literal. The table part is always a plain name.
func ParseTemplate(s string) (t Table, template bool, err error) {
	rs := []rune(strings.TrimSpace(s))
	if len(rs) > 0 && rs[0] != '"' {
		dot := -1
		for i, r := range rs {
			if r == '.' {
				dot = i
				break
			}
		}
		if dot > 0 && strings.ContainsRune(string(rs[:dot]), '*') {
			var b strings.Builder
			for i, r := range rs[:dot] {
				if !(r == '*' || unicode.IsLetter(r) || r == '_' || (i > 0 && (unicode.IsDigit(r) || r == '$'))) {
					return Table{}, false, fmt.Errorf("name %q: character %q needs double quotes (and then is literal)", s, r)
				}
				b.WriteRune(unicode.ToLower(r))
			}
			parts, err := ParseName(string(rs[dot+1:]))
			if err != nil {
				return Table{}, false, err
			}
			if len(parts) != 1 || strings.Contains(parts[0], "*") {
				return Table{}, false, fmt.Errorf("name %q: a template names one table: schema_pattern.table", s)
			}
			return Table{Schema: b.String(), Name: parts[0]}, true, nil
		}
	}
	t, err = ParseTable(s)
	return t, false, err
}

// MatchSchema reports whether schema matches the glob pattern ('*' matches any run of
// characters, every other character only itself).
func MatchSchema(pattern, schema string) bool {
	p, s := []rune(pattern), []rune(schema)
	// Iterative glob with backtracking to the last star.
	pi, si, star, mark := 0, 0, -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && p[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
