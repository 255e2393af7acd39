#!/usr/bin/env python3
"""hw1_tf's curvature toolkit against PyHessian 0.1, side by side in one process.

Same model, data and weights (the Keras MLP is trained briefly, its weights copied into an
equal torch.nn.Sequential): one HVP, top-1, top-5, trace (Hutchinson), density (SLQ). Each
tool's accuracy is measured against a tight reference (eigsh to 1e-8). Timings
are the min over interleaved rounds (other processes share the CPU). PyHessian is used in its
single-batch mode (`data=(inputs, targets)`), which keeps the gradient graph and so pays only
the second backward pass per product; ours recompute the forward and backward every product.

PyHessian's density() calls torch.eig, removed in torch 1.9: this script shims it with
torch.linalg.eigh (T is symmetric tridiagonal, so the shim returns the same eigenpairs).

Also: the block-diagonal route on the small MLP (seconds, peak RSS in a child process), the
exact Hessian of a 593-parameter net, and HVP time against the parameter count (1e3..1e6),
drawn by hw1_tf.plot_hvp_scaling to figures/bench/hvp_scaling.png.

  pip install -e .[bench]       # torch==2.13.0, pyhessian
  python bench/hessian.py [--rounds=2] [--no_scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def shim_torch_eig():
    import torch

    def eig(t, eigenvectors=False):
        values, vectors = torch.linalg.eigh(t)
        # torch.eig returned (n, 2) real/imaginary columns
        return torch.stack([values, torch.zeros_like(values)], 1), vectors

    torch.eig = eig


def mnist(n: int):
    from hw1_tf import data

    s = data.load("mnist", train_size=n, seed=0)
    return s.x_train.reshape(n, -1).astype(np.float32), s.y_train.astype(np.int32)


def keras_mlp(hidden, x, y, train_epochs: int):
    import keras

    from hw1_tf import models

    keras.utils.set_random_seed(0)
    model = models.build(models.ModelSpec("mlp", hidden=tuple(hidden)), (x.shape[1],), 10)
    if train_epochs:
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(x, y, batch_size=128, epochs=train_epochs, verbose=0)
    return model


def torch_copy(model):
    """An equal torch MLP: Linear weight = Keras kernel transposed."""
    import torch

    layers = []
    dense = [layer for layer in model.layers if layer.weights]
    for i, layer in enumerate(dense):
        kernel, bias = (w.numpy() for w in layer.weights)
        linear = torch.nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            linear.bias.copy_(torch.from_numpy(bias.copy()))
        layers.append(linear)
        if i < len(dense) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_to_flat(tensors) -> np.ndarray:
    """torch per-parameter tensors (weight (out,in), bias) -> hw1_tf flat order (kernel
    (in,out) row-major, bias)."""
    parts = []
    for t in tensors:
        a = t.detach().numpy()
        parts.append((a.T if a.ndim == 2 else a).ravel())
    return np.concatenate(parts).astype(np.float64)


class Counter:
    """Counts PyHessian's HVPs (module-level function and the dataloader path)."""

    def __init__(self):
        import pyhessian.hessian  # noqa: F401  (the package re-exports a class of that name)

        ph = sys.modules["pyhessian.hessian"]

        self.count = 0
        original = ph.hessian_vector_product

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        ph.hessian_vector_product = counted


def best_of(rounds, fn):
    out, best = None, float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def rel_err(got, want):
    got, want = np.asarray(got, float), np.asarray(want, float)
    return float(np.max(np.abs(got - want) / np.abs(want)))


