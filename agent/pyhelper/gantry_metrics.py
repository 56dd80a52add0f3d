"""Write training metrics where the Gantry agent reads them.

The agent tails a JSONL file (docs/ARCHITECTURE.md, "Metrics file"): one JSON object
per line, ``step`` an integer, ``ts`` unix seconds, every other numeric
field a metric. This module appends such lines, flushed one by one, so the
controller sees each step as it happens and has the last one when the
process exits.

    import gantry_metrics
    gantry_metrics.log(step=10, loss=0.52, lr=3e-4)
    gantry_metrics.log({"train/loss": 0.52, "lr": 3e-4}, step=10)  # wandb style

Numbers may be Python numbers, numpy scalars (np.int64, np.float32, ...)
or one-element torch tensors: they are written as plain JSON numbers.

The file is ``$GANTRY_METRICS_FILE`` (set by the agent), else the path given
to ``MetricsLogger``, else ``metrics.jsonl`` in the working directory.

Non-finite values (NaN, inf) are dropped from the line, with a warning
the first time for each key and again as the count of drops grows (10,
100, ...): the agent rejects a whole line that holds one. With Hugging Face
``transformers`` installed, ``GantryCallback`` forwards Trainer logs.

Standard library only.
"""

import atexit
import json
import math
import numbers
import operator
import os
import sys
import threading
import time

__all__ = ["MetricsLogger", "log", "close"]

ENV_FILE = "GANTRY_METRICS_FILE"
DEFAULT_FILE = "metrics.jsonl"
# The agent skips longer lines; better to say so here than lose them silently.
MAX_LINE_BYTES = 1 << 20


def _warn(msg):
    print("gantry_metrics: " + msg, file=sys.stderr, flush=True)


def _scalar(v):
    """Turn numpy scalars and one-element torch tensors into Python int or
    float; anything else comes back as it was."""
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v
    # numpy registers its scalar types with the numbers ABCs, and they
    # (like torch's integer tensors) convert exactly.
    if isinstance(v, numbers.Integral):
        try:
            return operator.index(v)
        except TypeError:
            return v
    if isinstance(v, numbers.Real):
        return float(v)
    if hasattr(v, "item"):
        try:
            item = v.item()
        except (TypeError, ValueError, RuntimeError):
            return v
        if isinstance(item, (bool, int, float)):
            return item
    return v


class MetricsLogger:
    """Appends metric lines to one file. Safe to share between threads."""

    def __init__(self, path=None):
        self.path = os.environ.get(ENV_FILE) or path or DEFAULT_FILE
        self._file = None
        self._lock = threading.Lock()
        self._dropped = {}

    def log(self, *args, step=None, **metrics):
        """Write one line: ``step`` (an integer, optional) and the metrics,
        given as keywords, or as a dict (``log({"loss": 0.3}, step=5)``)."""
        self.log_dict(_merge(args, metrics), step=step)

    def log_dict(self, metrics, step=None):
        """Like ``log`` for a dict whose keys need not be identifiers."""
        metrics = dict(metrics)
        if step is None and "step" in metrics:
            step = metrics.pop("step")
        metrics.pop("step", None)
        record = {}
        if step is not None:
            record["step"] = self._step(step)
        ts = _scalar(metrics.pop("ts", None))
        record["ts"] = ts if self._finite_number(ts) else time.time()
        for key, value in metrics.items():
            value = _scalar(value)
            if not self._finite_number(value):
                self._warn_once(key, value)
                continue
            record[str(key)] = value
        if len(record) == 1:  # only ts: nothing worth a line
            return
        # allow_nan=False is the backstop for the check above.
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            _warn("line with %d metrics is over %d bytes; not written" % (len(record), MAX_LINE_BYTES))
            return
        with self._lock:
            if self._file is None:
                # Append, line-buffered: every line reaches the file (not
                # the disk; the agent reads the page cache) as it is written.
                self._file = open(self.path, "a", buffering=1, encoding="utf-8")
            self._file.write(line)
            self._file.flush()

    def close(self):
        """Close the file; a later ``log`` opens it again."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @staticmethod
    def _finite_number(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return isinstance(v, int) or math.isfinite(v)

    @staticmethod
    def _step(step):
        step = _scalar(step)
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError("step must be an integer, got %r" % (step,))
        return step

    def _warn_once(self, key, value):
        # First time for each key, then at 10, 100, ... drops: a run that
        # keeps logging NaN keeps being told, without a line per step.
        n = self._dropped.get(key, 0) + 1
        self._dropped[key] = n
        if n != 1 and not _power_of_ten(n):
            return
        kind = "non-finite" if isinstance(value, float) else "non-numeric"
        if n == 1:
            _warn("dropping %s value %r of %r" % (kind, value, key))
        else:
            _warn("dropped %d values of %r so far (the last %s: %r)" % (n, key, kind, value))


def _power_of_ten(n):
    while n % 10 == 0:
        n //= 10
    return n == 1


def _merge(args, metrics):
    """The metrics of a log call: keywords, and at most one dict given
    positionally (wandb's ``log({...})``)."""
    if len(args) > 1:
        raise TypeError("log takes at most one dict of metrics and keywords, got %d positional arguments" % len(args))
    if not args:
        return metrics
    if not isinstance(args[0], dict):
        raise TypeError("log's positional argument must be a dict of metrics, got %r" % (args[0],))
    merged = dict(args[0])
    merged.update(metrics)
    return merged


_default = None
_default_lock = threading.Lock()


def _default_logger():
    global _default
    with _default_lock:
        if _default is None:
            _default = MetricsLogger()
            atexit.register(_default.close)
        return _default


def log(*args, step=None, **metrics):
    """Write one line to the default logger's file (see MetricsLogger.log)."""
    _default_logger().log_dict(_merge(args, metrics), step=step)


def close():
    """Close the default logger's file."""
    if _default is not None:
        _default.close()


def __getattr__(name):
    # GantryCallback exists only when transformers imports. It is made on
    # first use because importing transformers takes seconds, which scripts
    # that only call log() should not pay.
    if name != "GantryCallback":
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    try:
        import transformers
    except ImportError as e:
        raise AttributeError("GantryCallback needs the transformers package: %s" % e) from e

    class GantryCallback(transformers.TrainerCallback):
        """Forwards the numeric values of Trainer logs, at state.global_step."""

        def __init__(self, logger=None):
            self._logger = logger

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Every rank logs under DDP; one writer is enough.
            if not getattr(state, "is_world_process_zero", True):
                return
            values = {}
            for k, v in (logs or {}).items():
                v = _scalar(v)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values[k] = v
            if values:
                (self._logger or _default_logger()).log_dict(values, step=state.global_step)

    globals()["GantryCallback"] = GantryCallback
    return GantryCallback
