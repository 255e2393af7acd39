#!/usr/bin/env python3
"""Seconds per MNIST epoch of the 3x256 MLP, side by side, and the ratios that matter.

Configurations (same data, same model, Adam, one epoch after a warm-up epoch):
  keras_fit        plain `model.fit` with Keras defaults (no XLA, 1 step per execution)
  keras_fast       plain Keras train step with XLA + steps_per_execution (no recording)
  hw1_instrumented hw1_tf's InstrumentedModel: exact per-iteration loss + grad norm recorded
  torch            a plain PyTorch loop (if torch is installed: `pip install -e .[bench]`)
and the roofline: the epoch's matmul FLOPs divided by this machine's numpy sgemm rate.

Targets on 2 CPU cores: instrumented >= 2.0x faster than PyTorch at batch 64; recording overhead
(instrumented / keras_fast) <= 1.10; at batch 1024 instrumented within 1.3x of the roofline.

  python bench/train_throughput.py [--batch_sizes=64,1024] [--repeats=2] [--train_size=60000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HIDDEN = (256, 256, 256)


def load_mnist(train_size: int):
    from hw1_tf import data

    try:
        s = data.load("mnist", train_size=train_size)
        source = "mnist"
    except data.DataError as e:
        print(f"# MNIST not available ({e}); using random data of MNIST's shape")
        rng = np.random.RandomState(0)
        x = rng.rand(train_size, 28, 28, 1).astype(np.float32)
        y = rng.randint(0, 10, train_size).astype(np.int32)
        return x.reshape(len(x), -1), y, "random"
    return s.x_train.reshape(len(s.x_train), -1), s.y_train, source


def matmul_flops_per_epoch(n: int) -> float:
    sizes = [784, *HIDDEN, 10]
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 6.0 * n * macs  # forward 2, backward 4 FLOPs per multiply-add


def sgemm_gflops(size: int = 1024, repeats: int = 20) -> float:
    a = np.random.rand(size, size).astype(np.float32)
    b = np.random.rand(size, size).astype(np.float32)
    a @ b
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best / 1e9


def _keras_net():
    import keras

    return keras.Sequential([keras.Input((784,))]
                            + [keras.layers.Dense(w, activation="relu") for w in HIDDEN]
                            + [keras.layers.Dense(10)])


def _time_epochs(fit_one_epoch, repeats: int) -> float:
    fit_one_epoch()  # warm-up: tracing, XLA compilation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fit_one_epoch()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_keras(x, y, batch_size: int, repeats: int, *, fast: bool, instrumented: bool,
                spe: int) -> float:
    import keras

    from hw1_tf import data, training

    if instrumented:
        settings = training.TrainSettings(batch_size=batch_size, jit_compile=True,
                                          steps_per_execution=spe, verbose=0)
        model = training.build_instrumented(_keras_net, 10, settings)
        ds = training.train_dataset(model, x, y, batch_size, shuffle=True, seed=0)
        log = training.IterationLog("bench")
        callbacks = [log]
    else:
        ds = data.to_dataset(x, y, batch_size, shuffle=True, seed=0)
        keras.utils.set_random_seed(0)
        model = _keras_net()
        kwargs = dict(jit_compile=True, steps_per_execution=spe) if fast else {}
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], **kwargs)
        callbacks = []
    seconds = _time_epochs(lambda: model.fit(ds, epochs=1, verbose=0, callbacks=callbacks),
                           repeats)
    if instrumented:
        steps = -(-len(x) // batch_size)
        assert len(log.grad_norm) == steps * (repeats + 1), "history must be exact"
    return seconds


def bench_torch(x, y, batch_size: int, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    layers, prev = [], 784
    for w in HIDDEN:
        layers += [torch.nn.Linear(prev, w), torch.nn.ReLU()]
        prev = w
    model = torch.nn.Sequential(*layers, torch.nn.Linear(prev, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()

    return _time_epochs(epoch, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="64,1024")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train_size", type=int, default=60000)
    parser.add_argument("--steps_per_execution", type=int, default=64)
    args = parser.parse_args()

    x, y, source = load_mnist(args.train_size)
    gflops = sgemm_gflops()
    roofline = matmul_flops_per_epoch(len(x)) / (gflops * 1e9)
    print(f"# data: {source}, {len(x)} examples; MLP 784-{'-'.join(map(str, HIDDEN))}-10; "
          f"{os.cpu_count()} CPU cores")
    print(f"# numpy sgemm {gflops:.0f} GFLOP/s -> roofline {roofline:.3f} s/epoch "
          f"({matmul_flops_per_epoch(len(x)) / 1e9:.0f} GFLOP)")
    print(f"{'batch':>5} {'keras_fit':>10} {'keras_fast':>10} {'hw1_instr':>10} {'torch':>8} "
          f"{'torch/hw1':>9} {'hw1/fast':>8} {'hw1/roof':>8}   (seconds per epoch; ratios)")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        spe = args.steps_per_execution
        plain = bench_keras(x, y, bs, args.repeats, fast=False, instrumented=False, spe=1)
        fast = bench_keras(x, y, bs, args.repeats, fast=True, instrumented=False, spe=spe)
        instr = bench_keras(x, y, bs, args.repeats, fast=True, instrumented=True, spe=spe)
        torch_s = bench_torch(x, y, bs, args.repeats)
        torch_txt = f"{torch_s:8.3f}" if torch_s else f"{'n/a':>8}"
        speedup = f"{torch_s / instr:9.2f}" if torch_s else f"{'n/a':>9}"
        print(f"{bs:5d} {plain:10.3f} {fast:10.3f} {instr:10.3f} {torch_txt} {speedup} "
              f"{instr / fast:8.2f} {instr / roofline:8.2f}", flush=True)


if __name__ == "__main__":
    main()