def compare(name, hidden, n, rounds, train_epochs, rows):
    import torch
    from pyhessian import hessian as PyHessian

    from hw1_tf import hessian

    x, y = mnist(n)
    model = keras_mlp(hidden, x, y, train_epochs)
    tmodel = torch_copy(model)
    crit = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    counter = Counter()

    t0 = time.perf_counter()
    flat = hessian.FlatLoss(model, x, y, batch_size=n)
    op = flat.operator()
    op.matvec(np.ones(flat.num_params))  # measures the HVP modes, traces, compiles
    ours_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    ph = PyHessian(tmodel, crit, data=(xt, yt), cuda=False)
    ph_setup = time.perf_counter() - t0
    assert abs(flat.loss() - crit(tmodel(xt), yt).item()) < 1e-5 * max(1.0, flat.loss())

    # one HVP, interleaved rounds
    rng = np.random.RandomState(0)
    v = rng.standard_normal(flat.num_params)
    vt = [torch.randn_like(p) for p in ph.params]
    t_ours, t_ph = float("inf"), float("inf")
    for _ in range(5 * rounds):
        t_ours = min(t_ours, best_of(1, lambda: op.matvec(v))[0])
        t_ph = min(t_ph, best_of(1, lambda: torch.autograd.grad(
            ph.gradsH, ph.params, grad_outputs=vt, retain_graph=True))[0])
    hv_t = torch.autograd.grad(ph.gradsH, ph.params, grad_outputs=vt, retain_graph=True)
    hv_ours = flat.hvp(torch_to_flat(vt))
    hvp_agree = float(np.linalg.norm(hv_ours - torch_to_flat(hv_t)) /
                      np.linalg.norm(torch_to_flat(hv_t)))

    # tight reference: eigsh to 1e-8 on the same products (float32 products bound its own
    # accuracy near 1e-6 relative, far below the 1e-3 tolerances compared)
    reference, ref_hvps = hessian.top_eigenvalues(op, 5, "LA", tol=1e-8, seed=99)

    res = {"model": name, "params": flat.num_params, "examples": n,
           "hvp_s": {"ours": t_ours, "pyhessian": t_ph}, "hvp_rel_diff": hvp_agree,
           "hvp_mode": flat.hvp_timings, "setup_s": {"ours": ours_setup, "pyhessian": ph_setup},
           "reference_top5": reference.tolist(), "reference_hvps": ref_hvps}
    for k in (1, 5):
        times = {"ours": float("inf"), "pyhessian": float("inf")}
        for r in range(rounds):
            t, (vals, used) = best_of(1, lambda: hessian.top_eigenvalues(
                op, k, "LA", tol=1e-3, seed=r))
            times["ours"] = min(times["ours"], t)
            counter.count = 0
            torch.manual_seed(r)
            t, (ph_vals, _) = best_of(1, lambda: ph.eigenvalues(top_n=k))
            times["pyhessian"] = min(times["pyhessian"], t)
            ph_used = counter.count
        res[f"top{k}"] = {"s": times, "hvps": {"ours": used, "pyhessian": ph_used},
                          "values": {"ours": list(vals), "pyhessian": list(ph_vals)},
                          "rel_err": {"ours": rel_err(vals, reference[:k]),
                                      "pyhessian": rel_err(sorted(ph_vals, reverse=True),
                                                           reference[:k])}}
    # trace: PyHessian stops at 1e-3 relative change; ours takes that many probes
    times = {"ours": float("inf"), "pyhessian": float("inf")}
    for r in range(rounds):
        torch.manual_seed(100 + r)
        t, samples = best_of(1, lambda: ph.trace())
        times["pyhessian"] = min(times["pyhessian"], t)
        m = len(samples)
        t, est = best_of(1, lambda: hessian.hutchinson_trace(op, m, seed=r))
        times["ours"] = min(times["ours"], t)
    # the same probes in both: replay PyHessian's generator into hw1_tf's order
    torch.manual_seed(100)
    ph_samples = ph.trace()
    torch.manual_seed(100)
    probes = []
    for _ in range(len(ph_samples)):
        vs = [torch.randint_like(p, high=2) for p in ph.params]
        for vi in vs:
            vi[vi == 0] = -1
        probes.append(torch_to_flat(vs))
    same = hessian.hutchinson_trace(op, np.array(probes))
    res["trace"] = {"s": times, "probes": m, "pyhessian": float(np.mean(ph_samples)),
                    "ours_same_probes": same.trace, "standard_error": same.standard_error,
                    "max_probe_rel_diff": rel_err(same.samples, ph_samples),
                    "ours_own_probes": est.trace}
    # density: 100 Lanczos steps, 1 probe
    times = {"ours": float("inf"), "pyhessian": float("inf")}
    for r in range(rounds):
        torch.manual_seed(200 + r)
        t, (ph_nodes, ph_weights) = best_of(1, lambda: ph.density(iter=100, n_v=1))
        times["pyhessian"] = min(times["pyhessian"], t)
        t, slq = best_of(1, lambda: hessian.slq(op, 100, 1, seed=r))
        times["ours"] = min(times["ours"], t)
    ph_nodes, ph_weights = np.array(ph_nodes[0]), np.array(ph_weights[0])
    res["density"] = {"s": times, "steps": 100,
                      "top_ritz": {"ours": float(np.nanmax(slq.nodes)),
                                   "pyhessian": float(ph_nodes.max())},
                      "first_moment": {"ours": slq.moment(1),
                                       "pyhessian": float(np.sum(ph_weights * ph_nodes))}}
    rows.append(res)
    return res


