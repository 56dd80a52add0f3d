package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/internal/tlsutil"
)

func TestTLSCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	run := func(args ...string) error {
		t.Helper()
		return tlsCommand(args)
	}
	// init makes the CA only; the old form with hosts says what to do now.
	if err := run("init", dir, "10.0.0.1"); err == nil || !strings.Contains(err.Error(), "--role controller") {
		t.Fatalf("tls init DIR HOST = %v, want a pointer to tls issue --role controller", err)
	}
	if err := run("init", dir); err != nil {
		t.Fatal(err)
	}
	// issue needs a role, and a known one.
	if err := run("issue", dir, "gpu-1"); err == nil || !strings.Contains(err.Error(), "needs --role") {
		t.Fatalf("tls issue without --role = %v", err)
	}
	if err := run("issue", "--role", "admin", dir, "gpu-1"); !errors.Is(err, tlsutil.ErrBadRole) {
		t.Fatalf("tls issue --role admin = %v, want ErrBadRole", err)
	}
	if err := run("issue", "--role", "controller", dir, "ctl-1", "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := run("issue", "--role", "agent", dir, "gpu-1"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		role, name string
		ok         bool
	}{
		{"controller", "ctl-1", true},
		{"agent", "gpu-1", true},
		{"agent", "ctl-1", false},
		{"controller", "gpu-1", false},
		{"agent", "gpu-2", false},
	} {
		err := run("check", "--role", c.role, dir, c.name)
		if (err == nil) != c.ok {
			t.Errorf("tls check --role %s %s = %v, want ok %v", c.role, c.name, err, c.ok)
		}
	}
	id, err := tlsutil.LoadIdentity(tlsutil.Files{CA: filepath.Join(dir, "ca.pem"),
		Cert: filepath.Join(dir, "ctl-1.pem"), Key: filepath.Join(dir, "ctl-1-key.pem")})
	if err != nil || id != (tlsutil.Identity{Role: tlsutil.RoleController, ID: "ctl-1"}) {
		t.Fatalf("issued controller certificate: %v, %v", id, err)
	}
}
