package pgident

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseTable(t *testing.T) {
	for in, want := range map[string]Table{
		"public.venue":                {"public", "venue"},
		"Public.Venue":                {"public", "venue"},
		`"Shop"."Order"`:              {"Shop", "Order"},
		`"a""b".c`:                    {`a"b`, "c"},
		`"with space"."x.y"`:          {"with space", "x.y"},
		"venue":                       {"", "venue"},
		"shop.bücher":                 {"shop", "bücher"},
		`"tenant_1"."Ä"`:              {"tenant_1", "Ä"},
		`*.item`:                      {"*", "item"},
		` public . venue `:            {}, // spaces inside are not allowed unquoted
		`"weird; DROP TABLE x; --".t`: {"weird; DROP TABLE x; --", "t"},
	} {
		got, err := ParseTable(in)
		if want == (Table{}) {
			require.Error(t, err, in)
			continue
		}
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", `"unterminated`, "a.b.c", "a.", `""`, "a b", `"x"y`, "1abc"} {
		_, err := ParseTable(bad)
		require.Error(t, err, bad)
	}
}

func TestQuoteRoundTrip(t *testing.T) {
	for _, tb := range []Table{{"public", "venue"}, {"Shop", "Order"}, {`a"b`, "c d"}, {"public", "order"}, {"s", "Ä"}} {
		got, err := ParseTable(tb.String())
		require.NoError(t, err, tb.String())
		require.Equal(t, tb, got)
	}
	require.Equal(t, `"Shop"."Order"`, Table{"Shop", "Order"}.Sanitize())
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"public.venue", `"a""b".c`, `"x`, "*.item", "ä.ö"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		parts, err := ParseName(s)
		if err != nil {
			return
		}
		// Whatever parses must quote back to the same parts.
		var quoted []string
		for _, p := range parts {
			if p == "*" {
				quoted = append(quoted, "*")
				continue
			}
			quoted = append(quoted, Quote(p))
		}
		again, err := ParseName(joinDots(quoted))
		if err != nil {
			t.Fatalf("%q parsed to %q but its quoted form %q does not parse: %v", s, parts, joinDots(quoted), err)
		}
		require.Equal(t, parts, again)
	})
}

func joinDots(p []string) string {
	out := ""
	for i, s := range p {
		if i > 0 {
			out += "."
		}
		out += s
	}
	return out
}

func TestParseTemplate(t *testing.T) {
	for in, want := range map[string]struct {
		t        Table
		template bool
		bad      bool
	}{
		"*.item":           {t: Table{"*", "item"}, template: true},
		"Tenant_*.Item":    {t: Table{"tenant_*", "item"}, template: true},
		`tenant_*."Order"`: {t: Table{"tenant_*", "Order"}, template: true},
		`"tenant_*".item`:  {t: Table{"tenant_*", "item"}}, // quoted: literal
		"public.item":      {t: Table{"public", "item"}},
		"t*x.a.b":          {bad: true},
		"*.it*":            {bad: true},
		"te-*.item":        {bad: true},
	} {
		got, tmpl, err := ParseTemplate(in)
		if want.bad {
			require.Error(t, err, in)
			continue
		}
		require.NoError(t, err, in)
		require.Equal(t, want.t, got, in)
		require.Equal(t, want.template, tmpl, in)
	}
}

func TestMatchSchema(t *testing.T) {
	for _, c := range []struct {
		pattern, schema string
		want            bool
	}{
		{"*", "anything", true},
		{"*", "", true},
		{"tenant_*", "tenant_1", true},
		{"tenant_*", "tenant_", true},
		{"tenant_*", "Tenant_1", false},
		{"tenant_*", "xtenant_1", false},
		{"*_eu", "shop_eu", true},
		{"*_eu", "shop_eu_x", false},
		{"a*b*c", "a-b-b-c", true},
		{"a*b*c", "a-c-b", false},
		{"t_*", "t_ünïcode \"q\"", true},
	} {
		require.Equal(t, c.want, MatchSchema(c.pattern, c.schema), "%s ~ %s", c.pattern, c.schema)
	}
}
