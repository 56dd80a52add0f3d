package command

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func TestRoundTrip(t *testing.T) {
	step := int64(7)
	code := int32(3)
	tests := []struct {
		typ Type
		msg proto.Message
	}{
		{SubmitJob, &gantrypb.SubmitJobCmd{JobId: "j1", AtMs: 42, Spec: &gantrypb.JobSpec{
			Name: "n", Run: "python train.py", Env: map[string]string{"A": "b"},
			Resources: &gantrypb.Resources{Gpus: 2, GpuType: "a100"}, Node: "h1", MaxDurationMs: 1000, KillGraceMs: 5,
		}}},
		{AssignJob, &gantrypb.AssignJobCmd{JobId: "j1", NodeId: "h1", Gpus: []uint32{0, 3}, AtMs: 43}},
		{CancelJob, &gantrypb.CancelJobCmd{JobId: "j1", AtMs: 44}},
		{Ingest, &gantrypb.IngestCmd{NodeId: "h1", AtMs: 45, Records: []*gantrypb.Record{
			{JobId: "j1", Seq: 1, Body: &gantrypb.Record_Point{Point: &gantrypb.MetricPoint{Step: &step, Ts: 1.5, Values: map[string]float64{"loss": 0.5}}}},
			{JobId: "j1", Seq: 2, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{ExitCode: &code, Signal: "SIGTERM"}}},
			{Seq: 1, Body: &gantrypb.Record_Gpu{Gpu: &gantrypb.GPUSample{Ts: 2, Gpus: []*gantrypb.GPUStat{{Index: 0, UtilizationPct: 99}}}}},
		}}},
		{NodeUp, &gantrypb.NodeUpCmd{Node: &gantrypb.Node{Id: "h1", Hostname: "host", Gpus: []*gantrypb.GPUInfo{{Index: 0, Name: "A100"}}}, ActiveJobs: []string{"j1"}, AtMs: 46}},
		{NodeDown, &gantrypb.NodeDownCmd{NodeId: "h1", AtMs: 47}},
		{EndJob, &gantrypb.EndJobCmd{JobId: "j1", State: gantrypb.JobState_JOB_STATE_LOST, Error: "gone", AtMs: 48}},
		{QueueTimeout, &gantrypb.QueueTimeoutCmd{JobId: "j1", Error: "still queued after 1m0s", AtMs: 49}},
		{AlertsDelivered, &gantrypb.AlertsDeliveredCmd{UpTo: 12, AtMs: 50}},
		{Drain, &gantrypb.DrainCmd{NodeId: "h1", Gpus: []uint32{3}, AtMs: 51}},
		{AssignGang, &gantrypb.AssignGangCmd{JobId: "j1", Ranks: []*gantrypb.GangRank{{NodeId: "h1", Gpus: []uint32{0, 1}}, {NodeId: "h2", Gpus: []uint32{0, 1}}},
			MasterAddr: "10.0.0.1", MasterPort: 29500, AtMs: 52}},
	}
	seen := map[Type]bool{}
	for _, tt := range tests {
		t.Run(tt.typ.String(), func(t *testing.T) {
			got, err := TypeOf(tt.msg)
			if err != nil || got != tt.typ {
				t.Fatalf("TypeOf = %v, %v; want %v", got, err, tt.typ)
			}
			b, err := Encode(tt.msg)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if Type(b[0]&^checksumFlag) != tt.typ || b[0]&checksumFlag == 0 {
				t.Fatalf("first byte = %#x, want type %d with the checksum flag", b[0], tt.typ)
			}
			m, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !proto.Equal(m, tt.msg) {
				t.Fatalf("round trip changed the message:\n got %v\nwant %v", m, tt.msg)
			}
		})
		seen[tt.typ] = true
	}
	// Every known type must be covered: a type added without a test case
	// (or without a Decode branch) shows up here.
	for typ := Type(1); !strings.HasPrefix(typ.String(), "type("); typ++ {
		if !seen[typ] {
			t.Errorf("type %s has no round-trip case", typ)
		}
	}
}

// The wire values are part of the Raft log format: renumbering one would
// make old logs replay as the wrong command.
func TestTypeValuesStable(t *testing.T) {
	want := map[Type]byte{SubmitJob: 1, AssignJob: 2, CancelJob: 3, Ingest: 4, NodeUp: 5, NodeDown: 6, EndJob: 7}
	for typ, b := range want {
		if byte(typ) != b {
			t.Errorf("%s = %d, want %d", typ, byte(typ), b)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"nil", nil, ErrEmpty},
		{"empty", []byte{}, ErrEmpty},
		{"type zero", []byte{0}, ErrUnknownType},
		{"unknown legacy type", []byte{100, 1, 2}, ErrUnknownType},
		{"next unassigned type", []byte{byte(AssignGang) + 1}, ErrUnknownType},
		{"checksummed unknown type", withCRC(byte(AssignGang)+1|checksumFlag, nil), ErrUnknownType},
		{"checksummed type zero", withCRC(checksumFlag, []byte{8, 1}), ErrUnknownType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode(%v) = %v, %v; want %v", tt.in, m, err, tt.want)
			}
			if m != nil {
				t.Fatalf("Decode returned a message with an error: %v", m)
			}
		})
	}
}

func TestDecodeCorruptPayload(t *testing.T) {
	// A length-delimited field whose length runs past the end.
	_, err := Decode([]byte{byte(SubmitJob), 0x0a, 0x50, 'x'})
	if err == nil {
		t.Fatal("Decode accepted a truncated payload")
	}
	if errors.Is(err, ErrUnknownType) || errors.Is(err, ErrEmpty) || !errors.Is(err, ErrMalformed) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong error class: %v", err)
	}
}

func TestEncodeUnknownMessage(t *testing.T) {
	_, err := Encode(&gantrypb.Job{Id: "x"})
	if !errors.Is(err, ErrUnknownType) {
		t.Fatalf("Encode(Job) error = %v, want ErrUnknownType", err)
	}
}

func TestTypeString(t *testing.T) {
	if got := Type(99).String(); got != "type(99)" {
		t.Fatalf("String of unknown type = %q", got)
	}
	if got := Ingest.String(); got != "ingest" {
		t.Fatalf("Ingest.String() = %q", got)
	}
}
