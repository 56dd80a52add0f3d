package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// requirePrometheus returns the paths of Debian's prometheus and promtool.
// Missing, they skip the test for a user, and fail it as root, where
// scripts/test-deps.sh installs them (as CI runs it).
func requirePrometheus(t *testing.T) (prom, promtool string) {
	t.Helper()
	for _, name := range []string{"prometheus", "promtool"} {
		p, err := exec.LookPath(name)
		if err != nil {
			if os.Geteuid() == 0 {
				t.Fatalf("the Prometheus test needs %s (Debian package prometheus; scripts/test-deps.sh installs it as root): %v", name, err)
			}
			t.Skipf("the Prometheus test needs %s (Debian package prometheus; run scripts/test-deps.sh as root): %v", name, err)
		}
		if name == "prometheus" {
			prom = p
		} else {
			promtool = p
		}
	}
	return prom, promtool
}

// TestFleetMetricsWithPrometheus scrapes a dev controller's /metrics/fleet
// with a real Prometheus, configured from deploy/prometheus/gantry-scrape.yml,
// while a job holds a GPU, and runs every PromQL expression of
// deploy/grafana/gantry.json (panel targets, and the metric of every
// label_values() variable) through Prometheus's HTTP API: each must
// return series carrying the labels its legend names, with the template
// variables set to match all and to the job's and node's own values. It
// also holds a scrape of /metrics/fleet to `promtool check metrics`.
func TestFleetMetricsWithPrometheus(t *testing.T) {
	promBin, promtool := requirePrometheus(t)
	d := startDev(t, "", 2)
	ctx := context.Background()
	nodes, err := d.api.Nodes(ctx)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	node := nodes[0].ID

	// A job holding one GPU that logs allow-listed metrics and a total
	// until the test ends.
	run := `for i in $(seq 1 100000); do
  printf '{"step": %d, "loss": 0.%d, "lr": 0.001, "total_steps": 100000, "custom_thing": 1}\n' "$i" "$i" >> "$GANTRY_METRICS_FILE"
  sleep 0.2
done`
	job, err := d.api.Submit(ctx, apiv1.JobSpec{Name: "prom-e2e", Run: run, Resources: apiv1.Resources{GPUs: 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.api.Cancel(context.Background(), job) })
	waitState(t, d.api, job, apiv1.StateRunning, 60*time.Second)
	waitFor(t, 30*time.Second, "the job's metrics", func() bool {
		j, err := d.api.Job(ctx, job)
		return err == nil && j.LatestMetrics["total_steps"] > 0
	})

	addr := strings.TrimPrefix(strings.TrimPrefix(d.addr, "http://"), "https://")
	token := os.Getenv("GANTRY_TOKEN")

	t.Run("PromtoolCheckMetrics", func(t *testing.T) {
		body := getFleet(t, addr, token)
		for _, want := range []string{
			fmt.Sprintf(`gantry_job_state{job_id=%q,job_name="prom-e2e",state="running"} 1`, job),
			fmt.Sprintf(`gantry_node_connected{node=%q} 1`, node),
			`gantry_gpu_utilization_ratio{gpu="0"`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics/fleet lacks %s:\n%s", want, body)
			}
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("promtool check metrics: %v\n%s\nscrape:\n%s", err, out, body)
		}
	})

	promAddr := startPrometheus(t, promBin, addr, token)
	waitFor(t, 60*time.Second, "Prometheus to have scraped the fleet", func() bool {
		res, err := promQuery(promAddr, fmt.Sprintf(`gantry_job_metric{job_id=%q}`, job))
		return err == nil && len(res) > 0
	})

	exprs := dashboardExprs(t, filepath.Join("..", "deploy", "grafana", "gantry.json"))
	if len(exprs) < 20 {
		t.Fatalf("only %d expressions in the dashboard", len(exprs))
	}
	for _, vars := range []map[string]string{
		{"node": ".*", "job": ".*"},
		{"node": regexp.QuoteMeta(node), "job": regexp.QuoteMeta(job)},
	} {
		for _, e := range exprs {
			q, err := substitute(e.expr, vars)
			if err != nil {
				t.Errorf("%s: %v", e.where, err)
				continue
			}
			var res []promSeries
			// A panel's series may need one more scrape (the job's GPU
			// readings and metrics arrive each second).
			deadline := time.Now().Add(20 * time.Second)
			for {
				res, err = promQuery(promAddr, q)
				if (err == nil && len(res) > 0) || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if err != nil || len(res) == 0 {
				t.Errorf("%s: %s: no series (err %v)", e.where, q, err)
				continue
			}
			for _, s := range res {
				for _, l := range e.labels {
					if s.Metric[l] == "" {
						t.Errorf("%s: %s: a series without label %s: %v", e.where, q, l, s.Metric)
					}
				}
				if vars["job"] != ".*" && usesVar(e.expr, "job") && s.Metric["job_id"] != "" && s.Metric["job_id"] != job {
					t.Errorf("%s: %s: series of job %q, want only %q", e.where, q, s.Metric["job_id"], job)
				}
				if vars["node"] != ".*" && usesVar(e.expr, "node") && s.Metric["node"] != "" && s.Metric["node"] != node {
					t.Errorf("%s: %s: series of node %q, want only %q", e.where, q, s.Metric["node"], node)
				}
			}
		}
	}
	// The job's GPU carries the job's labels; the other GPU has none.
	held, err := promQuery(promAddr, `gantry_gpu_utilization_ratio{job_id!=""}`)
	if err != nil || len(held) != 1 || held[0].Metric["job_id"] != job || held[0].Metric["job_name"] != "prom-e2e" {
		t.Errorf("GPUs held by a job: %v %v, want one of job %s", held, err, job)
	}
	custom, err := promQuery(promAddr, `gantry_job_metric{key="custom_thing"}`)
	if err != nil || len(custom) != 0 {
		t.Errorf("a key off the allow-list reached Prometheus: %v %v", custom, err)
	}
}

// getFleet GETs /metrics/fleet from the controller at addr.
func getFleet(t *testing.T, addr, token string) string {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+addr+"/metrics/fleet", nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics/fleet: %d %v\n%s", resp.StatusCode, err, b)
	}
	return string(b)
}

