package agent

import (
	"maps"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

func TestRendezvousEnv(t *testing.T) {
	if env := rendezvousEnv(&gantrypb.StartJob{JobId: "j", Gpus: []uint32{0, 1}}); env != nil {
		t.Fatalf("single-node start got %v", env)
	}
	got := rendezvousEnv(&gantrypb.StartJob{JobId: "j", Gpus: []uint32{2, 3}, NodeRank: 1, Nnodes: 2,
		MasterAddr: "10.0.0.1", MasterPort: 29512})
	want := map[string]string{"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29512", "NNODES": "2", "NODE_RANK": "1",
		"GPUS_PER_NODE": "2", "WORLD_SIZE": "4"}
	for k, v := range maps.Clone(want) {
		want["GANTRY_"+k] = v
	}
	if !maps.Equal(got, want) {
		t.Fatalf("env = %v, want %v", got, want)
	}
	if cpu := rendezvousEnv(&gantrypb.StartJob{Nnodes: 3, MasterPort: 1}); cpu["WORLD_SIZE"] != "3" || cpu["GPUS_PER_NODE"] != "1" {
		t.Fatalf("CPU-only gang env %v", cpu)
	}
}

func TestCheckPortFree(t *testing.T) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	if err := checkPortFree(port); err == nil || !strings.Contains(err.Error(), "port "+port+" is not free") {
		t.Fatalf("taken port: %v", err)
	}
	l.Close()
	if err := checkPortFree(port); err != nil {
		t.Fatalf("freed port: %v", err)
	}
}
