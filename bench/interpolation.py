#!/usr/bin/env python3
"""Seconds per interpolation curve between two SavedModels: all α stacked in one pass
(hw1_tf.landscape.evaluate_line) vs one α per pass (the same code, alphas_per_pass=1) vs the
one-α-at-a-time loop through the SavedModel's own `serve` with its variables assigned.

    .venv/bin/python bench/interpolation.py [--examples 10000] [--alphas 31] [--rounds 3]

Two untrained 3x256 MNIST-shaped nets (timing does not depend on the weights). The variants run
interleaved in one process, each round in turn; the minimum over rounds is reported with ratios
to the stacked variant. Each variant runs once first to trace and compile.
"""

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10000)
    parser.add_argument("--alphas", type=int, default=31)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", default="256,256,256")
    args = parser.parse_args()

    from hw1_tf import landscape, models, store

    hidden = tuple(int(h) for h in args.hidden.split(","))
    rng = np.random.RandomState(0)
    x = rng.rand(args.examples, 28, 28, 1).astype(np.float32)
    y = rng.randint(0, 10, args.examples).astype(np.int32)
    alphas = np.linspace(-1, 2, args.alphas)
    tmp = pathlib.Path(tempfile.mkdtemp())
    ends = []
    for seed in (1, 2):
        import keras

        keras.utils.set_random_seed(seed)
        net = models.build(models.ModelSpec("m", hidden=hidden), (28, 28, 1), 10)
        ends.append(landscape.load_endpoint(store.export_model(net, tmp / f"m{seed}",
                                                               keras_file=False)))
    first, second = ends

    def stacked():
        landscape.evaluate_line(first, second, alphas, {"x": (x, y)}, batch_size=1024,
                                alphas_per_pass=len(alphas))

    def one_per_pass():
        landscape.evaluate_line(first, second, alphas, {"x": (x, y)}, batch_size=1024,
                                alphas_per_pass=1)

    def serve_loop():
        for a in alphas:
            theta = [(1 - a) * t1 + a * t2 for t1, t2 in zip(first.arrays, second.arrays)]
            landscape.evaluate_serve(first, x, y, theta, batch_size=1024)

    variants = {"stacked (all alphas per pass)": stacked, "one alpha per pass": one_per_pass,
                "serve loop (assign + serve)": serve_loop}
    for fn in variants.values():
        fn()
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    base = best["stacked (all alphas per pass)"]
    print(f"{args.alphas} alphas x {args.examples} examples, dense {list(hidden)}; "
          f"min of {args.rounds} rounds")
    for name, seconds in best.items():
        print(f"  {name:32s} {seconds:7.3f} s   {seconds / base:5.2f}x the stacked time")


if __name__ == "__main__":
    main()
