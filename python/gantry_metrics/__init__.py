"""Write training metrics where the Gantry agent reads them.

The agent tails a JSONL file (docs/ARCHITECTURE.md, "Metrics file"): one JSON
object per line, ``step`` an integer, ``ts`` unix seconds, every other numeric
field a metric. This package appends such lines, each written whole with one
write, so the controller sees each step as it happens and has the last one
when the process exits.

    import gantry_metrics
    gantry_metrics.log(loss=0.52, lr=3e-4, step=10)
    gantry_metrics.log({"train/loss": 0.52, "lr": 3e-4}, step=10)  # wandb style

    with gantry_metrics.watch(total_steps=1000) as run:  # progress bar
        for batch in loader:
            run.log(loss=loss)  # steps 1, 2, ... when not given

Values may be Python numbers or bools, numpy scalars and 0-d or one-element
arrays, torch tensors holding one element: they are written as plain JSON
numbers (a bool as 0 or 1). Neither numpy nor torch is imported here: values
are recognised by ``.item()``, the ``numbers`` ABCs, ``__index__`` and
``__float__``.

A value that cannot be written (NaN or infinity, which the agent would
reject with the whole line; a string, a many-element array; a key the agent
would refuse) is left out of the line, and every call that leaves one out
says so on stderr with the running count of such values, so a run that keeps
logging NaN keeps being told.

The file is ``$GANTRY_METRICS_FILE`` (set by the agent), else the path given
to ``MetricsLogger``, else ``metrics.jsonl`` in the working directory.

Integrations, imported only when used (so that ``import gantry_metrics``
stays standard library only and fast): ``gantry_metrics.hf.GantryCallback``
for Hugging Face ``transformers``, ``gantry_metrics.lightning.GantryLogger``
for PyTorch Lightning.
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
import weakref

__version__ = "0.2.0"

__all__ = ["MetricsLogger", "Watch", "log", "close", "watch"]

ENV_FILE = "GANTRY_METRICS_FILE"
DEFAULT_FILE = "metrics.jsonl"
TOTAL_STEPS = "total_steps"

# Gantry's limits (proto/limits): the agent skips a longer line whole, or
# a line whose step is past int64; it leaves out a longer or
# control-character key and the keys past a line's 256th, and ignores a ts
# past year 9999; the controller refuses a job's keys past its 1024th.
# Checking them here turns what would be lost out of sight into a counted
# warning on the job's stderr, or, for the keys of one line, into no loss.
MAX_LINE_BYTES = 1 << 20
MAX_KEY_BYTES = 128
MAX_KEYS_PER_LINE = 256
MAX_KEYS_PER_JOB = 1024
MAX_TIMESTAMP = 253402300799

# Why a value was left out; the keys of MetricsLogger.dropped.
NON_FINITE = "non-finite"
NON_NUMERIC = "non-numeric"
BAD_KEY = "bad key"
TOO_LONG = "line too long"
OUT_OF_RANGE = "out of range"
WRITE_FAILED = "not written"
TOO_MANY_KEYS = "past the job's %d keys" % MAX_KEYS_PER_JOB

# How many dropped keys one warning names; the count covers the rest.
_NAMED_IN_WARNING = 5


def _warn(msg):
    print("gantry_metrics: " + msg, file=sys.stderr, flush=True)


class _NotANumber(Exception):
    """A value with no real number in it; args[0] says what it was."""


def _number(v, _depth=0):
    """v as a Python int or float, ready for json; _NotANumber otherwise.

    Duck-typed so that numpy and torch values work without importing either:
    numpy scalars register with the numbers ABCs, 0-d and one-element arrays
    and tensors have .item(), and other numeric types have __index__ or
    __float__."""
    if isinstance(v, bool):
        return int(v)  # JSON true is not a number to the agent
    if isinstance(v, int):
        return int(v)  # a plain int, so that an IntEnum is written as a number
    if isinstance(v, float):
        return float(v)
    if isinstance(v, (str, bytes, bytearray, complex)):
        raise _NotANumber(type(v).__name__)
    item = getattr(v, "item", None)
    if callable(item) and _depth < 2:
        try:
            x = item()
        except Exception as e:  # many elements: numpy's ValueError, torch's RuntimeError
            raise _NotANumber("%s (%s)" % (type(v).__name__, _short(str(e)))) from None
        # np.longdouble.item() returns an np.longdouble: go on below then.
        if type(x) is not type(v):
            return _number(x, _depth + 1)
    if isinstance(v, numbers.Integral) or hasattr(type(v), "__index__"):
        try:
            return operator.index(v)
        except TypeError:
            pass
    if isinstance(v, numbers.Real) or hasattr(type(v), "__float__"):
        try:
            return float(v)
        except (TypeError, ValueError, OverflowError):
            pass
    raise _NotANumber(type(v).__name__)


def _finite(n):
    """Whether the int or float n reaches the agent as a finite float64."""
    try:
        return math.isfinite(n)
    except OverflowError:  # an int past float's range: the agent rejects the line
        return False


def _short(s, n=60):
    return s if len(s) <= n else s[: n - 3] + "..."


def _key_ok(k):
    """limits.ValidMetricKey: 1 to 128 bytes of UTF-8, no control characters."""
    try:
        b = k.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    if not b or len(b) > MAX_KEY_BYTES:
        return False
    return not any(c < " " or c == "\x7f" or "\x80" <= c < "\xa0" for c in k)


class MetricsLogger:
    """Appends metric lines to one file. Safe to share between threads.

    ``dropped`` counts, by reason, the values left out so far; ``last_step``
    is the last step written (None before any)."""

    def __init__(self, path=None):
        self.path = os.environ.get(ENV_FILE) or path or DEFAULT_FILE
        self.dropped = {}
        self.last_step = None
        self._keys = set()  # every key written, for MAX_KEYS_PER_JOB
        self._file = None
        self._lock = threading.Lock()
        _loggers.add(self)

    def log(self, *args, step=None, **metrics):
        """Write one line: ``step`` (an integer, optional) and the metrics,
        given as keywords, or as a dict (``log({"loss": 0.3}, step=5)``)."""
        self.log_dict(_merge(args, metrics), step=step)

    def log_dict(self, metrics, step=None):
        """Like ``log`` for a dict whose keys need not be identifiers."""
        metrics = dict(metrics)
        if "step" in metrics:
            s = metrics.pop("step")
            if step is None:
                step = s
        if step is not None:
            step = _step(step)
        drops = []  # (reason, key, what)
        ts = time.time()
        if "ts" in metrics:
            given = metrics.pop("ts")
            try:
                n = _number(given)
            except _NotANumber as e:
                drops.append((NON_NUMERIC, "ts", e.args[0]))
            else:
                if not _finite(n):
                    drops.append((NON_FINITE, "ts", repr(n)))
                elif not 0 <= n <= MAX_TIMESTAMP:
                    drops.append((OUT_OF_RANGE, "ts", repr(n)))
                else:
                    ts = n
        values = {}
        for key, value in metrics.items():
            key = str(key)
            try:
                n = _number(value)
            except _NotANumber as e:
                drops.append((NON_NUMERIC, key, e.args[0]))
                continue
            if not _finite(n):
                drops.append((NON_FINITE, key, _short(repr(n))))
            elif not _key_ok(key):
                drops.append((BAD_KEY, _short(repr(key)), "key"))
            else:
                values[key] = n
        lines = []  # (line, its metric keys)
        with self._lock:
            # The controller's choice, mirrored: of the keys new to the job,
            # the first in sorted order fit.
            fresh = sorted(k for k in values if k not in self._keys)
            room = max(MAX_KEYS_PER_JOB - len(self._keys), 0)
            for k in fresh[room:]:
                del values[k]
                drops.append((TOO_MANY_KEYS, k, ""))
            self._keys.update(fresh[:room])
        # More keys than the agent takes in one line: several lines at the
        # same step and time, rather than keys lost.
        keys = sorted(values)
        for i in range(0, len(keys), MAX_KEYS_PER_LINE) if keys else [0]:
            record = {} if step is None else {"step": step}
            record["ts"] = ts
            for k in keys[i : i + MAX_KEYS_PER_LINE]:
                record[k] = values[k]
            if len(record) == 1:  # only ts: nothing worth a line (a step alone is progress)
                continue
            # allow_nan=False is the backstop for the checks above.
            line = (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")
            if len(line) > MAX_LINE_BYTES:
                drops.extend((TOO_LONG, k, "") for k in record if k not in ("step", "ts"))
                continue
            lines.append((line, [k for k in record if k not in ("step", "ts")]))
        with self._lock:
            for line, line_keys in lines:
                try:
                    self._write(line)
                except OSError as e:
                    # A full disk or a removed directory must not end a
                    # training run: the values are counted as lost, and the
                    # next call opens the file again.
                    _warn("cannot write %s: %s" % (self.path, e))
                    drops.extend((WRITE_FAILED, k, "") for k in line_keys)
                    self._close_file()
                    continue
                if step is not None:
                    self.last_step = step
            if drops:
                self._report(drops, step)

    def _write(self, line):
        if self._file is None:
            # Binary and unbuffered: each line goes to the file (the page
            # cache, which the agent reads) in one write, and O_APPEND keeps
            # the lines of processes sharing the file (forked data loader
            # workers) whole.
            self._file = open(self.path, "ab", buffering=0)
        view = memoryview(line)
        while view:
            view = view[self._file.write(view) :]

    def _report(self, drops, step):
        by_reason = {}
        for reason, key, what in drops:
            by_reason.setdefault(reason, []).append((key, what))
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
        parts = []
        for reason, items in sorted(by_reason.items()):
            named = ", ".join(
                "%s=%s" % (k, w) if w else k for k, w in items[:_NAMED_IN_WARNING]
            )
            more = " and %d more" % (len(items) - _NAMED_IN_WARNING) if len(items) > _NAMED_IN_WARNING else ""
            parts.append("%d %s (%s%s)" % (len(items), reason, named, more))
        total = sum(self.dropped.values())
        where = "" if step is None else " at step %d" % step
        _warn("left out %s%s; %d value%s left out so far" % (
            "; ".join(parts), where, total, "" if total == 1 else "s"))

    def close(self):
        """Close the file; a later ``log`` opens it again."""
        with self._lock:
            self._close_file()

    def _close_file(self):
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass  # unbuffered: nothing is left to lose

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _step(step):
    if isinstance(step, bool):
        raise TypeError("step must be an integer, got %r" % (step,))
    try:
        n = _number(step)
    except _NotANumber:
        raise TypeError("step must be an integer, got %r" % (step,)) from None
    # The agent takes an integral float ("3.0") as a step too; write an int.
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int):
        raise TypeError("step must be an integer, got %r" % (step,))
    if not -(1 << 63) <= n < 1 << 63:  # the agent would reject the line
        raise ValueError("step %d is out of int64's range" % n)
    return n


def _merge(args, metrics):
    """The metrics of a log call: keywords, and at most one dict given
    positionally (wandb's ``log({...})``)."""
    if len(args) > 1:
        raise TypeError("log takes at most one dict of metrics and keywords, got %d positional arguments" % len(args))
    if not args:
        return metrics
    if not hasattr(args[0], "items"):
        raise TypeError("log's positional argument must be a dict of metrics, got %r" % (args[0],))
    merged = dict(args[0])
    merged.update(metrics)
    return merged


class Watch:
    """A training run's progress, for ``with gantry_metrics.watch(...)``.

    Entering logs ``total_steps`` (when given), which the CLI and the
    dashboard draw as a progress bar against the step. ``log`` without a
    step writes the step after the last one written (1 first: a step counts
    steps done, so the last of N steps fills the bar); ``log()`` with no
    metrics writes the step alone, for loops that have nothing else to log.
    Leaving the block closes the file; leaving it by an exception first logs
    ``failed`` = 1 at the last step and says on stderr where it stopped."""

    def __init__(self, total_steps=None, logger=None):
        if total_steps is not None:
            total_steps = _step(total_steps)
            if total_steps <= 0:
                raise ValueError("total_steps must be positive, got %d" % total_steps)
        self.total_steps = total_steps
        self._logger = logger

    @property
    def logger(self):
        return self._logger or _default_logger()

    @property
    def step(self):
        """The last step written to the logger, by this or any other call."""
        return self.logger.last_step

    def log(self, *args, step=None, **metrics):
        metrics = _merge(args, metrics)
        if step is None and "step" not in metrics:
            step = (self.step or 0) + 1
        self.logger.log_dict(metrics, step=step)

    def __enter__(self):
        if self.total_steps is not None:
            # No step: the total is no point on the run's step axis.
            self.logger.log_dict({TOTAL_STEPS: self.total_steps})
        return self

    def __exit__(self, exc_type, exc, tb):
        logger = self.logger
        failed = exc_type is not None and not (
            issubclass(exc_type, SystemExit) and exc.code in (None, 0)
        )
        if failed:
            step = logger.last_step
            of = "" if self.total_steps is None else " of %d" % self.total_steps
            at = "before the first step" if step is None else "at step %d%s" % (step, of)
            _warn("run stopped %s by %s: %s" % (at, exc_type.__name__, _short(str(exc), 200)))
            try:
                logger.log_dict({"failed": 1}, step=step)
            except Exception as e:  # never hide the run's own exception
                _warn("could not log the failure: %s" % e)
        logger.close()
        return False


def watch(total_steps=None, logger=None):
    """``with gantry_metrics.watch(total_steps=N) as run: ... run.log(...)``:
    see Watch."""
    return Watch(total_steps=total_steps, logger=logger)


_default = None
_default_lock = threading.Lock()

# Every logger, so that a forked child (a data loader worker) gets fresh
# locks: one held by another thread of the parent at the fork would never
# be released in the child.
_loggers = weakref.WeakSet()


def _after_fork():
    global _default_lock
    _default_lock = threading.Lock()
    for logger in list(_loggers):
        logger._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _default_logger():
    global _default
    with _default_lock:
        if _default is None:
            _default = MetricsLogger()
            atexit.register(_default.close)
        return _default


def log(*args, step=None, **metrics):
    """Write one line to the default logger's file (see MetricsLogger.log):
    ``log({"loss": 0.3}, step=5)`` or ``log(loss=0.3, step=5)``."""
    _default_logger().log_dict(_merge(args, metrics), step=step)


def close():
    """Close the default logger's file."""
    if _default is not None:
        _default.close()


def __getattr__(name):
    # The integrations are imported on first use, because importing their
    # framework takes seconds that scripts calling only log() should not
    # pay: gantry_metrics.hf and gantry_metrics.lightning work after a bare
    # `import gantry_metrics`, and so does gantry_metrics.GantryCallback,
    # kept from the single-file helper. A missing framework is an
    # AttributeError, as it was then, so that hasattr() stays safe.
    submodules = {"hf": "hf", "lightning": "lightning", "GantryCallback": "hf", "GantryLogger": "lightning"}
    if name not in submodules:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    import importlib

    try:
        mod = importlib.import_module("." + submodules[name], __name__)
    except ImportError as e:
        raise AttributeError("gantry_metrics.%s: %s" % (name, e)) from e
    return mod if name == submodules[name] else getattr(mod, name)
