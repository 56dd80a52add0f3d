package fsm

import (
	"fmt"
	"slices"

	"github.com/gantry-ml/gantry/controller/admission"
	"github.com/gantry-ml/gantry/controller/store"
	"github.com/gantry-ml/gantry/lifecycle"
	"github.com/gantry-ml/gantry/proto/gantrypb"
	"github.com/gantry-ml/gantry/proto/limits"
)

// alert appends a to the alert outbox. It runs inside the apply, so every
// voter appends the same alerts with the same ids, exactly once per
// change: a condition already held, or a job already terminal, appends
// nothing. The leader's notifier delivers them (controller/alert).
func (f *FSM) alert(tx *store.Tx, a *gantrypb.Alert, ch *Changes) error {
	a.Text = admission.Clip(a.Text, limits.MaxEventMessageBytes)
	a.Evidence = admission.Clip(a.Evidence, limits.MaxEventMessageBytes)
	_, dropped, err := tx.AppendAlert(a)
	if err != nil {
		return err
	}
	if dropped > 0 && f.alertsFull.Add(uint64(dropped)) == uint64(dropped) {
		// Said once per process: without a webhook (or with one down for
		// long) the outbox is full for good, and every alert drops one.
		// gantry_alerts_dropped_total counts them.
		f.log.Warn("alert outbox full: the oldest undelivered alerts are dropped as new ones come (is -alert-webhook set and answering?)",
			"cap", store.MaxAlerts)
	}
	ch.Alerts++
	return nil
}

// alertJobEnd appends the alert of a job that just became terminal.
func (f *FSM) alertJobEnd(tx *store.Tx, job *gantrypb.Job, ch *Changes) error {
	state := lifecycle.StateName(job.State)
	text := fmt.Sprintf("Gantry: job %s %s", jobLabel(job), state)
	if job.Error != "" {
		text += ": " + job.Error
	}
	if v, ok := job.FinalMetrics["step"]; ok {
		text += fmt.Sprintf(" (step %g)", v)
	}
	return f.alert(tx, &gantrypb.Alert{AtMs: job.FinishedAtMs, Kind: "job_" + state, JobId: job.Id,
		JobName: job.GetSpec().GetName(), Node: job.Node, Text: text, Evidence: job.Error}, ch)
}

// conditionAlert is the alert of a health condition that began or ended
// (kind is the event kind: the condition, or it with "_cleared").
//
// action is what the job's policy did about it ("" for nothing).
func conditionAlert(job *gantrypb.Job, kind string, c *gantrypb.HealthCondition, action string, atMs int64) *gantrypb.Alert {
	what := "is " + c.Kind
	if !c.Active {
		what = "is no longer " + c.Kind
	}
	text := fmt.Sprintf("Gantry: job %s on %s %s", jobLabel(job), job.Node, what)
	if c.Kind == lifecycle.CondIdleGPUs && len(c.Gpus) > 0 && c.Active {
		text += fmt.Sprintf(" (GPUs %v)", c.Gpus)
	}
	text += action
	text += ": " + c.Evidence
	return &gantrypb.Alert{AtMs: atMs, Kind: kind, JobId: job.Id, JobName: job.GetSpec().GetName(), Node: job.Node,
		Text: text, Evidence: c.Evidence, Gpus: slices.Clone(c.Gpus)}
}

// jobLabel is "name (id)", or the id of a job without a name.
func jobLabel(job *gantrypb.Job) string {
	if n := job.GetSpec().GetName(); n != "" && n != job.Id {
		return fmt.Sprintf("%s (%s)", n, job.Id)
	}
	return job.Id
}
