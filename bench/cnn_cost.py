#!/usr/bin/env python3
"""Per-epoch cost of CNN layouts of about the same size on MNIST, through the training core
(`training.build_instrumented` + `training.train`, actual_task's settings: Adam 1e-3, batch 128,
the test split evaluated after each epoch), side by side in one process: each round trains every
variant for `--epochs` epochs on `--train_size` examples and a sixth as many test examples
(rotated order), and the timed epochs
are all but the first (tracing). Prints, per variant, its parameter count, forward
multiply-adds per example, wall and process CPU seconds (user+sys of all threads) scaled to a
60,000-example epoch (min over rounds), and both as ratios to the first variant.

  python bench/cnn_cost.py [--rounds=2] [--epochs=3] [--train_size=12800] [--variants=...]

A variant is `name:filters:pools`, e.g. `cur:21,21,42,42:1,3` (a max-pool after conv layers 1
and 3, counted from 0); a `+` after the pools adds a batch size, e.g. `cur256:21,21,42,42:1,3+256`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT = ("cur:21,21,42,42:1,3",  # conv(c)-conv(c)-pool-conv(2c)-conv(2c)-pool (the old cnn_deep)
           "p3:27,27,54,54:0,1,2",  # conv-pool x3, conv: 3x3 maps into the dense (cnn_deep now)
           "p1:28,28,56,56:0,1,2,3",  # conv-pool after each of four convs (1x1 maps)
           "pf:27,27,54,54:0,2,3",  # conv(c)-pool-conv(c)-conv(2c)-pool-conv(2c)-pool
           "shallow:25:0")  # cnn_shallow, for scale


def parse(variant: str):
    name, filters, pools = variant.split(":")
    batch = 128
    if "+" in pools:
        pools, batch = pools.split("+")
    return (name, tuple(int(f) for f in filters.split(",")),
            {int(p) for p in pools.split(",") if p}, int(batch))


def network(filters, pools, outputs=10):
    import keras

    layers = [keras.Input((28, 28, 1))]
    for i, f in enumerate(filters):
        layers.append(keras.layers.Conv2D(f, 3, padding="same", activation="relu"))
        if i in pools:
            layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.Flatten(), keras.layers.Dense(outputs)]
    return keras.Sequential(layers)


def macs(model) -> int:
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k = layer.kernel.shape
            total += h * w * c_out * k[0] * k[1] * k[2]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train_size", type=int, default=12800)
    parser.add_argument("--variants", default=";".join(DEFAULT),
                        help="';'-separated name:filters:pools[+batch]")
    args = parser.parse_args()

    import keras

    from hw1_tf import data, training

    splits = data.load("mnist", train_size=args.train_size, test_size=args.train_size // 6,
                       seed=0)  # the full sets' 6:1, so a scaled epoch pays its test pass
    variants = [parse(v) for v in args.variants.split(";")]

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((time.perf_counter() - self.start[0],
                                time.process_time() - self.start[1]))

    best: dict[str, tuple[float, float]] = {}
    info = {}
    for r in range(args.rounds):
        for name, filters, pools, batch in variants[r % len(variants):] + variants[:r % len(variants)]:
            settings = training.TrainSettings(epochs=args.epochs, batch_size=batch,
                                              learning_rate=1e-3, verbose=0)
            model = training.build_instrumented(lambda: network(filters, pools), 10, settings)
            clock = Clock()
            training.train(model, (splits.x_train, splits.y_train), settings,
                           test_xy=(splits.x_test, splits.y_test), callbacks=[clock])
            timed = clock.epochs[1:]
            scale = 60000 / args.train_size
            wall = scale * sum(t[0] for t in timed) / len(timed)
            cpu = scale * sum(t[1] for t in timed) / len(timed)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], wall), min(old[1], cpu))
            info[name] = (model.network.count_params(), macs(model.network), batch)
            print(f"# round {r} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU per 60k epoch "
                  f"(+ its test pass); load average {os.getloadavg()[0]:.1f}", flush=True)
    base = variants[0][0]
    print(f"{'variant':10} {'params':>7} {'MMAC/ex':>8} {'batch':>5} {'wall s':>7} {'cpu s':>7} "
          f"{'cpu/2':>6} {'wall/' + base:>9} {'cpu/' + base:>9}")
    for name, *_ in variants:
        params, mac, batch = info[name]
        wall, cpu = best[name]
        print(f"{name:10} {params:7d} {mac / 1e6:8.2f} {batch:5d} {wall:7.1f} {cpu:7.1f} "
              f"{cpu / 2:6.1f} {wall / best[base][0]:9.2f} {cpu / best[base][1]:9.2f}")


if __name__ == "__main__":
    main()
