"""Tests of gantry_metrics' core: run by python/python_test.go, from python/
(``python3 -m unittest discover -s tests``), once with any python3, once with
numpy and once with torch where they import.

$GANTRY_TEST_REQUIRE (comma-separated: numpy, torch) turns the skip of the
numpy or torch tests into a failure: the Go test sets it for the Python it
chose because that module imports there.
"""

import io
import json
import numbers
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import unittest.mock
from contextlib import redirect_stderr

import gantry_metrics

REQUIRED = set(filter(None, os.environ.get("GANTRY_TEST_REQUIRE", "").split(",")))


def optional(name):
    """The module, or a skip (a failure when $GANTRY_TEST_REQUIRE names it)."""
    try:
        return __import__(name)
    except ImportError as e:
        if name in REQUIRED:
            raise AssertionError("%s is required for this run but does not import: %s" % (name, e))
        raise unittest.SkipTest("%s is not installed" % name)


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
    """A tensor: .item() gives its number, or raises when it has many."""

    def __init__(self, *v):
        self.v = v

    def item(self):
        if len(self.v) != 1:
            raise RuntimeError("a Tensor with %d elements cannot be converted to Scalar" % len(self.v))
        return self.v[0]


class OnlyFloat:
    """Neither registered nor .item(): only __float__ (a Decimal-like)."""

    def __float__(self):
        return 2.5


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "metrics.jsonl")
        self.env = os.environ.pop(gantry_metrics.ENV_FILE, None)
        self.logger = gantry_metrics.MetricsLogger(self.path)
        self.err = io.StringIO()

    def tearDown(self):
        self.logger.close()
        if self.env is not None:
            os.environ[gantry_metrics.ENV_FILE] = self.env

    def log(self, *args, **kwargs):
        with redirect_stderr(self.err):
            self.logger.log(*args, **kwargs)

    def lines(self):
        self.logger.close()
        if not os.path.exists(self.logger.path):
            return []
        with open(self.logger.path, encoding="utf-8") as f:
            return [json.loads(l) for l in f]

    def warnings(self):
        return self.err.getvalue().splitlines()


