package plan

import (
	"fmt"
	"strconv"
	"strings"
)

// ReplaceParams returns sql with each parameter reference $1..$len(with) replaced by the
// corresponding expression, parenthesized. It follows PostgreSQL's lexical rules so that a $1
// inside a string, a quoted identifier, a dollar-quoted body or a comment is left alone, and
// $10 is not taken for $1. It fails on a parameter beyond len(with).
func ReplaceParams(sql string, with []string) (string, error) {
	var b strings.Builder
	i := 0
	identChar := func(c byte) bool {
		return c == '_' || c == '$' || c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
	}
	copyUntil := func(end int) {
		b.WriteString(sql[i:end])
		i = end
	}
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == '\'':
			// A string; E'…' strings also escape with a backslash.
			escapes := i > 0 && (sql[i-1] == 'e' || sql[i-1] == 'E') && (i < 2 || !identChar(sql[i-2]))
			j := i + 1
			for j < len(sql) {
				if escapes && sql[j] == '\\' {
					j += 2
					continue
				}
				if sql[j] == '\'' {
					if j+1 < len(sql) && sql[j+1] == '\'' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			copyUntil(min(j+1, len(sql)))
		case c == '"':
			j := i + 1
			for j < len(sql) {
				if sql[j] == '"' {
					if j+1 < len(sql) && sql[j+1] == '"' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			copyUntil(min(j+1, len(sql)))
		case c == '-' && strings.HasPrefix(sql[i:], "--"):
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			copyUntil(i + j)
		case c == '/' && strings.HasPrefix(sql[i:], "/*"):
			depth, j := 0, i
			for j < len(sql) {
				if strings.HasPrefix(sql[j:], "/*") {
					depth++
					j += 2
				} else if strings.HasPrefix(sql[j:], "*/") {
					depth--
					j += 2
					if depth == 0 {
						break
					}
				} else {
					j++
				}
			}
			copyUntil(j)
		case identChar(c) && c != '$':
			j := i
			for j < len(sql) && identChar(sql[j]) {
				j++
			}
			copyUntil(j)
		case c == '$':
			j := i + 1
			for j < len(sql) && sql[j] >= '0' && sql[j] <= '9' {
				j++
			}
			if j > i+1 {
				n, err := strconv.Atoi(sql[i+1 : j])
				if err != nil || n < 1 || n > len(with) {
					return "", fmt.Errorf("parameter $%d: the SQL takes only $1..$%d", n, len(with))
				}
				b.WriteString("(" + with[n-1] + ")")
				i = j
				continue
			}
			// A dollar-quoted body: $tag$ … $tag$.
			k := i + 1
			for k < len(sql) && sql[k] != '$' && identChar(sql[k]) {
				k++
			}
			if k < len(sql) && sql[k] == '$' {
				tag := sql[i : k+1]
				end := strings.Index(sql[k+1:], tag)
				if end < 0 {
					copyUntil(len(sql))
				} else {
					copyUntil(k + 1 + end + len(tag))
				}
				continue
			}
			copyUntil(i + 1)
		default:
			copyUntil(i + 1)
		}
	}
	return b.String(), nil
}
