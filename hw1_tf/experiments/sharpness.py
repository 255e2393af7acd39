"""HW1-3 bonus (Keskar et al. 2017): one 20-30k-parameter MNIST model trained with every
(batch size, learning rate), and three sharpness definitions of each on the same training
examples: the slides' ||H||_2 eps^2 / (2 (1 + L)) with the block-diagonal Hessian of
`tf.hessians`, the same with the whole-model ||H||_2 (eigsh on Hessian-vector products), and
Keskar et al.'s own box maximisation by L-BFGS-B (hw1_tf.measures)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hw1_tf import framework, markdown, measures, models
from hw1_tf.config import ImageTrainConfig, StopOptions, option
from hw1_tf.experiments import approaches
from hw1_tf.figures import FigureSet, finish_axes, log_x_if_wide, plt
from hw1_tf.records import RunRecord

EXPERIMENT = "sharpness"
POSITION = 350  # its place in the slides' order (the registry sorts by it)


@dataclasses.dataclass
class Config(approaches.SharpnessOptions, StopOptions, ImageTrainConfig):
    RUN_SELECTION: ClassVar[tuple[str, ...]] = ("batch_sizes", "learning_rates")

    batch_sizes: tuple[int, ...] = option((16, 64, 256, 1024, 4096), "Batch sizes (each "
                                          "with every learning rate).", lower=1)
    learning_rates: tuple[float, ...] = option((1e-3, 1e-2), "Learning rates (each with "
                                               "every batch size).", lower=0.0)
    hidden: tuple[int, ...] = option((32,), "Hidden widths of the dense ReLU model (32: "
                                     "25,450 parameters on MNIST).", lower=1)
    analysis_examples: int = option(500, "Training examples every sharpness is computed on "
                                    "(the same for every model).", lower=1)
    eigen_tolerance: float = option(1e-4, "Relative tolerance of eigsh.", lower=0.0)
    epochs: int = option(10, "Training epochs per run.", lower=1)


def _analysis_subset(ctx: framework.ExperimentContext) -> tuple[np.ndarray, np.ndarray]:
    """The training examples every sharpness is computed on (the same for every model)."""
    return ctx.shared("analysis_subset", lambda: approaches.analysis_subset(
        ctx.splits(), ctx.config.analysis_examples, ctx.config.seed))


def plan(ctx: framework.ExperimentContext) -> list[framework.Run]:
    """One run per (batch size, learning rate): every batch size at each learning rate."""
    config = ctx.config
    pairs = [(b, lr) for lr in config.learning_rates for b in config.batch_sizes]
    return approaches.plan_approaches(pairs, train)


def train(ctx: framework.ExperimentContext, batch_size: int, learning_rate: float) -> dict:
    spec = models.ModelSpec("dense_relu", "dense", hidden=tuple(ctx.config.hidden))
    return approaches.train_and_measure(ctx, ctx.splits(), spec, batch_size, learning_rate,
                                        measure)


def measure(ctx: framework.ExperimentContext, network, record: dict) -> dict:
    """The three sharpness definitions of the trained `network` on the analysis examples."""
    config = ctx.config
    x, y = _analysis_subset(ctx)
    return measures.sharpness_measures(
        network, x, y, epsilon=config.epsilon, keskar_epsilon=config.keskar_epsilon,
        keskar_maxiter=config.keskar_maxiter, keskar_restarts=config.keskar_restarts,
        max_block_mb=config.max_block_mb, eigen_tolerance=config.eigen_tolerance,
        seed=config.seed, strategy=ctx.strategy)


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    x, _ = _analysis_subset(ctx)
    return framework.Outcome(records, dict(analysis_examples=len(x)))


# -------------------------------------------------------------------------------- figures


SHARPNESS_LABELS = (("sharpness_slides", "slides: block-diagonal ||H||_2 eps^2/(2(1+L))"),
                    ("sharpness_whole", "whole-model ||H||_2 eps^2/(2(1+L))"),
                    ("sharpness_keskar", "Keskar et al.: max over eps-box (L-BFGS-B)"))


SHORT_LABELS = {"sharpness_slides": "slides (block-diagonal ||H||_2)",
                "sharpness_whole": "whole-model ||H||_2", "sharpness_keskar": "Keskar et al. (box)"}


def _at_rate(runs: list[RunRecord], lr: float) -> list[RunRecord]:
    return sorted((r for r in runs if r.learning_rate == lr), key=lambda r: r.batch_size)


def _batch_axis(ax) -> str:
    return "batch size" + (" (log scale)" if ax.get_xscale() == "log" else "")


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Each sharpness and the training/test loss against batch size, one series per learning
    rate; and each sharpness against the generalization gap."""
    runs = list(results["runs"].values())
    rates = sorted({r.learning_rate for r in runs})
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (key, title) in zip(axes.flat, SHARPNESS_LABELS):
        for i, lr in enumerate(rates):
            rs = _at_rate(runs, lr)
            ax.plot([r.batch_size for r in rs], [getattr(r, key) for r in rs], "-o",
                    color=f"C{i}", label=f"lr {lr:g}")
        log_x_if_wide(ax, [r.batch_size for r in runs])  # a tick at each batch size
        finish_axes(ax, title, _batch_axis(ax), "sharpness", log_y=True)
    ax = axes.flat[3]
    for i, lr in enumerate(rates):
        rs = _at_rate(runs, lr)
        bs = [r.batch_size for r in rs]
        ax.plot(bs, [r.train_loss for r in rs], "-o", color=f"C{i}",
                label=f"train, lr {lr:g}")
        ax.plot(bs, [r.test_loss for r in rs], "--s", color=f"C{i}", label=f"test, lr {lr:g}")
    log_x_if_wide(ax, [r.batch_size for r in runs])
    finish_axes(ax, "training (solid) and test (dashed) loss", _batch_axis(ax),
                "cross-entropy loss",
                values=[getattr(r, k) for r in runs for k in ("train_loss", "test_loss")])
    fig.suptitle(f"HW1-3 bonus: sharpness of {len(runs)} training approaches")
    out = FigureSet(figures_dir)
    out.save(fig, "sharpness")

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
    for ax, (key, title) in zip(axes, SHARPNESS_LABELS):
        for i, lr in enumerate(rates):
            rs = [r for r in runs if r.learning_rate == lr]
            ax.scatter([r.loss_gap for r in rs], [getattr(r, key) for r in rs], color=f"C{i}",
                       label=f"lr {lr:g}")
            for r in rs:
                ax.annotate(str(r.batch_size), (r.loss_gap, getattr(r, key)), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        finish_axes(ax, SHORT_LABELS[key], "test - training loss", "sharpness", log_y=True)
    fig.suptitle("sharpness vs generalization gap (labels: batch size)")
    out.save(fig, "sharpness_vs_gap")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Flatness vs generalization, bonus: sharpness of ten training approaches"
QUESTIONS = (
    "Train on MNIST with at least ten different approaches to train the same model.",
    "Calculate the sharpness of trained models (20000-30000 parameters, 500 training "
    "examples, epsilon 1e-4, block-diagonal Hessian from tf.hessians).",
    "Use other metrics or methods to evaluate a model's ability to generalize (bonus).",
)

DEFINITIONS = (("sharpness_slides", "slides (block-diagonal ||H||)"),
               ("sharpness_whole", "whole-model ||H||"),
               ("sharpness_keskar", "Keskar box (L-BFGS-B)"))


def report_section(results: dict, ctx: markdown.Context) -> str:
    config, runs = results["config"], results["runs"]
    first = next(iter(runs.values()))
    out = [f"{len(runs)} approaches ({len(config['batch_sizes'])} batch sizes x "
           f"{len(config['learning_rates'])} learning rates of {config['optimizer']}, "
           f"{config['epochs']} epochs) of {first.description} with {first.num_params} "
           f"parameters on {first.dataset}. Every sharpness is computed on the same "
           f"{results['analysis_examples']} training examples: the slides' eps = "
           f"{markdown.fmt(config['epsilon'])}, Keskar's box eps = "
           f"{markdown.fmt(config['keskar_epsilon'])} with {config['keskar_maxiter']} L-BFGS-B "
           f"iterations from {config['keskar_restarts']} starts.", "",
           ctx.figure("sharpness", "sharpness and loss against batch size"),
           ctx.figure("sharpness_vs_gap", "sharpness against the generalization gap"), "",
           markdown.table(("approach", "train loss", "test loss", "test acc", "block ‖H‖",
                         "whole ‖H‖", "block/whole", "slides", "Keskar", "seconds"),
                        [(name, r.train_loss, r.test_loss, markdown.pct(r.test_accuracy),
                          r.block_hessian_norm, r.hessian_norm, r.block_to_whole_ratio,
                          r.sharpness_slides, r.sharpness_keskar, r.sharpness_seconds)
                         for name, r in runs.items()]), "", "### Comment", ""]
    ratios = [r.block_to_whole_ratio for r in runs.values()]
    if hasattr(first, "keskar_first_order"):
        shares = [r.keskar_first_order / r.sharpness_keskar for r in runs.values()
                  if r.sharpness_keskar > 0]
        out.append(f"- Keskar's box value is {markdown.fmt(min(shares), 2)} to "
                   f"{markdown.fmt(max(shares), 2)} times its first-order part "
                   "eps sum |g_i| (|theta_i| + 1) / (1 + L): near 1 the slope at theta, not the "
                   "curvature, decides it (the gradient norms on the analysis examples are "
                   f"{markdown.fmt(min(r.gradient_norm for r in runs.values()))} to "
                   f"{markdown.fmt(max(r.gradient_norm for r in runs.values()))}).")
    out.append(f"- The block-diagonal norm of `tf.hessians` is {markdown.fmt(min(ratios), 2)} to "
               f"{markdown.fmt(max(ratios), 2)} times the whole-model ||H||_2 (a block's norm "
               "can only be smaller: each block is a compression of H).")
    gaps = [r.loss_gap for r in runs.values()]
    batch = [r.batch_size for r in runs.values()]
    for key, label in DEFINITIONS:
        values = [getattr(r, key) for r in runs.values()]
        out.append(f"- {label}: from {markdown.fmt(min(values))} to {markdown.fmt(max(values))}; "
                   "Kendall's tau against the batch size "
                   f"{markdown.fmt(measures.kendall_tau(batch, values), 2)}"
                   f", against test minus training loss "
                   f"{markdown.fmt(measures.kendall_tau(values, gaps), 2)}.")
    for lr in config["learning_rates"]:
        rs = sorted((r for r in runs.values() if r.learning_rate == lr),
                    key=lambda r: r.batch_size)
        out.append(f"- Learning rate {markdown.fmt(lr)}: batch {rs[0].batch_size} -> "
                   f"{rs[-1].batch_size} moves the test accuracy "
                   f"{markdown.pct(rs[0].test_accuracy)} -> {markdown.pct(rs[-1].test_accuracy)} "
                   f"and the slides' sharpness {markdown.fmt(rs[0].sharpness_slides)} -> "
                   f"{markdown.fmt(rs[-1].sharpness_slides)}.")
    return "\n".join(out)


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"sharpness.trend": "sharpness (slides' definition) of the ten approaches"}


def scorecard(results: dict) -> dict[str, Measured]:
    config, runs = results["config"], list(results["runs"].values())
    s = [r.sharpness_slides for r in runs]
    tau = measures.kendall_tau([r.batch_size for r in runs], s)
    return {"sharpness.trend": Measured(
        f"{markdown.fmt(min(s))} to {markdown.fmt(max(s))}; Kendall τ against the batch size "
        f"{markdown.fmt(tau, 2)}",
        f"{len(runs)} approaches, eps {config['epsilon']:g}, block-diagonal Hessian on "
        f"{config['analysis_examples']} examples")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {1: ("sharpness",), 2: ("sharpness_vs_gap",)}
