package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestObservabilityPlaybook runs observability.yml (the optional
// gantry_observability role) on this machine under a prefix, as a
// monitoring host: the dashboard is deploy/grafana/gantry.json byte for
// byte, Grafana's provisioning file points at it, the scrape jobs target
// every controller of the inventory with the API token (and pass
// `promtool check config` where promtool is installed), and a second run
// changes nothing.
func TestObservabilityPlaybook(t *testing.T) {
	if _, err := exec.LookPath("ansible-playbook"); err != nil {
		t.Fatalf("the playbook test needs ansible-playbook (Debian package ansible-core; .ci/run installs it): %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("the playbook test needs root: the role writes root-owned files")
	}
	dir := t.TempDir()
	prefix := filepath.Join(dir, "mon")
	inv := filepath.Join(dir, "inventory.ini")
	if err := os.WriteFile(inv, []byte(`[controllers]
ctl-1 ansible_host=10.0.0.11
ctl-2 ansible_host=10.0.0.12 gantry_controller_http_port=7490
[monitoring]
mon ansible_connection=local
[all:vars]
ansible_python_interpreter=/usr/bin/python3
gantry_api_token=fleet-token
gantry_observability_grafana_group=root
gantry_observability_prometheus_group=root
`), 0o600); err != nil {
		t.Fatal(err)
	}
	playbook := func() string {
		t.Helper()
		cmd := exec.Command("ansible-playbook", "-i", inv, "-e", "gantry_prefix="+prefix,
			"-e", "gantry_secrets_dir="+filepath.Join(dir, "secrets"), "observability.yml")
		cmd.Dir = ansibleDir(t)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "ANSIBLE_LOCAL_TEMP="+t.TempDir(), "ANSIBLE_NOCOLOR=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ansible-playbook observability.yml: %v\n%s", err, out)
		}
		return string(out)
	}
	playbook()

	want, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "gantry.json"))
	if err != nil {
		t.Fatal(err)
	}
	dashDir := filepath.Join(prefix, "var/lib/grafana/dashboards/gantry")
	got, err := os.ReadFile(filepath.Join(dashDir, "gantry.json"))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("installed dashboard differs from deploy/grafana/gantry.json (%v)", err)
	}

	var prov struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Type    string            `yaml:"type"`
			Folder  string            `yaml:"folder"`
			Options map[string]string `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, filepath.Join(prefix, "etc/grafana/provisioning/dashboards/gantry.yml"), &prov)
	if prov.APIVersion != 1 || len(prov.Providers) != 1 || prov.Providers[0].Type != "file" ||
		prov.Providers[0].Options["path"] != dashDir || prov.Providers[0].Folder != "Gantry" {
		t.Errorf("provisioning file: %+v, want one file provider of %s", prov, dashDir)
	}

	tokenFile := filepath.Join(prefix, "etc/prometheus/gantry-api-token")
	if b, err := os.ReadFile(tokenFile); err != nil || string(b) != "fleet-token" {
		t.Errorf("token file: %q %v", b, err)
	}
	if fi, err := os.Stat(tokenFile); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("token file mode: %v %v, want 0640", fi.Mode(), err)
	}
	scrapeFile := filepath.Join(prefix, "etc/prometheus/scrape_configs/gantry.yml")
	var scrape struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			Authorization struct {
				CredentialsFile string `yaml:"credentials_file"`
			} `yaml:"authorization"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, scrapeFile, &scrape)
	paths := map[string]string{}
	for _, sc := range scrape.ScrapeConfigs {
		paths[sc.JobName] = sc.MetricsPath
		if len(sc.StaticConfigs) != 1 || !slices.Equal(sc.StaticConfigs[0].Targets, []string{"10.0.0.11:7480", "10.0.0.12:7490"}) {
			t.Errorf("%s: targets %+v", sc.JobName, sc.StaticConfigs)
		}
		if sc.MetricsPath == "/metrics/fleet" && sc.Authorization.CredentialsFile != tokenFile {
			t.Errorf("%s: credentials_file %q, want %s", sc.JobName, sc.Authorization.CredentialsFile, tokenFile)
		}
	}
	if paths["gantry-fleet"] != "/metrics/fleet" || paths["gantry-controllers"] != "/metrics" {
		t.Errorf("scrape jobs: %v", paths)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(promtool, "check", "config", scrapeFile).CombinedOutput(); err != nil {
			t.Errorf("promtool check config: %v\n%s", err, out)
		}
	}

	again := playbook()
	if m := regexp.MustCompile(`mon\s+:\s+ok=\d+\s+changed=(\d+)`).FindStringSubmatch(again); m == nil || m[1] != "0" {
		t.Errorf("a second run changed something:\n%s", again)
	}
	if strings.Contains(again, "fleet-token") {
		t.Error("the playbook's output shows the API token")
	}
}

// readYAML decodes a YAML file into out.
func readYAML(t *testing.T, path string, out any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
}
