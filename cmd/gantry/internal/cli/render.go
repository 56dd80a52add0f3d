package cli

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/lifecycle"
)

// Keys with a meaning of their own in the metrics file contract.
const (
	keyStep       = "step"
	keyTotalSteps = "total_steps"
)

// How many metric values the live line shows: enough for loss, lr and a
// throughput figure, fewer on a narrow terminal so the GPUs stay visible.
const (
	maxLineMetrics = 4
	minLineMetrics = 2
)

// Progress is what the live view knows about a job. Frames update it and
// ProgressLine renders it; it does no I/O, so tests drive it directly.
type Progress struct {
	Job apiv1.Job
	// Step is the latest step seen, nil before the first point with one.
	Step *int64
	// Values holds each metric's latest value.
	Values map[string]float64
	// GPU is the latest GPU sample of the job's node.
	GPU *apiv1.GPUSample

	lastSeq uint64
	updated map[string]uint64 // metric key → seq of the point that last set it
	// Recent values for the live panel's sparklines, at most sparkPoints
	// each: per metric key, and per GPU index its utilization.
	hist    map[string][]float64
	gpuHist map[int][]float64
}

// Apply folds one live frame into p and reports whether the job's state
// changed.
func (p *Progress) Apply(f apiv1.Frame) (stateChanged bool) {
	f = safe(f)
	if f.Job != nil {
		stateChanged = p.SetJob(*f.Job)
	}
	p.AddPoints(f.Points)
	if f.GPU != nil {
		p.addGPU(f.GPU)
	}
	if f.Type == apiv1.FrameFinal && f.Job != nil {
		// The final metrics are by definition the newest values.
		for k, v := range f.Job.FinalMetrics {
			if k == keyStep {
				s := int64(v)
				p.Step = &s
				continue
			}
			p.set(k, v, p.lastSeq+1)
		}
	}
	return stateChanged
}

// SetJob replaces the job and reports whether its state changed.
func (p *Progress) SetJob(j apiv1.Job) bool {
	j = safe(j)
	changed := j.State != p.Job.State
	p.Job = j
	return changed
}

// AddPoints folds points in; points at or below the newest seq seen are
// skipped, since a snapshot may repeat points already streamed.
func (p *Progress) AddPoints(pts []apiv1.Point) {
	pts = safe(pts)
	for _, pt := range pts {
		if pt.Seq != 0 && pt.Seq <= p.lastSeq {
			continue
		}
		if pt.Seq > p.lastSeq {
			p.lastSeq = pt.Seq
		}
		if pt.Step != nil {
			s := *pt.Step
			p.Step = &s
		}
		for k, v := range pt.Values {
			p.set(k, v, pt.Seq)
			if p.hist == nil {
				p.hist = make(map[string][]float64)
			}
			p.hist[k] = pushHistory(p.hist[k], v)
		}
	}
}

// addGPU takes a node's GPU sample; a sample repeated (a reconnect's
// snapshot) is not counted twice in the utilization history. Only an equal
// seq is a repeat: a lower one may come from a restarted sampler.
func (p *Progress) addGPU(s *apiv1.GPUSample) {
	s = safe(s)
	if p.GPU != nil && s.Seq != 0 && s.Seq == p.GPU.Seq {
		return
	}
	p.GPU = s
	if p.gpuHist == nil {
		p.gpuHist = make(map[int][]float64)
	}
	for _, g := range s.GPUs {
		p.gpuHist[g.Index] = pushHistory(p.gpuHist[g.Index], g.UtilizationPct)
	}
}

// LastSeq is the newest point seq folded in.
func (p *Progress) LastSeq() uint64 { return p.lastSeq }

func (p *Progress) set(k string, v float64, seq uint64) {
	if p.Values == nil {
		p.Values = make(map[string]float64)
		p.updated = make(map[string]uint64)
	}
	p.Values[k] = v
	p.updated[k] = seq
}

