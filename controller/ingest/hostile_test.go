package ingest_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/encoding/protodelim"

	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/internal/tlsutil"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
	"github.com/gantry-ml/gantry/proto/wire"
)

// records opens the records stream of a connected agent.
func (a *agentConn) records(t *testing.T) *wire.Stream {
	t.Helper()
	qs, err := a.conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rs, err := wire.Open(qs, wire.StreamRecords)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// send writes a batch and waits for its ack.
func send(t *testing.T, rs *wire.Stream, b *gantrypb.RecordBatch) {
	t.Helper()
	if err := rs.Write(b); err != nil {
		t.Fatal(err)
	}
	var ack gantrypb.BatchAck
	if err := rs.Read(&ack, 10*time.Second); err != nil {
		t.Fatalf("ack of batch %d: %v", b.BatchId, err)
	}
	if ack.BatchId != b.BatchId {
		t.Fatalf("ack = %v, want batch %d", &ack, b.BatchId)
	}
}

func (e *env) readJob(id string) *gantrypb.Job {
	e.t.Helper()
	var j *gantrypb.Job
	if err := e.st.View(func(tx *store.Tx) (err error) { j, err = tx.Job(id); return err }); err != nil {
		e.t.Fatal(err)
	}
	return j
}

func (e *env) connect(name string) *agentConn {
	e.t.Helper()
	files := e.agent1
	if name != "agent1" {
		var err error
		if files, err = tlsutil.Issue(e.tlsDir, tlsutil.RoleAgent, name, nil); err != nil {
			e.t.Fatal(err)
		}
	}
	a := e.dial(files)
	if r, err := a.hello(&gantrypb.Hello{NodeId: name}); err != nil || !r.Ok {
		e.t.Fatalf("hello of %s: %v %v", name, r, err)
	}
	return a
}

func pt(job string, seq uint64, vals map[string]float64) *gantrypb.Record {
	return &gantrypb.Record{JobId: job, Seq: seq, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Values: vals}}}
}

// A hostile agent with a valid agent certificate sends everything a leaked
// key allows: records for another node's job (points, and an exit with a
// seq far ahead), an id bbolt cannot take as a key, keys and values over
// every limit. The batch is acked (so a real agent would not resend it
// forever), nothing of it lands in another node's job, its own job gets
// record_rejected events in place of the bad records, and the controller
// goes on serving the real agent.
func TestHostileAgentBatch(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.job("victim", "agent1")
	e.job("own", "mallory")
	real := e.connect("agent1")
	realRS := real.records(t)
	send(t, realRS, &gantrypb.RecordBatch{BatchId: 1, Records: []*gantrypb.Record{pt("victim", 1, map[string]float64{"loss": 1})}})

	mallory := e.connect("mallory")
	rs := mallory.records(t)
	many := map[string]float64{}
	for i := range limits.MaxKeysPerPoint + 1 {
		many[fmt.Sprintf("k%d", i)] = 1
	}
	send(t, rs, &gantrypb.RecordBatch{BatchId: 9, Records: []*gantrypb.Record{
		pt("victim", 2, map[string]float64{"loss": 666}),
		{JobId: "victim", Seq: 1 << 40, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{FinalMetrics: map[string]float64{"loss": 666}}}},
		pt(strings.Repeat("x", 40000), 1, map[string]float64{"loss": 1}),
		pt("ghost", 1, map[string]float64{"loss": 1}),
		pt("own", 1, map[string]float64{"ok": 1}),
		pt("own", 2, map[string]float64{strings.Repeat("k", 40000): 1}),
		pt("own", 3, many),
		{JobId: "own", Seq: 4, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{Data: make([]byte, limits.MaxLogChunkBytes+1)}}},
		{JobId: "", Seq: 1, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{}}},
		pt("own", 5, map[string]float64{"ok": 2}),
	}})

	victim := e.readJob("victim")
	if victim.State != gantrypb.JobState_JOB_STATE_ASSIGNED || victim.LatestMetrics["loss"] != 1 || victim.Points != 1 {
		t.Fatalf("the forger changed another node's job: %s points=%d latest=%v", victim.State, victim.Points, victim.LatestMetrics)
	}
	own := e.readJob("own")
	if own.Points != 2 || own.LatestMetrics["ok"] != 2 || own.RejectedRecords != 3 {
		t.Fatalf("own job: points=%d latest=%v rejected=%d, want 2 points and 3 rejected", own.Points, own.LatestMetrics, own.RejectedRecords)
	}
	var events []*gantrypb.JobEvent
	if err := e.st.View(func(tx *store.Tx) (err error) { events, err = tx.Events("own", 0, 0); return err }); err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		if ev.Kind != string(lifecycle.EventRecordRejected) || !strings.Contains(ev.Message, "limit") {
			t.Fatalf("event %v, want record_rejected naming the limit", ev)
		}
	}
	if len(events) != 3 {
		t.Fatalf("%d events on the forger's own job, want 3", len(events))
	}

	// The real agent's next records are still taken in order.
	send(t, realRS, &gantrypb.RecordBatch{BatchId: 2, Records: []*gantrypb.Record{
		pt("victim", 2, map[string]float64{"loss": 0.5}),
		{JobId: "victim", Seq: 3, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: new(int32)}}},
	}})
	victim = e.readJob("victim")
	if victim.State != gantrypb.JobState_JOB_STATE_SUCCEEDED || victim.FinalMetrics["loss"] != 0.5 {
		t.Fatalf("real exit after the forgery: %s final=%v", victim.State, victim.FinalMetrics)
	}
	if _, err := e.raft.Apply(&gantrypb.SubmitJobCmd{JobId: "after", Spec: &gantrypb.JobSpec{Run: "x"}}); err != nil {
		t.Fatalf("the cluster no longer takes jobs: %v", err)
	}
}

