"""HW1-2 "what happens when the gradient is almost zero": many runs of one small function-fitting
net, each driven to a point where ||grad L|| is (nearly) zero, and at each end point the
minimal ratio both ways (share of positive Hessian eigenvalues; share of random perturbations
that raise the loss) against the loss.

The runs train as one population on the loss (`population.train_population`, seeds seed ..
seed+runs-1). Then the critical-point phase, `--critical_point_method`:
  * grad_norm: the slides' recipe, the population's own switch to minimising ||grad L||^2
    (float32, mini-batches) after the loss epochs;
  * newton / lm: float64 full-batch second-order steps on grad L with the exact Hessians of all
    runs at once (`hw1_tf.critical`).
Every end point is then measured in float64 on the whole training set: loss, ||grad L||, the
exact Hessian's eigenvalues, the eigenvalue ratio at several tolerances (relative to the
largest |eigenvalue|: the spectrum is highly degenerate, so the ratio depends on it), the share
of near-zero eigenvalues, and the perturbation ratio. A run whose ||grad L|| is above
`critical_grad_norm` is not at a critical point: `reached` is False for it, and the figures
and the report show it apart.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from hw1_tf import critical, data, framework, functions, hessian, markdown, models, population, trainer
from hw1_tf.config import ConfigError, TrainConfig, option
from hw1_tf.figures import FigureSet, finish_axes, matplotlib, plt, spans_decades

EXPERIMENT = "minimal_ratio"
POSITION = 230  # its place in the slides' order (the registry sorts by it)
NORM_THRESHOLDS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)


@dataclasses.dataclass
class Config(TrainConfig):
    runs: int = option(100, "Training runs (population members, seeds seed, seed+1, ...).",
                       lower=1)
    function: str = option("sinc", "Target function the nets fit.",
                           choices=tuple(functions.names()))
    hidden: tuple[int, ...] = option((10, 10), "Hidden widths of the dense net (1-10-10-1: "
                                     "141 parameters).", lower=1)
    activation: str = option("tanh", "Hidden activation (smooth, so the Hessian is defined "
                             "everywhere).")
    n_train: int = option(256, "Training points; the loss, its gradient and Hessian are the "
                          "full-batch means over them.", lower=4)
    epochs: int = option(4000, "Epochs on the loss before the critical-point phase.", lower=1)
    batch_size: int = option(256, "Batch size of the loss epochs (full batch: mini-batch noise "
                             "keeps ||grad L|| near 1e-2).", lower=1)
    learning_rate: float = option(3e-3, "Adam learning rate of the loss epochs.", lower=0.0)
    critical_point_method: str = option(
        "lm", "How ||grad L|| is driven to zero: grad_norm (Adam on ||grad L||^2, the slides), "
        "newton (min-norm Newton steps) or lm (Levenberg-Marquardt on grad L).",
        choices=critical.METHODS)
    grad_norm_epochs: int = option(200, "grad_norm method: epochs on ||grad L||^2 after the "
                                   "loss epochs.", lower=1)
    critical_iterations: int = option(40, "newton / lm: second-order iterations at most.",
                                      lower=1)
    critical_stop_grad_norm: float = option(1e-9, "newton / lm: a run stops once its "
                                            "||grad L|| is at or below this.", lower=0.0)
    critical_grad_norm: float = option(1e-4, "A run with ||grad L|| above this at its end point "
                                       "is not at a critical point (marked, drawn apart).",
                                       lower=0.0)
    eigen_tolerances: tuple[float, ...] = option(
        (1e-8, 1e-6, 1e-4), "Eigenvalues above tol * max|eigenvalue| count as positive, within "
        "it as near zero; the first is the figure's.", lower=0.0)
    perturbation_radius: float = option(1e-3, "Radius of the random perturbations of the "
                                        "sampled minimal ratio.", lower=0.0)
    perturbation_samples: int = option(1000, "Random perturbations per run.", lower=1)
    save_models: bool = option(False, "Export every end point as a SavedModel (the weights are "
                               "stored as arrays either way).")
    verbose: int = option(0, "Progress output: 0 log lines with ETA, 1 Keras bar, 2 a line per "
                          "epoch.", lower=0, upper=2)


def model_spec(config: Config) -> models.ModelSpec:
    return models.ModelSpec("net", "dense", hidden=tuple(config.hidden),
                            activation=config.activation)


BACKUP = "population"  # the population's backup folder, removed once its record is kept


def _train(ctx: framework.ExperimentContext, spec, splits, seeds):
    """The population on the loss (and, for grad_norm, on ||grad L||^2 after the switch),
    backed up to resume after a kill."""
    config = ctx.config
    pop_settings = trainer.population_settings(config, evaluate_test=False)
    if config.critical_point_method == "grad_norm":
        pop_settings.epochs = config.epochs + config.grad_norm_epochs
        pop_settings.switch_after_epochs = config.epochs
        pop_settings.switch_grad_norm_below = None
        if pop_settings.stop_grad_norm_below is None:
            pop_settings.stop_grad_norm_below = config.critical_grad_norm
    return population.train_population(
        spec, splits, pop_settings, seeds, strategy=ctx.strategy, run_name=EXPERIMENT,
        backup_dir=ctx.backup_dir(BACKUP))


def measure(losses: critical.MemberLosses, theta: np.ndarray, config: Config) -> dict:
    """Float64 full-batch loss, ||grad L||, eigenvalues and both minimal ratios of every row."""
    started = time.perf_counter()
    loss = losses.losses(theta)
    grad_norm = np.linalg.norm(losses.gradients(theta), axis=1)
    eigenvalues = critical.eigvalsh(losses.hessians(theta))  # (M, P), ascending
    hessian_seconds = time.perf_counter() - started
    scale = np.max(np.abs(eigenvalues), axis=1)
    tolerances = np.asarray(config.eigen_tolerances, np.float64)
    ratio = np.zeros((len(theta), len(tolerances)))
    near_zero = np.zeros_like(ratio)
    for i in range(len(theta)):
        for j, tol in enumerate(tolerances):
            r = hessian.eigenvalue_ratio(eigenvalues[i], tol * scale[i])
            ratio[i, j], near_zero[i, j] = r["minimal_ratio"], r["near_zero_ratio"]
    started = time.perf_counter()
    perturbation = np.array([hessian.perturbation_ratio(
        losses.losses, theta[i], config.perturbation_radius, config.perturbation_samples,
        seed=config.seed + i, chunk=config.perturbation_samples) for i in range(len(theta))])
    return {"weights": theta, "loss": loss, "grad_norm": grad_norm,
            "reached": grad_norm <= config.critical_grad_norm, "eigenvalues": eigenvalues,
            "eigen_tolerances": tolerances, "eigenvalue_ratio": ratio,
            "near_zero_ratio": near_zero, "perturbation_ratio": perturbation,
            "hessian_seconds": hessian_seconds,
            "perturbation_seconds": time.perf_counter() - started}


def plan(ctx: framework.ExperimentContext) -> list[framework.Group]:
    """The whole population is one record, "endpoints", as a group (its backup BACKUP): a
    rerun of the same config skips it (--force redoes it)."""
    if not ctx.config.eigen_tolerances:  # before any training
        raise ConfigError("--eigen_tolerances: give at least one tolerance")
    return [framework.Group(["endpoints"], train, backup=BACKUP)]


def train(ctx: framework.ExperimentContext) -> dict[str, dict]:
    """Training, the critical-point phase and the measures: one record, with the phase's
    summary and the timings in it (analyse moves them beside the runs)."""
    config = ctx.config
    spec = model_spec(config)
    splits = data.function_splits(config.function, config.n_train, 2, seed=config.seed)
    seeds = [config.seed + i for i in range(config.runs)]
    timings = {}
    started = time.perf_counter()
    pop, histories = _train(ctx, spec, splits, seeds)
    timings["training"] = time.perf_counter() - started
    losses = critical.MemberLosses(spec, splits.x_train.astype(np.float64),
                                   splits.y_train.astype(np.float64))
    theta = losses.flatten([p.numpy() for p in pop.params])
    start_norm = np.linalg.norm(losses.gradients(theta), axis=1)
    phase = {"method": config.critical_point_method, "start_grad_norm": start_norm,
             "start_loss": losses.losses(theta)}
    started = time.perf_counter()
    if config.critical_point_method == "grad_norm":
        phase["switched_at_iteration"] = np.array(
            [-1 if h["switched_at_iteration"] is None else h["switched_at_iteration"]
             for h in histories])
        phase["stopped_at_iteration"] = np.array(
            [-1 if h["stopped_at_iteration"] is None else h["stopped_at_iteration"]
             for h in histories])
        # the trainer's per-iteration (mini-batch, float32) norms, from the switch on
        phase["grad_norm"] = _ragged_after_switch(histories)
        timings["critical_point_phase"] = (histories[0]["seconds"] * config.grad_norm_epochs
                                           / (config.epochs + config.grad_norm_epochs))
        timings["training"] -= timings["critical_point_phase"]
    else:
        settings = critical.CriticalSettings(method=config.critical_point_method,
                                             max_iterations=config.critical_iterations,
                                             stop_grad_norm=config.critical_stop_grad_norm)
        theta, record = critical.find_critical_points(losses, theta, settings)
        phase.update(record)
        timings["critical_point_phase"] = time.perf_counter() - started
    endpoints = measure(losses, theta, config)
    timings["hessians"] = endpoints.pop("hessian_seconds")
    timings["perturbations"] = endpoints.pop("perturbation_seconds")
    endpoints["seeds"] = np.asarray(seeds)
    if config.save_models:  # the float64 end points, as float32 Keras models
        population.export_members(
            population.Population.from_flat(spec, splits.input_shape, 1, theta, seeds),
            lambda i: ctx.paths.saved_model(EXPERIMENT, f"run_{i:03d}"))
    timings["total"] = sum(timings.values())
    return {"endpoints": {**endpoints, "critical_phase": phase, "timings": timings}}


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """The record's phase summary and timings as results of their own, the norm table, and
    the model and target described."""
    config = ctx.config
    spec = model_spec(config)
    endpoints = dict(records["endpoints"])
    phase, timings = endpoints.pop("critical_phase", None), endpoints.pop("timings", None)
    if phase is None:  # the record kept in results.json: its summaries are beside it there
        previous = ctx.ledger.previous()
        phase, timings = previous["critical_phase"], previous["timings"]
    # a kept record has its short arrays as lists (results.json): read them as arrays
    table = critical.norm_table(np.asarray(endpoints["grad_norm"]), NORM_THRESHOLDS)
    logging.info("%s: ||grad L|| reached per threshold: %s; %d of %d runs at a critical "
                 "point (<= %g)", EXPERIMENT, table, int(np.sum(endpoints["reached"])),
                 config.runs, config.critical_grad_norm)
    fn = functions.get(config.function)
    runs = {"endpoints": endpoints}
    return framework.Outcome(runs, dict(
        critical_phase=phase, timings=timings,
        norm_table=[{"threshold": t, "runs": n} for t, n in table],
        model={**dataclasses.asdict(spec), "num_params": int(np.shape(endpoints["weights"])[1]),
               "description": spec.describe()},
        target={"name": config.function, "formula": fn.formula, "domain": fn.domain}))


def _ragged_after_switch(histories) -> np.ndarray:
    """(iterations, runs) per-iteration ||grad L|| after each run's switch, NaN-padded."""
    tails = []
    for h in histories:
        norms = np.asarray(h["iteration"]["grad_norm"], np.float64)
        at = h["switched_at_iteration"]
        tails.append(norms[at:] if at is not None else norms[:0])
    length = max((len(t) for t in tails), default=0)
    out = np.full((length, len(tails)), np.nan)
    for i, t in enumerate(tails):
        out[:len(t), i] = t
    return out


