// Package cgrouptest opens job cgroups for tests of their users (the
// runner, the agent) on the host's real cgroup2 hierarchy.
package cgrouptest

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gantry-ml/gantry/agent/jobcgroup"
)

// cleanupTimeout bounds the wait for a test's groups to empty.
const cleanupTimeout = 10 * time.Second

// Skip skips t where job cgroups cannot work: not root, or no writable
// cgroup2 hierarchy (err from jobcgroup.Open, nil to only check root).
func Skip(t testing.TB, err error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("job cgroups need root (mkdir in the cgroup2 hierarchy)")
	}
	if errors.Is(err, jobcgroup.ErrUnavailable) {
		t.Skipf("no writable cgroup2 hierarchy here: %v", err)
	}
}

// Open opens job cgroups for a node named after prefix, the test and this
// process, and removes all it made when the test ends.
func Open(t testing.TB, prefix string) *jobcgroup.Manager {
	t.Helper()
	Skip(t, nil)
	m, err := jobcgroup.Open(jobcgroup.Options{NodeID: fmt.Sprintf("%s-%s-%d", prefix, t.Name(), os.Getpid())})
	Skip(t, err)
	if err != nil {
		t.Fatal(err)
	}
	Cleanup(t, m)
	return m
}

// Cleanup removes, when the test ends, every group m holds and its
// directory, failing the test if anything stays.
func Cleanup(t testing.TB, m *jobcgroup.Manager) {
	t.Cleanup(func() {
		if _, err := m.Sweep(nil, time.Now().Add(cleanupTimeout)); err != nil {
			t.Error(err)
		}
		if err := unix.Rmdir(m.Dir()); err != nil {
			t.Errorf("remove %s: %v", m.Dir(), err)
		}
	})
}