def blocks_child(n: int):
    """Block-diagonal Hessian of the 784-30-10 MLP (run in a fresh process for its peak RSS)."""
    from hw1_tf import hessian

    x, y = mnist(n)
    model = keras_mlp((30,), x, y, 1)
    start = time.perf_counter()
    flat = hessian.FlatLoss(model, x, y, batch_size=n)
    blocks = flat.block_diagonal_hessian()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "routes": blocks.routes, "norms": blocks.norms,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def exact_small(rows):
    """Exact Hessian of a 593-parameter 1-16-16-16-1 net (the HW1-2 size) on sinc."""
    import keras

    from hw1_tf import data, hessian, models

    out = {}
    keras.utils.set_random_seed(0)
    model = models.build(models.ModelSpec("f", hidden=(16, 16, 16)), (1,), 1)
    for n in (1000, 4096):
        s = data.function_splits("sinc", n, 2, seed=0)
        for dtype in (None, "float64"):
            flat = hessian.FlatLoss(model, s.x_train, s.y_train, dtype=dtype)
            first, h = best_of(1, flat.full_hessian)
            warm, _ = best_of(3, flat.full_hessian)
            out[f"{n} examples, {dtype or 'float32'}"] = {"first_s": first, "warm_s": warm,
                                                          "params": flat.num_params}
    rows.append({"exact_hessian": out})
    return out


def scaling(examples: int, rounds: int):
    import torch
    from pyhessian import hessian as PyHessian

    from hw1_tf import hessian

    x, y = mnist(examples)
    rows = []
    for width in (1, 4, 12, 40, 110, 300, 680):
        model = keras_mlp((width, width), x, y, 0)
        flat = hessian.FlatLoss(model, x, y, batch_size=examples)
        ph = PyHessian(torch_copy(model), torch.nn.CrossEntropyLoss(),
                       data=(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))),
                       cuda=False)
        v = np.random.RandomState(0).standard_normal(flat.num_params)
        flat.hvp(v)
        vt = [torch.randn_like(p) for p in ph.params]
        best = {"hw1_tf": float("inf"), "PyHessian 0.1": float("inf")}
        for _ in range(3 * rounds):
            best["hw1_tf"] = min(best["hw1_tf"], best_of(1, lambda: flat.hvp(v))[0])
            best["PyHessian 0.1"] = min(best["PyHessian 0.1"], best_of(1, lambda: torch.autograd.grad(
                ph.gradsH, ph.params, grad_outputs=vt, retain_graph=True))[0])
        for tool, t in best.items():
            rows.append({"tool": tool, "params": flat.num_params, "seconds": t,
                         "examples": examples})
        print(f"  width {width:4d}: {flat.num_params:8d} params  hw1_tf {best['hw1_tf']*1e3:8.2f} ms"
              f"  PyHessian {best['PyHessian 0.1']*1e3:8.2f} ms", flush=True)
    return rows


