#!/usr/bin/env python3
"""A fake but plausible training run for trying Gantry without a GPU.

Each step logs loss (exponential decay plus noise), lr (linear warmup, then
cosine decay), tokens_per_s and grad_norm; every --eval-every steps, and at
the last step, an eval_loss line. The first line carries total_steps so
that the CLI can draw a progress bar. Output is deterministic for a --seed.
Standard library only.
"""

import argparse
import math
import random
import signal
import sys
import time

# No sys.path edit: the agent puts its copy of gantry_metrics on every
# job's PYTHONPATH.
import gantry_metrics


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--sleep", type=float, default=0.02, help="seconds per step (default 0.02)")
    p.add_argument("--eval-every", type=int, default=50, help="steps between evals (default 50)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--metrics-file", default=None,
                   help="where to write metrics when $GANTRY_METRICS_FILE is unset")
    args = p.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.sleep < 0:
        p.error("--steps and --eval-every must be positive, --sleep not negative")
    return args


def learning_rate(step, total, peak):
    warmup = max(1, total // 10)
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def main(argv=None):
    args = parse_args(argv)
    rng = random.Random(args.seed)
    # SIGTERM (gantry cancel) ends the run through sys.exit, so the metrics
    # file is closed and the exit code says what happened.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    logger = gantry_metrics.MetricsLogger(args.metrics_file)
    print("training for %d steps, metrics to %s" % (args.steps, logger.path), flush=True)
    tau = args.steps / 4.0
    last_loss = None
    try:
        for step in range(1, args.steps + 1):
            loss = 0.4 + 2.6 * math.exp(-step / tau) + rng.gauss(0, 0.03)
            values = {
                "loss": round(max(loss, 0.01), 6),
                "lr": float("%.6g" % learning_rate(step, args.steps, args.lr)),
                "tokens_per_s": round(12000 + rng.gauss(0, 400), 1),
                "grad_norm": round(0.3 + 1.5 * math.exp(-step / tau) + abs(rng.gauss(0, 0.1)), 6),
            }
            if step == 1:
                values["total_steps"] = args.steps
            logger.log(step=step, **values)
            last_loss = values["loss"]
            if step % args.eval_every == 0 or step == args.steps:
                eval_loss = 0.45 + 2.6 * math.exp(-step / tau) + abs(rng.gauss(0, 0.02))
                logger.log(step=step, eval_loss=round(eval_loss, 6))
            if step % 50 == 0 or step == args.steps:
                print("step %d/%d loss=%.4f lr=%.2e" % (step, args.steps, values["loss"], values["lr"]), flush=True)
            if args.sleep:
                time.sleep(args.sleep)
    finally:
        logger.close()
    print("done: final loss %.4f" % last_loss, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