// metricKeys returns the keys shown as metrics: every value key but the
// step and total_steps, which the step display shows instead.
func (p *Progress) metricKeys() []string {
	keys := make([]string, 0, len(p.Values))
	for k := range p.Values {
		if k != keyTotalSteps && k != keyStep {
			keys = append(keys, k)
		}
	}
	return keys
}

// recentKeys returns up to n metric keys, the most recently updated first
// (ties by name), then sorted by name so the line does not reshuffle.
func (p *Progress) recentKeys(n int) []string {
	keys := p.metricKeys()
	slices.SortFunc(keys, func(a, b string) int {
		if c := cmp.Compare(p.updated[b], p.updated[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	if len(keys) > n {
		keys = keys[:n]
	}
	slices.Sort(keys)
	return keys
}

// ProgressLine renders p on one line: state, step (with a bar when bar is
// set and a total_steps metric exists), the most recent metric values and
// the job's GPUs. A positive width truncates the line to width-1 columns, so
// a terminal never wraps it and "\r" can redraw it; before truncating, it
// shows fewer metrics (down to two) so that the GPUs stay in view.
func ProgressLine(p *Progress, width int, bar bool) string {
	head := []string{cmp.Or(p.Job.State, "connecting")}
	if p.Job.State == apiv1.StateQueued && p.Job.Reason != "" {
		// While it waits, why is all there is to say.
		return truncate("queued: "+p.Job.Reason, width)
	}
	if p.Step != nil {
		total := int64(p.Values[keyTotalSteps])
		if total > 0 {
			s := fmt.Sprintf("step %d/%d", *p.Step, total)
			if bar {
				s += " " + progressBar(float64(*p.Step)/float64(total), 20)
			}
			head = append(head, s)
		} else {
			head = append(head, fmt.Sprintf("step %d", *p.Step))
		}
	}
	gpus := gpuSummary(p.GPU, p.Job.GPUs)
	var line string
	for n := maxLineMetrics; n >= minLineMetrics; n-- {
		parts := head
		var ms []string
		for _, k := range p.recentKeys(n) {
			ms = append(ms, k+"="+FormatValue(p.Values[k]))
		}
		if len(ms) > 0 {
			parts = append(parts, strings.Join(ms, " "))
		}
		if gpus != "" {
			parts = append(parts, gpus)
		}
		line = strings.Join(parts, "  ")
		if width <= 1 || len([]rune(line)) < width {
			return line
		}
	}
	return truncate(line, width)
}

// progressBar draws frac (clamped to 0..1) as "[#####-----]  50%".
func progressBar(frac float64, cells int) string {
	frac = max(0, min(1, frac))
	n := int(math.Round(frac * float64(cells)))
	return fmt.Sprintf("[%s%s] %3.0f%%", strings.Repeat("#", n), strings.Repeat("-", cells-n), frac*100)
}

// gpuSummary shows utilization and memory of the job's GPUs ("gpu0 97%
// 30.1/80.0G"); with no job GPUs known it shows every GPU in the sample.
func gpuSummary(s *apiv1.GPUSample, jobGPUs []int) string {
	if s == nil {
		return ""
	}
	var out []string
	for _, g := range s.GPUs {
		if len(jobGPUs) > 0 && !slices.Contains(jobGPUs, g.Index) {
			continue
		}
		out = append(out, fmt.Sprintf("gpu%d %.0f%% %s/%s%s", g.Index, g.UtilizationPct,
			gib(g.MemoryUsedBytes), gib(g.MemoryTotalBytes)+"G", throttleNote(g.ThrottledBy, " throttled:")))
	}
	return strings.Join(out, " ")
}

// throttleNote is prefix and the throughput-costing throttle reasons
// ("throttled:hw_thermal_slowdown,sw_power_cap"), or "" for none: benign
// reasons (an idle GPU's gpu_idle) are not worth a word.
func throttleNote(reasons []string, prefix string) string {
	if len(reasons) == 0 {
		return ""
	}
	return prefix + strings.Join(reasons, ",")
}

func gib(b uint64) string { return strconv.FormatFloat(float64(b)/(1<<30), 'f', 1, 64) }

// truncate cuts s to width-1 runes when width > 0.
func truncate(s string, width int) string {
	if width <= 1 {
		return s
	}
	r := []rune(s)
	if len(r) < width {
		return s
	}
	return string(r[:width-2]) + "…"
}

// FormatValue renders a metric compactly for the live line: integers
// as integers, large values with one decimal, the rest with 4 significant
// digits.
func FormatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return strconv.FormatFloat(v, 'g', -1, 64)
	case v == math.Trunc(v) && a < 1e15:
		return strconv.FormatInt(int64(v), 10)
	case a >= 1e6:
		return strconv.FormatFloat(v, 'g', 4, 64)
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// formatExact renders a metric for tables: integers as integers, others
// with up to 8 significant digits, enough to compare runs.
func formatExact(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', 8, 64)
}

// sortedMetricKeys puts "step" first, the rest by name.
func sortedMetricKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if (a == keyStep) != (b == keyStep) {
			if a == keyStep {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return keys
}

// WriteFinalMetrics writes m as a two-column table, "step" first and the
// other metrics sorted by name. An empty map is written as a note, since
// by invariant I2 a terminal job should never have one.
func WriteFinalMetrics(w io.Writer, m map[string]float64) error {
	if len(m) == 0 {
		_, err := fmt.Fprintln(w, "(no final metrics)")
		return err
	}
	m = safe(m)
	sw := &stickyWriter{w: w}
	tw := tabwriter.NewWriter(sw, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE")
	for _, k := range sortedMetricKeys(m) {
		fmt.Fprintf(tw, "%s\t%s\n", k, formatExact(m[k]))
	}
	_ = tw.Flush() // its error is the sticky one
	return sw.err
}

// FormatAge renders a duration the way `ps` tables do: 42s, 7m, 5h, 3d.
func FormatAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func joinInts(xs []int) string {
	if len(xs) == 0 {
		return "-"
	}
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func orDash(s string) string { return cmp.Or(s, "-") }

// jobStep is the job's last step as far as the job record knows.
func jobStep(j apiv1.Job) string {
	if s, ok := j.FinalMetrics[keyStep]; ok {
		return formatExact(s)
	}
	if s, ok := j.LatestMetrics[keyStep]; ok {
		return formatExact(s) // running: the step it has reached
	}
	return "-"
}

// jobHealth is the HEALTH column: the job's conditions ("stalled",
// "idle_gpus(1,3)"), "ok" for a running job with none, "-" otherwise.
func jobHealth(j apiv1.Job) string {
	if len(j.Conditions) == 0 {
		if j.State == apiv1.StateRunning {
			return "ok"
		}
		return "-"
	}
	parts := make([]string, len(j.Conditions))
	for i, c := range j.Conditions {
		parts[i] = c.Kind
		if len(c.GPUs) > 0 && c.Kind == lifecycle.CondIdleGPUs {
			parts[i] += "(" + joinInts(c.GPUs) + ")"
		}
	}
	return strings.Join(parts, ",")
}

// WriteJobsTable writes the `gantry ps` table, jobs in the order given.
// A REASON column, last since reasons are long, says why queued jobs are
// waiting; it is left out when no job has one, which is the common case.
func WriteJobsTable(w io.Writer, jobs []apiv1.Job, now time.Time) error {
	jobs = safe(jobs)
	reasons := slices.ContainsFunc(jobs, func(j apiv1.Job) bool { return j.Reason != "" })
	// Buffered, so that the padding tabwriter puts before an empty last
	// column can be trimmed.
	var buf strings.Builder
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	head := "ID\tNAME\tSTATE\tHEALTH\tNODE\tGPUS\tSTEP/POINTS\tAGE"
	if reasons {
		head += "\tREASON"
	}
	fmt.Fprintln(tw, head)
	for _, j := range jobs {
		age := "-"
		if j.CreatedAt != nil {
			age = FormatAge(now.Sub(*j.CreatedAt))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s/%d\t%s",
			j.ID, orDash(j.Name), j.State, jobHealth(j), orDash(jobNodes(j)), jobGPUs(j), jobStep(j), j.Points, age)
		if reasons {
			// Tabs would break the columns; a reason is one line.
			fmt.Fprintf(tw, "\t%s", oneLine(j.Reason))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	sw := &stickyWriter{w: w}
	for line := range strings.Lines(buf.String()) {
		fmt.Fprintln(sw, strings.TrimRight(line, " \n"))
	}
	return sw.err
}

// WriteNodesTable writes the `gantry nodes` table.
func WriteNodesTable(w io.Writer, nodes []apiv1.Node, now time.Time) error {
	nodes = safe(nodes)
	// A HEALTH column, last, says which GPUs are failing, drained or
	// throttled; it is left out when none is, the common case.
	health := slices.ContainsFunc(nodes, func(n apiv1.Node) bool { return nodeHealth(n) != "" })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "ID\tHOSTNAME\tSTATE\tGPUS FREE/TOTAL\tCONNECTED\tLAST SEEN"
	if health {
		head += "\tHEALTH"
	}
	fmt.Fprintln(tw, head)
	for _, n := range nodes {
		seen := "-"
		switch {
		case n.Connected:
			seen = "now" // its link is up: last_seen is when it connected
		case n.LastSeen != nil:
			seen = FormatAge(now.Sub(*n.LastSeen)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s",
			n.ID, orDash(n.Hostname), n.State, n.FreeGPUs, len(n.GPUs), yesNo(n.Connected), seen)
		if health {
			fmt.Fprintf(tw, "\t%s", orDash(nodeHealth(n)))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// nodeHealth says what is drained, failing or throttled on a node:
// "drained; GPU 3 failing: XID 79 (...); GPU 5 drained; GPU 6 throttled:
// hw_thermal_slowdown", or "" when nothing is.
func nodeHealth(n apiv1.Node) string {
	var parts []string
	if n.Drained {
		parts = append(parts, "drained")
	}
	for _, g := range n.GPUs {
		switch {
		case !g.Healthy && g.Fault != "":
			parts = append(parts, fmt.Sprintf("GPU %d failing: %s", g.Index, oneLine(g.Fault)))
		case g.Drained:
			parts = append(parts, fmt.Sprintf("GPU %d drained", g.Index))
		}
		if len(g.ThrottledBy) > 0 {
			parts = append(parts, fmt.Sprintf("GPU %d throttled: %s", g.Index, strings.Join(g.ThrottledBy, ",")))
		}
	}
	return strings.Join(parts, "; ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func formatTime(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), FormatAge(now.Sub(*t)))
}

// WriteJobStatus writes every field of a job, its final metrics and its
// events: the `gantry status` view.
func WriteJobStatus(w io.Writer, j apiv1.Job, events []apiv1.Event, now time.Time) error {
	return WriteJobStatusNodes(w, j, events, nil, now)
}

// WriteJobStatusNodes is WriteJobStatus with the cluster's nodes as
// GET /v1/nodes answers them: a "Throttled" row then names the job's GPUs
// that their latest sample shows throttled for a throughput-costing reason
// (nothing when none is, or nodes is nil).
func WriteJobStatusNodes(w io.Writer, j apiv1.Job, events []apiv1.Event, nodes []apiv1.Node, now time.Time) error {
	j, events, nodes = safe(j), safe(events), safe(nodes)
	sw := &stickyWriter{w: w}
	w = sw
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", j.ID)
	row("Name", orDash(j.Name))
	state := j.State
	switch {
	case j.Requeuing != "" && !lifecycle.IsTerminalName(j.State):
		state += " (stopping, to be requeued)"
	case j.CancelRequested && !lifecycle.IsTerminalName(j.State):
		state += " (cancel requested)"
	}
	row("State", state)
	if j.Attempt > 1 || j.Requeuing != "" {
		row("Attempt", fmt.Sprintf("%d (%d requeued)", j.Attempt, len(j.Attempts)))
	}
	if j.Reason != "" {
		row("Reason", j.Reason)
	}
	row("Node", orDash(jobNodes(j)))
	if j.Spec.Resources.Nodes > 1 {
		row("GPUs", fmt.Sprintf("%s (requested %d nodes × %d%s)", jobGPUs(j), j.Spec.Resources.Nodes, j.Spec.Resources.GPUs,
			prefixed(" ", j.Spec.Resources.GPUType)))
		if j.MasterAddr != "" {
			row("Rendezvous", fmt.Sprintf("%s:%d", j.MasterAddr, j.MasterPort))
		}
	} else {
		row("GPUs", fmt.Sprintf("%s (requested %d%s)", joinInts(j.GPUs), j.Spec.Resources.GPUs,
			prefixed(" ", j.Spec.Resources.GPUType)))
	}
	if t := jobThrottled(j, nodes); t != "" {
		row("Throttled", t)
	}
	if j.ExitCode != nil {
		row("Exit code", strconv.Itoa(*j.ExitCode))
	} else {
		row("Exit code", "-")
	}
	row("Signal", orDash(j.Signal))
	if j.PID != 0 {
		row("PID", strconv.FormatInt(j.PID, 10))
	}
	row("Created", formatTime(j.CreatedAt, now))
	row("Started", formatTime(j.StartedAt, now))
	row("Finished", formatTime(j.FinishedAt, now))
	if j.StartedAt != nil {
		end := now
		if j.FinishedAt != nil {
			end = *j.FinishedAt
		}
		row("Duration", end.Sub(*j.StartedAt).Round(time.Second).String())
	}
	row("Points", fmt.Sprintf("%d (last seq %d)", j.Points, j.LastSeq))
	row("Bad lines", strconv.FormatUint(j.BadLines, 10))
	if j.DroppedMetricKeys > 0 {
		row("Dropped keys", strconv.FormatUint(j.DroppedMetricKeys, 10))
	}
	if j.RejectedRecords > 0 {
		row("Rejected", strconv.FormatUint(j.RejectedRecords, 10))
	}
	row("Log bytes", strconv.FormatUint(j.LogBytes, 10))
	row("Run", orDash(j.Spec.Run))
	if j.Spec.Workdir != "" {
		row("Workdir", j.Spec.Workdir)
	}
	if j.Error != "" {
		row("Error", j.Error)
	}
	if j.State == apiv1.StateRunning || len(j.Conditions) > 0 {
		row("Health", jobHealth(j))
	}
	for _, c := range j.Conditions {
		row("  "+c.Kind, fmt.Sprintf("since %s: %s", formatTime(c.Since, now), oneLine(c.Evidence)))
	}
	_ = tw.Flush() // write errors stick in sw
	if len(j.Ranks) > 0 {
		fmt.Fprintln(w, "\nRanks:")
		writeRanks(indent(w), j.Ranks)
	}
	if len(j.Attempts) > 0 {
		fmt.Fprintln(w, "\nEarlier attempts:")
		writeAttempts(indent(w), j.Attempts, now)
	}
	if len(j.FinalMetrics) == 0 && len(j.LatestMetrics) > 0 {
		// Not over yet: what it has reported so far.
		fmt.Fprintln(w, "\nLatest metrics:")
		_ = WriteFinalMetrics(indent(w), j.LatestMetrics)
	} else {
		fmt.Fprintln(w, "\nFinal metrics:")
		_ = WriteFinalMetrics(indent(w), j.FinalMetrics)
	}
	fmt.Fprintln(w, "\nEvents:")
	writeEvents(indent(w), events)
	return sw.err
}

// jobThrottled says which GPUs the job holds are throttled for a
// throughput-costing reason: "GPU 1 on gpu-a: hw_thermal_slowdown", "" for
// none. Only a running job is slowed by its GPUs.
func jobThrottled(j apiv1.Job, nodes []apiv1.Node) string {
	if len(nodes) == 0 || j.State != apiv1.StateRunning {
		return ""
	}
	held := map[string][]int{}
	if len(j.Ranks) > 0 {
		for _, r := range j.Ranks {
			if !lifecycle.IsTerminalName(r.State) {
				held[r.Node] = r.GPUs
			}
		}
	} else if j.Node != "" {
		held[j.Node] = j.GPUs
	}
	var parts []string
	for _, n := range nodes {
		for _, g := range n.GPUs {
			if len(g.ThrottledBy) > 0 && slices.Contains(held[n.ID], g.Index) {
				parts = append(parts, fmt.Sprintf("GPU %d on %s: %s", g.Index, n.ID, strings.Join(g.ThrottledBy, ",")))
			}
		}
	}
	return strings.Join(parts, "; ")
}

// oneLine makes s one line (tabs and newlines would break the table).
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// WriteEvents writes the `gantry events` table.
func WriteEvents(w io.Writer, events []apiv1.Event, _ time.Time) error {
	sw := &stickyWriter{w: w}
	writeEvents(sw, safe(events))
	return sw.err
}

func writeEvents(w io.Writer, events []apiv1.Event) {
	if len(events) == 0 {
		fmt.Fprintln(w, "(none)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKIND\tCOUNT\tMESSAGE")
	for _, e := range events {
		ts := time.Unix(0, int64(e.TS*float64(time.Second))).UTC().Format(time.RFC3339)
		count := "-"
		if e.Count > 0 {
			count = strconv.FormatUint(e.Count, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ts, e.Kind, count, e.Message)
	}
	_ = tw.Flush()
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

// WriteCluster writes the `gantry cluster status` view.
func WriteCluster(w io.Writer, c apiv1.Cluster) error {
	c = safe(c)
	sw := &stickyWriter{w: w}
	w = sw
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("Answered by", fmt.Sprintf("%s (%s)", orDash(c.NodeID), orDash(c.State)))
	leader := orDash(c.LeaderID)
	if c.Leader != "" {
		leader += " at " + c.Leader
	}
	row("Leader", leader)
	row("Term", strconv.FormatUint(c.Term, 10))
	row("Commit index", strconv.FormatUint(c.CommitIndex, 10))
	row("Applied index", strconv.FormatUint(c.AppliedIndex, 10))
	row("Last index", strconv.FormatUint(c.LastIndex, 10))
	_ = tw.Flush() // write errors stick in sw
	fmt.Fprintln(w, "\nPeers:")
	tw = tabwriter.NewWriter(indent(w), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tLEADER\tAPPLIED\tLAST CONTACT")
	for _, p := range c.Peers {
		applied, contact := "-", "-"
		switch {
		case p.Reachable:
			applied = strconv.FormatUint(p.AppliedIndex, 10)
			contact = "now"
			if !p.Leader {
				contact = fmt.Sprintf("%dms ago", p.LastContactMs)
			}
		case p.Error != "":
			applied = "unreachable"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Address, p.Suffrage, yesNo(p.Leader), applied, contact)
	}
	_ = tw.Flush()
	return sw.err
}

// stickyWriter keeps the first write error and fails every later write, so
// a renderer made of many small writes checks for an error once, at the end.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(b []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.w.Write(b)
	s.err = err
	return n, err
}

// indentWriter prefixes every line with two spaces.
type indentWriter struct {
	w       io.Writer
	midLine bool
}

func indent(w io.Writer) io.Writer { return &indentWriter{w: w} }

func (iw *indentWriter) Write(b []byte) (int, error) {
	var out []byte
	for _, c := range b {
		if !iw.midLine {
			out = append(out, ' ', ' ')
			iw.midLine = true
		}
		out = append(out, c)
		if c == '\n' {
			iw.midLine = false
		}
	}
	if _, err := iw.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// WriteResult writes what the user reads when an attached job ends: a
// one-line verdict, the error, the final metrics and, for a failed job, the
// tail of its log.
func WriteResult(w io.Writer, j apiv1.Job) error {
	j = safe(j)
	sw := &stickyWriter{w: w}
	w = sw
	verdict := fmt.Sprintf("job %s %s", j.ID, j.State)
	if j.StartedAt != nil && j.FinishedAt != nil {
		verdict += " after " + j.FinishedAt.Sub(*j.StartedAt).Round(time.Second).String()
	}
	switch {
	case j.ExitCode != nil:
		verdict += fmt.Sprintf(" (exit code %d)", *j.ExitCode)
	case j.Signal != "":
		verdict += fmt.Sprintf(" (signal %s)", j.Signal)
	}
	fmt.Fprintln(w, verdict)
	if j.Error != "" {
		fmt.Fprintf(w, "error: %s\n", j.Error)
	}
	_ = WriteFinalMetrics(w, j.FinalMetrics) // write errors stick in sw
	if j.State == apiv1.StateFailed && strings.TrimSpace(j.LogTail) != "" {
		fmt.Fprintln(w, "\nlast log lines:")
		tail := j.LogTail
		if !strings.HasSuffix(tail, "\n") {
			tail += "\n"
		}
		_, _ = io.WriteString(indent(w), tail)
	}
	return sw.err
}

// JobExitCode maps a finished job to the CLI's exit status: 0 when it
// succeeded, its own exit code when it failed with one (clamped to 1..125,
// since 126 and up mean "could not run" and signals to shells), 1 for every
// other end.
func JobExitCode(j apiv1.Job) int {
	if j.State == apiv1.StateSucceeded {
		return 0
	}
	if j.State == apiv1.StateFailed && j.ExitCode != nil {
		return max(1, min(125, *j.ExitCode))
	}
	return 1
}

// jobNodes is a job's node, or for a multi-node job rank 0's node and how
// many more ("gpu-a +1").
func jobNodes(j apiv1.Job) string {
	if len(j.Ranks) > 1 {
		return fmt.Sprintf("%s +%d", j.Ranks[0].Node, len(j.Ranks)-1)
	}
	return j.Node
}

// jobGPUs is a job's GPU indices, or for a multi-node job the count per
// node ("2×2").
func jobGPUs(j apiv1.Job) string {
	if len(j.Ranks) > 1 {
		return fmt.Sprintf("%d×%d", len(j.Ranks), len(j.Ranks[0].GPUs))
	}
	return joinInts(j.GPUs)
}

// writeRanks writes a multi-node job's ranks table: node, GPUs, state,
// exit and the rank's error.
func writeRanks(w io.Writer, ranks []apiv1.Rank) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RANK\tNODE\tGPUS\tSTATE\tEXIT\tERROR")
	for _, r := range ranks {
		exit := "-"
		switch {
		case r.Signal != "":
			exit = r.Signal
		case r.ExitCode != nil:
			exit = strconv.Itoa(*r.ExitCode)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Rank, r.Node, joinInts(r.GPUs), r.State, exit,
			orDash(oneLine(r.Error)))
	}
	_ = tw.Flush()
}

// writeAttempts lists a job's earlier attempts: where each ran, how it
// ended, why it was requeued, and the step it had reached.
func writeAttempts(w io.Writer, attempts []apiv1.Attempt, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ATTEMPT\tNODE\tGPUS\tSTARTED\tRAN\tENDED\tSTEP\tREQUEUED AFTER")
	for _, a := range attempts {
		ran := "-"
		if a.StartedAt != nil && a.FinishedAt != nil {
			ran = a.FinishedAt.Sub(*a.StartedAt).Round(time.Second).String()
		}
		ended := "-"
		switch {
		case a.Signal != "":
			ended = a.Signal
		case a.ExitCode != nil:
			ended = "exit " + strconv.Itoa(*a.ExitCode)
		}
		step := "-"
		if v, ok := a.FinalMetrics[keyStep]; ok {
			step = formatExact(v)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Attempt, orDash(a.Node), orDash(joinInts(a.GPUs)),
			formatTime(a.StartedAt, now), ran, ended, step, truncate(oneLine(a.Reason), 100))
	}
	_ = tw.Flush()
}
