"""HW1-3 flatness vs generalization, part 2: at least five training approaches (batch sizes, or
learning rates) of one MNIST model; per approach the exact training and test loss and accuracy
of the final weights and two input sensitivities averaged over the test set: the slides'
||d loss / d x||_F and Novak et al. 2018's ||d softmax / d x||_F."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from absl import logging

from hw1_tf import framework, markdown, measures, models
from hw1_tf.config import ImageTrainConfig, StopOptions, option
from hw1_tf.experiments import approaches
from hw1_tf.figures import FigureSet, log_x_if_wide, plt

EXPERIMENT = "sensitivity"
POSITION = 340  # its place in the slides' order (the registry sorts by it)


@dataclasses.dataclass
class Config(StopOptions, ImageTrainConfig):
    RUN_SELECTION: ClassVar[tuple[str, ...]] = ("batch_sizes", "learning_rates")

    vary: str = option("batch_size", "What the approaches vary (the other stays at "
                       "--batch_size / --learning_rate).", choices=("batch_size",
                                                                    "learning_rate"))
    batch_sizes: tuple[int, ...] = option((16, 64, 256, 1024, 4096), "Batch sizes, one model "
                                          "each (with --vary=batch_size).", lower=1)
    learning_rates: tuple[float, ...] = option((1e-4, 3e-4, 1e-3, 3e-3, 1e-2), "Learning "
                                               "rates, one model each (with "
                                               "--vary=learning_rate).", lower=0.0)
    hidden: tuple[int, ...] = option((128,), "Hidden widths of the dense ReLU model.", lower=1)
    sensitivity_examples: int | None = option(None, "Test examples the sensitivities average "
                                              "over (default: the whole test split).", lower=1)
    epochs: int = option(10, "Training epochs per run.", lower=1)
    batch_size: int = option(64, "Batch size when the learning rate varies.", lower=1)


def approaches_of(config) -> list[tuple[int, float]]:
    if config.vary == "batch_size":
        return [(b, config.learning_rate) for b in config.batch_sizes]
    return [(config.batch_size, lr) for lr in config.learning_rates]


def plan(ctx: framework.ExperimentContext) -> list[framework.Run]:
    """One run per approach (batch size, or learning rate)."""
    return approaches.plan_approaches(approaches_of(ctx.config), train)


def train(ctx: framework.ExperimentContext, batch_size: int, learning_rate: float) -> dict:
    spec = models.ModelSpec("dense_relu", "dense", hidden=tuple(ctx.config.hidden))
    return approaches.train_and_measure(ctx, ctx.splits(), spec, batch_size, learning_rate,
                                        measure)


def measure(ctx: framework.ExperimentContext, network, record: dict) -> dict:
    """The two input sensitivities of the trained `network`, averaged over the first
    --sensitivity_examples test examples (all by default)."""
    splits = ctx.splits()
    n = min(ctx.config.sensitivity_examples or len(splits.x_test), len(splits.x_test))
    grad, jac = measures.input_sensitivities(network, splits.x_test[:n], splits.y_test[:n],
                                             strategy=ctx.strategy)
    logging.info("sensitivities %.4g (loss grad) %.4g (Jacobian) on %d test examples",
                 grad.mean(), jac.mean(), n)
    return {"sensitivity_loss_grad": float(grad.mean()),
            "sensitivity_jacobian": float(jac.mean()), "sensitivity_examples": n}


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    return framework.Outcome(records, dict(vary=ctx.config.vary))


# -------------------------------------------------------------------------------- figures


_SENSITIVITIES = (("sensitivity_loss_grad", "||d loss / d x||_F (slides)", "-"),
                  ("sensitivity_jacobian", "||d softmax / d x||_F (Novak et al.)", ":"))


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """The slides' figure: loss (or accuracy) of training and test on the left axis and both
    sensitivities on the right, against the varied batch size or learning rate."""
    vary = results["vary"]
    runs = sorted(results["runs"].values(), key=lambda r: getattr(r, vary))
    xs = [getattr(r, vary) for r in runs]
    xlabel = ("batch size" if vary == "batch_size" else "learning rate") + " (log scale)"
    out = FigureSet(figures_dir)
    for metric, ylabel in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for split, style in (("train", "-o"), ("test", "--o")):
            ax.plot(xs, [getattr(r, f"{split}_{metric}") for r in runs], style, color="C0",
                    label=f"{split} {metric}")
        log_x_if_wide(ax, xs)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel, color="C0")
        ax.grid(True, which="both", alpha=0.3)
        right = ax.twinx()
        for key, label, style in _SENSITIVITIES:
            right.plot(xs, [getattr(r, key) for r in runs], style, marker="s", color="C3",
                       label=label)
        right.set_yscale("log")
        right.set_ylabel("sensitivity, test mean (log scale)", color="C3")
        handles = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="best")
        ax.set_title(f"HW1-3 {metric} and sensitivity vs {vary.replace('_', ' ')}")
        out.save(fig, f"{metric}_sensitivity")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Flatness vs generalization, part 2: sensitivity"
QUESTIONS = (
    "Describe the settings of the experiments (e.g. which task, what training approaches).",
    "Plot the figures of both training and testing, loss and accuracy, sensitivity to your "
    "chosen variable.",
    "Comment your result.",
)


def report_section(results: dict, ctx: markdown.Context) -> str:
    config, runs = results["config"], results["runs"]
    vary = results["vary"]
    values = {name: getattr(r, vary) for name, r in runs.items()}
    first = next(iter(runs.values()))
    fixed = ("learning rate " + markdown.fmt(config["learning_rate"]) if vary == "batch_size"
             else f"batch size {config['batch_size']}")
    out = [f"{len(runs)} models ({first.description}, {first.num_params} parameters) on "
           f"{first.dataset}, {config['epochs']} epochs of {config['optimizer']} each, "
           f"{fixed}, {vary.replace('_', ' ')} varied: "
           f"{markdown.join([markdown.fmt(v) for v in values.values()])}. Loss and accuracy are "
           "of the final weights over the whole splits; sensitivities are averaged over "
           f"{first.sensitivity_examples} test examples.", "",
           ctx.figure("loss_sensitivity", "loss and sensitivity"),
           ctx.figure("accuracy_sensitivity", "accuracy and sensitivity"), "",
           markdown.table((vary.replace("_", " "), "train loss", "test loss", "train acc",
                         "test acc", "‖dL/dx‖", "‖dp/dx‖"),
                        [(markdown.fmt(getattr(r, vary)), r.train_loss, r.test_loss,
                          markdown.pct(r.train_accuracy), markdown.pct(r.test_accuracy),
                          r.sensitivity_loss_grad, r.sensitivity_jacobian)
                         for r in runs.values()]), "", "### Comment", ""]
    order = sorted(runs.values(), key=lambda r: getattr(r, vary))
    xs = [getattr(r, vary) for r in order]
    for key, label in (("sensitivity_loss_grad", "the loss-gradient sensitivity"),
                       ("sensitivity_jacobian", "the Jacobian sensitivity")):
        ys = [getattr(r, key) for r in order]
        tau = measures.kendall_tau(xs, ys)
        out.append(f"- From the smallest to the largest {vary.replace('_', ' ')}, {label} "
                   f"goes from {markdown.fmt(ys[0])} to {markdown.fmt(ys[-1])} "
                   f"({markdown.times(ys[-1] / ys[0]) if ys[0] > 0 else 'n/a'}); Kendall's tau "
                   f"against the {vary.replace('_', ' ')} is {markdown.fmt(tau, 2)}.")
    for key, label in (("test_loss", "test loss"), ("loss_gap", "test minus training loss")):
        tau = measures.kendall_tau([r.sensitivity_loss_grad for r in order],
                                   [getattr(r, key) for r in order])
        out.append(f"- Kendall's tau of the loss-gradient sensitivity against the {label}: "
                   f"{markdown.fmt(tau, 2)}.")
    best = max(order, key=lambda r: r.test_accuracy)
    worst = min(order, key=lambda r: r.test_accuracy)
    out.append(f"- Best test accuracy {markdown.pct(best.test_accuracy)} at "
               f"{vary.replace('_', ' ')} {markdown.fmt(getattr(best, vary))}, worst "
               f"{markdown.pct(worst.test_accuracy)} at {markdown.fmt(getattr(worst, vary))}.")
    return "\n".join(out)


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"sensitivity.trend": "sensitivity against the training setting"}


def scorecard(results: dict) -> dict[str, Measured]:
    config, vary = results["config"], results["vary"]
    runs = sorted(results["runs"].values(), key=lambda r: r.get(vary))
    xs = [r.get(vary) for r in runs]
    ys = [r.sensitivity_loss_grad for r in runs]
    label = vary.replace("_", " ")
    return {"sensitivity.trend": Measured(
        f"‖dL/dx‖ {markdown.fmt(ys[0])} at {label} {markdown.fmt(xs[0])} to "
        f"{markdown.fmt(ys[-1])} at {markdown.fmt(xs[-1])}: Kendall τ "
        f"{markdown.fmt(measures.kendall_tau(xs, ys), 2)} against the {label}, "
        f"{markdown.fmt(measures.kendall_tau(ys, [r.test_loss for r in runs]), 2)} against "
        "the test loss",
        f"{runs[0].description}, {config['epochs']} epochs at most; mean over "
        f"{runs[0].sensitivity_examples} test examples")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {1: ("*",)}
