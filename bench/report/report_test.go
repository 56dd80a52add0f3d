package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFormatValue(t *testing.T) {
	tests := []struct {
		v    float64
		unit string
		want string
	}{
		{1234567, "points/s", "1,234,567 points/s"},
		{123.4, "ms", "123 ms"},
		{12.34, "ms", "12.3 ms"},
		{0.01234, "", "0.0123"},
		{-250000, "B", "-250,000 B"},
	}
	for _, tc := range tests {
		if got := FormatValue(tc.v, tc.unit); got != tc.want {
			t.Errorf("FormatValue(%v, %q) = %q, want %q", tc.v, tc.unit, got, tc.want)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	r := New(map[string]string{"cpus": "2"})
	r.Add(Figure{Stage: "ingest", Name: "points stored | all nodes", Value: 500000, Unit: "points/s",
		Against: "etcd", AgainstValue: 50000, Goal: "≥ 10× etcd"})
	r.Add(Figure{Stage: "watchers", Name: "memory per watcher", Value: 9000, Unit: "B"})
	r.Fail("freshness", os.ErrDeadlineExceeded)
	dir := t.TempDir()
	if err := r.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| ingest | points stored \\| all nodes | 500,000 points/s | etcd | 50,000 points/s | 10× |",
		"| watchers | memory per watcher | 9000 B | — | — | — |",
		"- cpus: 2", "freshness: i/o timeout",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
	var back Report
	js, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Figures) != 2 || back.Figures[0].Ratio != 10 {
		t.Fatalf("results.json figures = %+v", back.Figures)
	}
}
