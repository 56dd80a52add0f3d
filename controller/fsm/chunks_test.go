package fsm_test

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// trainingRecs makes points from..to of job with 20 metrics that move
// like a training run's, so chunks fill at their real rate.
func trainingRecs(job string, from, to uint64) []*gantrypb.Record {
	var out []*gantrypb.Record
	for s := from; s <= to; s++ {
		vals := map[string]float64{}
		for k := range 20 {
			vals[fmt.Sprintf("m%02d", k)] = math.Sin(float64(s)*0.37+float64(k)) * float64(k+1)
		}
		out = append(out, point(job, s, vals))
	}
	return out
}

func chunkBounds(t *testing.T, st *store.Store, job string) [][2]uint64 {
	t.Helper()
	var out [][2]uint64
	if err := st.View(func(tx *store.Tx) error {
		return tx.PointChunks(job, 0, 0, func(pc store.PointChunk) error {
			out = append(out, [2]uint64{pc.FirstSeq(), pc.LastSeq()})
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestChunksAcrossEntriesReplaysAndRestore feeds one job's points in
// batches of random sizes, with replays that overlap what is stored
// across chunk boundaries, a snapshot taken while a chunk is open and
// restored on a second node, and more points after the restore. Every
// point is stored once, exactly, and both nodes (and a third that applied
// the same entries grouped into other store transactions, as a follower
// may) end with the same chunks: voters stay equal.
func TestChunksAcrossEntriesReplaysAndRestore(t *testing.T) {
	const n = 6000
	all := trainingRecs("j", 2, n+1)
	r := rand.New(rand.NewPCG(11, 12))

	h := newHarness(t)
	h.running("j")
	var snap []byte
	var cmds []*gantrypb.IngestCmd
	for next := 0; next < len(all); {
		k := 1 + r.IntN(700)
		if r.IntN(3) == 0 {
			k = 1 + r.IntN(40) // a trickle: the head takes it
		}
		end := min(next+k, len(all))
		// A replay reaching back across whatever boundary came before.
		from := max(0, next-r.IntN(300))
		cmd := ingest("n1", all[from:end]...)
		cmds = append(cmds, proto.Clone(cmd).(*gantrypb.IngestCmd))
		res := h.apply(cmd).(fsm.IngestResult)
		if res.Stored != end-next || res.Duplicates != next-from {
			t.Fatalf("batch %d..%d (replaying from %d): %+v", next, end, from, res)
		}
		next = end
		if snap == nil && next > n/2 {
			s, err := h.f.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			sink := &memSink{}
			if err := s.Persist(sink); err != nil {
				t.Fatal(err)
			}
			s.Release()
			snap = sink.Bytes()
			// The rest goes to both nodes.
			h2 := newHarness(t)
			if err := h2.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
				t.Fatal(err)
			}
			h2.idx = h.idx
			rest := all[next:]
			for len(rest) > 0 {
				k := min(len(rest), 1+r.IntN(500))
				h2.mustOK(ingest("n1", rest[:k]...))
				rest = rest[k:]
			}
			defer func() {
				if got, want := chunkBounds(t, h2.st, "j"), chunkBounds(t, h.st, "j"); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("restored node's chunks %v, want %v", got, want)
				}
				samePoints(t, h2.points("j"), all)
			}()
		}
	}
	samePoints(t, h.points("j"), all)
	if b := chunkBounds(t, h.st, "j"); len(b) < 3 {
		t.Fatalf("%d points made %d chunks; the test needs boundaries", n, len(b))
	}
	other := newHarness(t)
	other.running("j")
	for len(cmds) > 0 {
		k := min(len(cmds), 1+r.IntN(4))
		msgs := make([]proto.Message, k)
		for i := range msgs {
			msgs[i] = cmds[i]
		}
		other.batch(msgs...)
		cmds = cmds[k:]
	}
	if got, want := chunkBounds(t, other.st, "j"), chunkBounds(t, h.st, "j"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the same entries in other transactions made chunks %v, want %v", got, want)
	}
	samePoints(t, other.points("j"), all)
	if j := h.job("j"); j.Points != n || j.LastSeq != n+1 {
		t.Fatalf("job counts %d points to seq %d, want %d to %d", j.Points, j.LastSeq, n, n+1)
	}
}

func samePoints(t *testing.T, got []*gantrypb.MetricPoint, recs []*gantrypb.Record) {
	t.Helper()
	if len(got) != len(recs) {
		t.Fatalf("%d points stored, want %d", len(got), len(recs))
	}
	for i, rec := range recs {
		want := proto.Clone(rec.GetPoint()).(*gantrypb.MetricPoint)
		want.Seq = rec.Seq
		if !proto.Equal(got[i], want) {
			t.Fatalf("point %d:\n got %v\nwant %v", i, got[i], want)
		}
	}
}

// TestPointBelowStoredOnesSkipped: were a job's stream mark ever behind
// its stored points, a point below them is skipped on every voter alike
// and counted as rejected, and the rest of the entry still applies.
func TestPointBelowStoredOnesSkipped(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	h.mustOK(ingest("n1", points("j", 2, 30)...))
	if err := h.st.Update(func(tx *store.Tx) error {
		return tx.SetHighWater(store.StreamKeyNodeJob("n1", "j"), 10)
	}); err != nil {
		t.Fatal(err)
	}
	res := h.apply(ingest("n1", append(points("j", 11, 12), &gantrypb.Record{JobId: "j", Seq: 31,
		Body: &gantrypb.Record_Event{Event: &gantrypb.JobEvent{Kind: "note", Message: "still applied"}}})...))
	if r, ok := res.(fsm.IngestResult); !ok || r.Stored != 1 || r.Rejected != 2 {
		t.Fatalf("ingest = %v", res)
	}
	if pts := h.points("j"); len(pts) != 29 || pts[9].Seq != 11 || pts[9].Values["acc"] != 0.11 {
		t.Fatalf("points after the stale ones: %d", len(pts))
	}
	if j := h.job("j"); j.Points != 29 || j.LastSeq != 30 {
		t.Fatalf("job counts %d points to %d, want 29 to 30", j.Points, j.LastSeq)
	}
	if evs := h.events("j"); len(evs) != 1 || evs[0].Message != "still applied" {
		t.Fatalf("events: %v", evs)
	}
}

// TestJobWrittenOncePerBatchStaysCoherent: ingest entries of one batch
// share the job (written once at the end), and a command between them
// sees, and keeps, what the entries before it did.
func TestJobWrittenOncePerBatchStaysCoherent(t *testing.T) {
	h := newHarness(t)
	h.running("j")
	rs := h.batch(
		ingest("n1", points("j", 2, 5)...),
		ingest("n1", points("j", 6, 9)...),
		&gantrypb.CancelJobCmd{JobId: "j", AtMs: 7000},
		ingest("n1", append(points("j", 10, 11), exitRec("j", 12, &gantrypb.JobExit{ExitCode: code(143), Signal: "SIGTERM", Reason: "cancelled"}))...),
	)
	for i, r := range rs {
		if err, ok := r.(error); ok {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	j := h.job("j")
	if j.Points != 10 || j.LastSeq != 11 || !j.CancelRequested || j.State != gantrypb.JobState_JOB_STATE_CANCELLED ||
		j.FinalMetrics["step"] != 11 || j.LatestMetrics["acc"] != 0.11 {
		t.Fatalf("job after the batch: points %d last %d cancel %v state %s final %v", j.Points, j.LastSeq, j.CancelRequested, j.State, j.FinalMetrics)
	}
}
