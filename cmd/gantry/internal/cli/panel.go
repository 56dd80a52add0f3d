package cli

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/lifecycle"
)

// Live panel geometry. A terminal of unknown size is assumed to be the
// classic 80×24, which every terminal can show without wrapping.
const (
	defaultWidth  = 80
	defaultHeight = 24
	// sparkPoints is how many recent values a sparkline shows.
	sparkPoints = 40
	// Metric names wider than this are cut, so that values line up.
	maxNameWidth = 24
	valueWidth   = 10
	// minSpark is the narrowest sparkline worth drawing.
	minSpark = 5
)

// sparkRunes are the eight bar heights of a sparkline, lowest first.
var sparkRunes = []rune("▁▂▃▄▅▆▇█")

// Sparkline draws the last width values as bars scaled from their minimum
// (▁) to their maximum (█). A constant series is drawn at mid height, since
// neither end of the scale would say anything true about it. Non-finite
// values are left out of the scale and drawn as a space.
func Sparkline(values []float64, width int) string {
	if width <= 0 || len(values) == 0 {
		return ""
	}
	if len(values) > width {
		values = values[len(values)-width:]
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range values {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		lo, hi = min(lo, v), max(hi, v)
	}
	top := len(sparkRunes) - 1
	out := make([]rune, len(values))
	for i, v := range values {
		switch {
		case math.IsNaN(v) || math.IsInf(v, 0):
			out[i] = ' '
		case hi == lo:
			out[i] = sparkRunes[top/2]
		default:
			// Rounding to the nearest level puts the extremes exactly at
			// ▁ and █; the clamp guards against float error at the ends.
			level := int(math.Round((v - lo) / (hi - lo) * float64(top)))
			out[i] = sparkRunes[max(0, min(top, level))]
		}
	}
	return string(out)
}

// pushHistory appends v to a series kept at most sparkPoints long.
func pushHistory(h []float64, v float64) []float64 {
	if len(h) >= sparkPoints {
		// Shift in place: the slice never grows past sparkPoints.
		copy(h, h[len(h)-sparkPoints+1:])
		h = h[:sparkPoints-1]
	}
	return append(h, v)
}

// Panel renders p as the lines of the live terminal view, at most height-1
// of them and each shorter than width, so that the whole panel can be
// redrawn in place by moving the cursor up: a header (job, state, node,
// elapsed time), the step (with a bar when a total_steps metric exists),
// one row per metric with its latest value and a sparkline of its recent
// values, and one row per GPU of the job. When rows do not fit, the metrics
// updated least recently are left out first, then GPUs.
func Panel(p *Progress, width, height int, now time.Time) []string {
	if width <= 0 {
		width = defaultWidth
	}
	if height <= 0 {
		height = defaultHeight
	}
	lines := []string{panelHeader(p.Job, now)}
	if p.Job.State == apiv1.StateQueued && p.Job.Reason != "" {
		lines = append(lines, "reason: "+p.Job.Reason)
	}
	lines = append(lines, panelStep(p, width))

	keys := p.metricKeys()
	gpus := jobGPUStats(p.GPU, p.Job.GPUs)
	avail := max(0, height-1-len(lines))
	shownKeys, more := len(keys), 0
	if len(keys)+len(gpus) > avail {
		// One row goes to the "more" note.
		shownKeys = max(0, avail-len(gpus)-1)
		more = len(keys) - shownKeys
	}
	rows := metricRows(p, p.recentKeys(shownKeys), width)
	lines = append(lines, rows...)
	if more > 0 && len(lines) < height-1 {
		lines = append(lines, fmt.Sprintf("  … %d more metric%s", more, plural(more)))
	}
	for _, g := range gpus {
		if len(lines) >= height-1 {
			break
		}
		lines = append(lines, gpuRow(g, p.gpuHist[g.Index], width))
	}
	for i, l := range lines {
		lines[i] = truncate(l, width)
	}
	return lines[:min(len(lines), max(1, height-1))]
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// panelHeader is "job ID  NAME  STATE on NODE (GPUs 0,1)  elapsed 1m5s".
func panelHeader(j apiv1.Job, now time.Time) string {
	parts := []string{"job " + cmp.Or(j.ID, "?")}
	if j.Name != "" {
		parts = append(parts, j.Name)
	}
	state := cmp.Or(j.State, "connecting")
	if j.Node != "" {
		state += " on " + j.Node
		if len(j.GPUs) > 0 {
			state += " (GPUs " + joinInts(j.GPUs) + ")"
		}
	}
	if j.CancelRequested && !lifecycle.IsTerminalName(j.State) {
		state += ", cancel requested"
	}
	parts = append(parts, state)
	switch {
	case j.StartedAt != nil:
		end := now
		if j.FinishedAt != nil {
			end = *j.FinishedAt
		}
		parts = append(parts, "elapsed "+max(0, end.Sub(*j.StartedAt)).Round(time.Second).String())
	case j.CreatedAt != nil && !lifecycle.IsTerminalName(j.State):
		parts = append(parts, "waiting "+max(0, now.Sub(*j.CreatedAt)).Round(time.Second).String())
	}
	return strings.Join(parts, "  ")
}

// panelStep is "step 150/300 [######----]  50%", the bar filling the width
// left over (10 to 40 cells).
func panelStep(p *Progress, width int) string {
	if p.Step == nil {
		return "step -"
	}
	total := int64(p.Values[keyTotalSteps])
	if total <= 0 {
		return fmt.Sprintf("step %d", *p.Step)
	}
	frac := float64(*p.Step) / float64(total)
	s := fmt.Sprintf("step %d/%d", *p.Step, total)
	// " [" + cells + "] " + "100%" is cells+8 columns; a bar shorter than
	// 10 cells says less than the percentage alone.
	cells := min(40, width-1-len(s)-8)
	if cells < 10 {
		return fmt.Sprintf("%s %.0f%%", s, max(0, min(1, frac))*100)
	}
	return s + " " + progressBar(frac, cells)
}

// metricRows renders "  name      value      ▁▂▃▅▇" for keys, with the
// name and value columns as wide as the widest entry needs.
func metricRows(p *Progress, keys []string, width int) []string {
	if len(keys) == 0 {
		return nil
	}
	nameW, valW := 0, 0
	vals := make([]string, len(keys))
	for i, k := range keys {
		nameW = max(nameW, len([]rune(k)))
		vals[i] = FormatValue(p.Values[k])
		valW = max(valW, len(vals[i]))
	}
	nameW = min(nameW, maxNameWidth)
	valW = max(valW, valueWidth)
	sparkW := min(sparkPoints, width-1-2-nameW-2-valW-2)
	rows := make([]string, len(keys))
	for i, k := range keys {
		name := k
		if len([]rune(name)) > nameW {
			name = string([]rune(name)[:nameW-1]) + "…"
		}
		row := "  " + padRight(name, nameW) + "  " + padRight(vals[i], valW)
		if sparkW >= minSpark {
			row += "  " + Sparkline(p.hist[k], sparkW)
		}
		rows[i] = strings.TrimRight(row, " ")
	}
	return rows
}

// gpuRow is "  gpu0  97%  30.0/80.0 GiB  71°C  301 W  ▃▅▇█", then the
// throughput-costing throttle reasons if any ("  throttled:hw_slowdown"):
// they explain a slow step, so the sparkline gives way to them.
func gpuRow(g apiv1.GPUStat, hist []float64, width int) string {
	row := fmt.Sprintf("  gpu%-2d %4.0f%%  %5s/%s GiB  %3.0f°C  %4.0f W",
		g.Index, g.UtilizationPct, gib(g.MemoryUsedBytes), gib(g.MemoryTotalBytes), g.TemperatureC, g.PowerW)
	note := throttleNote(g.ThrottledBy, "  throttled:")
	if sparkW := min(sparkPoints, width-1-len([]rune(row+note))-2); sparkW >= minSpark {
		row += "  " + Sparkline(hist, sparkW)
	}
	return row + note
}

// jobGPUStats picks the job's GPUs from a node sample, or every GPU when
// the job's are not known yet.
func jobGPUStats(s *apiv1.GPUSample, jobGPUs []int) []apiv1.GPUStat {
	if s == nil {
		return nil
	}
	var out []apiv1.GPUStat
	for _, g := range s.GPUs {
		if len(jobGPUs) == 0 || slices.Contains(jobGPUs, g.Index) {
			out = append(out, g)
		}
	}
	return out
}

func padRight(s string, w int) string {
	if n := len([]rune(s)); n < w {
		return s + strings.Repeat(" ", w-n)
	}
	return s
}