# -------------------------------------------------------------------------------- figures


def _ratio_panel(ax, x, loss, norm, reached, norm_scale, xlabel: str, title: str,
                 threshold: float):
    """Loss against a minimal ratio: critical runs as dots coloured by ||grad L||, the others
    as crosses (same colours), so no run is silently mixed in."""
    points = None
    for mask, marker, label in ((reached, "o", f"||grad L|| <= {threshold:g}"),
                                (~reached, "x", f"||grad L|| > {threshold:g} (not critical)")):
        if mask.any():
            points = ax.scatter(x[mask], loss[mask], c=norm[mask], cmap="viridis",
                                norm=norm_scale, marker=marker, s=28,
                                label=f"{label}: {int(mask.sum())} runs")
    # log once the losses span a decade: the runs' end points differ by orders of magnitude
    finish_axes(ax, title, xlabel, "training loss (MSE, float64, full batch)", loss,
                log_y=spans_decades(loss, 1.0))
    ax.set_xlim(-0.02, 1.02)
    return points


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """minimal_ratio.png: loss vs minimal ratio, one panel per definition; tolerances.png: the
    eigenvalue ratio at every tolerance; critical_phase.png: ||grad L|| per iteration."""
    from matplotlib.colors import LogNorm

    config, end = results["config"], results["runs"]["endpoints"]
    loss = np.asarray(end["loss"], float)
    norm = np.asarray(end["grad_norm"], float)
    reached = np.asarray(end["reached"], bool)
    ratio = np.asarray(end["eigenvalue_ratio"], float)
    tols = np.asarray(end["eigen_tolerances"], float)
    positive = norm[norm > 0]
    norm_scale = LogNorm(vmin=positive.min() if positive.size else 1e-12,
                         vmax=max(positive.max() if positive.size else 1.0, 1e-12))
    threshold = float(config["critical_grad_norm"])
    title_tail = f"{len(loss)} runs, {results['critical_phase']['method']}"
    out = FigureSet(figures_dir)

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    panels = ((ratio[:, 0], f"minimal ratio: share of eigenvalues > {tols[0]:g} max|λ|",
               "Exact Hessian eigenvalues"),
              (np.asarray(end["perturbation_ratio"], float),
               "minimal ratio: share of perturbations raising the loss",
               f"{config['perturbation_samples']} random perturbations, radius "
               f"{config['perturbation_radius']:g}"))
    for ax, (x, xlabel, title) in zip(axes, panels):
        points = _ratio_panel(ax, x, loss, norm, reached, norm_scale, xlabel,
                              f"{title}\n({title_tail})", threshold)
    fig.colorbar(points, ax=axes, label="final ||grad L|| (log scale)")
    out.save(fig, "minimal_ratio", tight=False)

    fig, axes = plt.subplots(1, len(tols), figsize=(5.5 * len(tols), 5), squeeze=False)
    near = np.asarray(end["near_zero_ratio"], float)
    for j, (ax, tol) in enumerate(zip(axes[0], tols)):
        points = _ratio_panel(ax, ratio[:, j], loss, norm, reached, norm_scale,
                              f"share of eigenvalues > {tol:g} max|λ|",
                              f"tol = {tol:g} max|λ|\nmedian {np.median(near[:, j]):.0%} of "
                              "eigenvalues within it", threshold)
        if j:  # one legend is enough
            ax.get_legend().remove()
    fig.colorbar(points, ax=list(axes[0]), label="final ||grad L|| (log scale)")
    out.save(fig, "tolerances", tight=False)

    phase = results["critical_phase"]
    history = np.asarray(phase.get("grad_norm", []), float)
    if history.ndim == 2 and history.shape[0] > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        steps = np.arange(history.shape[0])
        ax.plot(steps, history, color="C0", lw=0.6, alpha=0.35)
        ax.plot(steps, np.nanmedian(history, axis=1), color="k", lw=2, label="median run")
        ax.axhline(threshold, color="C3", ls="--", label=f"critical threshold {threshold:g}")
        unit = ("iteration after the switch (mini-batch norms, float32)"
                if phase["method"] == "grad_norm" else
                f"{phase['method']} iteration (float64, full batch)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        finish_axes(ax, f"||grad L|| in the critical-point phase ({title_tail})", unit,
                    "||grad L||", log_y=True)
        out.save(fig, "critical_phase")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-2 What happens when the gradient is almost zero"
