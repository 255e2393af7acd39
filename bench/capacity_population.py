#!/usr/bin/env python3
"""The capacity experiment's ten models trained one after another (the training core, build and
compile per model included) against training them together: all zero-padded to the widest in
one population, or grouped (the widths up to a split padded into one population, the wider ones
one after another). Each variant is capacity's plan (`framework.train_plan`) with that
--training_mode, so the times are what a user pays (build, compile, train, per-epoch test
evaluation, final evaluation on the whole sets, records kept); the variants alternate within
each round (rotated), and the min over rounds is kept. Prints seconds, ms per step of all ten
models, and ratios.

  python bench/capacity_population.py [--rounds=3] [--epochs=3] [--train_size=12800]
      [--test_size=2000] [--splits=32,64,128,256] [--widths=2,4,...,1024]

MNIST from $HW1_DATA_DIR (random data of MNIST's shape when it is missing); batch 128, Adam.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def mnist_splits(train_size: int, test_size: int):
    from hw1_tf import data

    try:
        return data.load("mnist", train_size=train_size, test_size=test_size, seed=0)
    except data.DataError as e:
        print(f"# MNIST not available ({e}); random data of MNIST's shape")
        rng = np.random.RandomState(0)
        x = rng.rand(train_size + test_size, 28, 28, 1).astype(np.float32)
        y = rng.randint(0, 10, train_size + test_size).astype(np.int32)
        return data.Splits("random", x[:train_size], y[:train_size], x[train_size:],
                           y[train_size:], 10)


def timed(config, splits) -> float:
    """Seconds of capacity's plan trained under `config` (every model trained: --force)."""
    from hw1_tf import framework
    from hw1_tf.experiments import capacity

    ctx = framework.ExperimentContext(capacity.EXPERIMENT, config)
    ctx.shared("splits", lambda: splits)  # the runs take these rather than loading the config's
    start = time.perf_counter()
    framework.train_plan(capacity, ctx)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (min is kept)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train_size", type=int, default=12800)
    parser.add_argument("--test_size", type=int, default=2000)
    parser.add_argument("--splits", default="32,64,128,256",
                        help="group_max_width values of the grouped variants")
    parser.add_argument("--widths", default="2,4,8,16,32,64,128,256,512,1024")
    args = parser.parse_args()

    from absl import logging

    from hw1_tf import pipeline
    from hw1_tf.experiments import capacity

    logging.set_verbosity(logging.WARNING)
    splits = mnist_splits(args.train_size, args.test_size)
    widths = tuple(int(w) for w in args.widths.split(","))
    steps = args.epochs * pipeline.batches_per_epoch(len(splits.x_train), 128)
    variants = {"one_by_one": dict(training_mode="one_by_one"),
                "population": dict(training_mode="population")}
    for split in args.splits.split(","):
        variants[f"grouped<={split}"] = dict(training_mode="grouped",
                                            group_max_width=int(split))
    print(f"# {len(widths)} nets 784-w-w-10, w = {list(widths)}; {splits.name}, "
          f"{len(splits.x_train)} training / {len(splits.x_test)} test examples, batch 128, "
          f"Adam, {args.epochs} epochs = {steps} steps each; {args.rounds} rounds")
    seconds = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as out:
        names = list(variants)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                config = capacity.Config(
                    epochs=args.epochs, batch_size=128, widths=widths, verbose=0,
                    tensorboard=False, save_models=False, force=True,
                    output_dir=str(Path(out) / name), **variants[name])
                seconds[name].append(timed(config, splits))
            print(f"# round {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.1f} s"
                                                  for n in names))
    base = min(seconds["one_by_one"])
    print("\n| variant | seconds (min) | ms per step of all models | speed-up vs one by one |")
    print("|---|---|---|---|")
    for name in variants:
        best = min(seconds[name])
        print(f"| {name} | {best:.1f} | {best / steps * 1e3:.1f} | {base / best:.2f} |")
    fastest = min(variants, key=lambda n: min(seconds[n]))
    print(f"\nfastest: {fastest} ({base / min(seconds[fastest]):.2f}x one by one)")


if __name__ == "__main__":
    main()
