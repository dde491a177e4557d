// Package dial opens matcol's connections with the session settings every part relies on:
// an application_name starting with "matcol", ISO dates in UTC so key values round-trip through
// text, custom plans for queries over key arrays, and asynchronous commit.
package dial

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Config parses dsn and applies matcol's session settings. role names the part ("worker",
// "listener", "cli") in application_name.
func Config(dsn, role string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, parseError(err, dsn)
	}
	apply(cfg.RuntimeParams, role)
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	return cfg, nil
}

var asyncRoles = map[string]bool{"worker": true, "control": true, "listener": true, "backfill": true, "refresh": true}

func apply(params map[string]string, role string) {
	name := "matcol"
	if role != "" {
		name += " " + role
	}
	if app := params["application_name"]; app != "" {
		if strings.HasPrefix(app, "matcol") {
			name = app
		} else {
			name = "matcol " + app
		}
	}
	params["application_name"] = name
	params["DateStyle"] = "ISO"
	params["TimeZone"] = "UTC"
	params["IntervalStyle"] = "postgres"
	params["extra_float_digits"] = "3"
	params["plan_cache_mode"] = "force_custom_plan"
	// The daemon's commits need not wait for the WAL flush: a lost commit only leaves rows stale
	// or queue entries in place, which the next run redoes, and writers then never queue behind
	// matcol's flushes. The logical listener turns it back on where an ack depends on durability.
	// Commands a user runs (apply, retry, pause…) keep the server's setting.
	_, set := params["synchronous_commit"]
	if !set && asyncRoles[role] && !strings.Contains(params["options"], "synchronous_commit") {
		params["synchronous_commit"] = "off"
	}
}

// Connect opens one connection.
func Connect(ctx context.Context, dsn, role string) (*pgx.Conn, error) {
	cfg, err := Config(dsn, role)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, Describe(err, cfg)
	}
	return conn, nil
}

// PoolOptions tune a pool.
type PoolOptions struct {
	MaxConns        int32
	MaxConnLifetime time.Duration
	// Cache, when set, recycles connections whose catalog cache outgrows its cap.
	Cache *CacheGuard
}

// Pool opens a pool whose connections are recycled after MaxConnLifetime with 20% jitter, so
// they do not all reconnect at once.
func Pool(ctx context.Context, dsn, role string, opts PoolOptions) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, parseError(err, dsn)
	}
	apply(cfg.ConnConfig.RuntimeParams, role)
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if opts.MaxConnLifetime > 0 {
		cfg.MaxConnLifetime = opts.MaxConnLifetime
		cfg.MaxConnLifetimeJitter = opts.MaxConnLifetime / 5
	}
	cfg.MinConns = 0
	if opts.Cache != nil {
		// pgx keeps 512 prepared statements per connection by default, each with its plans in
		// the backend: with one statement per table and thousands of tables the cache only
		// churns, and holds tens of MB. 64 keep the busy tables' statements.
		cfg.ConnConfig.StatementCacheCapacity = 64
		cfg.ConnConfig.DescriptionCacheCapacity = 64
		cfg.AfterConnect = opts.Cache.connected
		cfg.PrepareConn = opts.Cache.prepare
		cfg.BeforeClose = opts.Cache.forget
		cfg.ConnConfig.Tracer = guardTracer{opts.Cache}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, Describe(err, cfg.ConnConfig)
	}
	return pool, nil
}

// Describe rewrites a connection error so it says where matcol tried to connect. pgconn's
// connection errors name the user and database, never the password, so the text is kept as it
// is: replacing the password wherever its text occurs would garble the rest (a password "p"
// turns "tcp" into "tcxxxxx", and postgres/postgres hides the user and database).
func Describe(err error, cfg *pgx.ConnConfig) error {
	if err == nil {
		return nil
	}
	where := fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
	return &ConnectError{Where: where, Msg: err.Error(), err: err}
}

// ConnectError is a failed connection attempt.
type ConnectError struct {
	Where string
	Msg   string
	err   error
}

func (e *ConnectError) Error() string { return "connect to " + e.Where + ": " + e.Msg }
func (e *ConnectError) Unwrap() error { return e.err }

// IsConnectionError reports whether err means the server is unreachable or the connection died,
// as opposed to an error in a statement.
func IsConnectionError(err error) bool {
	if err == nil {
		return false
	}
	var ce *ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, class 08.
		return pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03" || strings.HasPrefix(pe.Code, "08")
	}
	if pgconn.SafeToRetry(err) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "conn closed") || strings.Contains(s, "connection refused") ||
		strings.Contains(s, "unexpected EOF") || strings.Contains(s, "broken pipe") ||
		strings.Contains(s, "connection reset") || strings.Contains(s, "failed to connect")
}

// Backoff returns the wait before retry attempt n (from 0): exponential from 250ms, capped at
// max, with full jitter over the upper half.
func Backoff(n int, max time.Duration) time.Duration {
	d := 250 * time.Millisecond
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

// Sleep waits d or until ctx ends; it reports whether the full wait happened.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// parseError reports a connection string that does not parse. pgconn already masks the password
// fields of the string it quotes; should the string appear whole, it is masked by field too.
func parseError(err error, dsn string) error {
	msg := err.Error()
	if dsn != "" {
		msg = strings.ReplaceAll(msg, dsn, Redact(dsn))
	}
	return errors.New("database_url is not a valid connection string: " + msg)
}

var urlPassword = regexp.MustCompile(`^([a-z]+://[^:@/]*:)[^@]*@`)

var keywordPassword = regexp.MustCompile(`(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// Redact returns dsn with the values of its password fields masked: the password of a URL's
// user info, and the password and sslpassword parameters of either form. Nothing else changes.
func Redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q, masked := u.Query(), false
		for _, k := range []string{"password", "sslpassword"} {
			if q.Has(k) {
				q.Set(k, "xxxxx")
				masked = true
			}
		}
		if masked {
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	if strings.Contains(dsn, "://") {
		// A URL that does not parse: mask what stands where its user info's password would.
		return urlPassword.ReplaceAllString(dsn, "${1}xxxxx@")
	}
	return keywordPassword.ReplaceAllString(dsn, "${1}xxxxx")
}