QUESTIONS = (
    "State how you get the weight which gradient norm is zero and how you define the minimal "
    "ratio.",
    "Train the model for 100 times. Plot the figure of minimal ratio to the loss.",
    "Comment your result.",
)


def report_section(results: dict, ctx: markdown.Context) -> str:
    """How the end points were found, the norm table, the figure, and what the ratios say."""
    config, phase = results["config"], results["critical_phase"]
    end = results["runs"]["endpoints"]
    model, timings = results["model"], results["timings"]
    runs = len(end["loss"])
    reached = np.asarray(end["reached"], bool)
    norm = markdown.series(end["grad_norm"])
    method = phase["method"]
    how = {"grad_norm": f"Adam on ‖∇L‖^2 for {config['grad_norm_epochs']} epochs (the "
                        "slides' recipe, float32, mini-batches)",
           "newton": f"up to {config['critical_iterations']} minimum-norm Newton steps -H^+ g "
                     "with a backtracking search on ‖∇L‖ (float64, full batch)",
           "lm": f"up to {config['critical_iterations']} Levenberg-Marquardt steps on grad L "
                 "(-(H^2 + mu I)^-1 H g, damping chosen per run and step; float64, full batch)"
           }[method]
    out = ["### How the end points and the minimal ratio are obtained", "",
           f"{runs} runs of a {model['description']} net ({model['num_params']} parameters) "
           f"fitting {results['target']['name']} on {config['n_train']} points: "
           f"{config['epochs']} epochs of Adam on the MSE (batch {config['batch_size']}, "
           f"learning rate {config['learning_rate']:g}), then {how}. A run counts as at a "
           f"critical point when its float64 full-batch ‖∇L‖ <= "
           f"{config['critical_grad_norm']:g}.", "",
           "Minimal ratio, both definitions of the slides, from the exact float64 Hessian of "
           "the whole training loss: (a) the share of eigenvalues above tol * max|λ|; "
           f"(b) the share of {config['perturbation_samples']} random perturbations of radius "
           f"{config['perturbation_radius']:g} (uniform on the sphere) that raise the loss.", "",
           "### How many runs reached which gradient norm", ""]
    start = markdown.series(phase["start_grad_norm"])
    out.append(markdown.table(("‖∇L‖ <=", "after the loss epochs", "at the end points"),
                            [(f"{t:g}", int(np.sum(start <= t)), int(np.sum(norm <= t)))
                             for t in NORM_THRESHOLDS]))
    out += ["", f"{int(reached.sum())} of {runs} runs reached ‖∇L‖ <= "
            f"{config['critical_grad_norm']:g} (median {markdown.fmt(np.median(norm))}, "
            f"largest {markdown.fmt(np.max(norm))}); critical-point phase "
            f"{timings['critical_point_phase']:.0f} s, whole study {timings['total']:.0f} s.", ""]
    out += ["### Minimal ratio against the loss", "",
            ctx.figure("minimal_ratio", "loss vs minimal ratio, both definitions"),
            ctx.figure("tolerances", "eigenvalue ratio at each tolerance"),
            # drawn only when the phase recorded per-iteration norms of several steps
            ctx.figure("critical_phase", "gradient norm during the critical-point phase",
                       optional=True),
            ""]
    tols = markdown.series(end["eigen_tolerances"])
    ratio, near = markdown.series(end["eigenvalue_ratio"]), markdown.series(end["near_zero_ratio"])
    pert = markdown.series(end["perturbation_ratio"])
    loss = markdown.series(end["loss"])
    rows = [(f"eigenvalues > {t:g} max|λ|", markdown.fmt(np.median(ratio[reached, j]))
             if reached.any() else "-", f"{markdown.fmt(ratio[:, j].min())} - "
             f"{markdown.fmt(ratio[:, j].max())}", markdown.fmt(np.median(near[:, j])))
            for j, t in enumerate(tols)]
    rows.append((f"perturbations of radius {config['perturbation_radius']:g} raising the loss",
                 markdown.fmt(np.median(pert[reached])) if reached.any() else "-",
                 f"{markdown.fmt(pert.min())} - {markdown.fmt(pert.max())}", "-"))
    out.append(markdown.table(("minimal ratio", "median (critical runs)", "range (all runs)",
                             "median share near zero"), rows))
    out += ["", "### Comment", ""]
    eig = markdown.series(end["eigenvalues"])
    out += [f"- {c}" for c in _comments(loss, ratio[:, 0], pert, near[:, 0], reached, tols,
                                        eig)]
    return "\n".join(out)