class CoreTest(Base):
    def test_kwargs_and_dict_styles(self):
        self.log(loss=0.3, step=5)
        self.log({"train/loss": 0.25}, step=6)
        self.log({"train/loss": 0.2, "step": 7})
        self.log({"a": 1}, b=2, step=8)
        lines = self.lines()
        self.assertEqual([l["step"] for l in lines], [5, 6, 7, 8])
        self.assertEqual(lines[0]["loss"], 0.3)
        self.assertEqual((lines[1]["train/loss"], lines[2]["train/loss"]), (0.25, 0.2))
        self.assertEqual((lines[3]["a"], lines[3]["b"]), (1, 2))
        self.assertTrue(all(isinstance(l["ts"], float) for l in lines))
        self.assertEqual(self.warnings(), [])
        with self.assertRaises(TypeError):
            self.logger.log({"a": 1}, {"b": 2})
        with self.assertRaises(TypeError):
            self.logger.log("loss")

    def test_duck_typed_scalars(self):
        self.log(step=FakeInt64(3), loss=FakeFloat32(0.5), acc=FakeTensor(0.25), n=FakeInt64(7),
                 flag=True, half=OnlyFloat(), big=2**60)
        (line,) = self.lines()
        self.assertEqual(line["step"], 3)
        self.assertEqual(line, dict(line, loss=0.5, acc=0.25, n=7, flag=1, half=2.5, big=2**60))
        self.assertIsInstance(line["n"], int)
        self.assertEqual(self.warnings(), [])

    def test_every_dropping_call_warns_with_the_running_count(self):
        for i in range(1, 101):
            self.log(step=i, loss=float("nan"), grad=float("inf"), ok=i)
        lines = self.lines()
        self.assertEqual(len(lines), 100)
        self.assertTrue(all(set(l) == {"step", "ts", "ok"} and l["ok"] == l["step"] for l in lines))
        warnings = self.warnings()
        self.assertEqual(len(warnings), 100, warnings[:3])
        self.assertIn("2 non-finite (loss=nan, grad=inf) at step 1; 2 values left out so far", warnings[0])
        self.assertIn("at step 100; 200 values left out so far", warnings[-1])
        self.assertEqual(self.logger.dropped, {gantry_metrics.NON_FINITE: 200})

    def test_non_numeric_values_and_bad_keys_are_counted(self):
        self.log(step=1, note="hello", many=FakeTensor(1, 2), none=None, c=1j, huge=10**400,
                 **{"": 1, "k" * 129: 2, "tab\there": 3, "ok": 4})
        (line,) = self.lines()
        self.assertEqual(set(line), {"step", "ts", "ok"})
        (w,) = self.warnings()
        self.assertIn("4 non-numeric (note=str, many=FakeTensor (a Tensor with 2 elements", w)
        self.assertIn("none=NoneType, c=complex)", w)
        self.assertIn("1 non-finite (huge=", w)
        self.assertIn("3 bad key (", w)
        self.assertIn("8 values left out so far", w)
        self.assertEqual(self.logger.dropped, {"non-numeric": 4, "non-finite": 1, "bad key": 3})

    def test_long_lists_of_drops_are_cut_but_counted(self):
        self.log(step=1, **{"s%d" % i: "x" for i in range(20)})
        (w,) = self.warnings()
        self.assertIn("20 non-numeric (s0=str, s1=str, s2=str, s3=str, s4=str and 15 more)", w)

    def test_more_keys_than_the_agent_takes_go_on_several_lines(self):
        values = {"m%03d" % i: i for i in range(600)}
        self.log(values, step=9)
        lines = self.lines()
        self.assertEqual([len(l) - 2 for l in lines], [256, 256, 88])
        self.assertEqual(len({l["ts"] for l in lines}), 1)
        merged = {}
        for l in lines:
            self.assertEqual(l["step"], 9)
            merged.update(l)
        del merged["step"], merged["ts"]
        self.assertEqual(merged, values)
        self.assertEqual(self.warnings(), [])

    def test_line_over_the_agents_limit_is_counted(self):
        self.log(step=1, **{("k%d" % i) + "x" * 120: 1.0 for i in range(200)})  # fine: ~26 KB
        self.assertEqual(len(self.lines()), 1)
        self.logger.path = os.path.join(self.dir, "other.jsonl")
        with unittest.mock.patch.object(gantry_metrics, "MAX_LINE_BYTES", 100):
            self.log(step=2, **{"a" * 50: 1, "b" * 50: 2})
        self.assertFalse(os.path.exists(self.logger.path))
        self.assertIn("2 line too long", self.warnings()[-1])

    def test_write_errors_are_counted_not_raised(self):
        self.logger.path = os.path.join(self.dir, "missing", "metrics.jsonl")
        self.log(step=1, loss=0.5, acc=1)
        w = self.warnings()
        self.assertIn("cannot write", w[0])
        self.assertIn("2 not written (acc, loss) at step 1; 2 values left out so far", w[1])
        self.assertIsNone(self.logger.last_step)
        os.mkdir(os.path.dirname(self.logger.path))  # the next call opens it again
        self.log(step=2, loss=0.25)
        self.assertEqual([(l["step"], l["loss"]) for l in self.lines()], [(2, 0.25)])

    def test_step(self):
        with self.assertRaises(TypeError):
            self.logger.log(step=2.5, loss=1)
        with self.assertRaises(TypeError):
            self.logger.log(step="3", loss=1)
        with self.assertRaises(TypeError):
            self.logger.log(step=True, loss=1)
        self.log(step=3.0, loss=1)  # an integral float is a step
        self.log(step=FakeTensor(4), loss=1)
        self.log(step=5)  # the step alone: progress
        self.log(loss=1)  # no step at all
        lines = self.lines()
        self.assertEqual([l.get("step") for l in lines], [3, 4, 5, None])
        self.assertEqual(self.logger.last_step, 5)

    def test_step_past_int64_is_refused(self):
        with self.assertRaises(ValueError):
            self.logger.log(step=1 << 63, loss=1)
        self.log(step=(1 << 63) - 1, loss=1)
        self.assertEqual(self.lines()[0]["step"], (1 << 63) - 1)

    def test_ts(self):
        self.log(step=1, ts=1700000000.5, a=1)
        self.log(step=2, ts="yesterday", a=1)
        self.log(step=3, ts=1e12, a=1)  # past year 9999: the agent would ignore it
        first, second, third = self.lines()
        self.assertEqual(first["ts"], 1700000000.5)
        self.assertGreater(second["ts"], 1700000000.5)
        self.assertLess(third["ts"], 1e12)
        self.assertIn("1 non-numeric (ts=str)", self.warnings()[0])
        self.assertIn("1 out of range (ts=1000000000000.0)", self.warnings()[1])

    def test_keys_past_the_jobs_cap_are_counted(self):
        first = {"k%04d" % i: i for i in range(1000)}
        self.log(first, step=1)
        more = {"n%02d" % i: i for i in range(50)}
        self.log(dict(more, k0000=-1), step=2)  # a known key always fits
        self.log(n49=1, step=3)
        lines = self.lines()
        written = set().union(*lines)
        self.assertEqual(len(written - {"step", "ts"}), 1000 + 24)
        self.assertEqual(lines[-2]["k0000"], -1)
        self.assertTrue({"n%02d" % i for i in range(24)} <= written)
        self.assertNotIn("n24", written)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("26 past the job's 1024 keys (n24, n25, n26, n27, n28 and 21 more) at step 2", warnings[0])
        self.assertIn("1 past the job's 1024 keys (n49) at step 3; 27 values left out so far", warnings[1])

    def test_env_file_wins_and_default_logger(self):
        os.environ[gantry_metrics.ENV_FILE] = self.path
        try:
            gantry_metrics._default = None
            gantry_metrics.log({"loss": 0.1}, step=1)
            gantry_metrics.log(loss=0.05, step=2)
            gantry_metrics.close()
            self.assertEqual(gantry_metrics.MetricsLogger("elsewhere.jsonl").path, self.path)
        finally:
            del os.environ[gantry_metrics.ENV_FILE]
            gantry_metrics._default = None
        lines = self.lines()
        self.assertEqual([(l["step"], l["loss"]) for l in lines], [(1, 0.1), (2, 0.05)])

    def test_forked_writers_keep_lines_whole(self):
        if not hasattr(os, "fork"):
            self.skipTest("no fork")
        self.log(step=0, x=0)  # the file is open before the fork, as in a trainer
        pad = "p" * 100
        pids = []
        for w in range(4):
            pid = os.fork()
            if pid == 0:
                try:
                    for i in range(200):
                        self.logger.log({"w": w, "i": i, pad: 1.0})
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        lines = self.lines()
        self.assertEqual(len(lines), 801)
        self.assertEqual(sorted((l["w"], l["i"]) for l in lines[1:]),
                         [(w, i) for w in range(4) for i in range(200)])


    def test_fork_while_another_thread_holds_the_lock(self):
        if not hasattr(os, "fork"):
            self.skipTest("no fork")
        self.logger._lock.acquire()  # as a thread of the parent writing at the fork
        try:
            pid = os.fork()
            if pid == 0:
                try:
                    self.logger.log(step=1, child=1)
                finally:
                    os._exit(0)
        finally:
            self.logger._lock.release()
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self.fail("the child hung on the lock it inherited held")
            time.sleep(0.01)
        self.assertEqual([l["child"] for l in self.lines()], [1])


