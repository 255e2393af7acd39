"""HW1-3 "number of parameters vs generalization": dense nets of one structure (a fixed number of
hidden layers) and growing width, their parameter counts spanning decades, trained alike on
MNIST (or Fashion-MNIST); final training and test loss and accuracy against parameter count."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from hw1_tf import models, report
from hw1_tf.config import ConfigError, option
from hw1_tf.experiments import common

EXPERIMENT = "capacity"


@dataclasses.dataclass
class Config(common.ImageTrainConfig):
    widths: tuple[int, ...] = option((2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), "Hidden width "
                                     "of each model (one model per width).", lower=1)
    hidden_layers: int = option(2, "Hidden layers of every model (the shared structure).",
                                lower=1)
    epochs: int = option(20, "Training epochs per run.", lower=1)
    save_models: bool = option(False, "Export each trained model as a SavedModel (and "
                               ".keras).")
    tensorboard: bool = option(False, "Write TensorBoard logs under results/.")

    def __post_init__(self):
        super().__post_init__()
        if len(set(self.widths)) != len(self.widths):
            raise ConfigError("--widths must not repeat a width")


def model_specs(config: Config) -> list[models.ModelSpec]:
    return [models.ModelSpec(f"w{w}", "dense", hidden=(int(w),) * config.hidden_layers)
            for w in sorted(config.widths)]


def train_models(config: Config, specs, splits, *, strategy, paths) -> dict[str, dict]:
    """Trains the models one after another and evaluates each on the whole training and test
    sets after its last epoch. The one place to switch to training them together."""
    settings = common.settings_from(config)
    runs = {}
    for spec in specs:
        model, record = common.train_run(EXPERIMENT, spec.name, spec, splits, settings,
                                         strategy=strategy, paths=paths,
                                         save_model=config.save_models,
                                         tensorboard=config.tensorboard)
        for split, (x, y) in (("train", (splits.x_train, splits.y_train)),
                              ("test", (splits.x_test, splits.y_test))):
            values = model.evaluate(x, y, batch_size=1024, verbose=0, return_dict=True)
            record[f"final_{split}_loss"] = float(values["loss"])
            record[f"final_{split}_accuracy"] = float(values["accuracy"])
        record["width"] = spec.hidden[0]
        runs[spec.name] = record
    return runs


def run(config: Config) -> dict:
    paths = common.paths_from(config)
    strategy = common.strategy_from(config)
    splits = common.load_splits(config)
    specs = model_specs(config)
    start = time.perf_counter()
    runs = train_models(config, specs, splits, strategy=strategy, paths=paths)
    seconds = time.perf_counter() - start
    table = common.log_param_table([(n, r["description"], r["num_params"])
                                    for n, r in runs.items()])
    return common.finish(EXPERIMENT, config, runs, paths, dataset=splits.name,
                         train_examples=len(splits.x_train), test_examples=len(splits.x_test),
                         param_table=table, training_seconds=seconds,
                         training_mode="one after another")


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Number of parameters vs generalization"
QUESTIONS = (
    "Describe your settings of the experiments (e.g. which task, the 10 or more structures you "
    "choose).",
    "Plot the figures of both training and testing, loss and accuracy to the number of "
    "parameters.",
    "Comment your result.",
)


def report_section(results: dict, ctx: report.Context) -> str:
    config, runs = results["config"], results["runs"]
    rows = sorted(runs.values(), key=lambda r: r["num_params"])
    params = [r["num_params"] for r in rows]
    out = [f"{results['dataset']}: {results['train_examples']} training / "
           f"{results['test_examples']} test examples; {len(rows)} dense nets of "
           f"{config['hidden_layers']} hidden layers, widths "
           f"{', '.join(str(r['width']) for r in rows)} ({params[0]} to {params[-1]} parameters, "
           f"{math.log10(params[-1] / params[0]):.1f} decades); {config['epochs']} epochs of "
           f"{config['optimizer']} (learning rate {config['learning_rate']:g}, batch "
           f"{config['batch_size']}) each, trained {results['training_mode']} in "
           f"{report.fmt(results['training_seconds'])} s. Final values are evaluated on the "
           "whole sets after the last epoch.", "",
           ctx.figure("loss_vs_params.png", "training and test loss against parameters"),
           ctx.figure("accuracy_vs_params.png", "training and test accuracy against parameters"),
           "", report.table(("model", "parameters", "train loss", "train acc", "test loss",
                             "test acc", "gap (train − test acc)"),
                            [(r["description"], r["num_params"], r["final_train_loss"],
                              report.pct(r["final_train_accuracy"]), r["final_test_loss"],
                              report.pct(r["final_test_accuracy"]),
                              report.points(r["final_train_accuracy"]
                                            - r["final_test_accuracy"])) for r in rows]), ""]
    test_acc = report.series([r["final_test_accuracy"] for r in rows])
    test_loss = report.series([r["final_test_loss"] for r in rows])
    best = int(np.nanargmax(test_acc))
    low = int(np.nanargmin(test_loss))
    gaps = [r["final_train_accuracy"] - r["final_test_accuracy"] for r in rows]
    out.append(f"- Test accuracy is highest with {params[best]} parameters "
               f"({report.pct(test_acc[best])}); the smallest model reaches "
               f"{report.pct(test_acc[0])}, the largest {report.pct(test_acc[-1])}.")
    out.append(f"- Test loss is lowest with {params[low]} parameters "
               f"({report.fmt(test_loss[low])})"
               + (f" and rises to {report.fmt(test_loss[-1])} for the largest model, which "
                  "fits the training set harder than it generalises"
                  if low < len(rows) - 1 and test_loss[-1] > test_loss[low] * 1.05 else "")
               + ".")
    out.append(f"- The training-minus-test accuracy gap grows from {report.points(gaps[0])} to "
               f"{report.points(gaps[-1])}; training accuracy reaches "
               f"{report.pct(rows[-1]['final_train_accuracy'])} at the largest size.")
    return "\n".join(out)
