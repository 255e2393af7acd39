"""HW1-3 "can a network fit random labels?": the slides' dense net (3 hidden layers of 256) on
MNIST with shuffled training labels, and, after Zhang et al. 2017, a sweep of the fraction of
corrupted examples and the other corruptions of that paper (shuffled pixels, random pixels,
Gaussian inputs). Test labels stay clean unless --corrupt_test."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hw1_tf import data, framework, markdown, models, trainer
from hw1_tf.config import ImageTrainConfig, StopOptions, option
from hw1_tf.figures import FigureSet, epochs_axis, finish_axes, plt
from hw1_tf.records import RunRecord

EXPERIMENT = "random_labels"
POSITION = 310  # its place in the slides' order (the registry sorts by it)


@dataclasses.dataclass
class Config(StopOptions, ImageTrainConfig):
    RUN_SELECTION: ClassVar[tuple[str, ...]] = ("ratios",)

    hidden: tuple[int, ...] = option((256, 256, 256), "Hidden widths of the dense net (the "
                                     "slides: 3 layers of 256).", lower=1)
    corruption: str = option("labels", "What is corrupted: labels (shuffled), shuffled_pixels "
                             "(one fixed permutation), random_pixels (a permutation per "
                             "image) or gaussian (noise images).", choices=data.CORRUPTIONS)
    ratios: tuple[float, ...] = option((1.0,), "Fractions of training examples corrupted, one "
                                       "model each (a sweep: 0,0.2,0.4,0.6,0.8,1).", lower=0.0,
                                       upper=1.0)
    corrupt_test: bool = option(False, "Corrupt the test set as well (the same fraction).")
    fit_accuracy: float = option(0.99, "Training accuracy (on the corrupted labels) that counts "
                                 "as fitting the training set.", lower=0.0, upper=1.0)
    epochs: int = option(100, "Training epochs per run.", lower=1)
    save_models: bool = option(False, "Export each trained model as a SavedModel (and "
                               ".keras).")
    tensorboard: bool = option(False, "Write TensorBoard logs under results/.")


def run_name(corruption: str, ratio: float) -> str:
    return f"{corruption}_{ratio:.2f}".replace(".", "p")


def epochs_to_fit(train_accuracy, threshold: float) -> int | None:
    """The first epoch (1-based) whose training accuracy reaches `threshold`, else None."""
    reached = np.flatnonzero(np.asarray(train_accuracy, float) >= threshold)
    return int(reached[0]) + 1 if reached.size else None


def _spec(config: Config) -> models.ModelSpec:
    return models.ModelSpec("dnn", "dense", hidden=tuple(config.hidden))


def plan(ctx: framework.ExperimentContext) -> list[framework.Run]:
    """One run per corrupted fraction, each kept once it finishes: an interrupted sweep resumes
    at the next fraction."""
    return [framework.Run(run_name(ctx.config.corruption, ratio), train, {"ratio": ratio})
            for ratio in ctx.config.ratios]


def train(ctx: framework.ExperimentContext, ratio: float) -> dict:
    config = ctx.config
    splits = data.corrupt(ctx.splits(), config.corruption, ratio, seed=config.seed,
                          corrupt_test=config.corrupt_test)
    _, record = ctx.train_model(run_name(config.corruption, ratio), _spec(config), splits,
                                trainer.settings_from(config), save_model=config.save_models,
                                tensorboard=config.tensorboard)
    history = RunRecord.from_dict(record).history
    record.update(ratio=float(ratio),
                  epochs_to_fit=epochs_to_fit(history.series("train_accuracy"),
                                              config.fit_accuracy),
                  labels_changed=float(np.mean(splits.y_train != splits.y_train_clean)),
                  **{f"final_{k}": history.last(k) for k in history.epoch})
    return record


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    clean = ctx.splits()
    return framework.Outcome(records, dict(dataset=clean.name, train_examples=len(clean.x_train),
                                           test_examples=len(clean.x_test),
                                           model=_spec(ctx.config).describe()))


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Per run: training and test loss (left) and accuracy (right) against epochs; with several
    fractions, the final accuracies and the epochs to fit against the fraction."""
    out = FigureSet(figures_dir)
    corruption = results["config"]["corruption"]
    for key, run in results["runs"].items():
        epoch = run.history.epoch
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
        for split, style in (("train", "-"), ("test", "--")):
            ax_loss.plot(epochs_axis(epoch[f"{split}_loss"]), epoch[f"{split}_loss"], style,
                         color="C0", label=f"{split}")
            ax_acc.plot(epochs_axis(epoch[f"{split}_accuracy"]), epoch[f"{split}_accuracy"], style,
                        color="C3", label=f"{split}")
        ax_acc.axhline(0.1, color="grey", linewidth=0.8, linestyle=":",
                       label="chance (10 classes)")
        what = f"{corruption} corrupted, fraction {run.ratio:g}"
        finish_axes(ax_loss, f"HW1-3 {results['dataset']}: loss ({what})", "epoch",
                    "cross-entropy", values=[*epoch["train_loss"], *epoch["test_loss"]])
        finish_axes(ax_acc, f"accuracy ({what})", "epoch", "accuracy", log_y=False)
        out.save(fig, f"epochs_{key}")
    if len(results["runs"]) > 1:
        runs = sorted(results["runs"].values(), key=lambda r: r.ratio)
        ratios = [r.ratio for r in runs]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(ratios, [r.final_train_accuracy for r in runs], "o-", color="C3",
                label="final training accuracy")
        ax.plot(ratios, [r.final_test_accuracy for r in runs], "s--", color="C3",
                label="final test accuracy")
        ax.set_ylim(0, 1.02)
        fit_ax = ax.twinx()
        fitted = [(x, r.epochs_to_fit) for x, r in zip(ratios, runs) if r.epochs_to_fit]
        if fitted:
            fit_ax.plot(*zip(*fitted), "^:", color="C0", label="epochs to fit training set")
        missed = [x for x, r in zip(ratios, runs) if not r.epochs_to_fit]
        if missed:
            top = results["config"]["epochs"]
            fit_ax.plot(missed, [top] * len(missed), "x", color="C0",
                        label=f"not fitted in {top} epochs")
        fit_ax.set_ylabel("epochs to reach the fit accuracy", color="C0")
        fit_ax.set_ylim(0, results["config"]["epochs"] * 1.05)
        handles = [a.get_legend_handles_labels() for a in (ax, fit_ax)]
        ax.legend(handles[0][0] + handles[1][0], handles[0][1] + handles[1][1], fontsize=8,
                  loc="center left")
        ax.set_xlabel(f"fraction of training examples corrupted ({corruption})")
        ax.set_ylabel("accuracy", color="C3")
        ax.set_title(f"HW1-3 {results['dataset']}: fitting corrupted data")
        ax.grid(True, alpha=0.3)
        out.save(fig, "ratio_sweep")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Can a network fit random labels?"