def print_comparison(res):
    print(f"\n== {res['model']}: {res['params']} parameters, {res['examples']} examples")
    h = res["hvp_s"]
    print(f"one HVP: hw1_tf {h['ours']*1e3:.1f} ms, PyHessian {h['pyhessian']*1e3:.1f} ms "
          f"(PyHessian/hw1_tf = {h['pyhessian']/h['ours']:.2f}x); products agree to "
          f"{res['hvp_rel_diff']:.1e} (relative); hw1_tf measured {res['hvp_mode']}")
    s = res["setup_s"]
    print(f"fixed overhead (construct + first product incl. tracing/compiling): hw1_tf "
          f"{s['ours']:.2f} s, PyHessian {s['pyhessian']:.2f} s")
    print(f"reference top-5 (eigsh tol 1e-8, {res['reference_hvps']} HVPs): "
          f"{np.round(res['reference_top5'], 6).tolist()}")
    print(f"{'task':<10} {'hw1_tf s':>9} {'PyHess s':>9} {'speed-up':>9} {'HVPs ours/PyH':>14} "
          f"{'rel.err ours':>13} {'rel.err PyH':>12}")
    for k in (1, 5):
        r = res[f"top{k}"]
        print(f"{'top-' + str(k):<10} {r['s']['ours']:9.3f} {r['s']['pyhessian']:9.3f} "
              f"{r['s']['pyhessian']/r['s']['ours']:8.2f}x {r['hvps']['ours']:>6d}/"
              f"{r['hvps']['pyhessian']:<7d} {r['rel_err']['ours']:13.1e} "
              f"{r['rel_err']['pyhessian']:12.1e}")
    t = res["trace"]
    print(f"{'trace':<10} {t['s']['ours']:9.3f} {t['s']['pyhessian']:9.3f} "
          f"{t['s']['pyhessian']/t['s']['ours']:8.2f}x {t['probes']:>6d}/{t['probes']:<7d} "
          f"same probes: {t['ours_same_probes']:.5g} vs {t['pyhessian']:.5g} "
          f"(+- {t['standard_error']:.2g}; per-probe max rel diff {t['max_probe_rel_diff']:.1e})")
    d = res["density"]
    print(f"{'density':<10} {d['s']['ours']:9.3f} {d['s']['pyhessian']:9.3f} "
          f"{d['s']['pyhessian']/d['s']['ours']:8.2f}x {d['steps']:>6d}/{d['steps']:<7d} "
          f"top Ritz {d['top_ritz']['ours']:.5g} vs {d['top_ritz']['pyhessian']:.5g}; first "
          f"moment {d['first_moment']['ours']:.4g} vs {d['first_moment']['pyhessian']:.4g}")



def plot_hvp_scaling(rows: list[dict[str, Any]], path: Path) -> Path:
    """bench/hessian.py: seconds per Hessian-vector product against the parameter count, one
    line per tool, log-log."""
    from hw1_tf import figures

    fig, ax = figures.plt.subplots(figsize=(6.5, 4.5))
    for i, tool in enumerate(sorted({r["tool"] for r in rows})):
        mine = sorted((r for r in rows if r["tool"] == tool), key=lambda r: r["params"])
        ax.plot([r["params"] for r in mine], [r["seconds"] for r in mine], "o-", color=f"C{i}",
                label=tool)
    ax.set_xscale("log")
    ax.set_yscale("log")
    examples = rows[0].get("examples", "?") if rows else "?"
    ax.set_title(f"One Hessian-vector product over {examples} examples (min of rounds)")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("seconds per HVP (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return figures.save(fig, path)

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no_scaling", action="store_true")
    parser.add_argument("--blocks_child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.blocks_child:
        return blocks_child(args.blocks_child)

    import tensorflow as tf
    import torch

    tf.get_logger().setLevel("ERROR")
    torch.set_num_threads(os.cpu_count() or 1)
    shim_torch_eig()
    print("PyHessian 0.1 with torch", torch.__version__, "(torch.eig shimmed with "
          "torch.linalg.eigh); TensorFlow", tf.__version__, flush=True)
    rows = []
    print_comparison(compare("MNIST MLP 784-256-256-256-10", (256, 256, 256), 5000,
                             args.rounds, 1, rows))
    print_comparison(compare("MLP 784-30-10", (30,), 500, args.rounds + 1, 1, rows))

    out = subprocess.run([sys.executable, __file__, "--blocks_child=500"], check=True,
                         capture_output=True, text=True)
    blocks = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nblock-diagonal Hessian, 784-30-10 MLP on 500 examples (fresh process): "
          f"{blocks['seconds']:.2f} s, peak RSS {blocks['peak_rss_mb']:.0f} MB; routes "
          f"{blocks['routes']}; block norms {np.round(blocks['norms'], 5).tolist()}")

    exact = exact_small(rows)
    print("\nexact Hessian of the 593-parameter 1-16-16-16-1 net (sinc):")
    for key, r in exact.items():
        print(f"  {key}: first call {r['first_s']:.2f} s (traces), then {r['warm_s']:.3f} s")

    if not args.no_scaling:
        from hw1_tf import store

        print("\nHVP time vs parameters (MLP 784-w-w-10, 1000 examples):", flush=True)
        scale_rows = scaling(1000, args.rounds)
        path = plot_hvp_scaling(scale_rows, store.project_root() / "figures" / "bench"
                                      / "hvp_scaling.png")
        print(f"figure: {path}")


if __name__ == "__main__":
    main()
