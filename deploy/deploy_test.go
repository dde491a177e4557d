// Package deploy_test checks the deployment examples against the binary they deploy: manifests
// parse, probes hit the status port, the ConfigMap's matcol.yaml is a valid config, and the
// systemd unit and Dockerfile use flags and paths that exist. No cluster or daemon is needed.
package deploy_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/matcol/matcol/config"
)

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name      string `yaml:"name"`
		ValueFrom struct {
			SecretKeyRef struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe   *probe `yaml:"livenessProbe"`
	ReadinessProbe  *probe `yaml:"readinessProbe"`
	StartupProbe    *probe `yaml:"startupProbe"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Resources  []string          `yaml:"resources"`
	Spec       struct {
		Template struct {
			Spec struct {
				SecurityContext struct {
					RunAsNonRoot bool `yaml:"runAsNonRoot"`
				} `yaml:"securityContext"`
				Containers []container `yaml:"containers"`
				Volumes    []struct {
					Name      string `yaml:"name"`
					ConfigMap struct {
						Name string `yaml:"name"`
					} `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func manifests(t *testing.T) map[string]object {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	out := map[string]object{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		for {
			var o object
			if err := dec.Decode(&o); errors.Is(err, io.EOF) {
				break
			} else {
				require.NoError(t, err, f)
			}
			require.NotEmpty(t, o.APIVersion, f)
			require.NotEmpty(t, o.Kind, f)
			if o.Kind != "Kustomization" {
				require.NotEmpty(t, o.Metadata.Name, f)
			}
			out[o.Kind] = o
		}
	}
	return out
}

func TestKubernetesManifests(t *testing.T) {
	objs := manifests(t)
	for _, kind := range []string{"Deployment", "ConfigMap", "Secret", "Service", "Kustomization"} {
		require.Contains(t, objs, kind)
	}
	dep := objs["Deployment"]
	spec := dep.Spec.Template.Spec
	require.True(t, spec.SecurityContext.RunAsNonRoot)
	require.Len(t, spec.Containers, 1)
	c := spec.Containers[0]

	// Probes reach /healthz and /readyz on the status port, 9180.
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	portOf := func(p *probe) int {
		require.NotNil(t, p)
		switch v := p.HTTPGet.Port.(type) {
		case int:
			return v
		case string:
			return ports[v]
		}
		return 0
	}
	require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
	require.Equal(t, 9180, portOf(c.LivenessProbe))
	require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
	require.Equal(t, 9180, portOf(c.ReadinessProbe))
	require.Equal(t, 9180, portOf(c.StartupProbe))
	require.False(t, *c.SecurityContext.AllowPrivilegeEscalation)
	require.True(t, c.SecurityContext.ReadOnlyRootFilesystem)

	// The DSN comes from a key the Secret has.
	secret := objs["Secret"]
	var found bool
	for _, e := range c.Env {
		if e.Name == "MATCOL_DATABASE_URL" {
			found = true
			require.Equal(t, secret.Metadata.Name, e.ValueFrom.SecretKeyRef.Name)
			require.Contains(t, secret.StringData, e.ValueFrom.SecretKeyRef.Key)
		}
	}
	require.True(t, found, "MATCOL_DATABASE_URL must come from the Secret")

	// The config file the args name is the ConfigMap's matcol.yaml, mounted from it.
	cm := objs["ConfigMap"]
	require.Equal(t, cm.Metadata.Name, spec.Volumes[0].ConfigMap.Name)
	require.Equal(t, []string{"run", "-c", c.VolumeMounts[0].MountPath + "/matcol.yaml"}, c.Args)

	// matcol.yaml is a valid config that listens where the probes look.
	path := filepath.Join(t.TempDir(), "matcol.yaml")
	require.NoError(t, os.WriteFile(path, []byte(cm.Data["matcol.yaml"]), 0o600))
	t.Setenv("MATCOL_DATABASE_URL", secret.StringData["database-url"])
	cfg, err := config.Load(path, nil)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, "0.0.0.0:9180", cfg.Status.Listen)

	// kustomization.yaml lists every manifest.
	files, _ := filepath.Glob("kubernetes/*.yaml")
	var want []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	require.ElementsMatch(t, want, objs["Kustomization"].Resources)
}

func TestSystemdUnit(t *testing.T) {
	raw, err := os.ReadFile("systemd/matcol.service")
	require.NoError(t, err)
	unit := string(raw)
	for _, want := range []string{"\nExecStart=/usr/local/bin/matcol run -c /etc/matcol/matcol.yaml\n",
		"\nDynamicUser=yes\n", "\nNoNewPrivileges=yes\n", "\nProtectSystem=strict\n",
		"\nCapabilityBoundingSet=\n", "\nKillSignal=SIGTERM\n", "\nEnvironmentFile=/etc/matcol/matcol.env\n"} {
		require.Contains(t, unit, want)
	}
	// A filtered syscall must fail with EPERM rather than kill the process: the Go runtime tries
	// setrlimit at start, which @resources excludes.
	require.Contains(t, unit, "\nSystemCallErrorNumber=EPERM\n")
}

func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile("Dockerfile")
	require.NoError(t, err)
	df := string(raw)
	require.Regexp(t, `(?m)^RUN CGO_ENABLED=0 go build .*$`, df)
	for _, v := range []string{"main.version", "main.commit", "main.date"} {
		require.Contains(t, df, "-X "+v+"=")
	}
	require.Contains(t, df, "./cmd/matcol")
	// Two stages, and the last one runs as a non-root user.
	require.Len(t, regexp.MustCompile(`(?m)^FROM `).FindAllString(df, -1), 2)
	users := regexp.MustCompile(`(?m)^USER (\S+)`).FindAllStringSubmatch(df, -1)
	require.NotEmpty(t, users)
	last := users[len(users)-1][1]
	require.False(t, strings.HasPrefix(last, "0") || strings.HasPrefix(last, "root"), "USER %s", last)
	// The go directive's version must build in the builder image.
	mod, err := os.ReadFile("../go.mod")
	require.NoError(t, err)
	goVer := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(string(mod))[1]
	require.Contains(t, df, "FROM golang:"+goVer+" AS build")
}
