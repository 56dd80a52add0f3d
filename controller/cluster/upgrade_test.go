package cluster_test

import (
	"compress/gzip"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/cluster"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/testutil"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

type fixtureJob struct {
	Points        []apiv1.Point      `json:"points"`
	State         string             `json:"state"`
	FinalMetrics  map[string]float64 `json:"final_metrics"`
	LatestMetrics map[string]float64 `json:"latest_metrics"`
	PointsCount   uint64             `json:"points_count"`
	LastSeq       uint64             `json:"last_seq"`
}

// TestUpgradeFromSchema1DataDirectory opens a controller data directory
// written by the release that stored one bbolt value per metric point
// (testdata/schema1, made by testdata/schema1/generate_test.go.txt at that
// release): a Raft snapshot in the old layout plus log entries after it.
// The snapshot is migrated to chunks as it is restored, the log entries
// are applied on top, and every point, the final metrics and the counters
// read back exactly as that release read them.
func TestUpgradeFromSchema1DataDirectory(t *testing.T) {
	p := newPersistent(t)
	out, err := exec.Command("tar", "-C", p.dataDir, "-xzf", filepath.Join("testdata", "schema1", "datadir.tar.gz")).CombinedOutput()
	if err != nil {
		t.Fatalf("untar fixture: %v: %s", err, out)
	}
	want := map[string]fixtureJob{}
	f, err := os.Open(filepath.Join("testdata", "schema1", "expected.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(zr).Decode(&want); err != nil {
		t.Fatal(err)
	}
	if len(want["fx-1"].Points) != 3500 || len(want["fx-2"].Points) != 60 {
		t.Fatalf("fixture has %d and %d points, want 3500 and 60", len(want["fx-1"].Points), len(want["fx-2"].Points))
	}

	nd, err := p.start(t, cluster.DiskConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if nd.restores.n.Load() != 1 {
		t.Fatalf("%d snapshot restores at start, want 1 (the fixture's schema 1 snapshot)", nd.restores.n.Load())
	}
	waitLeader(t, nd)
	// The entries after the snapshot are applied once the node leads.
	testutil.WaitFor(t, 10*time.Second, func() bool {
		var done bool
		_ = nd.st.View(func(tx *store.Tx) error {
			j, err := tx.Job("fx-2")
			done = err == nil && j.Points == 60
			return nil
		})
		return done
	}, "the log after the snapshot to be applied")

	err = nd.st.View(func(tx *store.Tx) error {
		for id, w := range want {
			job, err := tx.Job(id)
			if err != nil {
				return err
			}
			if job.State.String() != w.State || job.Points != w.PointsCount || job.LastSeq != w.LastSeq ||
				!sameMetrics(job.FinalMetrics, w.FinalMetrics) || !sameMetrics(job.LatestMetrics, w.LatestMetrics) {
				t.Errorf("%s: state %s points %d last %d final %v latest %v; want %s %d %d %v %v", id, job.State, job.Points,
					job.LastSeq, job.FinalMetrics, job.LatestMetrics, w.State, w.PointsCount, w.LastSeq, w.FinalMetrics, w.LatestMetrics)
			}
			got, err := tx.Points(id, 0, 0)
			if err != nil {
				return err
			}
			if len(got) != len(w.Points) {
				t.Fatalf("%s: %d points, want %d", id, len(got), len(w.Points))
			}
			for i, wp := range w.Points {
				if !samePoint(got[i], wp) {
					t.Fatalf("%s point %d:\n got %v\nwant %+v", id, i, got[i], wp)
				}
			}
			// Paged reads agree with the whole read.
			var paged int
			for after := uint64(0); ; {
				page, err := tx.Points(id, after, 333)
				if err != nil {
					return err
				}
				if len(page) == 0 {
					break
				}
				for _, p := range page {
					if !samePoint(p, w.Points[paged]) {
						t.Fatalf("%s: paged read differs at %d", id, paged)
					}
					paged++
				}
				after = page[len(page)-1].Seq
			}
			if paged != len(w.Points) {
				t.Fatalf("%s: paging read %d points, want %d", id, paged, len(w.Points))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// New points go on after the migrated ones.
	if _, err := nd.Apply(&gantrypb.IngestCmd{NodeId: "n1", AtMs: 1, Records: []*gantrypb.Record{{JobId: "fx-2", Seq: 61,
		Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Ts: 5, Values: map[string]float64{"loss": 0.5}}}}}}); err != nil {
		t.Fatal(err)
	}
	err = nd.st.View(func(tx *store.Tx) error {
		pts, err := tx.LastPoints("fx-2", 2)
		if err != nil {
			return err
		}
		if len(pts) != 2 || pts[0].Seq != 60 || pts[1].Seq != 61 || pts[1].Values["loss"] != 0.5 {
			t.Errorf("after a new point: last two are %v", pts)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func samePoint(got *gantrypb.MetricPoint, want apiv1.Point) bool {
	if got.Seq != want.Seq || got.Ts != want.TS || (got.Step == nil) != (want.Step == nil) ||
		(got.Step != nil && *got.Step != *want.Step) {
		return false
	}
	return sameMetrics(got.Values, want.Values)
}

func sameMetrics(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || math.Float64bits(v) != math.Float64bits(w) {
			return false
		}
	}
	return true
}
