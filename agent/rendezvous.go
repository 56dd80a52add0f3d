package agent

import (
	"fmt"
	"net"
	"strconv"

	"github.com/gantry-ml/gantry/proto/gantrypb"
)

// rendezvousEnv returns the variables a rank of a multi-node job gets, in
// the names torchrun (and accelerate, deepspeed) read, and GANTRY_
// twins, so that
//
//	torchrun --nnodes=$NNODES --nproc_per_node=$GPUS_PER_NODE \
//	  --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR --master_port=$MASTER_PORT train.py
//
// runs unchanged on every node. WORLD_SIZE is the number of processes of
// the whole job (nodes × GPUs per node), as torchrun's workers see it.
// A single-node start (nnodes < 2) gets nil: today's environment.
func rendezvousEnv(m *gantrypb.StartJob) map[string]string {
	if m.GetNnodes() < 2 {
		return nil
	}
	perNode := len(m.GetGpus())
	if perNode == 0 {
		// A CPU-only gang: one process per node unless the job says
		// otherwise with its own torchrun flags.
		perNode = 1
	}
	vals := map[string]string{
		"MASTER_ADDR":   m.GetMasterAddr(),
		"MASTER_PORT":   strconv.FormatUint(uint64(m.GetMasterPort()), 10),
		"NNODES":        strconv.FormatUint(uint64(m.GetNnodes()), 10),
		"NODE_RANK":     strconv.FormatUint(uint64(m.GetNodeRank()), 10),
		"GPUS_PER_NODE": strconv.Itoa(perNode),
		"WORLD_SIZE":    strconv.Itoa(perNode * int(m.GetNnodes())),
	}
	env := make(map[string]string, 2*len(vals))
	for k, v := range vals {
		env[k] = v
		env["GANTRY_"+k] = v
	}
	return env
}

// checkPortFree reports whether this host can listen on port (TCP, all
// addresses), as torchrun's store on rank 0 will. The listener is closed
// at once; a process that takes the port in between still makes torchrun
// fail, which the job's log then says.
func checkPortFree(port string) error {
	l, err := net.Listen("tcp", net.JoinHostPort("", port))
	if err != nil {
		return fmt.Errorf("port %s is not free: %w", port, err)
	}
	return l.Close()
}