class WatchTest(Base):
    def test_total_steps_and_auto_steps(self):
        with redirect_stderr(self.err):
            with gantry_metrics.watch(total_steps=3, logger=self.logger) as run:
                run.log(loss=0.5)
                run.log({"loss": 0.4})
                self.assertEqual(run.step, 2)
                run.log()  # progress alone
        lines = self.lines()
        self.assertEqual(lines[0], {"ts": lines[0]["ts"], "total_steps": 3})
        self.assertEqual([l.get("step") for l in lines[1:]], [1, 2, 3])
        self.assertEqual(set(lines[3]), {"step", "ts"})
        self.assertIsNone(self.logger._file)  # closed on exit
        self.assertEqual(self.warnings(), [])

    def test_explicit_steps_move_the_count(self):
        with gantry_metrics.watch(logger=self.logger) as run:
            self.logger.log(step=10, a=1)  # any log call on the logger counts
            run.log(a=2)
            run.log(a=3, step=20)
            run.log(a=4)
        self.assertEqual([l["step"] for l in self.lines()], [10, 11, 20, 21])

    def test_exception_is_logged_and_raised(self):
        with redirect_stderr(self.err):
            with self.assertRaises(ZeroDivisionError):
                with gantry_metrics.watch(total_steps=100, logger=self.logger) as run:
                    run.log(loss=1.0)
                    run.log(loss=0.9)
                    1 / 0
        lines = self.lines()
        self.assertEqual(lines[-1]["failed"], 1)
        self.assertEqual(lines[-1]["step"], 2)
        self.assertIsNone(self.logger._file)
        (w,) = self.warnings()
        self.assertIn("run stopped at step 2 of 100 by ZeroDivisionError", w)

    def test_clean_sys_exit_is_no_failure(self):
        with self.assertRaises(SystemExit):
            with gantry_metrics.watch(logger=self.logger) as run:
                run.log(loss=1.0)
                sys.exit(0)
        self.assertNotIn("failed", self.lines()[-1])

    def test_bad_total(self):
        with self.assertRaises(ValueError):
            gantry_metrics.watch(total_steps=0)
        with self.assertRaises(TypeError):
            gantry_metrics.watch(total_steps="many")


