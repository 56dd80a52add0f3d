"""Tests of gantry_metrics.hf and gantry_metrics.lightning against FAKE
frameworks.

Neither transformers nor lightning can be installed where these tests run,
so each test puts minimal stand-ins for the few names the integrations
import into sys.modules, shaped after the real APIs:

- transformers.TrainerCallback, whose hooks are
  ``on_<event>(self, args, state, control, **kwargs)`` (``on_log`` also gets
  ``logs``), with a TrainerState carrying ``global_step``, ``max_steps`` and
  ``is_world_process_zero``;
- lightning.pytorch.loggers.Logger (or pytorch_lightning.loggers.Logger), an
  ABC whose abstract members are ``name``, ``version``, ``log_hyperparams``
  and ``log_metrics``; ``rank_zero_experiment`` in its ``.logger`` module;
  ``rank_zero_only`` in ``.utilities``, a decorator that runs the function
  only when ``rank_zero_only.rank == 0``.

What they prove is that the integrations call these APIs as documented and
write the right lines, not that a given framework version still has them.
"""

import abc
import functools
import importlib
import json
import os
import sys
import tempfile
import types
import unittest

import gantry_metrics


class FakeModules:
    """Installs fake modules in sys.modules for a test and restores the
    previous state afterwards, including the gantry_metrics submodules that
    imported them."""

    def __init__(self, test, modules):
        self.saved = {}
        names = list(modules) + ["gantry_metrics.hf", "gantry_metrics.lightning"]
        for name in names:
            self.saved[name] = sys.modules.get(name)
        for name in ("gantry_metrics.hf", "gantry_metrics.lightning"):
            sys.modules.pop(name, None)
            if hasattr(gantry_metrics, name.split(".")[1]):
                delattr(gantry_metrics, name.split(".")[1])
        sys.modules.update(modules)
        test.addCleanup(self.restore)

    def restore(self):
        for name, mod in self.saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
        for attr in ("hf", "lightning"):
            if hasattr(gantry_metrics, attr):
                delattr(gantry_metrics, attr)


def fake_transformers():
    m = types.ModuleType("transformers")

    class TrainerCallback:
        def on_train_begin(self, args, state, control, **kwargs):
            pass

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

        def on_train_end(self, args, state, control, **kwargs):
            pass

    m.TrainerCallback = TrainerCallback
    return {"transformers": m}


def fake_lightning(top="lightning"):
    """Modules for `lightning.pytorch...` or, with top="pytorch_lightning",
    `pytorch_lightning...`."""
    base = top + ".pytorch" if top == "lightning" else top

    def rank_zero_only(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            if rank_zero_only.rank == 0:
                return fn(*args, **kwargs)
            return None

        return wrapped

    rank_zero_only.rank = 0

    class DummyExperiment:
        pass

    def rank_zero_experiment(fn):
        @functools.wraps(fn)
        def experiment(self):
            return (rank_zero_only(lambda: fn(self)))() or DummyExperiment()

        return experiment

    class Logger(abc.ABC):
        @property
        @abc.abstractmethod
        def name(self):
            pass

        @property
        @abc.abstractmethod
        def version(self):
            pass

        @abc.abstractmethod
        def log_hyperparams(self, params, *args, **kwargs):
            pass

        @abc.abstractmethod
        def log_metrics(self, metrics, step=None):
            pass

        def finalize(self, status):
            pass

    mods = {}
    parts = base.split(".")
    for i in range(1, len(parts) + 1):
        mods[".".join(parts[:i])] = types.ModuleType(".".join(parts[:i]))
    loggers = types.ModuleType(base + ".loggers")
    loggers.Logger = Logger
    logger_mod = types.ModuleType(base + ".loggers.logger")
    logger_mod.Logger = Logger
    logger_mod.rank_zero_experiment = rank_zero_experiment
    utilities = types.ModuleType(base + ".utilities")
    utilities.rank_zero_only = rank_zero_only
    mods.update({base + ".loggers": loggers, base + ".loggers.logger": logger_mod, base + ".utilities": utilities})
    for name, mod in list(mods.items()):
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(mods[parent], child, mod)
    return mods, rank_zero_only, DummyExperiment


class State:
    def __init__(self, global_step=0, max_steps=0, zero=True):
        self.global_step = global_step
        self.max_steps = max_steps
        self.is_world_process_zero = zero


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "metrics.jsonl")
        self.env = os.environ.pop(gantry_metrics.ENV_FILE, None)
        self.addCleanup(self.restore_env)
        self.logger = gantry_metrics.MetricsLogger(self.path)
        self.addCleanup(self.logger.close)

    def restore_env(self):
        if self.env is not None:
            os.environ[gantry_metrics.ENV_FILE] = self.env

    def lines(self):
        self.logger.close()
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(l) for l in f]