def _comments(loss, ratio, pert, near, reached, tols, eig) -> list[str]:
    out = []
    if reached.sum() >= 3:
        rho = _spearman(loss[reached], ratio[reached])
        rho_p = _spearman(loss[reached], pert[reached])
        def trend(rho):
            if not np.isfinite(rho) or abs(rho) < 0.2:
                return "no clear trend"
            return f"{'higher' if rho > 0 else 'lower'} ratios at higher loss"

        out.append(f"Across the {int(reached.sum())} runs at critical points, the Spearman "
                   f"correlation of the loss with the eigenvalue ratio is {rho:+.2f} "
                   f"({trend(rho)}), with the perturbation ratio {rho_p:+.2f} "
                   f"({trend(rho_p)}).")
        minima = int(np.sum(pert[reached] >= 1.0))
        negative = 1.0 - ratio[reached] - near[reached]
        depth = -eig[reached, 0] / np.max(np.abs(eig[reached]), axis=1)
        out.append(f"{minima} of {int(reached.sum())} of them had every sampled perturbation "
                   f"raise the loss (minimum-like at that radius), and the median share is "
                   f"{markdown.fmt(np.median(pert[reached]))}; yet a median "
                   f"{markdown.pct(np.median(negative))} of their eigenvalues are below "
                   f"-{tols[0]:g} max|λ| (eigenvalue ratio at most "
                   f"{markdown.fmt(np.max(ratio[reached]))}). The most negative eigenvalue is a "
                   f"median {markdown.fmt(np.median(depth))} of the largest: the negative "
                   "curvature is too weak to show in the loss at that radius, so the two "
                   "definitions disagree.")
    out.append(f"A median {markdown.pct(np.median(near))} of the eigenvalues lie within "
               f"{tols[0]:g} max|λ| of zero: the critical points are highly degenerate, so "
               "the eigenvalue ratio is mostly a count of flat directions and moves with the "
               "tolerance, while the perturbation ratio tests the loss itself.")
    if (~reached).any():
        out.append(f"{int((~reached).sum())} runs did not reach the threshold; they are drawn "
                   "as crosses and left out of the medians above.")
    return out


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"minimal_ratio.threshold": "gradient-norm threshold of the critical points",
             "minimal_ratio.range": "minimal ratio at the critical points"}


