"""Hugging Face ``transformers`` integration: a Trainer callback.

    from gantry_metrics.hf import GantryCallback
    trainer = Trainer(..., callbacks=[GantryCallback()])

Each ``on_log`` writes the Trainer's logs at ``state.global_step``, and
``on_train_begin`` writes ``total_steps`` = ``state.max_steps``, so ``gantry
run``, ``gantry watch`` and the dashboard show a progress bar. Only the
world's process zero writes: under DDP every rank gets the same logs.

Importing this module imports transformers; ``import gantry_metrics`` alone
does not.
"""

try:
    from transformers import TrainerCallback
except ImportError as e:
    raise ImportError("gantry_metrics.hf needs the transformers package (%s)" % e) from e

from . import TOTAL_STEPS, _default_logger

__all__ = ["GantryCallback"]


class GantryCallback(TrainerCallback):
    """Forwards Trainer logs to a MetricsLogger (the default one unless
    given): values as ``gantry_metrics.log`` takes them, so a non-numeric or
    NaN value is left out with a warning, never silently."""

    def __init__(self, logger=None):
        self._logger = logger

    @property
    def logger(self):
        return self._logger or _default_logger()

    def on_train_begin(self, args, state, control, **kwargs):
        # max_steps is known here (from max_steps or epochs x batches);
        # it is 0 or negative when the Trainer cannot tell.
        if state.is_world_process_zero and (state.max_steps or 0) > 0:
            self.logger.log_dict({TOTAL_STEPS: state.max_steps}, step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.logger.log_dict(logs, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        # Lines are written as they come; closing releases the file (a
        # later log, an evaluate() after train(), opens it again).
        if state.is_world_process_zero:
            self.logger.close()
