package stage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gantry-ml/gantry/bench/report"
	"github.com/gantry-ml/gantry/bench/simagent"
	"github.com/gantry-ml/gantry/bench/testcluster"
	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/client"
)

// devBoltLinesPerTx is the raw reference's batching: 1,000 lines per
// bbolt Update, one key per line.
const devBoltLinesPerTx = 1000

// DevMode is what a new user sees first: `gantry-controller -dev` (one
// controller and its own agent in one process, Raft and all), jobs that
// each `cat` a file of metric lines of 20 metrics as fast as it goes, and
// the time from submitting them to every line stored and readable on the
// API. The reference is the same lines written straight into bbolt on the
// same disk, one key per line, 1,000 lines per Update.
func DevMode(ctx context.Context, e *Env) error {
	const stage = "devmode"
	jobs, lines := e.n(8, 4), e.n(25_000, 5_000)
	dir := filepath.Join(e.RunDir, "devmode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	files := make([]string, jobs)
	for j := range files {
		files[j] = filepath.Join(dir, fmt.Sprintf("lines-%d.jsonl", j))
		if err := writeLines(files[j], lines, j); err != nil {
			return err
		}
	}

	ports, err := testcluster.FreePorts(3)
	if err != nil {
		return err
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	args := []string{"-dev", "-data-dir", filepath.Join(dir, "data"), "-fake-gpus", strconv.Itoa(jobs),
		"-http-addr", httpAddr, "-quic-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"-raft-addr", fmt.Sprintf("127.0.0.1:%d", ports[2]), "-log-level", "warn", "-min-free-disk", "0"}
	if os.Geteuid() == 0 {
		args = append(args, "-job-user", "root") // the files sit in this run's private temp dir
	}
	p, err := e.Group.Start("devmode", filepath.Join(e.BinDir, "gantry-controller"), args...)
	if err != nil {
		return err
	}
	defer p.Stop(10 * time.Second)
	api := client.New("http://" + httpAddr)
	if err := waitFor(ctx, 60*time.Second, 50*time.Millisecond, "the dev controller and its agent", func() (bool, error) {
		if !p.Alive() {
			return false, fmt.Errorf("gantry-controller -dev exited: %v\n%s", p.Err(), p.Tail(2000))
		}
		nodes, err := api.Nodes(ctx)
		return err == nil && len(nodes) == 1 && nodes[0].Connected && len(nodes[0].GPUs) == jobs, nil
	}); err != nil {
		return err
	}

	e.Progress(stage, "%d jobs, each cat-ing %d lines of %d metrics into its metrics file", jobs, lines, len(simagent.MetricKeys))
	begin := time.Now()
	ids := make([]string, jobs)
	for j := range ids {
		id, err := api.Submit(ctx, apiv1.JobSpec{Name: fmt.Sprintf("cat-%d", j), Run: fmt.Sprintf("cat '%s' >> \"$GANTRY_METRICS_FILE\"", files[j]),
			Resources: apiv1.Resources{GPUs: 1}})
		if err != nil {
			return fmt.Errorf("stage: submit: %w", err)
		}
		ids[j] = id
	}
	if err := waitFor(ctx, e.d(10*time.Minute, 5*time.Minute), 20*time.Millisecond, "every line stored", func() (bool, error) {
		for _, id := range ids {
			job, err := api.Job(ctx, id)
			if err != nil {
				return false, nil
			}
			if job.State == "failed" || job.State == "cancelled" || job.State == "lost" {
				return false, fmt.Errorf("stage: job %s is %s: %s", id, job.State, job.Error)
			}
			if job.Points < uint64(lines) {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return err
	}
	took := time.Since(begin)
	rate := float64(jobs*lines) / took.Seconds()

	raw, err := rawBoltLines(filepath.Join(dir, "raw.db"), files)
	if err != nil {
		return err
	}
	e.Progress(stage, "file → stored on the API: %.0f lines/s; raw bbolt: %.0f lines/s", rate, raw)
	e.Report.Add(report.Figure{Stage: stage, Name: "dev mode: metrics file → stored on the API (lines of 20 metrics)", Value: rate, Unit: "lines/s",
		Against: "raw bbolt, the same lines one key per line, 1,000 lines per Update, same disk", AgainstValue: raw, Goal: "≥ 1×",
		Note: fmt.Sprintf("%d jobs × %d lines written by cat as fast as it goes; from the first submit to the last line readable, so job start-up is included; took %s",
			jobs, lines, took.Round(time.Millisecond))})
	return nil
}

// writeLines writes n metric lines of 20 metrics, as a training script
// logs them, for job j.
func writeLines(path string, n, j int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for i := 1; i <= n; i++ {
		p := simagent.Point("x", int64(i), 1.7e9+float64(i)*0.01+float64(j)).GetPoint()
		fmt.Fprintf(w, `{"step":%d,"ts":%.3f`, i, p.Ts)
		for _, k := range simagent.MetricKeys {
			fmt.Fprintf(w, `,%q:%s`, k, strconv.FormatFloat(p.Values[k], 'g', -1, 64))
		}
		w.WriteString("}\n")
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// rawBoltLines writes every line of files into a fresh bbolt database, one
// key per line, devBoltLinesPerTx lines per Update (fsync on, bbolt's
// default), and returns lines per second.
func rawBoltLines(path string, files []string) (float64, error) {
	var lines [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return 0, err
		}
		lines = append(lines, bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))...)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	begin := time.Now()
	for i := 0; i < len(lines); i += devBoltLinesPerTx {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("lines"))
			if err != nil {
				return err
			}
			for k := i; k < min(i+devBoltLinesPerTx, len(lines)); k++ {
				if err := b.Put(binary.BigEndian.AppendUint64(nil, uint64(k)), lines[k]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("stage: raw bbolt: %w", err)
		}
	}
	return float64(len(lines)) / time.Since(begin).Seconds(), nil
}
