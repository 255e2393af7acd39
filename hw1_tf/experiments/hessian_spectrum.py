"""Curvature of a trained model: top eigenvalues (both ends), Hutchinson / Hutch++ trace, the
spectral density by stochastic Lanczos quadrature, the block-diagonal norm of the slides, and
both minimal ratios; from any SavedModel with a `serve` function (`--saved_model=PATH`: a plain
`keras.Model.export`, a `tf.Module` saved with `tf.saved_model.save`, or a store export;
`--experiment=X --run=NAME` for the store's). The loss goes through `serve` itself with its
trainable variables as the parameters (`--route=keras` rebuilds the Keras model from the
`.keras` file beside it instead); logits vs probabilities is detected (`--outputs`). When the full Hessian fits `max_full_hessian_mb`, its exact
eigenvalues are stored too and the eigenvalue minimal ratio is taken from them."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from hw1_tf import data, fetch, framework, functions, hessian, models, store
from hw1_tf.config import DistributeOptions, RunConfig, option
from hw1_tf.errors import Hw1Error
from hw1_tf.figures import FigureSet, plt

EXPERIMENT = "hessian_spectrum"
POSITION = 500  # its place in the slides' order (the registry sorts by it)


@dataclasses.dataclass
class Config(RunConfig, DistributeOptions):
    saved_model: str | None = option(None, "SavedModel to analyse: any with a serve function "
                                           "(Keras export, tf.Module, a store export).")
    route: str = option("serve", "How the loss is computed: through the SavedModel's serve "
                                 "function, or a Keras model from the .keras file beside it.",
                        choices=hessian.ROUTES)
    outputs: str = option("auto", "What serve returns (auto: probabilities when every row is "
                                  "non-negative and sums to 1 on the data, else logits).",
                          choices=hessian.OUTPUT_KINDS)
    experiment: str | None = option(None, "Experiment whose run to analyse (with --run).")
    run: str | None = option(None, "Run name under saved_models/<experiment>/ (with "
                                   "--experiment).")
    dataset: str | None = option(None, "Dataset of the loss: an image dataset or a 1-D target "
                                       "function (default: the run's own, else mnist).")
    data_dir: str | None = option(None, "Folder with <dataset>/ IDX files.")
    num_examples: int = option(1000, "Training examples in the loss (seeded subset).",
                               lower=1)
    batch_size: int = option(4096, "Examples per batch of the loss sums (memory only).",
                             lower=1)
    top_k: int = option(5, "Largest and smallest algebraic eigenvalues to compute.", lower=1)
    eigen_tolerance: float = option(1e-4, "Relative tolerance of eigsh.", lower=0.0)
    probes: int = option(30, "Rademacher probes of the Hutchinson trace (and HVPs of "
                             "Hutch++).", lower=2)
    lanczos_steps: int = option(100, "Lanczos steps of the spectral density.", lower=2)
    slq_probes: int = option(1, "Probes (Lanczos runs) of the spectral density.", lower=1)
    max_full_hessian_mb: float = option(256.0, "Build the exact Hessian when it needs at most "
                                               "this many MB.", lower=0.0)
    max_block_mb: float = option(1024.0, "tf.hessians blocks up to this size; larger blocks "
                                         "come from HVPs.", lower=0.0)
    block_diagonal: bool = option(True, "Compute the block-diagonal Hessian norm of the slides.")
    ratio_tolerance: float = option(1e-6, "Eigenvalues above this count as positive in the "
                                          "minimal ratio.", lower=0.0)
    perturbation_radius: float = option(1e-3, "Radius of the random perturbations of the "
                                              "sampled minimal ratio.", lower=0.0)
    perturbation_samples: int = option(1000, "Random perturbations of the sampled minimal "
                                             "ratio.", lower=1)
    hvp_mode: str = option("auto", "Hessian-vector products: by rule (auto), measured and "
                                   "cached per model (measure), or a fixed mode.",
                           choices=hessian.HVP_MODES)
    dtype: str = option("float32", "Precision of the products.",
                        choices=("float32", "float64"))
    jit_compile: bool | None = option(None, "XLA for the products (default: off by rule, "
                                            "measured with --hvp_mode=measure).")
    confidence: float = option(0.9, "Level of the traces' Student-t confidence intervals.",
                               lower=0.0, upper=1.0)
    ggn_fisher: bool = option(True, "Also the generalized Gauss-Newton and empirical Fisher "
                                    "matrices: top-k, trace, density, principal angles.")
    operator_slq_probes: int = option(1, "Probes of the GGN's and Fisher's SLQ densities "
                                         "(positive semi-definite: no sign share to estimate).",
                                      lower=1)
    layers: bool = option(True, "Per-layer curvature: each weight tensor's block's top "
                                "eigenvalue and trace, and the Hutchinson Hessian diagonal.")
    subsample_seeds: int = option(3, "Seeds (random subsets) per size of the subsample study "
                                     "of lambda_max and the trace; 0 skips it.", lower=0)
    subsample_min: int = option(128, "Smallest subset of the subsample study (then doubling "
                                     "up to the whole set).", lower=1)
    subsample_tolerance: float = option(0.1, "Relative agreement with the whole set that "
                                             "counts as enough examples.", lower=0.0)


def _source(config: Config, paths: store.Paths) -> tuple[str, Path, dict]:
    """(run name, SavedModel path, the run's record in its results.json or {})."""
    if config.saved_model:
        path = Path(config.saved_model)
        return path.name, path, {}
    if not (config.experiment and config.run):
        raise Hw1Error("give --saved_model=PATH or both --experiment and --run")
    path = paths.saved_model(config.experiment, config.run)
    record = {}
    results_json = paths.results_json(config.experiment)
    if results_json.is_file():
        record = store.read_json(results_json).get("runs", {}).get(config.run, {})
    return config.run, path, record


def _examples(config: Config, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if dataset in data.IMAGE_DATASETS:
        splits = fetch.load_dataset(dataset, config.data_dir,
                                     train_size=config.num_examples, seed=config.seed)
    elif dataset in functions.names():
        splits = data.function_splits(dataset, config.num_examples, 2, seed=config.seed)
    else:
        raise Hw1Error(f"unknown dataset {dataset!r}: not an image dataset "
                       f"({', '.join(data.IMAGE_DATASETS)}) nor a function "
                       f"({', '.join(functions.names())})")
    return splits.x_train, splits.y_train


def _eigen(result: hessian.EigenResult) -> dict:
    return {"eigenvalues": result.values, "residuals": result.residuals,
            "hvps": result.num_matvecs}


def _trace(estimate: hessian.TraceEstimate, level: float) -> dict:
    return {"trace": estimate.trace, "standard_error": estimate.standard_error,
            "interval": estimate.interval(level), "hvps": estimate.num_matvecs}


def _density(op, config: Config, probes: int) -> tuple[hessian.SLQResult, dict]:
    result = hessian.slq(op, config.lanczos_steps, probes, seed=config.seed)
    grid, values = hessian.slq_density(result)
    return result, {"grid": grid, "density": values, "hvps": result.num_matvecs,
                    "positive_share": hessian.slq_share_above(result, config.ratio_tolerance)}


def _other_operators(flat: hessian.FlatLoss, config: Config,
                     hessian_vectors: np.ndarray) -> dict:
    """GGN and empirical Fisher: top-k with residuals, trace with its interval, SLQ density,
    and the principal angles between the three operators' top-k eigenspaces."""
    vectors = {"hessian": hessian_vectors}
    out = {}
    for kind in ("ggn", "fisher"):
        started = time.perf_counter()
        op = hessian.curvature_operator(flat, kind)
        top = hessian.eigenpairs(op, config.top_k, "LA", tol=config.eigen_tolerance,
                                 seed=config.seed)
        vectors[kind] = top.vectors
        trace = hessian.hutchinson_trace(op, config.probes, seed=config.seed)
        _, density = _density(op, config, config.operator_slq_probes)
        out[kind] = {"top": _eigen(top), "trace": _trace(trace, config.confidence),
                     "density": density, "products": op.num_matvecs,
                     "seconds": time.perf_counter() - started}
        exact = op.exact_diagonal()  # a dense chain: the exact trace beside the estimate
        if exact is not None:
            out[kind]["trace_exact"] = float(np.sum(exact, dtype=np.float64))
    out["principal_angles"] = {f"{a}-{b}": hessian.principal_angles(vectors[a], vectors[b])
                               for a, b in (("hessian", "ggn"), ("hessian", "fisher"),
                                            ("ggn", "fisher"))}
    return out


def curvature(flat: hessian.FlatLoss, config: Config) -> dict:
    """Every curvature measure of `flat` at its weights; arrays as numpy. Each eigenvalue
    comes with its Ritz residual, each trace with a `config.confidence` interval."""
    started = time.perf_counter()
    seconds = {}
    op = flat.operator()
    out = {"num_params": flat.num_params, "num_examples": flat.num_examples,
           "loss": flat.loss(), "grad_norm": float(np.linalg.norm(flat.gradient()))}
    top = hessian.eigenpairs(op, config.top_k, "LA", tol=config.eigen_tolerance,
                             seed=config.seed)
    bottom = hessian.eigenpairs(op, config.top_k, "SA", tol=config.eigen_tolerance,
                                seed=config.seed)
    out.update(top_eigenvalues=top.values, top_residuals=top.residuals,
               bottom_eigenvalues=bottom.values, bottom_residuals=bottom.residuals,
               eigsh_hvps=top.num_matvecs + bottom.num_matvecs, hvp_timings=flat.hvp_timings,
               hvp_choice=list(flat._hvp_choice), hvp_choice_from=flat.hvp_choice_from)
    # one set of probes serves the trace, the diagonal and the per-layer traces
    diagonal = hessian.hutchinson_diagonal(op, config.probes, seed=config.seed,
                                           groups=flat.sizes)
    trace = diagonal.trace_estimate()
    pp = hessian.hutchpp_trace(op, config.probes, seed=config.seed)
    out.update(trace=trace.trace, trace_standard_error=trace.standard_error,
               trace_interval=trace.interval(config.confidence), trace_samples=trace.samples,
               hutchpp_trace=pp.trace, hutchpp_standard_error=pp.standard_error,
               hutchpp_interval=pp.interval(config.confidence))
    # a dense net with piecewise-linear activations: the exact diagonal and trace (the
    # Hessian's diagonal is the Gauss-Newton's there; hw1_tf.linearised), beside the estimates
    exact = flat.exact_diagonal()
    if exact is not None:
        out["trace_exact"] = float(np.sum(exact, dtype=np.float64))
    density, summary = _density(op, config, config.slq_probes)
    out.update(slq_nodes=density.nodes, slq_weights=density.weights,
               density_grid=summary["grid"], density=summary["density"],
               slq_hvps=density.num_matvecs, slq_positive_share=summary["positive_share"])
    seconds["hessian"] = time.perf_counter() - started
    share = summary["positive_share"]
    if hessian._mb(2 * hessian.hessian_bytes(flat.num_params, flat.dtype.size)) \
            <= config.max_full_hessian_mb:
        eigenvalues = np.linalg.eigvalsh(flat.full_hessian(max_mb=config.max_full_hessian_mb))
        out["eigenvalues"] = eigenvalues
        out.update(hessian.eigenvalue_ratio(eigenvalues, config.ratio_tolerance))
        out["minimal_ratio_from"] = "exact eigenvalues"
    else:
        # the exact spectrum does not fit: the SLQ density's mass above the tolerance
        out["minimal_ratio"] = share["share"]
        out["minimal_ratio_from"] = (f"SLQ density mass above {config.ratio_tolerance:g} "
                                     f"({share['probes']} probe(s) x {config.lanczos_steps} "
                                     "Lanczos steps)")
    out["perturbation_ratio"] = hessian.perturbation_ratio(
        flat.batched_loss, flat.theta0, config.perturbation_radius,
        config.perturbation_samples, seed=config.seed)
    if config.block_diagonal:
        blocks = flat.block_diagonal_hessian(max_block_mb=config.max_block_mb)
        out["blocks"] = {"names": blocks.names, "routes": blocks.routes, "norms": blocks.norms,
                         "spectral_norm": blocks.spectral_norm, "seconds": blocks.seconds}
    if config.layers:
        mark = time.perf_counter()
        # blocks no larger than the probes cost no more built whole: exact for biases
        layers = hessian.block_curvature(op, flat.sizes, diagonal, tol=config.eigen_tolerance,
                                         seed=config.seed, level=config.confidence,
                                         exact_below=max(config.probes, 64))
        out["layers"] = {"names": flat.names, "shapes": [list(s) for s in flat.shapes],
                         "blocks": layers, "diagonal": diagonal.diagonal,
                         "diagonal_standard_error": diagonal.standard_error}
        if exact is not None:
            out["layers"]["diagonal_exact"] = exact
            bounds = np.cumsum([0] + flat.sizes)
            for block, lo, hi in zip(layers, bounds[:-1], bounds[1:]):
                block["trace_exact"] = float(np.sum(exact[lo:hi], dtype=np.float64))
        seconds["layers"] = time.perf_counter() - mark
    if config.ggn_fisher:
        mark = time.perf_counter()
        out["operators"] = _other_operators(flat, config, top.vectors)
        seconds["ggn_fisher"] = time.perf_counter() - mark
    out["num_hvps"] = flat.num_hvps
    out["seconds"] = time.perf_counter() - started
    out["timings"] = seconds
    return out


def subsample_sizes(total: int, smallest: int) -> list[int]:
    """smallest, 2 smallest, 4 smallest, ... below `total`, then `total` itself."""
    sizes, n = [], smallest
    while n < total:
        sizes.append(n)
        n *= 2
    return sizes + [total]


def subsample_study(flat: hessian.FlatLoss, config: Config, reference: dict) -> dict:
    """lambda_max (with its residual) and the Hutchinson trace (the whole set's probes) on
    random subsets of the examples, `config.subsample_seeds` per size; the whole set's values
    (`reference`, from `curvature`) close the curve. Answers "how many examples are enough":
    the smallest size from which every seed's lambda_max is within the tolerance of the whole
    set's, and its trace within the tolerance plus the whole set's interval half-width.
    Either route: each subset's loss is `flat.subset` (through serve on the serve route)."""
    started = time.perf_counter()
    total = flat.num_examples
    sizes = subsample_sizes(total, config.subsample_min)[:-1]
    mode = flat._hvp_choice[0] if config.hvp_mode == "measure" else config.hvp_mode
    lam = np.full((len(sizes), config.subsample_seeds), np.nan)
    residual, trace, half = np.full_like(lam, np.nan), np.full_like(lam, np.nan), \
        np.full_like(lam, np.nan)
    for i, n in enumerate(sizes):
        for s in range(config.subsample_seeds):
            idx = np.random.RandomState([config.seed, n, s]).choice(total, n, replace=False)
            sub = flat.subset(idx, hvp_mode=mode)
            op = sub.operator()
            top = hessian.eigenpairs(op, 1, "LA", tol=config.eigen_tolerance, seed=config.seed)
            est = hessian.hutchinson_trace(op, config.probes, seed=config.seed)
            lo, hi = est.interval(config.confidence)
            lam[i, s], residual[i, s] = top.values[0], top.residuals[0]
            trace[i, s], half[i, s] = est.trace, (hi - lo) / 2
        logging.info("subsample study: %d examples, lambda_max %s, trace %s", n,
                     np.round(lam[i], 4), np.round(trace[i], 3))
    lam_ref = float(reference["top_eigenvalues"][0])
    trace_ref = float(reference["trace"])
    lo, hi = reference["trace_interval"]
    ref_half = (hi - lo) / 2 if np.isfinite(hi - lo) else 0.0
    tol = config.subsample_tolerance
    good = [bool(np.all(np.abs(lam[i] - lam_ref) <= tol * abs(lam_ref))
                 and np.all(np.abs(trace[i] - trace_ref) <= tol * abs(trace_ref) + ref_half))
            for i in range(len(sizes))]
    enough = total
    for i in reversed(range(len(sizes))):  # the smallest size from which every larger one holds
        if not good[i]:
            break
        enough = sizes[i]
    return {"sizes": sizes + [total], "seeds": config.subsample_seeds,
            "lambda_max": lam, "lambda_max_residual": residual, "trace": trace,
            "trace_half_width": half, "lambda_max_reference": lam_ref,
            "trace_reference": trace_ref, "trace_reference_half_width": ref_half,
            "tolerance": tol, "within_tolerance": good, "enough_examples": enough,
            "answer": _subsample_answer(enough, total, sizes, lam, trace, lam_ref, trace_ref,
                                        tol, config.confidence),
            "seconds": time.perf_counter() - started}


def _subsample_answer(enough, total, sizes, lam, trace, lam_ref, trace_ref, tol,
                      level) -> str:
    if not sizes:
        return (f"the set has {total} examples, fewer than the study's smallest subset: no "
                "answer")
    if enough < total:
        return (f"{enough} examples are enough here: from {enough} on, every seed's λ_max is "
                f"within {tol:.0%} of the {total}-example value and its trace within {tol:.0%} "
                f"plus the {total}-example trace's {level:.0%} interval")
    worst_lam = float(np.max(np.abs(lam[-1] - lam_ref)) / abs(lam_ref))
    worst_trace = float(np.max(np.abs(trace[-1] - trace_ref)) / abs(trace_ref))
    return (f"no subset below all {total} examples is enough here: at {sizes[-1]} examples "
            f"λ_max still differs by up to {worst_lam:.0%} and the trace by up to "
            f"{worst_trace:.0%} over the seeds (tolerance {tol:.0%}); more examples may still "
            "move both")


def analyse(records: dict, ctx: framework.ExperimentContext) -> framework.Outcome:
    """No plan: the model is a SavedModel trained elsewhere."""
    config = ctx.config
    name, path, record = _source(config, ctx.paths)
    dataset = config.dataset or record.get("dataset") or record.get("function") or "mnist"
    x, y = _examples(config, dataset)
    spec = models.ModelSpec(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in record["model"].items()}) if "model" in record else None
    flat = hessian.FlatLoss.from_saved_model(
        path, x, y, outputs=config.outputs, route=config.route, spec=spec,
        batch_size=config.batch_size, dtype=None if config.dtype == "float32" else config.dtype,
        strategy=ctx.strategy, hvp_mode=config.hvp_mode, jit_compile=config.jit_compile)
    logging.info("%s: %d parameters, loss over %d %s examples through the %s route: %s; %s",
                 name, flat.num_params, len(x), dataset, flat.route, flat.loss_name,
                 "; ".join(flat.notes))
    result = curvature(flat, config)
    if config.subsample_seeds:
        result["subsample"] = subsample_study(flat, config, result)
        result["timings"]["subsample"] = result["subsample"]["seconds"]
        logging.info("%s: %s", name, result["subsample"]["answer"])
    result.update(saved_model=str(path), dataset=dataset, route=flat.route,
                  outputs=flat.outputs_kind, loss_used=flat.loss_name, notes=flat.notes)
    logging.info("%s: top eigenvalues %s, bottom %s, trace %.4g +- %.2g, %d HVPs in %.1f s",
                 name, np.round(result["top_eigenvalues"], 5),
                 np.round(result["bottom_eigenvalues"], 5), result["trace"],
                 result["trace_standard_error"], result["num_hvps"], result["seconds"])
    return framework.Outcome({name: result})


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Per run: the Hessian's SLQ density (`density_<run>`); the Hessian, GGN and Fisher
    densities beside the principal angles between their top-k eigenspaces (`operators_<run>`);
    lambda_max and the trace against the number of examples (`subsample_<run>`); each weight
    tensor's block curvature and Hessian diagonal (`layers_<run>`)."""
    out = FigureSet(figures_dir)
    for name, run in results["runs"].items():
        _density_figure(out, name, run)
        if "operators" in run:
            _operators_figure(out, name, run)
        if "subsample" in run:
            _subsample_figure(out, name, run)
        if "layers" in run:
            _layers_figure(out, name, run)
    return out


def _density_figure(out: FigureSet, name: str, run: dict) -> None:
    """The Hessian's spectral density by stochastic Lanczos quadrature (log density, since the
    bulk near zero dwarfs the outliers), with the top eigenvalues and the trace in the legend
    and the exact eigenvalues (when computed) as a rug."""
    grid = np.asarray(run["density_grid"], float)
    density = np.asarray(run["density"], float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    floor = max(density.max() * 1e-8, 1e-300)
    ax.plot(grid, np.maximum(density, floor), color="C0",
            label=f"SLQ density ({len(run['slq_nodes'][0])} Lanczos steps, "
                  f"{len(run['slq_nodes'])} probe(s))")
    top = np.asarray(run["top_eigenvalues"], float)
    for i, value in enumerate(top):
        ax.axvline(value, color="C3", lw=0.8, alpha=0.8,
                   label=f"top {len(top)}: " + ", ".join(f"{v:.3g}" for v in top)
                   if i == 0 else None)
    bottom = np.asarray(run["bottom_eigenvalues"], float)
    ax.axvline(bottom[0], color="C2", lw=0.8, ls="--", label=f"smallest: {bottom[0]:.3g}")
    if "eigenvalues" in run:
        ax.plot(np.asarray(run["eigenvalues"], float), np.full(len(run["eigenvalues"]), floor),
                "|", color="k", ms=8, label=f"exact eigenvalues ({len(run['eigenvalues'])})")
    lo, hi = _pair(run.get("trace_interval"))
    ax.plot([], [], " ", label=f"trace {run['trace']:.4g}, CI [{lo:.4g}, {hi:.4g}] "
                               f"(Hutchinson), {run['hutchpp_trace']:.4g} (Hutch++)")
    share = run.get("slq_positive_share")
    if share:
        ax.plot([], [], " ", label=f"share > tolerance: {share['share']:.3f} (quadrature "
                                   f"bracket [{share['lower']:.3f}, {share['upper']:.3f}])")
    ax.set_yscale("log")
    ax.set_title(f"Hessian spectrum of {name}\n({run['num_params']} parameters, loss over "
                 f"{run['num_examples']} {run.get('dataset', '')} examples)")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("spectral density (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    out.save(fig, f"density_{name}")


def _pair(values) -> tuple[float, float]:
    if values is None:
        return math.nan, math.nan
    lo, hi = values
    return (math.nan if lo is None else float(lo)), (math.nan if hi is None else float(hi))


OPERATOR_LABELS = {"hessian": "Hessian H", "ggn": "Gauss-Newton G", "fisher": "empirical Fisher F"}


def _operators_figure(out: FigureSet, name: str, run: dict) -> None:
    ops = run["operators"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5),
                                      gridspec_kw={"width_ratios": [3, 2]})
    curves = {"hessian": (run["density_grid"], run["density"], run["top_eigenvalues"],
                          run["trace"], run.get("trace_interval"))}
    for kind in ("ggn", "fisher"):
        d = ops[kind]
        curves[kind] = (d["density"]["grid"], d["density"]["density"],
                        d["top"]["eigenvalues"], d["trace"]["trace"], d["trace"]["interval"])
    for i, (kind, (grid, density, top, trace, interval)) in enumerate(curves.items()):
        density = np.asarray(density, float)
        floor = max(density.max() * 1e-8, 1e-300)
        lo, hi = _pair(interval)
        left.plot(np.asarray(grid, float), np.maximum(density, floor), color=f"C{i}",
                  label=f"{OPERATOR_LABELS[kind]}: λ_max {float(top[0]):.3g}, trace "
                        f"{trace:.3g} [{lo:.3g}, {hi:.3g}]")
    left.set_yscale("log")
    left.set_xlabel("eigenvalue")
    left.set_ylabel("spectral density (log scale)")
    left.set_title(f"SLQ densities of three curvature matrices, {name}")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    for i, (pair, angles) in enumerate(ops["principal_angles"].items()):
        a, b = pair.split("-")
        angles = np.asarray(angles, float)
        right.plot(np.arange(1, len(angles) + 1), angles, ("o-", "s--", "^:")[i],
                   color=f"C{i + 3}", ms=8 - 2 * i, mfc="none" if i else None,
                   label=f"{OPERATOR_LABELS[a]} vs {OPERATOR_LABELS[b]}")
    k = len(run["top_eigenvalues"])
    right.set_xticks(np.arange(1, k + 1))
    right.set_ylim(0, 90)
    right.set_xlabel("principal angle index (smallest first)")
    right.set_ylabel("principal angle (degrees)")
    right.set_title(f"Angles between the top-{k} eigenspaces")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=7)
    out.save(fig, f"operators_{name}")


def _subsample_figure(out: FigureSet, name: str, run: dict) -> None:
    study = run["subsample"]
    sizes = np.asarray(study["sizes"], float)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    tol = study["tolerance"]
    for ax, key, label in ((axes[0], "lambda_max", "λ_max (top Hessian eigenvalue)"),
                           (axes[1], "trace", "trace (Hutchinson)")):
        values = np.asarray(study[key], float)  # (sizes below the whole set, seeds)
        ref = float(study[f"{key}_reference"])
        band = tol * abs(ref) + (study["trace_reference_half_width"] if key == "trace" else 0)
        ax.axhspan(ref - band, ref + band, color="0.85",
                   label=f"whole set ± {tol:.0%}" + (" + its CI half-width" if key == "trace"
                                                      else ""))
        for s in range(values.shape[1] if values.size else 0):
            ax.plot(sizes[:-1], values[:, s], "o", color="C0", alpha=0.6, ms=4,
                    label=f"random subsets ({values.shape[1]} seeds)" if s == 0 else None)
        if key == "trace" and values.size:
            half = np.asarray(study["trace_half_width"], float)
            ax.errorbar(sizes[:-1], values.mean(1), yerr=half.mean(1), fmt="none", color="C0",
                        alpha=0.5, capsize=3, label="mean CI half-width")
        if values.size:
            ax.plot(sizes, list(values.mean(1)) + [ref], "-", color="C0", label="mean over seeds")
        ax.plot(sizes[-1:], [ref], "s", color="C3", ms=7,
                label=f"whole set ({int(sizes[-1])} examples)")
        ax.axvline(study["enough_examples"], color="C2", ls="--",
                   label=f"enough: {study['enough_examples']}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(int(n)) for n in sizes])
        ax.set_xlabel("examples in the loss (log scale)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: how many examples are enough?\n{study['answer']}", fontsize=9)
    out.save(fig, f"subsample_{name}")


def _symlog_y(ax, linthresh: float, values) -> None:
    """Symlog y spanning `values`, with ticks only at 0 and +-decades outside the linear band
    (ticks inside it would print over each other)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    top, bottom = max(float(values.max()), linthresh), min(float(values.min()), -linthresh)
    ax.set_yscale("symlog", linthresh=linthresh)
    first = math.ceil(math.log10(linthresh))
    ticks = [0.0]
    for k in range(first, math.ceil(math.log10(top)) + 1):
        ticks.append(10.0 ** k)
    for k in range(first, math.ceil(math.log10(-bottom)) + 1):
        ticks.insert(0, -10.0 ** k)
    ax.set_yticks(ticks)
    ax.set_ylim(bottom * 1.5, top * 1.5)


def _layers_figure(out: FigureSet, name: str, run: dict) -> None:
    layers = run["layers"]
    blocks = layers["blocks"]
    names = [n.replace("/", "/\n") for n in layers["names"]]
    x = np.arange(len(blocks))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    top = np.array([b["top_eigenvalue"] for b in blocks], float)
    trace = np.array([b["trace"] for b in blocks], float)
    intervals = np.array([_pair(b["interval"]) for b in blocks], float)
    left.bar(x - 0.2, top, 0.4, color="C3", label="top eigenvalue of the block")
    yerr = np.abs(np.vstack([trace - intervals[:, 0], intervals[:, 1] - trace]))
    left.bar(x + 0.2, trace, 0.4, color="C0", yerr=np.nan_to_num(yerr), capsize=3,
             label="trace of the block (Hutchinson with its CI; exact for blocks built "
                   "whole)")
    exact = np.array([b.get("trace_exact", np.nan) for b in blocks], float)
    if np.isfinite(exact).any():
        left.plot(x + 0.2, exact, "kx", markersize=8, label="exact trace of the block")
    positive = np.concatenate([top, trace, intervals.ravel(), exact[np.isfinite(exact)]])
    linthresh = max(1e-6, 1e-3 * float(np.nanmax(np.abs(positive))))
    _symlog_y(left, linthresh, positive)
    left.set_xticks(x)
    left.set_xticklabels(names, fontsize=7)
    left.set_ylabel(f"curvature (symlog, linear below {linthresh:.1g})")
    left.set_title(f"Per weight tensor: its Hessian block, {name}")
    left.grid(True, axis="y", which="both", alpha=0.3)
    left.legend(fontsize=7)
    has_exact = layers.get("diagonal_exact") is not None
    diagonal = np.asarray(layers["diagonal_exact" if has_exact else "diagonal"], float)
    bounds = np.concatenate([[0], np.cumsum([b["size"] for b in blocks])])
    parts = [diagonal[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    right.boxplot(parts, positions=x, widths=0.5, showfliers=True,
                  flierprops={"markersize": 2, "alpha": 0.4})
    spread = float(np.nanmax(np.abs(diagonal))) if diagonal.size else 1.0
    linthresh = max(1e-9, 1e-3 * spread)
    _symlog_y(right, linthresh, diagonal)
    right.set_xticks(x)
    right.set_xticklabels(names, fontsize=7)
    right.set_ylabel(f"diag(H) entry (symlog, linear within ±{linthresh:.1g})")
    noise = np.nanmedian(np.asarray(layers["diagonal_standard_error"], float))
    if has_exact:
        right.set_title("Exact diag(H) per tensor\n(piecewise-linear net: the Gauss-Newton "
                        "diagonal)", fontsize=10)
    else:
        right.set_title(f"Hutchinson estimate of diag(H) per tensor "
                        f"({len(run['trace_samples'])} probes;\nmedian standard error of an "
                        f"entry {noise:.2g})", fontsize=10)
    right.grid(True, axis="y", which="both", alpha=0.3)
    out.save(fig, f"layers_{name}")


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "Curvature of a trained model: Hessian spectrum, trace and minimal ratio"
QUESTIONS = (
    "What do the Hessian's extreme eigenvalues, its trace and its spectral density say about "
    "the point training ended at (minimum, saddle, flat directions)?",
    "How close is the block-diagonal ||H||_2 of the slides (tf.hessians per weight tensor) to "
    "the whole model's?",
    "How far can each number be trusted (Ritz residuals, trace intervals, the positive share's "
    "bracket), and how many examples does the loss need?",
    "How do the Gauss-Newton and empirical Fisher matrices compare with the Hessian, and "
    "which layers carry the curvature?",
)


def _interval_text(markdown, interval) -> str:
    lo, hi = _pair(interval)
    return f"[{markdown.fmt(lo)}, {markdown.fmt(hi)}]"


def _eigen_text(markdown, values, residuals) -> str:
    """Each eigenvalue with its Ritz residual: 6.90 (r 1.3e-06)."""
    return ", ".join(f"{markdown.fmt(v)} (r {markdown.fmt(e, 2)})"
                     for v, e in zip(markdown.series(values), markdown.series(residuals)))


def _share_text(markdown, share: dict, tolerance: float, steps: int) -> str:
    se = share["standard_error"]
    return (f"SLQ estimate of the share of eigenvalues above {markdown.fmt(tolerance)}: "
            f"{markdown.fmt(share['share'])}"
            + (f" ± {markdown.fmt(se)} (s.e. over {share['probes']} probes)"
               if se is not None and math.isfinite(float(se)) else " (one probe: no s.e.)")
            + f"; the Gauss quadrature of {steps} Lanczos steps brackets it in "
            f"[{markdown.fmt(share['lower'])}, {markdown.fmt(share['upper'])}]")


def _ratio_cell(markdown, r: dict) -> str:
    share = r.get("slq_positive_share")
    if r["minimal_ratio_from"] == "exact eigenvalues" or not share:
        return f"{markdown.fmt(r['minimal_ratio'])} ({r['minimal_ratio_from']})"
    return (f"{markdown.fmt(r['minimal_ratio'])}, bracket [{markdown.fmt(share['lower'])}, "
            f"{markdown.fmt(share['upper'])}] (SLQ)")


def report_section(results: dict, ctx) -> str:
    from hw1_tf import markdown

    level = results["config"].get("confidence", 0.9)
    tolerance = results["config"]["ratio_tolerance"]
    steps = results["config"]["lanczos_steps"]
    parts, rows, comments, details = [], [], [], []
    for name, r in results["runs"].items():
        parts.append(ctx.figure(f"density_{name}", f"Hessian spectral density of {name} "
                                "(stochastic Lanczos quadrature)"))
        top = markdown.series(r["top_eigenvalues"])
        bottom = markdown.series(r["bottom_eigenvalues"])
        block = r.get("blocks", {}).get("spectral_norm")
        rows.append((name, r["num_params"], r["num_examples"], markdown.fmt(r["loss"]),
                     markdown.fmt(r["grad_norm"]), markdown.fmt(top.max()),
                     markdown.fmt(bottom.min()),
                     f"{markdown.fmt(r['trace'])} "
                     f"{_interval_text(markdown, r.get('trace_interval'))}",
                     f"{markdown.fmt(r['hutchpp_trace'])} "
                     f"{_interval_text(markdown, r.get('hutchpp_interval'))}",
                     markdown.fmt(r.get("trace_exact")),
                     _ratio_cell(markdown, r),
                     markdown.fmt(r["perturbation_ratio"]), markdown.fmt(block)))
        lam_max, lam_min = float(top.max()), float(bottom.min())
        shape = ("every computed eigenvalue is positive: a local minimum at this resolution"
                 if lam_min > 0 else
                 f"the most negative eigenvalue is {markdown.fmt(lam_min)}, "
                 f"{markdown.fmt(abs(lam_min) / lam_max)} of the largest: "
                 + ("a saddle, with clear negative curvature" if abs(lam_min) > 1e-3 * lam_max
                    else "negative curvature only at the noise level, a near-flat minimum"))
        if r["grad_norm"] > 1e-3:  # far from a critical point: curvature only, no verdict
            shape += (f" (but ‖∇L‖ = {markdown.fmt(r['grad_norm'])}: not a critical point, so "
                      "this describes the local curvature, not a minimum or saddle)")
        comments.append(f"- **{name}**: loss {r.get('loss_used', 'cross-entropy')} "
                        f"({r.get('route', 'keras')} route"
                        + "".join(f"; {n}" for n in r.get("notes", [])) + "). "
                        f"Largest eigenvalue {markdown.fmt(lam_max)}; {shape}. "
                        f"{markdown.pct(r['perturbation_ratio'])} of random perturbations of "
                        f"radius {markdown.fmt(results['config']['perturbation_radius'])} raise "
                        f"the loss.")
        if r.get("trace_exact") is not None:
            comments.append("  " + _exact_trace_text(markdown, r, level))
        share = r.get("slq_positive_share")
        if r["minimal_ratio_from"] == "exact eigenvalues":
            ratio = (f"  Minimal ratio shown: {markdown.fmt(r['minimal_ratio'])}, from the exact "
                     f"eigenvalues (all {r['num_params']}).")
            if share:
                ratio += f" Beside it, the {_share_text(markdown, share, tolerance, steps)}."
        elif share:
            limit = markdown.fmt(results["config"]["max_full_hessian_mb"])
            ratio = (f"  Minimal ratio shown: the SLQ density's mass above the tolerance "
                     f"(the exact spectrum does not fit in {limit} MB): "
                     f"{_share_text(markdown, share, tolerance, steps)}.")
            width = share["upper"] - share["lower"]
            if width > 0.1:
                ratio += (f" That bracket spans {markdown.pct(width)} of the spectrum: the "
                          "quadrature cannot tell the sign of the bulk near zero, so the point "
                          "estimate's small probe error overstates how well the ratio is known.")
        else:
            ratio = (f"  Minimal ratio: {markdown.fmt(r['minimal_ratio'])} from "
                     f"{r['minimal_ratio_from']}.")
        comments.append(ratio)
        if block is not None and lam_max > 0:
            comments.append(f"  The block-diagonal estimate of ||H||_2 is {markdown.fmt(block)}, "
                            f"{markdown.fmt(block / lam_max)}× the whole model's "
                            f"{markdown.fmt(lam_max)}.")
        for skipped in r.get("skipped") or ():
            comments.append(f"  Not computed: {skipped}.")
        details.append(_details(markdown, name, r, ctx, level))
    parts.append(markdown.table(("run", "parameters", "examples", "loss", "‖∇L‖", "λ_max",
                               "λ_min", f"trace (Hutchinson, {level:.0%} CI)",
                               f"trace (Hutch++, {level:.0%} CI)", "trace (exact)",
                               "minimal ratio",
                               "perturbation ratio", "block ‖H‖₂"), rows))
    parts.append("\n".join(comments))
    parts.extend(details)
    return "\n\n".join(parts)


def _exact_trace_text(markdown, r: dict, level: float) -> str:
    """The exact trace against the two estimates: their errors and whether the intervals
    hold it."""
    exact = r["trace_exact"]
    pieces = []
    for label, key in (("Hutchinson", "trace"), ("Hutch++", "hutchpp_trace")):
        lo, hi = _pair(r.get("trace_interval" if key == "trace" else "hutchpp_interval"))
        held = "holds it" if lo <= exact <= hi else "misses it"
        pieces.append(f"{label} {markdown.fmt(r[key])} is off by "
                      f"{markdown.pct(abs(r[key] - exact) / abs(exact))}, its {level:.0%} "
                      f"interval {held}")
    return (f"Exact trace {markdown.fmt(exact)}: a dense net with piecewise-linear "
            "activations, whose Hessian diagonal equals the Gauss-Newton diagonal, computed in "
            "one pass over the data (no probes). " + "; ".join(pieces) + ".")


def _details(markdown, name: str, r: dict, ctx, level: float) -> str:
    """Per run: eigenvalues with residuals for the three operators, their principal angles,
    the subsample study and the per-layer curvature, each with its figure."""
    parts = [f"**{name}: numbers with error bars.** Every eigenvalue below carries its Ritz "
             "residual r = ‖Hv − λv‖: some true eigenvalue lies within r of it. Traces carry "
             f"a {level:.0%} Student-t interval over the probes."]
    exact = r.get("trace_exact")
    rows = [("Hessian H, top", _eigen_text(markdown, r["top_eigenvalues"], r["top_residuals"]),
             f"{markdown.fmt(r['trace'])} {_interval_text(markdown, r['trace_interval'])}"
             + ("" if exact is None else f"; exact {markdown.fmt(exact)}")),
            ("Hessian H, bottom", _eigen_text(markdown, r["bottom_eigenvalues"],
                                              r["bottom_residuals"]), "")]
    ops = r.get("operators")
    if ops:
        for kind in ("ggn", "fisher"):
            d = ops[kind]
            exact = d.get("trace_exact")
            rows.append((f"{OPERATOR_LABELS[kind]}, top",
                         _eigen_text(markdown, d["top"]["eigenvalues"], d["top"]["residuals"]),
                         f"{markdown.fmt(d['trace']['trace'])} "
                         f"{_interval_text(markdown, d['trace']['interval'])}"
                         + ("" if exact is None else f"; exact {markdown.fmt(exact)}")))
    parts.append(markdown.table(("operator", "eigenvalues (Ritz residual)",
                                 f"trace (Hutchinson, {level:.0%} CI; exact where computed)"),
                                rows))
    if ops:
        angles = "; ".join(f"{OPERATOR_LABELS[a]} vs {OPERATOR_LABELS[b]}: "
                           + ", ".join(f"{markdown.fmt(x, 2)}°" for x in markdown.series(v))
                           for a, b, v in ((*k.split("-"), v)
                                           for k, v in ops["principal_angles"].items()))
        k = len(r["top_eigenvalues"])
        parts.append(ctx.figure(f"operators_{name}", f"SLQ densities of the Hessian, "
                                f"Gauss-Newton and empirical Fisher of {name}, and the principal "
                                f"angles between their top-{k} eigenspaces"))
        parts.append(f"Principal angles between the top-{k} eigenspaces (0° shared, 90° "
                     f"orthogonal): {angles}.")
    study = r.get("subsample")
    if study:
        parts.append(ctx.figure(f"subsample_{name}", f"λ_max and the trace of {name} against "
                                "the number of examples in the loss, several random subsets "
                                "per size"))
        parts.append(f"**Subsample study: how many examples are enough?** "
                     f"{study['answer'][0].upper()}{study['answer'][1:]} "
                     f"({study['seeds']} random subsets per size, "
                     f"sizes {', '.join(str(n) for n in study['sizes'])}).")
    layers = r.get("layers")
    if layers:
        parts.append(ctx.figure(f"layers_{name}", f"Per-layer curvature of {name}: each weight "
                                "tensor's Hessian block and the Hutchinson estimate of the "
                                "Hessian diagonal"))
        rows = []
        for tensor, b in zip(layers["names"], layers["blocks"]):
            rows.append((tensor, b["size"], f"{markdown.fmt(b['top_eigenvalue'])} "
                         f"(r {markdown.fmt(b['residual'], 2)})",
                         f"{markdown.fmt(b['trace'])} {_interval_text(markdown, b['interval'])}",
                         markdown.fmt(b.get("trace_exact")),
                         "exact (block built whole)" if b["route"] == "dense"
                         else "eigsh on the block; trace from the Hutchinson diagonal"))
        parts.append(markdown.table(("weight tensor", "entries", "block λ_max (residual)",
                                     f"block trace ({level:.0%} CI)", "exact block trace",
                                     "route"), rows))
    return "\n\n".join(parts)


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {0: ("density_*",)}
