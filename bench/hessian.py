#!/usr/bin/env python3
"""hw1_tf's curvature toolkit against hessian-eigenthings 1.0.0a5, curvlinops 3.0.1 and
PyHessian 0.1, side by side in one process.

Same model, weights and examples for every tool: the MNIST 784-256-256-256-10 MLP (Keras,
trained one epoch, its weights copied into an equal torch.nn.Sequential), 5,000 examples from
the project's data layer. Tasks: one Hessian-vector product, the top-5 eigenvalues, a 30-probe
Hutchinson trace and a 100-step stochastic Lanczos quadrature (1 probe). Accuracy: relative
error against a tight reference, hw1_tf's float64 products with eigsh to 1e-10. Timings are
the min over interleaved rounds (other sessions share the 2 cores); the ratio printed is the
fastest anchor's seconds over ours.

  * hessian-eigenthings: `HessianOperator` (full dataset, autograd); its `lanczos` at matched
    accuracy (the fewest of 20/40/80/120 steps, fully reorthogonalised, whose top-5 error is
    within ours or 1e-5, not its default 2k steps), `hutchinson`, `spectral_density`.
  * curvlinops: `HessianLinearOperator(...).to_scipy()` with scipy `eigsh` (its defaults), its
    `hutchinson_trace` (one block of 30 probes).
  * PyHessian: its single-batch mode (`data=(inputs, targets)`), which keeps the gradient graph
    and pays only the second backward per product; power iteration (tol 1e-3), `trace` with
    30 probes, `density`. Its density() calls torch.eig (removed in torch 1.9): shimmed with
    torch.linalg.eigh (T is symmetric tridiagonal, the same eigenpairs).
  * hw1_tf: `FlatLoss` with its rule-chosen products (for this dense net: from the cached
    linearisation, hw1_tf.linearised); top-5 by eigsh on single products at the same
    tolerance as curvlinops', trace and SLQ probes as blocks (`hvp_block`). Also its exact
    trace (the net is piecewise linear: the Hessian's diagonal is the GGN's, one pass),
    against the anchors' 30-probe estimates. `bench/hvp_roofline.py` puts the product against
    its matmul floor, one thread each.

`--first_call` measures setup plus first product in fresh processes (the old measured choice
of four variants vs the rule vs a cached measured choice). `--extras` adds the 784-30-10
comparison with PyHessian, the block-diagonal route, the exact Hessian of a 593-parameter net
and HVP time against the parameter count (figures/bench/hvp_scaling.png).

  pip install torch==2.13.0     # the CPU wheel; then the bench extra's other pins by name
                                # with --no-deps (setup.cfg explains why)
  python bench/hessian.py [--rounds=2] [--first_call] [--extras]
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


def flat_to_torch(vec: np.ndarray, params) -> list:
    """hw1_tf flat order (kernel (in,out) row-major, bias) -> torch per-parameter tensors."""
    import torch

    out, at = [], 0
    for p in params:
        shape = tuple(p.shape)
        size = int(np.prod(shape))
        a = np.asarray(vec[at:at + size], np.float32)
        at += size
        out.append(torch.from_numpy((a.reshape(shape[::-1]).T if len(shape) == 2 else
                                     a.reshape(shape)).copy()))
    return out


def interleaved(rounds: int, tasks: dict) -> tuple[dict, dict]:
    """Runs every task once per round, in turn; (min seconds, last result) per task."""
    best, last = {k: float("inf") for k in tasks}, {}
    for _ in range(rounds):
        for name, fn in tasks.items():
            start = time.perf_counter()
            last[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, last


def anchors(n: int, rounds: int, eig_tol: float) -> dict:
    """Every tool on the MNIST 784-256-256-256-10 MLP over n examples (see the docstring)."""
    import curvlinops
    import hessian_eigenthings as he
    import scipy.sparse.linalg
    import torch
    from pyhessian import hessian as PyHessian

    from hw1_tf import hessian

    x, y = mnist(n)
    model = keras_mlp((256, 256, 256), x, y, 1)
    tmodel = torch_copy(model)
    crit = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    params = [p for p in tmodel.parameters() if p.requires_grad]
    res = {"params": int(sum(p.numel() for p in params)), "examples": n}

    setup = {}
    t0 = time.perf_counter()
    flat = hessian.FlatLoss(model, x, y, batch_size=n)
    op = flat.operator()
    op.matvec(np.ones(flat.num_params))
    setup["hw1_tf"] = time.perf_counter() - t0
    ones_t = torch.cat([t.reshape(-1) for t in flat_to_torch(np.ones(flat.num_params), params)])
    t0 = time.perf_counter()
    eig_op = he.HessianOperator(tmodel, [(xt, yt)], he.supervised_loss(crit))
    eig_op.matvec(ones_t)
    setup["eigenthings"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cl_op = curvlinops.HessianLinearOperator(tmodel, crit, params, [(xt, yt)],
                                             check_deterministic=False)
    cl_op @ ones_t
    cl_scipy = cl_op.to_scipy(np.float64)
    setup["curvlinops"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ph = PyHessian(tmodel, crit, data=(xt, yt), cuda=False)
    ph_v = flat_to_torch(np.ones(flat.num_params), params)
    torch.autograd.grad(ph.gradsH, ph.params, grad_outputs=ph_v, retain_graph=True)
    setup["pyhessian"] = time.perf_counter() - t0
    res["setup_s"] = setup
    assert abs(flat.loss() - crit(tmodel(xt), yt).item()) < 1e-5 * max(1.0, flat.loss())

    # one product, the same vector in each tool's parameter order
    v = np.random.RandomState(0).standard_normal(flat.num_params)
    v_parts = flat_to_torch(v, params)
    v_t = torch.cat([t.reshape(-1) for t in v_parts])
    block = np.random.RandomState(1).standard_normal((flat.num_params, flat.block_size))
    times, out = interleaved(5 * rounds, {
        "hw1_tf": lambda: op.matvec(v),
        "hw1_tf block": lambda: op.matmat(block),
        "eigenthings": lambda: eig_op.matvec(v_t),
        "curvlinops": lambda: cl_op @ v_t,
        "pyhessian": lambda: torch.autograd.grad(ph.gradsH, ph.params, grad_outputs=v_parts,
                                                 retain_graph=True)})
    times["hw1_tf block"] /= flat.block_size
    want = out["hw1_tf"]
    agree = {"eigenthings": torch_to_flat(flat_to_torch_flat(out["eigenthings"], params)),
             "curvlinops": torch_to_flat(flat_to_torch_flat(out["curvlinops"], params)),
             "pyhessian": torch_to_flat(out["pyhessian"])}
    res["hvp_s"] = times
    res["hvp_rel_diff"] = {k: float(np.linalg.norm(a - want) / np.linalg.norm(want))
                           for k, a in agree.items()}
    res["block_rel_diff"] = float(np.linalg.norm(out["hw1_tf block"][:, 0] - op.matvec(
        block[:, 0])) / np.linalg.norm(out["hw1_tf block"][:, 0]))

    # tight reference: float64 products, eigsh to 1e-10
    t0 = time.perf_counter()
    flat64 = hessian.FlatLoss(model, x, y, batch_size=n, dtype="float64")
    reference, ref_hvps = hessian.top_eigenvalues(flat64.operator(), 5, "LA", tol=1e-10,
                                                  seed=99)
    res.update(reference_top5=reference.tolist(), reference_hvps=ref_hvps,
               reference_s=time.perf_counter() - t0)

    # top-5: eigsh with the same v0 and tolerance on hw1_tf and curvlinops products
    v0 = np.random.RandomState(0).standard_normal(flat.num_params)
    v0_t = torch_to_flat_order(v0, params)
    counts = {}

    def ours_top5():
        vals, counts["hw1_tf"] = hessian.top_eigenvalues(op, 5, "LA", tol=eig_tol, seed=0)
        return vals

    def curvlinops_top5():
        vals = scipy.sparse.linalg.eigsh(cl_scipy, k=5, which="LA", tol=eig_tol, v0=v0_t,
                                         return_eigenvectors=False)
        return np.sort(vals)[::-1]

    def pyhessian_top5():
        torch.manual_seed(0)
        return np.sort(ph.eigenvalues(top_n=5)[0])[::-1]

    times, vals = interleaved(rounds, {"hw1_tf": ours_top5, "curvlinops": curvlinops_top5,
                                       "pyhessian": pyhessian_top5})
    # eigenthings' Lanczos at matched accuracy: the fewest steps that reach ours (or 1e-5)
    target = max(rel_err(vals["hw1_tf"], reference), 1e-5)
    for steps in (20, 40, 80, 120):
        t, result = interleaved(rounds, {"eigenthings": lambda: np.sort(he.lanczos(
            eig_op, k=5, max_iter=steps, which="LA", reorthogonalize=True,
            seed=0).eigenvalues.numpy())[::-1]})
        times["eigenthings"], vals["eigenthings"] = t["eigenthings"], result["eigenthings"]
        counts["eigenthings"] = steps
        if rel_err(vals["eigenthings"], reference) <= target:
            break
    res["top5"] = {"s": times, "values": {k: list(map(float, a)) for k, a in vals.items()},
                   "rel_err": {k: rel_err(a, reference) for k, a in vals.items()},
                   "hvps": counts}
    # hw1_tf with ARPACK's smallest basis (ncv = 2k + 1) and a looser tolerance: fewer products;
    # compared with the anchors it is at least as accurate as (printed beside)
    lean = {}

    def ours_lean():
        out, lean["hvps"] = hessian.top_eigenvalues(op, 5, "LA", tol=1e-3, ncv=11, seed=0)
        return out

    t, got = interleaved(rounds, {"hw1_tf": ours_lean})
    lean_err = rel_err(got["hw1_tf"], reference)
    res["top5_lean"] = {"s": {**times, "hw1_tf": t["hw1_tf"]}, "rel_err": lean_err,
                        "hvps": lean["hvps"],
                        "as_accurate_as": [k for k, e in res["top5"]["rel_err"].items()
                                           if k != "hw1_tf" and lean_err <= e]}

    # 30-probe Hutchinson trace
    def ph_trace():
        torch.manual_seed(100)
        return float(np.mean(ph.trace(maxIter=30, tol=-1)))

    times, traces = interleaved(rounds, {
        "hw1_tf": lambda: hessian.hutchinson_trace(op, 30, seed=0).trace,
        "eigenthings": lambda: he.hutchinson(eig_op, num_samples=30, seed=0).estimate,
        "curvlinops": lambda: float(curvlinops.hutchinson_trace(cl_op, 30)),
        "pyhessian": ph_trace})
    same = hessian.hutchinson_trace(op, 30, seed=0)
    res["trace"] = {"s": times, "values": {k: float(a) for k, a in traces.items()},
                    "standard_error": same.standard_error}

    # hw1_tf's exact trace (a relu net: the Hessian's diagonal is the GGN's, one pass over
    # the data from the cached linearisation; uncached here), against the float64 one
    lin = flat.linearisation()
    t, exact = interleaved(rounds, {"hw1_tf": lambda: float(np.sum(
        lin.diagonal_functions["ggn"]().numpy(), dtype=np.float64))})
    exact64 = flat64.trace(method="exact").trace
    res["trace_exact"] = {"s": {**times, "hw1_tf": t["hw1_tf"]}, "value": exact["hw1_tf"],
                          "float64": exact64,
                          "rel_err": abs(exact["hw1_tf"] - exact64) / abs(exact64),
                          "estimates_rel_err": {k: abs(float(a) - exact64) / abs(exact64)
                                                for k, a in traces.items()}}

    # 100-step SLQ, one probe
    def ph_density():
        torch.manual_seed(200)
        nodes, _ = ph.density(iter=100, n_v=1)
        return float(np.max(nodes[0]))

    times, tops = interleaved(rounds, {
        "hw1_tf": lambda: float(np.nanmax(hessian.slq(op, 100, 1, seed=0).nodes)),
        "eigenthings": lambda: float(he.spectral_density(
            eig_op, num_runs=1, lanczos_steps=100, seed=0).raw_eigenvalues.max()),
        "pyhessian": ph_density})
    t, eight = interleaved(1, {"hw1_tf 8 probes": lambda: float(np.nanmax(hessian.slq(
        op, 100, 8, seed=0).nodes))})
    res["density"] = {"s": times, "top_ritz": tops,
                      "top_ritz_rel_err": {k: abs(a - reference[0]) / reference[0]
                                           for k, a in tops.items()},
                      "eight_probes_s": t["hw1_tf 8 probes"]}
    return res


def flat_to_torch_flat(vec, params) -> list:
    """A flat torch-order tensor split into per-parameter tensors (for torch_to_flat)."""
    a = vec.detach().numpy() if hasattr(vec, "detach") else np.asarray(vec)
    a = np.ravel(a)
    out, at = [], 0
    import torch

    for p in params:
        size = p.numel()
        out.append(torch.from_numpy(a[at:at + size].reshape(tuple(p.shape)).copy()))
        at += size
    return out


def torch_to_flat_order(vec: np.ndarray, params) -> np.ndarray:
    """hw1_tf flat order -> the torch flat order, as float64 numpy (eigsh's v0)."""
    return np.concatenate([t.numpy().ravel() for t in flat_to_torch(vec, params)]).astype(
        np.float64)


def print_anchors(res: dict) -> None:
    tools = ("eigenthings", "curvlinops", "pyhessian")
    names = {"hw1_tf": "hw1_tf", "eigenthings": "hessian-eigenthings 1.0.0a5",
             "curvlinops": "curvlinops 3.0.1", "pyhessian": "PyHessian 0.1"}
    print(f"\n== MNIST MLP 784-256-256-256-10: {res['params']} parameters, {res['examples']} "
          "examples, one process, same weights")
    print(f"reference top-5 (float64 products, eigsh tol 1e-10, {res['reference_hvps']} HVPs, "
          f"{res['reference_s']:.1f} s): {np.round(res['reference_top5'], 6).tolist()}")
    print("products agree with hw1_tf's to (relative): " + ", ".join(
        f"{names[k]} {v:.1e}" for k, v in res["hvp_rel_diff"].items())
          + f"; a block column to {res['block_rel_diff']:.1e}")

    def row(task, times, extra):
        present = [k for k in tools if k in times]
        cells = "  ".join(f"{times[k]:8.3f}" if k in times else f"{'-':>8}" for k in tools)
        ours = times["hw1_tf"]
        ratio = f"{min(times[k] for k in present) / ours:6.2f}x" if present else f"{'-':>7}"
        print(f"{task:<22} {ours:8.3f}  {cells}  {ratio}  {extra}")

    print(f"{'task (seconds)':<22} {'hw1_tf':>8}  {'eigenth.':>8}  {'curvlin.':>8}  "
          f"{'PyHess.':>8}  {'ratio':>6}   (ratio = fastest anchor / hw1_tf)")
    row("setup + first product", res["setup_s"], "")
    h = dict(res["hvp_s"])
    row("one HVP", h, "")
    row("one HVP (block of 8)", {**h, "hw1_tf": h["hw1_tf block"]},
        "hw1_tf per vector in an hvp_block of 8")
    t = res["top5"]
    row("top-5 eigenvalues", t["s"], "rel.err " + ", ".join(
        f"{k} {v:.1e}" for k, v in t["rel_err"].items()) + "; HVPs/steps " + ", ".join(
        f"{k} {v}" for k, v in t["hvps"].items()))
    lean = res["top5_lean"]
    row("top-5, ncv 11, tol 1e-3", {k: v for k, v in lean["s"].items()
                                    if k == "hw1_tf" or k in lean["as_accurate_as"]},
        f"hw1_tf rel.err {lean['rel_err']:.1e} in {lean['hvps']} HVPs; ratio against the "
        f"anchors it is at least as accurate as: {', '.join(lean['as_accurate_as']) or 'none'}")
    tr = res["trace"]
    row("trace (30 probes)", tr["s"], "estimates " + ", ".join(
        f"{k} {v:.4g}" for k, v in tr["values"].items()) + f" (s.e. {tr['standard_error']:.2g})")
    te = res["trace_exact"]
    row("trace, hw1_tf exact", te["s"], f"hw1_tf {te['value']:.6g} (float64 {te['float64']:.6g}, "
        f"rel.err {te['rel_err']:.1e}); the 30-probe estimates' rel.err " + ", ".join(
            f"{k} {v:.1e}" for k, v in te["estimates_rel_err"].items()))
    d = res["density"]
    row("SLQ (100 steps)", d["s"], "top Ritz rel.err " + ", ".join(
        f"{k} {v:.1e}" for k, v in d["top_ritz_rel_err"].items())
        + f"; hw1_tf with 8 probes in lockstep {d['eight_probes_s']:.2f} s")


def first_call_child(mode: str) -> None:
    """Setup plus first product in this fresh process (TF imported and data loaded first)."""
    from hw1_tf import hessian

    x, y = mnist(5000)
    model = keras_mlp((256, 256, 256), x, y, 0)
    start = time.perf_counter()
    flat = hessian.FlatLoss(model, x, y, batch_size=5000, hvp_mode=mode)
    flat.hvp(np.ones(flat.num_params))
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "choice": list(flat._hvp_choice), "from": flat.hvp_choice_from}))


