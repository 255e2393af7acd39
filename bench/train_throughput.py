#!/usr/bin/env python3
"""Seconds per MNIST epoch of the 3x256 MLP, side by side, and the ratios that matter.

Configurations (same data, same model, Adam, one epoch after a warm-up epoch):
  keras_fit   plain `model.fit` with Keras defaults (no XLA, 1 step per execution)
  keras_fast  plain Keras train step with XLA + steps_per_execution=64
  hw1_norec   hw1_tf's training (fused XLA steps) with the per-iteration record switched off
  hw1_instr   hw1_tf's training: exact per-iteration loss + grad norm recorded
  torch       a plain PyTorch loop (if torch is installed: `pip install -e .[bench]`)
and the roofline: the epoch's matmul FLOPs divided by this machine's numpy sgemm rate.
Ratios: torch/hw1 (speed-up over PyTorch), rec_cost = hw1_instr / hw1_norec (what recording
costs), hw1/fit (against plain Keras), hw1/roof (against the roofline).

Targets on 2 CPU cores: hw1_instr >= 2.0x faster than PyTorch at batch 64; rec_cost <= 1.10;
at batch 1024 hw1_instr within 1.3x of the roofline.

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
    """Forward 2 FLOPs per multiply-add; backward 4 (weight and input gradients), except the
    first layer, which needs no input gradient."""
    sizes = [784, *HIDDEN, 10]
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return n * (6.0 * sum(macs) - 2.0 * macs[0])


def sgemm_gflops(repeats: int = 10) -> float:
    """Best float32 matmul rate numpy reaches here, over a few square sizes."""
    rate = 0.0
    for size in (512, 1024, 2048):
        a = np.random.rand(size, size).astype(np.float32)
        b = np.random.rand(size, size).astype(np.float32)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
        rate = max(rate, 2 * size ** 3 / best / 1e9)
    return rate


def _keras_net():
    import keras

    return keras.Sequential([keras.Input((784,))]
                            + [keras.layers.Dense(w, activation="relu") for w in HIDDEN]
                            + [keras.layers.Dense(10)])


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def keras_epoch(x, y, batch_size: int, *, fast: bool, instrumented: bool, spe: int,
                record: bool = True):
    """Builds one Keras configuration and returns a function that trains it one epoch."""
    import keras

    from hw1_tf import data, pipeline, training

    if instrumented:
        settings = training.TrainSettings(batch_size=batch_size, jit_compile=True,
                                          steps_per_execution=spe, verbose=0,
                                          record_history=record)
        model = training.build_instrumented(_keras_net, 10, settings)
        ds, per_epoch = training.train_dataset(model, x, y, batch_size, shuffle=True, seed=0)
        log = training.IterationLog("bench")
        steps = -(-len(x) // batch_size) if record else 0

        def epoch():
            before = len(log.grad_norm)
            model.fit(ds, epochs=1, steps_per_epoch=per_epoch, verbose=0, callbacks=[log])
            assert len(log.grad_norm) - before == steps, "history must be exact"

        return epoch
    keras.utils.set_random_seed(0)
    model = _keras_net()
    kwargs = dict(jit_compile=True, steps_per_execution=spe) if fast else {}
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], **kwargs)
    ds = pipeline.to_dataset(x, y, batch_size, shuffle=True, seed=0)
    return lambda: model.fit(ds, epochs=1, verbose=0)


def torch_epoch(x, y, batch_size: int):
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

    return epoch


def measure(configs: dict, rounds: int) -> dict:
    """Warm each configuration up one epoch, then time `rounds` rounds, each timing one epoch
    of every configuration in turn; the minimum per configuration is reported. Interleaving
    keeps slow drifts of a shared machine from favouring whichever ran first."""
    configs = {k: v for k, v in configs.items() if v is not None}
    for fn in configs.values():
        fn()
    best = {k: np.inf for k in configs}
    for _ in range(rounds):
        for k, fn in configs.items():
            best[k] = min(best[k], _timed(fn))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="64,1024")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (min is kept)")
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
    print(f"{'batch':>5} {'keras_fit':>10} {'keras_fast':>10} {'hw1_norec':>10} "
          f"{'hw1_instr':>10} {'torch':>8} {'torch/hw1':>9} {'rec_cost':>8} {'hw1/fit':>8} "
          f"{'hw1/roof':>8}   (seconds per epoch; ratios)")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        spe = args.steps_per_execution
        t = measure({
            "keras_fit": keras_epoch(x, y, bs, fast=False, instrumented=False, spe=1),
            "keras_fast": keras_epoch(x, y, bs, fast=True, instrumented=False, spe=spe),
            "hw1_norec": keras_epoch(x, y, bs, fast=True, instrumented=True, spe=spe,
                                     record=False),
            "hw1": keras_epoch(x, y, bs, fast=True, instrumented=True, spe=spe),
            "torch": torch_epoch(x, y, bs),
        }, args.repeats)
        torch_s = t.get("torch")
        torch_txt = f"{torch_s:8.3f}" if torch_s else f"{'n/a':>8}"
        speedup = f"{torch_s / t['hw1']:9.2f}" if torch_s else f"{'n/a':>9}"
        print(f"{bs:5d} {t['keras_fit']:10.3f} {t['keras_fast']:10.3f} {t['hw1_norec']:10.3f} "
              f"{t['hw1']:10.3f} {torch_txt} {speedup} {t['hw1'] / t['hw1_norec']:8.2f} "
              f"{t['hw1'] / t['keras_fit']:8.2f} {t['hw1'] / roofline:8.2f}", flush=True)

if __name__ == "__main__":
    main()
