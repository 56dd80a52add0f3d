"""Tests of gantry_metrics.py: run by the e2e module's TestMetricsHelper
(python3 -m unittest), with real numpy when it is installed."""

import io
import json
import numbers
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stderr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gantry_metrics  # noqa: E402


class FakeInt64:
    """An integer scalar that is not an int, registered as numpy's are."""

    def __init__(self, v):
        self.v = v

    def __index__(self):
        return self.v


numbers.Integral.register(FakeInt64)


class FakeFloat32:
    """A float scalar that is not a float, registered as numpy's are."""

    def __init__(self, v):
        self.v = v

    def __float__(self):
        return float(self.v)


numbers.Real.register(FakeFloat32)


class FakeTensor:
    """A one-element tensor: only .item() gives its number."""

    def __init__(self, v):
        self.v = v

    def item(self):
        return self.v


class HelperTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "metrics.jsonl")
        self.env = os.environ.pop(gantry_metrics.ENV_FILE, None)
        self.logger = gantry_metrics.MetricsLogger(self.path)

    def tearDown(self):
        self.logger.close()
        if self.env is not None:
            os.environ[gantry_metrics.ENV_FILE] = self.env

    def lines(self):
        self.logger.close()
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(l) for l in f]

    def test_scalar_types(self):
        self.logger.log(step=FakeInt64(3), loss=FakeFloat32(0.5), acc=FakeTensor(0.25), n=FakeInt64(7))
        (line,) = self.lines()
        self.assertEqual(line["step"], 3)
        self.assertEqual((line["loss"], line["acc"], line["n"]), (0.5, 0.25, 7))

    def test_numpy(self):
        try:
            import numpy as np
        except ImportError:
            self.skipTest("numpy is not installed")
        with redirect_stderr(io.StringIO()):
            self.logger.log(step=np.int64(3), loss=np.float32(0.5), lr=np.float64(3e-4), bad=np.float32("nan"))
        (line,) = self.lines()
        self.assertEqual(line["step"], 3)
        self.assertEqual(line["loss"], 0.5)
        self.assertEqual(line["lr"], 3e-4)
        self.assertNotIn("bad", line)

    def test_dict_style(self):
        self.logger.log({"train/loss": 0.3, "step": 4})
        self.logger.log({"a": 1}, b=2, step=5)
        first, second = self.lines()
        self.assertEqual((first["step"], first["train/loss"]), (4, 0.3))
        self.assertEqual((second["step"], second["a"], second["b"]), (5, 1, 2))
        with self.assertRaises(TypeError):
            self.logger.log({"a": 1}, {"b": 2})
        with self.assertRaises(TypeError):
            self.logger.log("loss")

    def test_default_logger_dict_style(self):
        os.environ[gantry_metrics.ENV_FILE] = self.path
        try:
            gantry_metrics._default = None
            gantry_metrics.log({"loss": 0.1}, step=1)
            gantry_metrics.close()
        finally:
            del os.environ[gantry_metrics.ENV_FILE]
            gantry_metrics._default = None
        (line,) = self.lines()
        self.assertEqual((line["step"], line["loss"]), (1, 0.1))

    def test_non_finite_warned_as_they_add_up(self):
        err = io.StringIO()
        with redirect_stderr(err):
            for i in range(1, 101):
                self.logger.log(step=i, loss=float("nan"), ok=i)
        lines = self.lines()
        self.assertEqual(len(lines), 100)
        self.assertTrue(all("loss" not in l and l["ok"] == l["step"] for l in lines))
        warnings = err.getvalue().splitlines()
        self.assertEqual(len(warnings), 3, warnings)  # the 1st, 10th and 100th
        self.assertIn("dropped 100 values of 'loss'", warnings[-1])

    def test_step_must_be_an_integer(self):
        with self.assertRaises(TypeError):
            self.logger.log(step=2.5, loss=1)
        self.logger.log(step=3.0, loss=1)  # an integral float is a step
        (line,) = self.lines()
        self.assertEqual(line["step"], 3)


if __name__ == "__main__":
    unittest.main()
