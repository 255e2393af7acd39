"""HW1-2 "observe gradient norm during training": one model per task (a 1-D function and MNIST)
trained by the instrumented core, whose per-iteration history holds the exact mini-batch loss
and ||grad L|| of every iteration; one figure per task plots both against the iteration."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from hw1_tf import framework, markdown, trainer
from hw1_tf.config import TaskConfig, option
from hw1_tf.experiments import tasks
from hw1_tf.figures import FigureSet, finish_axes, plt, running_median
from hw1_tf.records import History

EXPERIMENT = "grad_norm"
POSITION = 220  # its place in the slides' order (the registry sorts by it)


TASKS = ("function", "image")


@dataclasses.dataclass
class Config(TaskConfig):
    tasks: tuple[str, ...] = option(TASKS, "Tasks, one model and one figure each: the 1-D "
                                    "function and the image dataset (--dataset).", choices=TASKS)
    function_epochs: int = option(300, "Training epochs of the function task.", lower=1)
    epochs: int = option(10, "Training epochs of the image task.", lower=1)
    save_models: bool = option(False, "Export each trained model as a SavedModel (and .keras).")


def plan(ctx: framework.ExperimentContext) -> list[framework.Run]:
    """One run per task."""
    return [framework.Run(tasks.run_name(ctx.config, task), train, {"task": task})
            for task in ctx.config.tasks]


def train(ctx: framework.ExperimentContext, task: str) -> dict:
    config = ctx.config
    name, splits, spec = tasks.task_setup(config, task)
    epochs = config.function_epochs if task == "function" else config.epochs
    return ctx.train_model(name, spec, splits, trainer.settings_from(config, epochs=epochs),
                           save_model=config.save_models, tensorboard=config.tensorboard,
                           task=task, dataset=splits.name, num_train=int(len(splits.x_train)))[1]


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """The records are the results: the figures and the report read their histories."""
    return framework.Outcome(records)


# -------------------------------------------------------------------------------- figures


def _iteration_panel(ax, values, color: str, label: str, title: str, ylabel: str) -> None:
    """Per-iteration values (faint) with their running median (bold), log y when they span
    decades."""
    values = np.asarray(values, float)
    iterations = np.arange(1, values.size + 1)
    window = max(5, values.size // 100) | 1 if values.size >= 50 else 1
    ax.plot(iterations, values, color=color, lw=0.5, alpha=0.35,
            label=f"{label} (every iteration)")
    if window > 1:
        ax.plot(iterations, running_median(values, window), color=color, lw=1.5,
                label=f"running median over {window} iterations")
    finish_axes(ax, title, "iteration", ylabel, values=values)


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """One figure per task: ||grad L|| (top) and the loss (bottom) of every iteration, on a
    shared iteration axis."""
    out = FigureSet(figures_dir)
    for name, run in results["runs"].items():
        it = run.history.iteration
        fig, (ax_norm, ax_loss) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
        loss_name = "cross-entropy" if run.task != "function" else "MSE"
        _iteration_panel(ax_norm, it["grad_norm"], "C0", "||grad L||",
                         f"HW1-2 {name}: {run.description}, {run.num_params} params",
                         "gradient norm ||grad L||")
        _iteration_panel(ax_loss, it["loss"], "C3", "mini-batch loss",
                         "training loss of the same iterations", f"loss ({loss_name})")
        ax_norm.set_xlabel("")  # shared with the loss panel below
        switch = run.history.switched_at_iteration
        for ax in (ax_norm, ax_loss) if switch is not None else ():
            ax.axvline(switch, color="k", ls=":", lw=1, label="switch to ||g||^2")
        out.save(fig, f"{name}")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-2 Optimization: gradient norm during training"
QUESTIONS = (
    "Plot one figure which contain gradient norm to iterations and the loss to iterations.",
    "Comment your result.",
)


def summary(history: History) -> dict[str, float]:
    """Numbers of one run's per-iteration history: start/end/peak of ||grad L|| and the loss
    (ends as medians of the first/last 5% of iterations, mini-batch values being noisy), and
    the rank correlation of the two over the run."""
    from scipy import stats

    norm = markdown.series(history.iteration["grad_norm"])
    loss = markdown.series(history.iteration["loss"])
    k = max(1, len(norm) // 20)
    peak_at, peak = markdown.peak(norm)
    return {
        "iterations": len(norm),
        "norm_start": float(np.median(norm[:k])), "norm_end": float(np.median(norm[-k:])),
        "norm_peak": peak, "norm_peak_iteration": peak_at,
        "norm_min": float(np.nanmin(norm)),
        "loss_start": float(np.median(loss[:k])), "loss_end": float(np.median(loss[-k:])),
        "spearman": float(stats.spearmanr(norm, loss).statistic),
        # spread of the norm late in training relative to its level: mini-batch noise
        "norm_end_cv": float(np.std(norm[-k:]) / np.mean(norm[-k:])),
    }


def report_section(results: dict, ctx: markdown.Context) -> str:
    """Per task: the figure, the start/end/peak numbers, and a comment on whether the gradient
    norm followed the loss towards zero."""
    config, runs = results["config"], results["runs"]
    out = [f"One model per task, trained by the instrumented core ({config['optimizer']}, "
           f"learning rate {config['learning_rate']:g}, batch {config['batch_size']}); the loss "
           "and ‖∇L‖ of the mini-batch of EVERY iteration come from the run's exact "
           "per-iteration history (not per-epoch means).", ""]
    rows, comments = [], []
    for name, run in runs.items():
        s = summary(run.history)
        out.append(ctx.figure(f"{name}", f"gradient norm and loss per iteration, {name}"))
        rows.append((name, run.description, run.num_params, s["iterations"],
                     s["loss_start"], s["loss_end"], s["norm_start"], s["norm_peak"],
                     s["norm_peak_iteration"], s["norm_end"], s["spearman"]))
        comments.append(_comment(name, s))
    header = ("task", "model", "parameters", "iterations", "loss start", "loss end",
              "‖∇L‖ start", "‖∇L‖ peak", "peak at iteration", "‖∇L‖ end",
              "Spearman(‖∇L‖, loss)")
    out += ["", markdown.table(header, rows),
            "", "Start and end are medians over the first and last 5% of iterations.", "",
            "### Comment", ""]
    out += [f"- {c}" for c in comments]
    return "\n".join(out)


def _comment(name: str, s: dict) -> str:
    loss_drop = s["loss_start"] / s["loss_end"] if s["loss_end"] > 0 else float("inf")
    norm_drop = s["norm_peak"] / s["norm_end"] if s["norm_end"] > 0 else float("inf")
    text = (f"**{name}**: the loss fell {markdown.times(loss_drop)} over {s['iterations']} "
            f"iterations; ‖∇L‖ peaked at {markdown.fmt(s['norm_peak'])} at iteration "
            f"{s['norm_peak_iteration']} ")
    if s["norm_peak_iteration"] > 0.02 * s["iterations"]:
        text += "(it first ROSE while the loss fell: the net left its flat initial region) "
    text += f"and ended {markdown.times(norm_drop)} below its peak at {markdown.fmt(s['norm_end'])}"
    text += (f"; rank correlation with the loss {markdown.fmt(s['spearman'], 2)}. ")
    if s["norm_end_cv"] > 0.25:
        text += (f"Late in training the norm scatters by {markdown.pct(s['norm_end_cv'], 0)} "
                 "(std/mean) from batch to batch: mini-batch gradients stay large and noisy "
                 "even where the loss has levelled off, so a small loss does not mean a "
                 "vanishing mini-batch gradient.")
    else:
        text += (f"Late in training the norm varies by only {markdown.pct(s['norm_end_cv'], 0)} "
                 "(std/mean) between batches.")
    return text


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"grad_norm.trend": "loss and gradient norm over training"}


def scorecard(results: dict) -> dict[str, Measured]:
    parts = []
    for name, run in results["runs"].items():
        s = summary(run.history)
        parts.append(f"{name}: loss {markdown.times(s['loss_start'] / s['loss_end'])} lower "
                     f"after {s['iterations']} iterations, ‖∇L‖ ends "
                     f"{markdown.times(s['norm_peak'] / s['norm_end'])} below its peak")
    return {"grad_norm.trend": Measured(
        "; ".join(parts), "every iteration's mini-batch values (start and end: medians of the "
        "first and last 5%)")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {0: ("*",)}