class HFTest(Base):
    def test_callback(self):
        FakeModules(self, fake_transformers())
        from gantry_metrics.hf import GantryCallback

        cb = GantryCallback(logger=self.logger)
        self.assertIs(gantry_metrics.hf.GantryCallback, GantryCallback)
        self.assertIsInstance(cb, sys.modules["transformers"].TrainerCallback)
        cb.on_train_begin(None, State(global_step=0, max_steps=500), None)
        cb.on_log(None, State(global_step=10, max_steps=500), None, logs={"loss": 2.5, "learning_rate": 1e-4, "epoch": 0.1})
        cb.on_log(None, State(global_step=20), None, logs={"eval_loss": 2.0})
        cb.on_log(None, State(global_step=30, zero=False), None, logs={"loss": 9.0})  # not rank zero
        cb.on_log(None, State(global_step=40), None, logs=None)
        cb.on_train_end(None, State(global_step=40), None)
        self.assertIsNone(self.logger._file)
        lines = self.lines()
        self.assertEqual([(l["step"], {k: v for k, v in l.items() if k not in ("step", "ts")}) for l in lines], [
            (0, {"total_steps": 500}),
            (10, {"loss": 2.5, "learning_rate": 1e-4, "epoch": 0.1}),
            (20, {"eval_loss": 2.0}),
        ])

    def test_unknown_max_steps_logs_no_total(self):
        FakeModules(self, fake_transformers())
        from gantry_metrics.hf import GantryCallback

        GantryCallback(logger=self.logger).on_train_begin(None, State(max_steps=-1), None)
        self.assertEqual(self.lines(), [])

    def test_default_logger_and_old_attribute(self):
        FakeModules(self, fake_transformers())
        # After a bare import, as the README has it.
        self.assertIs(gantry_metrics.hf.GantryCallback, gantry_metrics.GantryCallback)
        os.environ[gantry_metrics.ENV_FILE] = self.path
        saved, gantry_metrics._default = gantry_metrics._default, None
        try:
            # gantry_metrics.GantryCallback, as the single-file helper had it.
            cb = gantry_metrics.GantryCallback()
            cb.on_log(None, State(global_step=3), None, logs={"loss": 1.0})
            gantry_metrics.close()
        finally:
            del os.environ[gantry_metrics.ENV_FILE]
            gantry_metrics._default = saved
        (line,) = self.lines()
        self.assertEqual((line["step"], line["loss"]), (3, 1.0))

    def test_missing_transformers(self):
        FakeModules(self, {"transformers": None})  # None in sys.modules: ImportError
        with self.assertRaisesRegex(ImportError, "gantry_metrics.hf needs the transformers package"):
            importlib.import_module("gantry_metrics.hf")
        with self.assertRaisesRegex(AttributeError, "needs the transformers package"):
            gantry_metrics.GantryCallback
        self.assertFalse(hasattr(gantry_metrics, "GantryCallback"))  # hasattr does not raise
        self.assertFalse(hasattr(gantry_metrics, "hf"))
        with self.assertRaises(AttributeError):
            gantry_metrics.Nonexistent


class LightningTest(Base):
    def check_logger(self, top):
        mods, rank_zero_only, dummy = fake_lightning(top)
        FakeModules(self, mods)
        from gantry_metrics.lightning import GantryLogger

        base = top + ".pytorch" if top == "lightning" else top
        self.assertIs(gantry_metrics.GantryLogger, GantryLogger)
        self.assertIs(gantry_metrics.lightning.GantryLogger, GantryLogger)
        lg = GantryLogger(logger=self.logger)
        self.assertIsInstance(lg, sys.modules[base + ".loggers"].Logger)
        self.assertEqual(lg.name, "gantry")
        self.assertIs(lg.experiment, self.logger)
        lg.log_hyperparams({"lr": 1e-3, "model": "resnet"})
        lg.log_hyperparams(types.SimpleNamespace(lr=1e-3))
        lg.log_metrics({"train_loss": 0.5, "epoch": 0}, step=99)
        lg.log_metrics({"val_acc": 0.75})
        rank_zero_only.rank = 1
        lg.log_metrics({"train_loss": 7.0}, step=100)  # another rank: not written
        self.assertIsInstance(lg.experiment, dummy)
        rank_zero_only.rank = 0
        lg.finalize("success")
        self.assertIsNone(self.logger._file)
        lines = self.lines()
        self.assertEqual([{k: v for k, v in l.items() if k != "ts"} for l in lines],
                         [{"step": 99, "train_loss": 0.5, "epoch": 0}, {"val_acc": 0.75}])

    def test_lightning(self):
        FakeModules(self, {"pytorch_lightning": None})
        self.check_logger("lightning")

    def test_pytorch_lightning(self):
        FakeModules(self, {"lightning": None})
        self.check_logger("pytorch_lightning")

    def test_version(self):
        mods, _, _ = fake_lightning()
        FakeModules(self, mods)
        from gantry_metrics.lightning import GantryLogger

        saved = os.environ.pop("GANTRY_JOB_ID", None)
        try:
            self.assertEqual(GantryLogger().version, "local")
            os.environ["GANTRY_JOB_ID"] = "j-42"
            self.assertEqual(GantryLogger().version, "j-42")
            self.assertEqual(GantryLogger(name="n", version=3).version, 3)
        finally:
            os.environ.pop("GANTRY_JOB_ID", None)
            if saved is not None:
                os.environ["GANTRY_JOB_ID"] = saved

    def test_missing_lightning(self):
        FakeModules(self, {"lightning": None, "pytorch_lightning": None})
        with self.assertRaisesRegex(ImportError, "needs lightning .* or pytorch_lightning"):
            importlib.import_module("gantry_metrics.lightning")


if __name__ == "__main__":
    unittest.main()