class NumpyTest(Base):
    def test_numpy_values(self):
        np = optional("numpy")
        self.log(
            step=np.int64(3),
            f32=np.float32(0.1), f16=np.float16(0.5), f64=np.float64(3e-4), ld=np.longdouble(0.25),
            i8=np.int8(-5), u64=np.uint64(2**63 + 1), b=np.bool_(True),
            zero_d=np.array(1.5), one=np.array([2.5]), one_int=np.array([[7]]),
        )
        (line,) = self.lines()
        self.assertEqual(line["step"], 3)
        want = dict(f32=float(np.float32(0.1)), f16=0.5, f64=3e-4, ld=0.25, i8=-5, u64=2**63 + 1, b=1,
                    zero_d=1.5, one=2.5, one_int=7)
        self.assertEqual({k: line[k] for k in want}, want)
        self.assertIsInstance(line["u64"], int)
        self.assertEqual(self.warnings(), [])

    def test_numpy_drops_are_counted(self):
        np = optional("numpy")
        self.log(step=1, nan=np.float32("nan"), inf=np.array(np.inf), many=np.array([1.0, 2.0]),
                 c=np.complex128(1 + 2j), ok=np.float64(1))
        (line,) = self.lines()
        self.assertEqual(set(line), {"step", "ts", "ok"})
        (w,) = self.warnings()
        self.assertIn("2 non-finite (nan=nan, inf=inf)", w)
        self.assertIn("2 non-numeric (many=ndarray", w)
        self.assertIn("c=complex128)", w)


class TorchTest(Base):
    def test_torch_values(self):
        torch = optional("torch")
        w = torch.nn.Parameter(torch.tensor(0.75))
        self.log(
            step=torch.tensor(7),
            zero_d=torch.tensor(0.5), one=torch.tensor([0.25]), i=torch.tensor([[3]]),
            b=torch.tensor(True), bf16=torch.tensor(1.5, dtype=torch.bfloat16), grad=w * 2,
        )
        (line,) = self.lines()
        self.assertEqual(line["step"], 7)
        self.assertEqual({k: line[k] for k in ("zero_d", "one", "i", "b", "bf16", "grad")},
                         dict(zero_d=0.5, one=0.25, i=3, b=1, bf16=1.5, grad=1.5))
        self.assertEqual(self.warnings(), [])

    def test_torch_drops_are_counted(self):
        torch = optional("torch")
        self.log(step=1, nan=torch.tensor(float("nan")), many=torch.zeros(3), ok=torch.tensor(1.0))
        (line,) = self.lines()
        self.assertEqual(set(line), {"step", "ts", "ok"})
        (w,) = self.warnings()
        self.assertIn("1 non-finite (nan=nan)", w)
        self.assertIn("1 non-numeric (many=Tensor (", w)


class ImportTest(unittest.TestCase):
    def test_core_imports_no_framework(self):
        # In a fresh interpreter: this one may have imported them already.
        code = (
            "import sys, gantry_metrics; gantry_metrics.log(a=1); "
            "print(sorted(m for m in ('numpy', 'torch', 'transformers', 'lightning', 'pytorch_lightning') "
            "if m in sys.modules))"
        )
        env = dict(os.environ, GANTRY_METRICS_FILE=os.path.join(tempfile.mkdtemp(), "m.jsonl"))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")

if __name__ == "__main__":
    unittest.main()
