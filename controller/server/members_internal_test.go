package server

import (
	"errors"
	"sync"
	"testing"

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
