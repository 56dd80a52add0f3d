package server

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// registerDurabilityMetrics exports what the Raft node found about its
// disk and its log, so that a controller refusing writes for lack of
// space, or one that came back with a shortened log, shows on /metrics
// and not only in its log.
func (s *Server) registerDurabilityMetrics() {
	s.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gantry_disk_full",
			Help: "1 while the data directory's free space is under -min-free-disk and this controller refuses writes.",
		}, func() float64 {
			if _, full := s.raft.DiskFree(); full {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gantry_data_dir_free_bytes",
			Help: "Free space on the data directory's file system, as last measured by the disk guard.",
		}, func() float64 {
			free, _ := s.raft.DiskFree()
			return float64(free)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gantry_raft_log_write_failed",
			Help: "1 once appending to this controller's Raft log has failed (raft-wal cannot recover in-process: restart it once disk space is freed).",
		}, func() float64 {
			if s.raft.LogWriteFailed() != nil {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gantry_raft_log_lost_entries",
			Help: "Committed entries this controller had applied before its last start but its Raft log no longer held (a truncated WAL tail); it catches up from the leader.",
		}, func() float64 {
			return float64(s.raft.LogCheck().Lost.Count())
		}),
	)
}

// restartAfterLogFailure stops the controller (through fail, which makes
// the process exit non-zero so that its supervisor restarts it) once
// appending to the Raft log has failed and the disk has room again. Why:
// raft-wal cannot append again in the process where an append failed
// (see cluster.DiskGuard), but reopening the log recovers it with every
// committed entry. Waiting for space first avoids a restart loop while
// the disk is still full; meanwhile the node keeps serving reads.
func restartAfterLogFailure(ctx context.Context, failed func() error, diskFull func() bool, every time.Duration, fail func(error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := failed(); err != nil && !diskFull() {
			fail(fmt.Errorf("the raft log could not be written (%v) and cannot be written again without a restart; "+
				"disk space is back, so this controller stops to be restarted (committed entries are safe)", err))
			return
		}
	}
}
