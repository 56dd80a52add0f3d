// Package logging sets up log/slog for Gantry's binaries and bridges it to
// hclog, the logger hashicorp/raft and serf expect, so every line of a
// process goes through one handler with one format.
package logging

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// New returns a text logger writing to w at the named level
// ("debug", "info", "warn", "error").
func New(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("logging: level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// Discard is a logger that drops everything (tests that assert on behaviour,
// not on log lines).
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// HCLog adapts an slog.Logger to hclog.Logger. hclog's Trace maps to
// slog's Debug-4.
func HCLog(l *slog.Logger, name string) hclog.Logger {
	return &hcAdapter{l: l.With("component", name), name: name}
}

type hcAdapter struct {
	l       *slog.Logger
	name    string
	implied []any
}

var _ hclog.Logger = (*hcAdapter)(nil)

func toSlog(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		return slog.LevelInfo
	case hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (a *hcAdapter) Log(level hclog.Level, msg string, args ...any) {
	a.l.Log(context.Background(), toSlog(level), msg, hcArgs(args)...)
}

// hcArgs renders hclog's formatted values (hclog.Fmt: a format and its
// arguments), which raft uses for its configuration; slog would print
// them as a raw list, "[%+v …]".
func hcArgs(args []any) []any {
	copied := false
	for i, v := range args {
		f, ok := v.(hclog.Format)
		if !ok || len(f) == 0 {
			continue
		}
		format, ok := f[0].(string)
		if !ok {
			continue
		}
		if !copied {
			args, copied = append([]any(nil), args...), true // the caller's slice is not ours to change
		}
		args[i] = fmt.Sprintf(format, f[1:]...)
	}
	return args
}
func (a *hcAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hcAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hcAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hcAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hcAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hcAdapter) enabled(level hclog.Level) bool {
	return a.l.Enabled(context.Background(), toSlog(level))
}
func (a *hcAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hcAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hcAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hcAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hcAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hcAdapter) ImpliedArgs() []any { return a.implied }
func (a *hcAdapter) With(args ...any) hclog.Logger {
	return &hcAdapter{l: a.l.With(args...), name: a.name, implied: append(append([]any{}, a.implied...), args...)}
}
func (a *hcAdapter) Name() string { return a.name }
func (a *hcAdapter) Named(name string) hclog.Logger {
	full := name
	if a.name != "" {
		full = a.name + "." + name
	}
	return &hcAdapter{l: a.l.With("sub", name), name: full, implied: a.implied}
}
func (a *hcAdapter) ResetNamed(name string) hclog.Logger {
	return &hcAdapter{l: a.l, name: name, implied: a.implied}
}

// SetLevel is a no-op: the slog handler owns the level.
func (a *hcAdapter) SetLevel(hclog.Level) {}

func (a *hcAdapter) GetLevel() hclog.Level {
	switch {
	case a.IsTrace():
		return hclog.Trace
	case a.IsDebug():
		return hclog.Debug
	case a.IsInfo():
		return hclog.Info
	case a.IsWarn():
		return hclog.Warn
	}
	return hclog.Error
}

func (a *hcAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(nil), "", 0)
}

func (a *hcAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		msg := strings.TrimSpace(string(p))
		level := hclog.Info
		// raft's transport logs through the standard logger with "[ERR]"-style prefixes.
		switch {
		case strings.Contains(msg, "[ERR"):
			level = hclog.Error
		case strings.Contains(msg, "[WARN"):
			level = hclog.Warn
		case strings.Contains(msg, "[DEBUG"):
			level = hclog.Debug
		}
		a.Log(level, msg)
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
