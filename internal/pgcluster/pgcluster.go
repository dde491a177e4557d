// Package pgcluster starts a throwaway PostgreSQL cluster: initdb into a temporary directory, a
// random free port on 127.0.0.1, wal_level=logical. Tests and `matcol demo` use it.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options tune a cluster. The zero value is usable.
type Options struct {
	// Settings are extra postgresql.conf lines, name to value.
	Settings map[string]string
	// Dir is the parent of the data directory. Defaults to os.TempDir().
	Dir string
}

// Cluster is a running throwaway PostgreSQL server.
type Cluster struct {
	BinDir  string
	DataDir string
	Port    int
	User    string // the database superuser
	Version int    // server major version

	root string
	cred *syscall.Credential
}

// Start creates and starts a cluster. Call Stop to remove it.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	parent := opts.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	root, err := os.MkdirTemp(parent, "matcol-pg-")
	if err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	c := &Cluster{BinDir: bin, DataDir: filepath.Join(root, "data"), root: root, User: "postgres"}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(root)
		}
	}()

	// initdb refuses to run as root: run the server as the postgres OS user then.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres OS user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(root, uid, gid); err != nil {
			return nil, fmt.Errorf("chown cluster dir: %w", err)
		}
	} else if u, err := user.Current(); err == nil {
		c.User = u.Username
	}

	if out, err := c.run(ctx, "initdb", "-D", c.DataDir, "-U", c.User, "-A", "trust", "-E", "UTF8",
		"--locale=C", "--no-sync"); err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c.Port = port
	settings := map[string]string{
		"listen_addresses":          "'127.0.0.1'",
		"port":                      strconv.Itoa(port),
		"unix_socket_directories":   "'" + root + "'",
		"wal_level":                 "logical",
		"max_wal_senders":           "20",
		"max_replication_slots":     "20",
		"max_connections":           "200",
		"fsync":                     "off",
		"synchronous_commit":        "off",
		"full_page_writes":          "off",
		"shared_buffers":            "128MB",
		"logging_collector":         "off",
		"log_min_messages":          "warning",
		"max_locks_per_transaction": "256",
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var conf bytes.Buffer
	conf.WriteString("\n# matcol pgcluster\n")
	for _, k := range keys {
		fmt.Fprintf(&conf, "%s = %s\n", k, settings[k])
	}
	if err := appendConf(c.DataDir, conf.Bytes()); err != nil {
		return nil, err
	}
	if err := c.pgctl(ctx, "start"); err != nil {
		return nil, err
	}
	if v, err := c.readVersion(); err == nil {
		c.Version = v
	}
	ok = true
	return c, nil
}

// DSN returns a connection string for database db on this cluster.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", c.User, c.Port, db)
}

// Stop shuts the server down fast and removes its files.
func (c *Cluster) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := c.pgctl(ctx, "stop", "-m", "immediate")
	if rmErr := os.RemoveAll(c.root); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

// Restart restarts the server with the given pg_ctl shutdown mode (smart, fast, immediate).
func (c *Cluster) Restart(ctx context.Context, mode string) error {
	return c.pgctl(ctx, "restart", "-m", mode)
}

// StopServer stops the server but keeps its files, so StartServer can bring it back.
func (c *Cluster) StopServer(ctx context.Context, mode string) error {
	return c.pgctl(ctx, "stop", "-m", mode)
}

// StartServer starts a server stopped with StopServer.
func (c *Cluster) StartServer(ctx context.Context) error {
	return c.pgctl(ctx, "start")
}

func (c *Cluster) pgctl(ctx context.Context, action string, extra ...string) error {
	args := append([]string{action, "-D", c.DataDir, "-w", "-t", "60", "-l", filepath.Join(c.root, "server.log")}, extra...)
	if out, err := c.run(ctx, "pg_ctl", args...); err != nil {
		logTail, _ := os.ReadFile(filepath.Join(c.root, "server.log"))
		return fmt.Errorf("pg_ctl %s: %w: %s\n%s", action, err, out, tail(string(logTail), 2000))
	}
	return nil
}

func (c *Cluster) run(ctx context.Context, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, prog), args...)
	cmd.Dir = c.root
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	// pg_ctl leaves the server attached to its stdout unless redirected; use files, not pipes.
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.Bytes(), err
}

func (c *Cluster) readVersion() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.DataDir, "PG_VERSION"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// FindBinDir locates the PostgreSQL server binaries: MATCOL_PG_BINDIR, then `pg_config --bindir`,
// then PATH, then /usr/lib/postgresql/*/bin (newest first).
func FindBinDir() (string, error) {
	has := func(dir string) bool {
		for _, p := range []string{"initdb", "pg_ctl", "postgres"} {
			if st, err := os.Stat(filepath.Join(dir, p)); err != nil || st.IsDir() {
				return false
			}
		}
		return true
	}
	if d := os.Getenv("MATCOL_PG_BINDIR"); d != "" {
		if has(d) {
			return d, nil
		}
		return "", fmt.Errorf("MATCOL_PG_BINDIR=%s has no initdb, pg_ctl and postgres", d)
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); has(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && has(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, d := range matches {
		if has(d) {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries found (install postgresql, or set MATCOL_PG_BINDIR)")
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// StartStandby starts a streaming replica of c, from a base backup, with extra postgresql.conf
// settings. Call Stop on it before stopping c.
func (c *Cluster) StartStandby(ctx context.Context, settings map[string]string) (*Cluster, error) {
	root, err := os.MkdirTemp(filepath.Dir(c.root), "matcol-pg-standby-")
	if err != nil {
		return nil, fmt.Errorf("create standby dir: %w", err)
	}
	s := &Cluster{BinDir: c.BinDir, DataDir: filepath.Join(root, "data"), root: root, User: c.User, Version: c.Version, cred: c.cred}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(root)
		}
	}()
	if c.cred != nil {
		if err := os.Chown(root, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return nil, fmt.Errorf("chown standby dir: %w", err)
		}
	}
	if out, err := s.run(ctx, "pg_basebackup", "-D", s.DataDir, "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port),
		"-U", c.User, "-R", "-X", "stream", "--no-sync"); err != nil {
		return nil, fmt.Errorf("pg_basebackup: %w: %s", err, out)
	}
	if s.Port, err = freePort(); err != nil {
		return nil, err
	}
	var conf bytes.Buffer
	fmt.Fprintf(&conf, "\n# matcol pgcluster standby\nport = %d\nunix_socket_directories = '%s'\n", s.Port, root)
	for k, v := range settings {
		fmt.Fprintf(&conf, "%s = %s\n", k, v)
	}
	if err := appendConf(s.DataDir, conf.Bytes()); err != nil {
		return nil, err
	}
	if err := s.pgctl(ctx, "start"); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// appendConf adds lines to the data directory's postgresql.conf; later lines win.
func appendConf(dataDir string, conf []byte) error {
	f, err := os.OpenFile(filepath.Join(dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	_, err = f.Write(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	return nil
}
