package fsm_test

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/controller/fsm"
	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// FuzzIngestBatch applies whatever an agent could put in a record batch:
// no input may panic the FSM or leave the store unable to take the next
// entry. Seeds are the hostile batches the trust review found.
func FuzzIngestBatch(f *testing.F) {
	seeds := []*gantrypb.RecordBatch{
		{Records: points("j", 1, 3)},
		{Records: []*gantrypb.Record{point(strings.Repeat("x", 40000), 1, map[string]float64{"a": 1})}},
		{Records: []*gantrypb.Record{point("j", 1, map[string]float64{strings.Repeat("k", 40000): 1})}},
		{Records: []*gantrypb.Record{exitRec("j", 1<<62, &gantrypb.JobExit{FinalMetrics: map[string]float64{"loss": 666}})}},
		{Records: []*gantrypb.Record{{JobId: "j", Seq: 2, Body: &gantrypb.Record_Log{Log: &gantrypb.LogChunk{Offset: 1<<64 - 1, Data: []byte("x")}}}}},
		{Records: []*gantrypb.Record{{Seq: 1, Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Gpus: []*gantrypb.GPUStat{nil}}}}}},
		{Records: []*gantrypb.Record{{JobId: "j", Seq: 3}}},
		{Records: []*gantrypb.Record{condRec("j", 2, "hung", true, 0, 1, 63), condRec("j", 3, "hung", false), condRec("j", 4, "on_fire", true)}},
		{Records: []*gantrypb.Record{{JobId: "j", Seq: 2, Body: &gantrypb.Record_Condition{}}}},
		{Records: []*gantrypb.Record{{Seq: 1, Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Ts: 1, Gpus: []*gantrypb.GPUStat{{Index: 0, Fault: "XID 79"}, {Index: 9999, Fault: strings.Repeat("f", 300)}}}}}}},
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var batch gantrypb.RecordBatch
		if proto.Unmarshal(data, &batch) != nil {
			return
		}
		h := newHarness(t)
		h.running("j")
		rs := h.batch(ingest("n1", batch.Records...), ingest("n2", batch.Records...))
		for i, r := range rs {
			switch r := r.(type) {
			case error:
				if !errors.Is(r, fsm.ErrSkipped) {
					t.Fatalf("response %d = %v, want an IngestResult or ErrSkipped", i, r)
				}
			case fsm.IngestResult:
				// Every record is accounted for exactly once.
				if n := r.Stored + r.Duplicates + r.Rejected; n != len(batch.Records) {
					t.Fatalf("response %d = %+v for %d records", i, r, len(batch.Records))
				}
			default:
				t.Fatalf("response %d = %v", i, r)
			}
		}
		h.mustOK(submit("next"))
	})
}