def first_call(rounds: int) -> None:
    """Fresh processes, interleaved: the old measured choice (no cache), the rule, the
    measured choice read from a warm cache."""
    import tempfile

    cache = Path(tempfile.mkdtemp()) / "hvp_choices.json"
    runs = {"measured, no cache (before)": ("measure", True), "rule (after)": ("auto", False),
            "measured, cached": ("measure", False)}
    best = {k: float("inf") for k in runs}
    info = {}
    for _ in range(rounds):
        for name, (mode, fresh_cache) in runs.items():
            if fresh_cache and cache.exists():
                cache.unlink()
            env = dict(os.environ, HW1_HVP_CACHE=str(cache))
            out = subprocess.run([sys.executable, __file__, f"--first_call_child={mode}"],
                                 check=True, capture_output=True, text=True, env=env)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            best[name] = min(best[name], r["seconds"])
            info[name] = r
    print("\nsetup + first product, MNIST 784-256-256-256-10 MLP, 5,000 examples, fresh "
          f"processes (min of {rounds}):")
    for name, seconds in best.items():
        print(f"  {name:<30} {seconds:6.2f} s  ({info[name]['choice'][0]}"
              f"{' xla' if info[name]['choice'][1] else ''}, from {info[name]['from']})")


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
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--eig_tol", type=float, default=1e-6,
                        help="eigsh tolerance of hw1_tf's and curvlinops' top-5")
    parser.add_argument("--first_call", action="store_true")
    parser.add_argument("--extras", action="store_true")
    parser.add_argument("--no_scaling", action="store_true")
    parser.add_argument("--blocks_child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first_call_child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.blocks_child:
        return blocks_child(args.blocks_child)
    if args.first_call_child:
        return first_call_child(args.first_call_child)

    import tensorflow as tf
    import torch

    tf.get_logger().setLevel("ERROR")
    torch.set_num_threads(os.cpu_count() or 1)
    shim_torch_eig()
    print("torch", torch.__version__, "(PyHessian's torch.eig shimmed with torch.linalg.eigh); "
          "TensorFlow", tf.__version__, f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.first_call:
        first_call(max(args.rounds, 2))
    print_anchors(anchors(args.examples, args.rounds, args.eig_tol))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if not args.extras:
        return
    rows = []
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
