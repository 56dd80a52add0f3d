package server

import (
	"errors"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gantry-ml/gantry/internal/logging"
	"github.com/gantry-ml/gantry/membership"
)

// The membership loop (bootstrap) and the leader's reconcile loop both
// record identity checks; under -race this fails if the refusals map is
// not guarded (a concurrent map write kills the process outright).
func TestRefusalsSafeAcrossLoops(t *testing.T) {
	s := &Server{cfg: Config{NodeID: "c0", Log: logging.Discard()}, refused: map[string]refusal{},
		votersRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})}
	m := membership.Member{Name: "rogue", RaftAddr: "127.0.0.1:1"}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				s.recordVerify(m, errors.New("no controller certificate"))
				s.recentlyRefused(m)
				s.recordVerify(m, nil)
			}
		}()
	}
	wg.Wait()
	if !s.recordVerify(m, nil) || s.recentlyRefused(m) {
		t.Fatal("a verified member is still refused")
	}
	if s.recordVerify(m, errors.New("again")) || !s.recentlyRefused(m) {
		t.Fatal("a refused member is not left alone")
	}
}

// Flat points go into Raft entries only once every voter's release reads
// them: a voter of an older release (no feature tag), or one serf does not
// list, keeps the cluster on the map form. Non-voters do not count.
func TestVotersHaveFeature(t *testing.T) {
	f := membership.FeatureFlatPoints
	newer := func(name string) membership.Member { return membership.Member{Name: name, Features: []string{"x", f}} }
	voter := func(id string) raft.Server { return raft.Server{ID: raft.ServerID(id), Suffrage: raft.Voter} }
	all := []membership.Member{newer("c0"), newer("c1"), {Name: "old"}, newer("c3")}
	for _, tc := range []struct {
		name    string
		servers []raft.Server
		want    bool
	}{
		{"all newer", []raft.Server{voter("c0"), voter("c1")}, true},
		{"an older voter", []raft.Server{voter("c0"), voter("old")}, false},
		{"a voter serf does not list", []raft.Server{voter("c0"), voter("gone")}, false},
		{"an older non-voter", []raft.Server{voter("c0"), {ID: "old", Suffrage: raft.Nonvoter}}, true},
	} {
		if got := votersHave(tc.servers, all, f); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if !(membership.Member{Features: []string{f}}).Has(f) || (membership.Member{}).Has(f) {
		t.Fatal("Member.Has")
	}
}