// startPrometheus runs Prometheus on a free loopback port with the
// shipped scrape jobs (deploy/prometheus/gantry-scrape.yml) pointed at
// target and scraping every second, and returns its address once ready.
func startPrometheus(t *testing.T, bin, target, token string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", "gantry-scrape.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("gantry-scrape.yml: %v", err)
	}
	dir := t.TempDir()
	jobs, _ := cfg["scrape_configs"].([]any)
	if len(jobs) == 0 {
		t.Fatal("gantry-scrape.yml has no scrape_configs")
	}
	for _, j := range jobs {
		sc, ok := j.(map[string]any)
		if !ok {
			t.Fatalf("gantry-scrape.yml: a scrape config is %T", j)
		}
		sc["scrape_interval"], sc["scrape_timeout"] = "1s", "1s"
		sc["static_configs"] = []any{map[string]any{"targets": []any{target}}}
		if token != "" {
			tf := filepath.Join(dir, "token")
			if err := os.WriteFile(tf, []byte(token), 0o600); err != nil {
				t.Fatal(err)
			}
			sc["authorization"] = map[string]any{"credentials_file": tf}
		}
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, out, 0o600); err != nil {
		t.Fatal(err)
	}
	// Prometheus cannot report a port it picked, so take a free one; a
	// process that grabs it meanwhile makes Prometheus exit, and we retry.
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		cmd := exec.Command(bin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, fmt.Sprint("data", attempt)),
			"--web.listen-address="+addr, "--log.level=warn")
		var logs bytes.Buffer
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		ready := false
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			select {
			case <-exited:
			default:
				resp, err := http.Get("http://" + addr + "/-/ready")
				if err == nil {
					resp.Body.Close()
					ready = resp.StatusCode == 200
				}
				if !ready {
					continue
				}
			}
			break
		}
		if ready {
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					t.Logf("prometheus log:\n%s\nconfig:\n%s", logs.String(), out)
				}
			})
			return addr
		}
		stop()
		if attempt == 2 {
			t.Fatalf("prometheus did not become ready:\n%s\nconfig:\n%s", logs.String(), out)
		}
	}
}

// promSeries is one series of an instant query's result.
type promSeries struct {
	Metric map[string]string `json:"metric"`
}

// promQuery runs an instant query and returns its series; a scalar
// result is one series without labels.
func promQuery(addr, q string) ([]promSeries, error) {
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, r.Error)
	}
	if r.Data.ResultType == "scalar" {
		return []promSeries{{Metric: map[string]string{}}}, nil
	}
	var out []promSeries
	if err := json.Unmarshal(r.Data.Result, &out); err != nil {
		return nil, fmt.Errorf("query %s: %s result: %w", q, r.Data.ResultType, err)
	}
	return out, nil
}

// dashExpr is one PromQL expression of the dashboard, where it is, and
// the labels its series must carry.
type dashExpr struct {
	where  string
	expr   string
	labels []string
}

var (
	legendLabel = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
	labelValues = regexp.MustCompile(`^label_values\(\s*(.+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
	dashVar     = regexp.MustCompile(`\$\{?([a-zA-Z_][a-zA-Z0-9_]*)\}?|\[\[([a-zA-Z_][a-zA-Z0-9_]*)\]\]`)
)

// dashboardExprs reads every target of every panel (rows' nested panels
// too) and every label_values() variable of a Grafana dashboard.
func dashboardExprs(t *testing.T, path string) []dashExpr {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var dash struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []dashExpr
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for i, tg := range p.Targets {
				if tg.Expr == "" {
					t.Errorf("panel %q target %d has no expr", p.Title, i)
					continue
				}
				var labels []string
				for _, m := range legendLabel.FindAllStringSubmatch(tg.LegendFormat, -1) {
					labels = append(labels, m[1])
				}
				out = append(out, dashExpr{where: fmt.Sprintf("panel %q target %d", p.Title, i), expr: tg.Expr, labels: labels})
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var s string
			if json.Unmarshal(v.Query, &s) != nil {
				t.Errorf("variable %s: query %s", v.Name, v.Query)
				continue
			}
			q.Query = s
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(metric, label)", v.Name, q.Query)
			continue
		}
		out = append(out, dashExpr{where: "variable " + v.Name, expr: m[1], labels: []string{m[2]}})
	}
	return out
}

// substitute puts the variables' values into an expression; a variable
// the test does not know is an error, so a new one cannot go untested.
func substitute(expr string, vars map[string]string) (string, error) {
	var unknown []string
	s := dashVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := dashVar.FindStringSubmatch(m)
		name := sub[1] + sub[2]
		v, ok := vars[name]
		if !ok {
			unknown = append(unknown, name)
			return m
		}
		return v
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("unknown dashboard variables %v in %s", unknown, expr)
	}
	return s, nil
}

// usesVar reports whether expr refers to the dashboard variable name.
func usesVar(expr, name string) bool {
	for _, m := range dashVar.FindAllStringSubmatch(expr, -1) {
		if m[1] == name || m[2] == name {
			return true
		}
	}
	return false
}