QUESTIONS = (
    "Describe your settings of the experiments (e.g. which task, learning rate, optimizer).",
    "Plot the figure of the relationship between training and testing, loss and epochs.",
)


def _epochs_text(config: dict) -> str:
    stops = [f"training loss <= {config[k]:g}" if k == "stop_loss_below" else
             f"training accuracy >= {markdown.pct(config[k])}"
             for k in ("stop_loss_below", "stop_accuracy_above") if config.get(k) is not None]
    if not stops:
        return f"{config['epochs']} epochs"
    return (f"at most {config['epochs']} epochs, each run stopping after the first epoch "
            f"with {' or '.join(stops)}")


def report_section(results: dict, ctx: markdown.Context) -> str:
    config, runs = results["config"], results["runs"]
    main = max(runs.values(), key=lambda r: r.ratio)
    out = [f"{results['dataset']}: {results['train_examples']} training / "
           f"{results['test_examples']} test examples, model {results['model']} "
           f"({main.num_params} parameters), {config['optimizer']} with learning rate "
           f"{config['learning_rate']:g}, batch {config['batch_size']}, {_epochs_text(config)}"
           f"; corruption `{config['corruption']}` of a fraction "
           f"{', '.join(f'{r:g}' for r in config['ratios'])} of the training examples "
           f"(test set {'corrupted too' if config['corrupt_test'] else 'clean'}); seed "
           f"{config['seed']}.", ""]
    for key, r in sorted(runs.items(), key=lambda kv: -kv[1].ratio):
        out.append(ctx.figure(f"epochs_{key}", f"fraction {r.ratio:g}: loss and "
                              "accuracy against epochs"))
    if len(runs) > 1:
        out.append(ctx.figure("ratio_sweep", "final accuracy and epochs to fit against the "
                              "corrupted fraction"))
    rows = [(f"{r.ratio:g}", markdown.pct(r.labels_changed), r.final_train_loss,
             markdown.pct(r.final_train_accuracy), r.final_test_loss,
             markdown.pct(r.final_test_accuracy),
             "not reached" if r.epochs_to_fit is None else r.epochs_to_fit,
             len(r.history.series("train_loss")), markdown.fmt(r.history.seconds))
            for r in sorted(runs.values(), key=lambda r: r.ratio)]
    out += ["", markdown.table(("fraction", "labels changed", "train loss", "train acc",
                              "test loss", "test acc",
                              f"epochs to {markdown.pct(config['fit_accuracy'], 0)} train acc",
                              "epochs run", "seconds"), rows), ""]
    train_loss = main.history.series("train_loss")
    test_loss = main.history.series("test_loss")
    low = int(np.nanargmin(test_loss))
    text = (f"- With a fraction {main.ratio:g} corrupted the training loss went from "
            f"{markdown.fmt(train_loss[0])} to {markdown.fmt(train_loss[-1])} "
            f"({markdown.pct(main.final_train_accuracy)} training accuracy), ")
    text += ("the training set was fitted after "
             f"{main.epochs_to_fit} epochs" if main.epochs_to_fit else
             f"not fitted to {markdown.pct(config['fit_accuracy'], 0)} within {len(train_loss)} "
             "epochs")
    text += (f"; the test loss was lowest at epoch {low + 1} ({markdown.fmt(test_loss[low])}) "
             f"and ended at {markdown.fmt(test_loss[-1])}, test accuracy "
             f"{markdown.pct(main.final_test_accuracy)} (chance: 10.0%).")
    out.append(text)
    if len(runs) > 1:
        clean = min(runs.values(), key=lambda r: r.ratio)
        out.append(f"- From fraction {clean.ratio:g} to {main.ratio:g} the final test "
                   f"accuracy fell from {markdown.pct(clean.final_test_accuracy)} to "
                   f"{markdown.pct(main.final_test_accuracy)}, the training accuracy from "
                   f"{markdown.pct(clean.final_train_accuracy)} to "
                   f"{markdown.pct(main.final_train_accuracy)}.")
    return "\n".join(out)


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"random_labels.fit": "random labels: epochs to fit, final train/test loss"}


def scorecard(results: dict) -> dict[str, Measured]:
    config = results["config"]
    r = max(results["runs"].values(), key=lambda r: r.ratio)
    fitted = (f"{r.epochs_to_fit} epochs to {markdown.pct(config['fit_accuracy'], 0)} "
              "train acc" if r.epochs_to_fit is not None else
              f"not fitted in {r.history.epochs} epochs")
    return {"random_labels.fit": Measured(
        f"fraction {markdown.fmt(r.ratio)}: {fitted}; train loss "
        f"{markdown.fmt(r.final_train_loss)} (acc {markdown.pct(r.final_train_accuracy)}), "
        f"test loss {markdown.fmt(r.final_test_loss)}",
        f"{r.description}, {r.num_params} parameters, {results['train_examples']} "
        f"training examples, {config['optimizer']} at {config['learning_rate']:g}; stops once "
        "fitted")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {1: ("epochs_*", "ratio_sweep")}
