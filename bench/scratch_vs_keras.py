#!/usr/bin/env python3
"""Seconds per epoch: the scratch FullyConnectedNet trained by the Solver (hand-written backward
pass, XLA-compiled tf.function, one execution per epoch) vs the equivalent Keras model
(Dense-ReLU stack, softmax cross-entropy, the same SGD update and batch size) trained by `fit`.

    .venv/bin/python bench/scratch_vs_keras.py [--epochs 3] [--batch_size 64] [--hidden 256,256,256]

Prints one line per configuration and the ratio scratch / Keras (the issue's target: <= 1.5
against Keras at its fastest, XLA + steps_per_execution). Epoch 1 (tracing and compiling) is
left out; the median of the remaining epochs is reported.
"""

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--hidden", default="256,256,256")
    parser.add_argument("--learning_rate", type=float, default=0.05)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from hw1_tf import data
    from hw1_tf.scratch import FullyConnectedNet, Solver

    hidden = [int(h) for h in args.hidden.split(",")]
    splits = data.load(args.dataset)
    x = splits.x_train.reshape(len(splits.x_train), -1)
    y = splits.y_train
    x_val = splits.x_test.reshape(len(splits.x_test), -1)[:1000]
    y_val = splits.y_test[:1000]
    n_steps = len(x) // args.batch_size
    print(f"{args.dataset}: {len(x)} examples, MLP {x.shape[1]}-{args.hidden}-10, batch "
          f"{args.batch_size} ({n_steps} steps/epoch), "
          f"{tf.config.list_logical_devices()[0].device_type}")

    def median_after_first(times):
        return float(np.median(times[1:])) if len(times) > 1 else float(times[0])

    # ---------------------------------------------------------------------- scratch
    results = {}
    for mode in ("xla", "graph"):
        model = FullyConnectedNet(hidden, x.shape[1], 10, weight_scale=0.05, seed=0)
        solver = Solver(model, {"X_train": x, "y_train": y, "X_val": x_val, "y_val": y_val},
                        update_rule="sgd", optim_config={"learning_rate": args.learning_rate},
                        batch_size=args.batch_size, num_epochs=args.epochs, verbose=False,
                        num_train_samples=1000, compile=mode)
        solver.train()
        results[f"scratch ({mode})"] = median_after_first(solver.epoch_times)

    # ------------------------------------------------------------------------ keras
    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    for label, jit, spe in (("keras fit (jit, steps_per_execution=64)", True, 64),
                            ("keras fit (compile defaults)", "auto", 1)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((x.shape[1],))]
                                 + [keras.layers.Dense(h, activation="relu") for h in hidden]
                                 + [keras.layers.Dense(10)])
        model.compile(optimizer=keras.optimizers.SGD(args.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit, steps_per_execution=spe)
        timer = EpochTimer()
        timer.times = []
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                  callbacks=[timer])
        results[label] = median_after_first(timer.times)

    best_keras = min(v for k, v in results.items() if k.startswith("keras"))
    for label, seconds in results.items():
        print(f"{label:42s} {seconds:7.3f} s/epoch")
    ratio = results["scratch (xla)"] / best_keras
    print(f"ratio scratch (xla) / fastest keras = {ratio:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
