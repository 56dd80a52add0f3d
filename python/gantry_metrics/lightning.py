"""PyTorch Lightning integration: a Logger.

    from gantry_metrics.lightning import GantryLogger
    trainer = lightning.Trainer(..., logger=GantryLogger())

Lightning calls ``log_metrics(metrics, step)`` with the values of
``self.log(...)``; they are written at that step by a MetricsLogger (the
default one unless given). Works with the ``lightning`` package
(``lightning.pytorch``) or the older ``pytorch_lightning`` one; importing
this module imports whichever is installed, ``import gantry_metrics`` alone
neither.
"""

import os

try:
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.loggers.logger import rank_zero_experiment
    from lightning.pytorch.utilities import rank_zero_only
except ImportError as e_new:
    try:
        from pytorch_lightning.loggers import Logger
        from pytorch_lightning.loggers.logger import rank_zero_experiment
        from pytorch_lightning.utilities import rank_zero_only
    except ImportError as e_old:
        raise ImportError(
            "gantry_metrics.lightning needs lightning (%s) or pytorch_lightning (%s)" % (e_new, e_old)
        ) from e_old

from . import _default_logger

__all__ = ["GantryLogger"]


class GantryLogger(Logger):
    """A Lightning logger writing the Gantry metrics file.

    ``name`` is ``"gantry"`` and ``version`` the Gantry job id
    (``$GANTRY_JOB_ID``, ``"local"`` outside a job) unless given;
    ``experiment`` is the MetricsLogger. Only global rank zero writes
    (Lightning's ``rank_zero_only``)."""

    def __init__(self, logger=None, name="gantry", version=None):
        super().__init__()
        self._logger = logger
        self._name = name
        self._version = version

    @property
    def name(self):
        return self._name

    @property
    def version(self):
        if self._version is not None:
            return self._version
        return os.environ.get("GANTRY_JOB_ID") or "local"

    @property
    @rank_zero_experiment
    def experiment(self):
        return self._logger or _default_logger()

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs):
        """Accepted and not written: the metrics file holds time series,
        and a job's spec (its command line, its env) already records how
        it was run. Lightning calls this for every run with hyperparameters,
        so it must not fail."""
        return None

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        self.experiment.log_dict(metrics, step=step)

    @rank_zero_only
    def finalize(self, status):
        # Lines are already written; this releases the file.
        self.experiment.close()
