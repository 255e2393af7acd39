"""HW1-2 "observe gradient norm during training": one model per task (a 1-D function and MNIST)
trained by the instrumented core, whose per-iteration history holds the exact mini-batch loss
and ||grad L|| of every iteration; one figure per task plots both against the iteration."""

from __future__ import annotations

import dataclasses

import numpy as np

from hw1_tf import report
from hw1_tf.config import option
from hw1_tf.experiments import common

EXPERIMENT = "grad_norm"


TASKS = ("function", "image")


@dataclasses.dataclass
class Config(common.TaskConfig):
    tasks: tuple[str, ...] = option(TASKS, "Tasks, one model and one figure each: the 1-D "
                                    "function and the image dataset (--dataset).", choices=TASKS)
    function_epochs: int = option(300, "Training epochs of the function task.", lower=1)
    epochs: int = option(10, "Training epochs of the image task.", lower=1)
    save_models: bool = option(False, "Export each trained model as a SavedModel (and .keras).")


def run(config: Config) -> dict:
    paths = common.paths_from(config)
    strategy = common.strategy_from(config)
    runs = {}
    for task in config.tasks:
        name, splits, spec = common.task_setup(config, task)
        epochs = config.function_epochs if task == "function" else config.epochs
        settings = common.settings_from(config, epochs=epochs)

        def train(task=task, name=name, splits=splits, spec=spec, settings=settings):
            _, record = common.train_run(EXPERIMENT, name, spec, splits, settings,
                                         strategy=strategy, paths=paths,
                                         save_model=config.save_models,
                                         tensorboard=config.tensorboard)
            record.update(task=task, dataset=splits.name, num_train=int(len(splits.x_train)))
            return record

        runs[name] = common.run_once(EXPERIMENT, config, paths, name, train)
    return common.finish(EXPERIMENT, config, runs, paths)


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-2 Optimization: gradient norm during training"
QUESTIONS = (
    "Plot one figure which contain gradient norm to iterations and the loss to iterations.",
    "Comment your result.",
)


def summary(history: dict) -> dict[str, float]:
    """Numbers of one run's per-iteration history: start/end/peak of ||grad L|| and the loss
    (ends as medians of the first/last 5% of iterations, mini-batch values being noisy), and
    the rank correlation of the two over the run."""
    from scipy import stats

    norm = report.series(history["iteration"]["grad_norm"])
    loss = report.series(history["iteration"]["loss"])
    k = max(1, len(norm) // 20)
    peak_at, peak = report.peak(norm)
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


def report_section(results: dict, ctx: report.Context) -> str:
    """Per task: the figure, the start/end/peak numbers, and a comment on whether the gradient
    norm followed the loss towards zero."""
    config, runs = results["config"], results["runs"]
    out = [f"One model per task, trained by the instrumented core ({config['optimizer']}, "
           f"learning rate {config['learning_rate']:g}, batch {config['batch_size']}); the loss "
           "and ‖∇L‖ of the mini-batch of EVERY iteration come from the run's exact "
           "per-iteration history (not per-epoch means).", ""]
    rows, comments = [], []
    for name, run in runs.items():
        s = summary(run["history"])
        out.append(ctx.figure(f"{name}.png", f"gradient norm and loss per iteration, {name}"))
        rows.append((name, run["description"], run["num_params"], s["iterations"],
                     s["loss_start"], s["loss_end"], s["norm_start"], s["norm_peak"],
                     s["norm_peak_iteration"], s["norm_end"], s["spearman"]))
        comments.append(_comment(name, s))
    header = ("task", "model", "parameters", "iterations", "loss start", "loss end",
              "‖∇L‖ start", "‖∇L‖ peak", "peak at iteration", "‖∇L‖ end",
              "Spearman(‖∇L‖, loss)")
    out += ["", report.table(header, rows),
            "", "Start and end are medians over the first and last 5% of iterations.", "",
            "### Comment", ""]
    out += [f"- {c}" for c in comments]
    return "\n".join(out)


def _comment(name: str, s: dict) -> str:
    loss_drop = s["loss_start"] / s["loss_end"] if s["loss_end"] > 0 else float("inf")
    norm_drop = s["norm_peak"] / s["norm_end"] if s["norm_end"] > 0 else float("inf")
    text = (f"**{name}**: the loss fell {report.times(loss_drop)} over {s['iterations']} "
            f"iterations; ‖∇L‖ peaked at {report.fmt(s['norm_peak'])} at iteration "
            f"{s['norm_peak_iteration']} ")
    if s["norm_peak_iteration"] > 0.02 * s["iterations"]:
        text += "(it first ROSE while the loss fell: the net left its flat initial region) "
    text += f"and ended {report.times(norm_drop)} below its peak at {report.fmt(s['norm_end'])}"
    text += (f"; rank correlation with the loss {report.fmt(s['spearman'], 2)}. ")
    if s["norm_end_cv"] > 0.25:
        text += (f"Late in training the norm scatters by {report.pct(s['norm_end_cv'], 0)} "
                 "(std/mean) from batch to batch: mini-batch gradients stay large and noisy "
                 "even where the loss has levelled off, so a small loss does not mean a "
                 "vanishing mini-batch gradient.")
    else:
        text += (f"Late in training the norm varies by only {report.pct(s['norm_end_cv'], 0)} "
                 "(std/mean) between batches.")
    return text
