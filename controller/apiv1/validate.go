package apiv1

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/limits"
)

// Limits on a job spec. They exist so that a typo fails at submit time with
// a reason, not hours later on a GPU host.
const (
	MaxNameLen    = 256
	MaxRunLen     = 64 << 10
	MaxGPUsPerJob = 64
	MaxEnvVars    = 256
	// MaxNodesPerJob bounds resources.nodes (and the pins in nodes).
	MaxNodesPerJob = limits.MaxNodesPerJob
)

// Validate returns the first reason the spec cannot run, or nil.
func (s *JobSpec) Validate() error {
	if strings.TrimSpace(s.Run) == "" {
		return errors.New("spec.run is required: the shell command to start the job")
	}
	if len(s.Run) > MaxRunLen || len(s.Setup) > MaxRunLen {
		return fmt.Errorf("spec.run and spec.setup are limited to %d bytes", MaxRunLen)
	}
	if len(s.Name) > MaxNameLen {
		return fmt.Errorf("spec.name is %d bytes long; the limit is %d", len(s.Name), MaxNameLen)
	}
	if err := printable(s.Name); err != nil {
		return fmt.Errorf("spec.name: %w", err)
	}
	if s.Resources.GPUs < 0 || s.Resources.GPUs > MaxGPUsPerJob {
		return fmt.Errorf("spec.resources.gpus = %d; want 0..%d", s.Resources.GPUs, MaxGPUsPerJob)
	}
	if s.Resources.Nodes < 0 || s.Resources.Nodes > MaxNodesPerJob {
		return fmt.Errorf("spec.resources.nodes = %d; want 1..%d", s.Resources.Nodes, MaxNodesPerJob)
	}
	if len(s.Nodes) > 0 && s.Resources.Nodes < 2 {
		return errors.New("spec.nodes pins the ranks of a multi-node job (resources.nodes >= 2); pin a single-node job with spec.node")
	}
	if s.Resources.Nodes > 1 && s.Node != "" {
		return errors.New("spec.node pins a single-node job; pin a multi-node job's ranks with spec.nodes (a list)")
	}
	if len(s.Nodes) > MaxNodesPerJob {
		return fmt.Errorf("spec.nodes lists %d nodes; the limit is %d", len(s.Nodes), MaxNodesPerJob)
	}
	for _, n := range s.Nodes {
		if n == "" || len(n) > 128 || strings.ContainsAny(n, "/\x00") || printable(n) != nil {
			return fmt.Errorf("spec.nodes: %q is not a node id", n)
		}
	}
	if s.MaxDuration < 0 {
		return fmt.Errorf("spec.max_duration = %s; want a positive duration or none", time.Duration(s.MaxDuration))
	}
	if s.KillGrace < 0 {
		return fmt.Errorf("spec.kill_grace = %s; want a positive duration or none", time.Duration(s.KillGrace))
	}
	if s.QueueTimeout < 0 {
		return fmt.Errorf("spec.queue_timeout = %s; want a positive duration or none", time.Duration(s.QueueTimeout))
	}
	if s.CodeArchive != "" && !IsDigest(s.CodeArchive) {
		return fmt.Errorf("spec.code_archive %q is not a digest; want \"sha256:\" and 64 lowercase hex digits", s.CodeArchive)
	}
	if err := s.Health.validate(); err != nil {
		return err
	}
	if len(s.Env) > MaxEnvVars {
		return fmt.Errorf("spec.env has %d variables; the limit is %d", len(s.Env), MaxEnvVars)
	}
	for k, v := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("spec.env key %q is not a valid environment variable name", k)
		}
		if strings.ContainsRune(v, 0) {
			return fmt.Errorf("spec.env[%q] contains a NUL byte", k)
		}
		if strings.HasPrefix(k, "GANTRY_") || k == "CUDA_VISIBLE_DEVICES" {
			return fmt.Errorf("spec.env[%q] is set by Gantry itself and cannot be overridden", k)
		}
	}
	return nil
}

// printable reports why name is not valid UTF-8 made of printable
// characters and spaces. Names are shown in terminals and web pages: an
// ESC, CR or bidi override in one would let a job rewrite what its viewers
// see.
func printable(name string) error {
	if !utf8.ValidString(name) {
		return errors.New("not valid UTF-8")
	}
	for i, r := range name {
		if r != ' ' && !unicode.IsPrint(r) {
			return fmt.Errorf("character %q at byte %d is not printable; names may hold printable characters and spaces only", r, i)
		}
	}
	return nil
}

// DigestPrefix starts every content digest the API takes.
const DigestPrefix = "sha256:"

// IsDigest reports whether d is "sha256:" and 64 lowercase hex digits,
// the only form of content address the controllers store.
func IsDigest(d string) bool {
	hex, ok := strings.CutPrefix(d, DigestPrefix)
	if !ok || len(hex) != 64 {
		return false
	}
	for i := 0; i < len(hex); i++ {
		c := hex[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// validate checks a job's health settings.
func (h *HealthSpec) validate() error {
	if h == nil {
		return nil
	}
	for _, d := range []struct {
		name string
		d    Duration
	}{{"stall_after", h.StallAfter}, {"startup_grace", h.StartupGrace}, {"idle_after", h.IdleAfter}} {
		if d.d < 0 {
			return fmt.Errorf("spec.health.%s = %s; want a positive duration or none", d.name, time.Duration(d.d))
		}
	}
	if !(h.IdleUtilPct >= 0 && h.IdleUtilPct <= 100) {
		return fmt.Errorf("spec.health.idle_util_pct = %v; want 0..100 (0: the default, 5)", h.IdleUtilPct)
	}
	if !(h.IdlePowerW >= 0 && h.IdlePowerW <= 100_000) {
		return fmt.Errorf("spec.health.idle_power_w = %v; want 0..100000 watts (0: the default)", h.IdlePowerW)
	}
	for _, p := range []struct{ name, v string }{{"on_stall", h.OnStall}, {"on_idle", h.OnIdle}} {
		switch p.v {
		case "", lifecycle.PolicyNotify, lifecycle.PolicyCancel, lifecycle.PolicyRequeue:
		default:
			return fmt.Errorf("spec.health.%s = %q; want notify, cancel or requeue", p.name, p.v)
		}
	}
	if h.MaxRequeues < 0 || h.MaxRequeues > lifecycle.MaxRequeuesLimit {
		return fmt.Errorf("spec.health.max_requeues = %d; want 0..%d (0: the default, %d)",
			h.MaxRequeues, lifecycle.MaxRequeuesLimit, lifecycle.DefaultMaxRequeues)
	}
	return nil
}
