package link

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// TestTrimOversizeExit: an exit record as an agent before the caps spooled
// it (22 MB of final metrics, issue 9 item 7) is trimmed to fit a batch,
// keeping the same keys every time.
func TestTrimOversizeExit(t *testing.T) {
	mk := func() *gantrypb.Record {
		m := make(map[string]float64, 1_050_000)
		for i := range 1_050_000 {
			m[fmt.Sprintf("k%07d", i)] = float64(i)
		}
		return &gantrypb.Record{JobId: "j", Seq: 9, Body: &gantrypb.Record_Exit{Exit: &gantrypb.JobExit{
			FinalMetrics: m, LogTail: strings.Repeat("é", limits.MaxLogTailBytes), Error: strings.Repeat("x", 1<<20)}}}
	}
	r := mk()
	if proto.Size(r) <= MaxBatchBytes {
		t.Fatalf("test record is only %d bytes", proto.Size(r))
	}
	if !trimRecord(r) {
		t.Fatal("nothing trimmed")
	}
	batch := &gantrypb.RecordBatch{BatchId: 1, Records: []*gantrypb.Record{r}}
	if size := proto.Size(batch); size > MaxBatchBytes {
		t.Fatalf("trimmed batch is %d bytes, over %d", size, MaxBatchBytes)
	}
	exit := r.GetExit()
	if len(exit.FinalMetrics) != limits.MaxKeysPerJob || exit.FinalMetrics["k0000000"] != 0 {
		t.Fatalf("%d final metrics kept; want the first %d", len(exit.FinalMetrics), limits.MaxKeysPerJob)
	}
	if _, err := proto.Marshal(r); err != nil {
		t.Fatalf("trimmed record does not marshal (a string cut inside a rune?): %v", err)
	}
	if trimRecord(r) {
		t.Fatal("a trimmed record was trimmed again")
	}
}
