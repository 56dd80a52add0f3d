package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLogFormatsFmtValues(t *testing.T) {
	var buf bytes.Buffer
	l := HCLog(slog.New(slog.NewTextHandler(&buf, nil)), "raft")
	args := []any{"index", 1, "servers", hclog.Fmt("%+v", []struct{ ID string }{{ID: "c1"}})}
	l.Info("initial configuration", args...)
	if got := buf.String(); !strings.Contains(got, `servers=[{ID:c1}]`) || strings.Contains(got, "%+v") {
		t.Fatalf("logged %q, want the formatted servers", got)
	}
	if _, ok := args[3].(hclog.Format); !ok {
		t.Fatal("the caller's arguments were changed")
	}
}
