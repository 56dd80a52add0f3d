package cli

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    apiv1.JobSpec
		wantErr string
	}{
		{
			name: "full spec",
			yaml: `
name: bert-base
run: python train.py --epochs 3
setup: pip install -r requirements.txt
workdir: /data/bert
env:
  LR: "3e-4"
  EPOCHS: 3
  WANDB_DISABLED: true
resources:
  gpus: 2
  gpu_type: A100
node: gpu-a
max_duration: 2h30m
kill_grace: 30s
`,
			want: apiv1.JobSpec{
				Name: "bert-base", Run: "python train.py --epochs 3", Setup: "pip install -r requirements.txt",
				Workdir:   "/data/bert",
				Env:       map[string]string{"LR": "3e-4", "EPOCHS": "3", "WANDB_DISABLED": "true"},
				Resources: apiv1.Resources{GPUs: 2, GPUType: "A100"}, Node: "gpu-a",
				MaxDuration: apiv1.Duration(150 * time.Minute), KillGrace: apiv1.Duration(30 * time.Second),
			},
		},
		{
			name: "durations as seconds",
			yaml: "run: x\nmax_duration: 90\nkill_grace: 1.5\n",
			want: apiv1.JobSpec{Run: "x", MaxDuration: apiv1.Duration(90 * time.Second), KillGrace: apiv1.Duration(1500 * time.Millisecond)},
		},
		{
			name: "durations as quoted seconds",
			yaml: "run: x\nmax_duration: \"600\"\n",
			want: apiv1.JobSpec{Run: "x", MaxDuration: apiv1.Duration(10 * time.Minute)},
		},
		{
			name: "empty durations",
			yaml: "run: x\nmax_duration:\nkill_grace: \"\"\n",
			want: apiv1.JobSpec{Run: "x"},
		},
		{
			name: "multi-line run",
			yaml: "run: |\n  set -e\n  python train.py\n",
			want: apiv1.JobSpec{Run: "set -e\npython train.py\n"},
		},
		{name: "bad duration", yaml: "run: x\nmax_duration: soon\n", wantErr: `invalid duration "soon"`},
		{name: "unknown key", yaml: "run: x\nmax_durration: 1h\n", wantErr: "max_durration"},
		{name: "typo in nested key", yaml: "run: x\nresources:\n  gpu: 1\n", wantErr: "gpu"},
		{name: "wrong type", yaml: "run: x\nresources:\n  gpus: two\n", wantErr: "two"},
		{name: "empty", yaml: "", wantErr: "spec is empty"},
		{name: "two documents", yaml: "run: x\n---\nrun: y\n", wantErr: "more than one"},
		{name: "not yaml", yaml: "run: [x\n", wantErr: "yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSpec([]byte(tt.yaml))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSpec: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("spec = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestLoadSpec(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("name from file", func(t *testing.T) {
		s, err := LoadSpec(write("resnet50.yaml", "run: python train.py\n"))
		if err != nil || s.Name != "resnet50" {
			t.Fatalf("LoadSpec = %+v, %v; want name resnet50", s, err)
		}
	})
	t.Run("explicit name kept", func(t *testing.T) {
		s, err := LoadSpec(write("a.yml", "name: mine\nrun: x\n"))
		if err != nil || s.Name != "mine" {
			t.Fatalf("LoadSpec = %+v, %v", s, err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		if _, err := LoadSpec(filepath.Join(dir, "nope.yaml")); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
			t.Fatalf("err = %v, want one naming the file", err)
		}
	})
	t.Run("error names file", func(t *testing.T) {
		p := write("bad.yaml", "run: x\nbogus: 1\n")
		if _, err := LoadSpec(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Fatalf("err = %v, want one naming %s", err, p)
		}
	})
	t.Run("too large", func(t *testing.T) {
		p := write("big.yaml", "run: x\n# "+strings.Repeat("x", maxSpecBytes)+"\n")
		if _, err := LoadSpec(p); err == nil || !strings.Contains(err.Error(), "larger") {
			t.Fatalf("err = %v", err)
		}
	})
}
