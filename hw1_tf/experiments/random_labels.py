"""HW1-3 "can a network fit random labels?": the slides' dense net (3 hidden layers of 256) on
MNIST with shuffled training labels, and, after Zhang et al. 2017, a sweep of the fraction of
corrupted examples and the other corruptions of that paper (shuffled pixels, random pixels,
Gaussian inputs). Test labels stay clean unless --corrupt_test."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from hw1_tf import data, models, report
from hw1_tf.config import option
from hw1_tf.experiments import common

EXPERIMENT = "random_labels"


@dataclasses.dataclass
class Config(common.StopOptions, common.ImageTrainConfig):
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


def run(config: Config) -> dict:
    paths = common.paths_from(config)
    strategy = common.strategy_from(config)
    settings = common.settings_from(config)
    clean = common.load_splits(config)
    spec = models.ModelSpec("dnn", "dense", hidden=tuple(config.hidden))
    runs = {}
    for ratio in config.ratios:
        name = run_name(config.corruption, ratio)

        def train(ratio=ratio, name=name):
            splits = data.corrupt(clean, config.corruption, ratio, seed=config.seed,
                                  corrupt_test=config.corrupt_test)
            _, record = common.train_run(EXPERIMENT, name, spec, splits, settings,
                                         strategy=strategy, paths=paths,
                                         save_model=config.save_models,
                                         tensorboard=config.tensorboard)
            epoch = record["history"]["epoch"]
            record.update(ratio=float(ratio),
                          epochs_to_fit=epochs_to_fit(epoch["train_accuracy"],
                                                      config.fit_accuracy),
                          labels_changed=float(np.mean(splits.y_train != splits.y_train_clean)),
                          **{f"final_{k}": v[-1] for k, v in epoch.items()})
            return record

        # each finished fraction is kept at once: an interrupted sweep resumes at the next one
        runs[name] = common.run_once(EXPERIMENT, config, paths, name, train)
    return common.finish(EXPERIMENT, config, runs, paths, dataset=clean.name,
                         train_examples=len(clean.x_train), test_examples=len(clean.x_test),
                         model=spec.describe())


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Can a network fit random labels?"
QUESTIONS = (
    "Describe your settings of the experiments (e.g. which task, learning rate, optimizer).",
    "Plot the figure of the relationship between training and testing, loss and epochs.",
)


def _epochs_text(config: dict) -> str:
    stops = [f"training loss <= {config[k]:g}" if k == "stop_loss_below" else
             f"training accuracy >= {report.pct(config[k])}"
             for k in ("stop_loss_below", "stop_accuracy_above") if config.get(k) is not None]
    if not stops:
        return f"{config['epochs']} epochs"
    return (f"at most {config['epochs']} epochs, each run stopping after the first epoch "
            f"with {' or '.join(stops)}")


def report_section(results: dict, ctx: report.Context) -> str:
    config, runs = results["config"], results["runs"]
    main = max(runs.values(), key=lambda r: r["ratio"])
    out = [f"{results['dataset']}: {results['train_examples']} training / "
           f"{results['test_examples']} test examples, model {results['model']} "
           f"({main['num_params']} parameters), {config['optimizer']} with learning rate "
           f"{config['learning_rate']:g}, batch {config['batch_size']}, {_epochs_text(config)}"
           f"; corruption `{config['corruption']}` of a fraction "
           f"{', '.join(f'{r:g}' for r in config['ratios'])} of the training examples "
           f"(test set {'corrupted too' if config['corrupt_test'] else 'clean'}); seed "
           f"{config['seed']}.", ""]
    for key, r in sorted(runs.items(), key=lambda kv: -kv[1]["ratio"]):
        out.append(ctx.figure(f"epochs_{key}.png", f"fraction {r['ratio']:g}: loss and "
                              "accuracy against epochs"))
    if len(runs) > 1:
        out.append(ctx.figure("ratio_sweep.png", "final accuracy and epochs to fit against the "
                              "corrupted fraction"))
    rows = [(f"{r['ratio']:g}", report.pct(r["labels_changed"]), r["final_train_loss"],
             report.pct(r["final_train_accuracy"]), r["final_test_loss"],
             report.pct(r["final_test_accuracy"]),
             "not reached" if r["epochs_to_fit"] is None else r["epochs_to_fit"],
             len(r["history"]["epoch"]["train_loss"]), report.fmt(r["history"]["seconds"]))
            for r in sorted(runs.values(), key=lambda r: r["ratio"])]
    out += ["", report.table(("fraction", "labels changed", "train loss", "train acc",
                              "test loss", "test acc",
                              f"epochs to {report.pct(config['fit_accuracy'], 0)} train acc",
                              "epochs run", "seconds"), rows), ""]
    train_loss = report.series(main["history"]["epoch"]["train_loss"])
    test_loss = report.series(main["history"]["epoch"]["test_loss"])
    low = int(np.nanargmin(test_loss))
    text = (f"- With a fraction {main['ratio']:g} corrupted the training loss went from "
            f"{report.fmt(train_loss[0])} to {report.fmt(train_loss[-1])} "
            f"({report.pct(main['final_train_accuracy'])} training accuracy), ")
    text += ("the training set was fitted after "
             f"{main['epochs_to_fit']} epochs" if main["epochs_to_fit"] else
             f"not fitted to {report.pct(config['fit_accuracy'], 0)} within {len(train_loss)} "
             "epochs")
    text += (f"; the test loss was lowest at epoch {low + 1} ({report.fmt(test_loss[low])}) "
             f"and ended at {report.fmt(test_loss[-1])}, test accuracy "
             f"{report.pct(main['final_test_accuracy'])} (chance: 10.0%).")
    out.append(text)
    if len(runs) > 1:
        clean = min(runs.values(), key=lambda r: r["ratio"])
        out.append(f"- From fraction {clean['ratio']:g} to {main['ratio']:g} the final test "
                   f"accuracy fell from {report.pct(clean['final_test_accuracy'])} to "
                   f"{report.pct(main['final_test_accuracy'])}, the training accuracy from "
                   f"{report.pct(clean['final_train_accuracy'])} to "
                   f"{report.pct(main['final_train_accuracy'])}.")
    return "\n".join(out)