def scorecard(results: dict) -> dict[str, Measured]:
    config, end = results["config"], results["runs"]["endpoints"]
    reached = np.asarray(end["reached"], bool)
    method = results["critical_phase"]["method"]
    how = ("Adam on ‖∇L‖² after the loss epochs (the slides' switch)" if method == "grad_norm"
           else f"{method} steps after the loss epochs instead of an objective switch")
    out = {"minimal_ratio.threshold": Measured(
        f"‖∇L‖ ≤ {config['critical_grad_norm']:g}: {int(reached.sum())} of {len(reached)} runs",
        f"{how}; float64 full-batch norm")}
    if reached.any():
        tol = float(markdown.series(end["eigen_tolerances"])[0])
        ratio = markdown.series(end["eigenvalue_ratio"])[reached, 0]
        pert = markdown.series(end["perturbation_ratio"])[reached]
        out["minimal_ratio.range"] = Measured(
            f"eigenvalues: {markdown.fmt(ratio.min())}–{markdown.fmt(ratio.max())}; "
            f"perturbations: {markdown.fmt(pert.min())}–{markdown.fmt(pert.max())}",
            f"exact float64 Hessian; |λ| ≤ {tol:g}·max|λ| counts as zero, not positive (the "
            "reports count every λ > 0, round-off included)")
    return out


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {0: ("critical_phase",), 1: ("minimal_ratio", "tolerances")}
