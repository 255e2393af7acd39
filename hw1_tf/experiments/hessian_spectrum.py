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


def curvature(flat: hessian.FlatLoss, config: Config) -> dict:
    """Every curvature measure of `flat` at its weights; arrays as numpy."""
    started = time.perf_counter()
    op = flat.operator()
    out = {"num_params": flat.num_params, "num_examples": flat.num_examples,
           "loss": flat.loss(), "grad_norm": float(np.linalg.norm(flat.gradient()))}
    top, n_top = hessian.top_eigenvalues(op, config.top_k, "LA", tol=config.eigen_tolerance,
                                         seed=config.seed)
    bottom, n_bottom = hessian.top_eigenvalues(op, config.top_k, "SA",
                                               tol=config.eigen_tolerance, seed=config.seed)
    out.update(top_eigenvalues=top, bottom_eigenvalues=bottom, eigsh_hvps=n_top + n_bottom,
               hvp_timings=flat.hvp_timings, hvp_choice=list(flat._hvp_choice),
               hvp_choice_from=flat.hvp_choice_from)
    trace = hessian.hutchinson_trace(op, config.probes, seed=config.seed)
    pp = hessian.hutchpp_trace(op, config.probes, seed=config.seed)
    out.update(trace=trace.trace, trace_standard_error=trace.standard_error,
               trace_samples=trace.samples, hutchpp_trace=pp.trace,
               hutchpp_standard_error=pp.standard_error)
    density = hessian.slq(op, config.lanczos_steps, config.slq_probes, seed=config.seed)
    grid, values = hessian.slq_density(density)
    out.update(slq_nodes=density.nodes, slq_weights=density.weights, density_grid=grid,
               density=values, slq_hvps=density.num_matvecs)
    if hessian._mb(2 * hessian.hessian_bytes(flat.num_params, flat.dtype.size)) \
            <= config.max_full_hessian_mb:
        eigenvalues = np.linalg.eigvalsh(flat.full_hessian(max_mb=config.max_full_hessian_mb))
        out["eigenvalues"] = eigenvalues
        out.update(hessian.eigenvalue_ratio(eigenvalues, config.ratio_tolerance))
        out["minimal_ratio_from"] = "exact eigenvalues"
    else:
        # only the extremes are known: the ratio of the computed ones (said so in the record)
        out.update(hessian.eigenvalue_ratio(np.concatenate([top, bottom]),
                                            config.ratio_tolerance))
        out["minimal_ratio_from"] = f"top and bottom {config.top_k} eigenvalues"
    out["perturbation_ratio"] = hessian.perturbation_ratio(
        flat.batched_loss, flat.theta0, config.perturbation_radius,
        config.perturbation_samples, seed=config.seed)
    if config.block_diagonal:
        blocks = flat.block_diagonal_hessian(max_block_mb=config.max_block_mb)
        out["blocks"] = {"names": blocks.names, "routes": blocks.routes, "norms": blocks.norms,
                         "spectral_norm": blocks.spectral_norm, "seconds": blocks.seconds}
    out["num_hvps"] = flat.num_hvps
    out["seconds"] = time.perf_counter() - started
    return out


def run(ctx: framework.ExperimentContext) -> framework.Outcome:
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
    result.update(saved_model=str(path), dataset=dataset, route=flat.route,
                  outputs=flat.outputs_kind, loss_used=flat.loss_name, notes=flat.notes)
    logging.info("%s: top eigenvalues %s, bottom %s, trace %.4g +- %.2g, %d HVPs in %.1f s",
                 name, np.round(result["top_eigenvalues"], 5),
                 np.round(result["bottom_eigenvalues"], 5), result["trace"],
                 result["trace_standard_error"], result["num_hvps"], result["seconds"])
    return framework.Outcome({name: result})


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Per run: the Hessian's spectral density by stochastic Lanczos quadrature (log density,
    since the bulk near zero dwarfs the outliers), with the top eigenvalues and the trace in the
    legend and the exact eigenvalues (when computed) as a rug."""
    out = FigureSet(figures_dir)
    for name, run in results["runs"].items():
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
        ax.axvline(bottom[0], color="C2", lw=0.8, ls="--",
                   label=f"smallest: {bottom[0]:.3g}")
        if "eigenvalues" in run:
            ax.plot(np.asarray(run["eigenvalues"], float),
                    np.full(len(run["eigenvalues"]), floor), "|", color="k", ms=8,
                    label=f"exact eigenvalues ({len(run['eigenvalues'])})")
        ax.plot([], [], " ", label=f"trace {run['trace']:.4g} +- {run['trace_standard_error']:.2g}"
                                   f" (Hutchinson), {run['hutchpp_trace']:.4g} (Hutch++)")
        ax.set_yscale("log")
        ax.set_title(f"Hessian spectrum of {name}\n({run['num_params']} parameters, loss over "
                     f"{run['num_examples']} {run.get('dataset', '')} examples)")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("spectral density (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        out.save(fig, f"density_{name}")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "Curvature of a trained model: Hessian spectrum, trace and minimal ratio"
QUESTIONS = (
    "What do the Hessian's extreme eigenvalues, its trace and its spectral density say about "
    "the point training ended at (minimum, saddle, flat directions)?",
    "How close is the block-diagonal ||H||_2 of the slides (tf.hessians per weight tensor) to "
    "the whole model's?",
)


def report_section(results: dict, ctx) -> str:
    from hw1_tf import markdown

    parts, rows, comments = [], [], []
    for name, r in results["runs"].items():
        parts.append(ctx.figure(f"density_{name}", f"Hessian spectral density of {name} "
                                "(stochastic Lanczos quadrature)"))
        top = markdown.series(r["top_eigenvalues"])
        bottom = markdown.series(r["bottom_eigenvalues"])
        block = r.get("blocks", {}).get("spectral_norm")
        rows.append((name, r["num_params"], r["num_examples"], markdown.fmt(r["loss"]),
                     markdown.fmt(r["grad_norm"]), markdown.fmt(top.max()),
                     markdown.fmt(bottom.min()),
                     f"{markdown.fmt(r['trace'])} ± {markdown.fmt(r['trace_standard_error'])}",
                     markdown.fmt(r["hutchpp_trace"]), markdown.fmt(r["minimal_ratio"]),
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
                        f"the loss ({markdown.fmt(r['minimal_ratio'])} minimal ratio from "
                        f"{r['minimal_ratio_from']}).")
        if block is not None and lam_max > 0:
            comments.append(f"  The block-diagonal estimate of ||H||_2 is {markdown.fmt(block)}, "
                            f"{markdown.fmt(block / lam_max)}× the whole model's "
                            f"{markdown.fmt(lam_max)}.")
    parts.append(markdown.table(("run", "parameters", "examples", "loss", "‖∇L‖", "λ_max",
                               "λ_min", "trace (Hutchinson ± s.e.)", "trace (Hutch++)",
                               "minimal ratio", "perturbation ratio", "block ‖H‖₂"), rows))
    parts.append("\n".join(comments))
    return "\n\n".join(parts)