// Broken framing ends the offending session and nothing else: garbage
// that is not protobuf, a length prefix over the frame limit, and a batch
// over the record limit. The controller then takes a new session.
func TestHostileAgentFraming(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.job("own", "mallory")
	over := &gantrypb.RecordBatch{BatchId: 1}
	for i := range limits.MaxRecordsPerBatch + 1 {
		over.Records = append(over.Records, pt("own", uint64(i+1), map[string]float64{"x": 1}))
	}
	var framed bytes.Buffer
	if _, err := protodelim.MarshalTo(&framed, over); err != nil {
		t.Fatal(err)
	}
	badTable := &gantrypb.RecordBatch{BatchId: 1, Keys: []string{"loss", "loss"}, Records: []*gantrypb.Record{
		{JobId: "own", Seq: 1, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{KeyIdx: []uint32{0}, Vals: []float64{1}}}}}}
	var tableFramed bytes.Buffer
	if _, err := protodelim.MarshalTo(&tableFramed, badTable); err != nil {
		t.Fatal(err)
	}
	for name, payload := range map[string][]byte{
		"garbage":        {0x05, 0xff, 0xff, 0xff, 0xff, 0xff},
		"oversize frame": binary.AppendUvarint(nil, wire.MaxMessageBytes+1),
		"too many recs":  framed.Bytes(),
		"bad key table":  tableFramed.Bytes(),
	} {
		t.Run(name, func(t *testing.T) {
			a := e.connect("mallory")
			qs, err := a.conn.OpenStreamSync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := qs.Write(append([]byte{byte(wire.StreamRecords)}, payload...)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-a.conn.Context().Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the controller kept a session that broke the framing")
			}
			var appErr *quic.ApplicationError
			if err := context.Cause(a.conn.Context()); !errors.As(err, &appErr) {
				t.Fatalf("close cause = %v, want an application close", err)
			}
		})
	}
	rs := e.connect("mallory").records(t)
	send(t, rs, &gantrypb.RecordBatch{BatchId: 2, Records: []*gantrypb.Record{pt("own", 1, map[string]float64{"ok": 1})}})
	if j := e.readJob("own"); j.Points != 1 {
		t.Fatalf("points after reconnect = %d, want 1", j.Points)
	}
	// A flat point in a good table is taken.
	send(t, rs, &gantrypb.RecordBatch{BatchId: 3, Keys: []string{"ok", "loss"}, Records: []*gantrypb.Record{
		{JobId: "own", Seq: 2, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{KeyIdx: []uint32{1}, Vals: []float64{0.25}}}}}})
	if j := e.readJob("own"); j.Points != 2 || j.LatestMetrics["loss"] != 0.25 {
		t.Fatalf("after a flat point: %d points, latest %v", j.Points, j.LatestMetrics)
	}
}

// An exit whose final metrics hold a key the controller refuses (an empty
// one, a tab) still ends the job, with the good metrics: the leader
// repairs it rather than swapping it for an event.
func TestExitWithBadKeyStillEndsTheJob(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.job("j", "agent1")
	rs := e.connect("agent1").records(t)
	send(t, rs, &gantrypb.RecordBatch{BatchId: 1, Records: []*gantrypb.Record{
		pt("j", 1, map[string]float64{"loss": 0.5}),
		{JobId: "j", Seq: 2, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: new(int32),
			FinalMetrics: map[string]float64{"": 1, "loss\tval": 2, "loss": 0.5}}}},
	}})
	j := e.readJob("j")
	if j.State != gantrypb.JobState_JOB_STATE_SUCCEEDED || j.FinalMetrics["loss"] != 0.5 || len(j.FinalMetrics) != 1 {
		t.Fatalf("job %s final %v, want succeeded with loss only", j.State, j.FinalMetrics)
	}
}

// A new leader whose state lags its log does not know a job that is
// already assigned: its records go to the FSM, which decides at their
// place in the log, instead of being dropped and acked.
func TestUnknownJobLeftToTheFSM(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.job("j", "agent1")
	e.srvOwners.hide("j") // the leader's state lags: it does not know j yet
	rs := e.connect("agent1").records(t)
	send(t, rs, &gantrypb.RecordBatch{BatchId: 1, Records: []*gantrypb.Record{pt("j", 1, map[string]float64{"loss": 0.5})}})
	if j := e.readJob("j"); j.Points != 1 {
		t.Fatalf("points = %d, want 1: a record of an assigned job was dropped at the leader", j.Points)
	}
}
