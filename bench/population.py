#!/usr/bin/env python3
"""Population training (hw1_tf.population) against training the same members one by one with the
fused XLA core (hw1_tf.training), side by side in one process; prints ratios.

Time per member-step is the steady state: the fastest epoch after the first (compiled) one, per
member and per iteration, min over rounds; the variants alternate within each round. Also the
end to end time of one member (build + compile + train) one by one against the population's.

  1. 100 HW1-1 function nets (hidden widths solve_dense_widths(depth, 571, 1, 1), batch 128):
     population vs one by one (target: >= 3x per member-step on 2 CPU cores);
  2. scaling: time per member-step for N = 1, 2, 8, 32, 100, 200 (figure under figures/bench/);
  3. 8 MNIST MLPs 784-256-256-256-10 (batch 64): population vs one by one.

  python bench/population.py [--rounds=3] [--epochs=4] [--depth=4] [--mnist_size=10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _epoch_times() -> tuple[list[float], object]:
    times = [time.perf_counter()]
    return times, lambda *_: times.append(time.perf_counter())


def population_run(spec, splits, batch_size, epochs, size, optimizer="adam"):
    """(steady seconds per member-step, end-to-end seconds) of a population of `size`."""
    from hw1_tf import data, pipeline, population

    st = population.PopulationSettings(epochs=epochs, batch_size=batch_size, verbose=0,
                                       optimizer=optimizer, evaluate_test=False)
    times, mark = _epoch_times()
    population.train_population(spec, splits, st, list(range(size)), callbacks=[mark])
    steps = pipeline.batches_per_epoch(len(splits.x_train), batch_size)
    steady = min(np.diff(times[1:])) if len(times) > 2 else times[1] - times[0]
    return steady / (size * steps), times[-1] - times[0]


def single_run(spec, splits, batch_size, epochs, seed=0, optimizer="adam"):
    """(steady seconds per step, end-to-end seconds) of one member trained by the core."""
    import keras

    from hw1_tf import data, models, pipeline, training

    start = time.perf_counter()
    st = training.TrainSettings(epochs=epochs, batch_size=batch_size, verbose=0, seed=seed,
                                optimizer=optimizer)
    model = training.build_instrumented(
        lambda: models.build(spec, splits.input_shape, splits.num_classes or 1),
        splits.num_classes, st)
    times, mark = _epoch_times()
    callback = keras.callbacks.LambdaCallback(on_epoch_end=mark)
    training.train(model, (splits.x_train, splits.y_train), st, callbacks=[callback])
    steps = pipeline.batches_per_epoch(len(splits.x_train), batch_size)
    return min(np.diff(times[1:])) / steps, time.perf_counter() - start


def function_splits(n_train: int):
    from hw1_tf import data

    return data.function_splits("sinc", n_train, 100, seed=0)


def mnist_splits(size: int):
    from hw1_tf import data

    try:
        s = data.load("mnist", train_size=size)
    except data.DataError as e:
        print(f"# MNIST not available ({e}); random data of MNIST's shape")
        rng = np.random.RandomState(0)
        x = rng.rand(size, 28, 28, 1).astype(np.float32)
        y = rng.randint(0, 10, size).astype(np.int32)
        return data.Splits("random", x, y, x[:10], y[:10], 10)
    return s



def plot_population_scaling(bench: dict[str, Any], path: Path) -> Path:
    """Time per member-step against population size (log-log), with training the members one
    by one as the reference line. `bench`: sizes, member_step_seconds, single_step_seconds,
    title."""
    from hw1_tf import figures

    sizes = np.asarray(bench["sizes"])
    ms = 1e3 * np.asarray(bench["member_step_seconds"])
    fig, ax = figures.plt.subplots(figsize=(6.5, 4.2))
    ax.plot(sizes, ms, "o-", label="population (one batched XLA computation)")
    ax.axhline(1e3 * bench["single_step_seconds"], color="C3", linestyle="--",
               label="one by one (fused XLA core)")
    ax.set_xscale("log")
    figures.finish_axes(ax, f"Population training: {bench['title']}",
                        "members N (log scale)", "time per member-step (ms)", log_y=True)
    return figures.save(fig, Path(path))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (min is kept)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per timed run")
    parser.add_argument("--depth", type=int, default=4, help="hidden layers of the function net")
    parser.add_argument("--n_train", type=int, default=4096)
    parser.add_argument("--sizes", default="1,2,8,32,100,200")
    parser.add_argument("--mnist_size", type=int, default=10000)
    parser.add_argument("--figure", default=None, help="default: figures/bench/population.png")
    args = parser.parse_args()

    from hw1_tf import models, store

    hidden = models.solve_dense_widths(args.depth, 571, 1, 1)
    fn_spec = models.ModelSpec("fn", hidden=hidden)
    fn = function_splits(args.n_train)
    print(f"# function net {list(hidden)}: {models.param_count(1, hidden, 1)} parameters, "
          f"batch 128, {args.n_train} examples, Adam; {args.rounds} rounds")
    sizes = [int(s) for s in args.sizes.split(",")]
    per_step = {n: [] for n in sizes}
    single, single_total, pop_total = [], [], []
    for r in range(args.rounds):
        s, t = single_run(fn_spec, fn, 128, args.epochs, seed=r)
        single.append(s)
        single_total.append(t)
        for n in sizes:
            s, t = population_run(fn_spec, fn, 128, args.epochs, n)
            per_step[n].append(s)
            if n == 100:
                pop_total.append(t)
        print(f"# round {r + 1}: one-by-one {single[-1] * 1e3:.3f} ms/step, " + ", ".join(
            f"N={n} {per_step[n][-1] * 1e3:.3f}" for n in sizes))
    best_single = min(single)
    print("\n| N | ms per member-step | speed-up vs one by one |")
    print("|---|---|---|")
    print(f"| one by one (fused XLA core) | {best_single * 1e3:.4f} | 1.00 |")
    for n in sizes:
        print(f"| {n} | {min(per_step[n]) * 1e3:.4f} | {best_single / min(per_step[n]):.2f} |")
    if 100 in per_step:
        ratio = best_single / min(per_step[100])
        print(f"\nfunction nets, 100 members: {ratio:.2f}x per member-step "
              f"({'meets' if ratio >= 3 else 'MISSES'} the 3x target); end to end for "
              f"{args.epochs} epochs incl. build+compile: 100 one by one "
              f"{100 * min(single_total):.1f} s (100 x one run) vs population "
              f"{min(pop_total):.1f} s = {100 * min(single_total) / min(pop_total):.1f}x")
    figure = Path(args.figure) if args.figure else \
        store.project_root() / "figures" / "bench" / "population.png"
    plot_population_scaling(
        {"sizes": sizes, "member_step_seconds": [min(per_step[n]) for n in sizes],
         "single_step_seconds": best_single,
         "title": f"function net {list(hidden)}, batch 128"}, figure)
    print(f"# figure: {figure}")

    mnist = mnist_splits(args.mnist_size)
    mlp = models.ModelSpec("mlp", hidden=(256, 256, 256))
    single, pop = [], []
    for r in range(args.rounds):
        single.append(single_run(mlp, mnist, 64, 2, seed=r)[0])
        pop.append(population_run(mlp, mnist, 64, 2, 8)[0])
    print(f"\n8 MNIST MLPs 784-256-256-256-10 ({mnist.name}, {len(mnist.x_train)} examples, "
          f"batch 64): one by one {min(single) * 1e3:.3f} ms/step, population "
          f"{min(pop) * 1e3:.3f} ms per member-step: {min(single) / min(pop):.2f}x")


if __name__ == "__main__":
    main()
