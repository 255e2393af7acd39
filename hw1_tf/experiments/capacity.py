"""HW1-3 "number of parameters vs generalization": dense nets of one structure (a fixed number of
hidden layers) and growing width, their parameter counts spanning decades, trained alike on
MNIST (or Fashion-MNIST); final training and test loss and accuracy against parameter count."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import logging

from hw1_tf import framework, markdown, measures, models, population, store, trainer
from hw1_tf.config import ConfigError, ImageTrainConfig, StopOptions, option
from hw1_tf.figures import FigureSet, finish_axes, plt
from hw1_tf.records import RunRecord

EXPERIMENT = "capacity"
POSITION = 320  # its place in the slides' order (the registry sorts by it)


# How the models train. population: all as one population padded to the widest model; grouped:
# the widths <= --group_max_width as one population padded to the widest of them, the others
# one after another; one_by_one: each through the training core alone. A padded member trains
# exactly as its narrow model alone (`population.padded_initial_weights`).
MODES = ("auto", "grouped", "population", "one_by_one")
AUTO_MODE = "grouped"  # the fastest in bench/capacity_population.py (README, capacity: Timing)


@dataclasses.dataclass
class Config(StopOptions, ImageTrainConfig):
    widths: tuple[int, ...] = option((2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), "Hidden width "
                                     "of each model (one model per width).", lower=1)
    hidden_layers: int = option(2, "Hidden layers of every model (the shared structure).",
                                lower=1)
    epochs: int = option(20, "Training epochs per run.", lower=1)
    save_models: bool = option(False, "Export each trained model as a SavedModel (and "
                               ".keras).")
    tensorboard: bool = option(False, "Write TensorBoard logs under results/ (of the models "
                               "trained one by one; auto then trains every model so).")
    training_mode: str = option("auto", "grouped: the widths <= --group_max_width as one "
                                "population zero-padded to the widest of them, the rest one "
                                "after another; population: all padded to the widest; "
                                f"one_by_one: each alone; auto: {AUTO_MODE} (measured fastest), "
                                "one_by_one with --tensorboard.", choices=MODES)
    group_max_width: int = option(64, "--training_mode=grouped: widest model trained in the "
                                  "population.", lower=1)

    def __post_init__(self):
        super().__post_init__()
        if len(set(self.widths)) != len(self.widths):
            raise ConfigError("--widths must not repeat a width")
        if _per_model_options(self) and self.training_mode not in ("auto", "one_by_one"):
            options = _per_model_options(self)
            raise ConfigError(f"{' and '.join(options)} need{'s' if len(options) == 1 else ''}"
                              " --training_mode=one_by_one (or auto): a population does not "
                              "do that")


def model_specs(config: Config) -> list[models.ModelSpec]:
    return [models.ModelSpec(f"w{w}", "dense", hidden=(int(w),) * config.hidden_layers)
            for w in sorted(config.widths)]


def _per_model_options(config) -> list[str]:
    """The options set that only a model trained alone follows."""
    return [f"--{k}" for k in population.unsupported(config)]


GROUP_BACKUP = "population"  # the backup folder of the models trained together


def resolve_mode(config: Config) -> str:
    """The mode `auto` stands for; the others as given."""
    if _per_model_options(config):  # what a population does not do: every model alone
        return "one_by_one"
    if config.training_mode != "auto":
        if config.tensorboard and config.training_mode != "one_by_one":
            logging.warning("capacity: TensorBoard logs are written for the models trained one "
                            "by one only (--training_mode=one_by_one writes them for all)")
        return config.training_mode
    return "one_by_one" if config.tensorboard else AUTO_MODE


def partition(specs: Sequence[models.ModelSpec], mode: str, config: Config):
    """(specs trained together as one population, specs trained one after another): the
    trainer front's choice (`trainer.partition`) under this config's mode and widths."""
    return trainer.partition(specs, mode, config, group_max_width=config.group_max_width)


def final_values(network, splits) -> dict[str, float]:
    """Loss and accuracy of `network` on the whole training and test sets."""
    values = {}
    for split, (x, y) in (("train", (splits.x_train, splits.y_train)),
                          ("test", (splits.x_test, splits.y_test))):
        exact = measures.evaluate(network, x, y)
        values[f"final_{split}_loss"] = exact["loss"]
        values[f"final_{split}_accuracy"] = exact["accuracy"]
    return values


def _record(ctx, spec, history, network, splits) -> dict[str, Any]:
    # the history's num_params is the padded member's; the record keeps the narrow model's
    record = RunRecord.of(spec, history, int(network.count_params()),
                          width=spec.hidden[0], **final_values(network, splits)).to_dict()
    if ctx.config.save_models:
        record["saved_model"] = str(store.export_model(
            network, ctx.paths.saved_model(EXPERIMENT, spec.name)))
    return record


def _mode(ctx: framework.ExperimentContext) -> str:
    """`resolve_mode` of the config, once (plan and analyse both need it; its warning once)."""
    return ctx.shared("mode", lambda: resolve_mode(ctx.config))


def plan(ctx: framework.ExperimentContext) -> list[framework.Run | framework.Group]:
    """The models trained together (as `--training_mode` says) as one group, backed up to
    GROUP_BACKUP, then one run per model trained alone; what already finished for this config
    is skipped."""
    together, alone = partition(model_specs(ctx.config), _mode(ctx), ctx.config)
    items: list[framework.Run | framework.Group] = []
    if together:
        items.append(framework.Group([s.name for s in together], train_together,
                                     {"specs": together}, backup=GROUP_BACKUP))
    items += [framework.Run(s.name, train_alone, {"spec": s}) for s in alone]
    return items


def train_alone(ctx: framework.ExperimentContext, spec: models.ModelSpec) -> dict[str, Any]:
    """Model `spec` through the training core, evaluated on the whole training and test sets
    after its last epoch."""
    config = ctx.config
    splits = ctx.splits()
    model, record = ctx.train_model(spec.name, spec, splits, trainer.settings_from(config),
                                    save_model=config.save_models,
                                    tensorboard=config.tensorboard,
                                    evaluate_test=False)  # read: the final evaluation only
    record.update(width=spec.hidden[0], **final_values(model.network, splits))
    return record


def train_together(ctx: framework.ExperimentContext,
                   specs: Sequence[models.ModelSpec]) -> dict[str, dict[str, Any]]:
    """`specs` as the members of one population of the widest spec, each zero-padded to it:
    every member takes the seed's initial weights of its own model and the seed's batches (the
    single run's), so it trains as that model alone would. Each is evaluated on the whole
    training and test sets after its last epoch."""
    config = ctx.config
    splits = ctx.splits()
    wide = max(specs, key=lambda s: max(s.hidden))
    outputs = splits.num_classes
    initial = [population.padded_initial_weights(s, wide, splits.input_shape, outputs,
                                                 config.seed) for s in specs]
    settings = trainer.population_settings(config, shared_order=True,
                                           evaluate_test=False)  # final evaluation only
    pop, histories = population.train_population(
        wide, splits, settings, [config.seed] * len(specs), strategy=ctx.strategy,
        run_name=f"{EXPERIMENT} population of {len(specs)} padded to {wide.name}",
        initial=initial,
        backup_dir=ctx.backup_dir(GROUP_BACKUP))
    return {spec.name: _record(ctx, spec, history, pop.member(i, spec), splits)
            for i, (spec, history) in enumerate(zip(specs, histories))}


def describe_mode(mode: str, specs, config: Config) -> str:
    """How the models trained, as the report says it ("trained <this> in N s")."""
    together, alone = partition(specs, mode, config)
    if not together:
        return "one after another"
    wide = max(max(s.hidden) for s in together)
    text = f"as one population (widths {', '.join(str(s.hidden[0]) for s in together)} " \
           f"zero-padded to {wide})"
    if alone:
        text += f" and one after another (widths {', '.join(str(s.hidden[0]) for s in alone)})"
    return text


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """The runs in width order, the parameter table, and how (and how long) the models
    trained."""
    config = ctx.config
    splits = ctx.splits()
    specs = model_specs(config)
    runs = {s.name: records[s.name] for s in specs}
    typed = {n: RunRecord.from_dict(r) for n, r in runs.items()}
    table = trainer.log_param_table([(n, r.description, r.num_params)
                                    for n, r in typed.items()])
    mode = _mode(ctx)
    return framework.Outcome(runs, dict(
        dataset=splits.name, train_examples=len(splits.x_train),
        test_examples=len(splits.x_test), param_table=table,
        training_seconds=ctx.training_seconds,
        training_mode=describe_mode(mode, specs, config), training_mode_name=mode))


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Final training and test loss, and accuracy, against the parameter count (log x), one
    point per model."""
    runs = sorted(results["runs"].values(), key=lambda r: r.num_params)
    params = [r.num_params for r in runs]
    out = FigureSet(figures_dir)
    for metric, ylabel in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        values = []
        for split, marker, color in (("train", "o", "C0"), ("test", "s", "C1")):
            v = [getattr(r, f"final_{split}_{metric}") for r in runs]
            ax.scatter(params, v, marker=marker, color=color, label=f"{split}")
            values += v
        ax.set_xscale("log")
        finish_axes(ax, f"HW1-3 {results['dataset']}: final {metric} vs model size "
                    f"({results['config']['hidden_layers']} hidden layers, growing width)",
                    "number of parameters (log scale)", ylabel,
                    values=values if metric == "loss" else None,
                    log_y=None if metric == "loss" else False)
        out.save(fig, f"{metric}_vs_params")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Number of parameters vs generalization"
QUESTIONS = (
    "Describe your settings of the experiments (e.g. which task, the 10 or more structures you "
    "choose).",
    "Plot the figures of both training and testing, loss and accuracy to the number of "
    "parameters.",
    "Comment your result.",
)


def report_section(results: dict, ctx: markdown.Context) -> str:
    config, runs = results["config"], results["runs"]
    rows = sorted(runs.values(), key=lambda r: r.num_params)
    params = [r.num_params for r in rows]
    out = [f"{results['dataset']}: {results['train_examples']} training / "
           f"{results['test_examples']} test examples; {len(rows)} dense nets of "
           f"{config['hidden_layers']} hidden layers, widths "
           f"{', '.join(str(r.width) for r in rows)} ({params[0]} to {params[-1]} parameters, "
           f"{math.log10(params[-1] / params[0]):.1f} decades); {config['epochs']} epochs of "
           f"{config['optimizer']} (learning rate {config['learning_rate']:g}, batch "
           f"{config['batch_size']}) each, trained {results['training_mode']} in "
           f"{markdown.fmt(results['training_seconds'])} s. Final values are evaluated on the "
           "whole sets after the last epoch.", "",
           ctx.figure("loss_vs_params", "training and test loss against parameters"),
           ctx.figure("accuracy_vs_params", "training and test accuracy against parameters"),
           "", markdown.table(("model", "parameters", "train loss", "train acc", "test loss",
                             "test acc", "gap (train − test acc)"),
                            [(r.description, r.num_params, r.final_train_loss,
                              markdown.pct(r.final_train_accuracy), r.final_test_loss,
                              markdown.pct(r.final_test_accuracy),
                              markdown.points(r.final_train_accuracy
                                            - r.final_test_accuracy)) for r in rows]), ""]
    test_acc = markdown.series([r.final_test_accuracy for r in rows])
    test_loss = markdown.series([r.final_test_loss for r in rows])
    best = int(np.nanargmax(test_acc))
    low = int(np.nanargmin(test_loss))
    gaps = [r.final_train_accuracy - r.final_test_accuracy for r in rows]
    out.append(f"- Test accuracy is highest with {params[best]} parameters "
               f"({markdown.pct(test_acc[best])}); the smallest model reaches "
               f"{markdown.pct(test_acc[0])}, the largest {markdown.pct(test_acc[-1])}.")
    out.append(f"- Test loss is lowest with {params[low]} parameters "
               f"({markdown.fmt(test_loss[low])})"
               + (f" and rises to {markdown.fmt(test_loss[-1])} for the largest model, which "
                  "fits the training set harder than it generalises"
                  if low < len(rows) - 1 and test_loss[-1] > test_loss[low] * 1.05 else "")
               + ".")
    out.append(f"- The training-minus-test accuracy gap grows from {markdown.points(gaps[0])} to "
               f"{markdown.points(gaps[-1])}; training accuracy reaches "
               f"{markdown.pct(rows[-1].final_train_accuracy)} at the largest size.")
    return "\n".join(out)


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"capacity.models": "models, parameter range, test accuracy"}


def scorecard(results: dict) -> dict[str, Measured]:
    config = results["config"]
    runs = sorted(results["runs"].values(), key=lambda r: r.num_params)
    return {"capacity.models": Measured(
        f"{len(runs)} models, {runs[0].num_params} to {runs[-1].num_params} parameters; "
        f"test acc {markdown.pct(runs[0].final_test_accuracy)} to "
        f"{markdown.pct(runs[-1].final_test_accuracy)}",
        f"dense nets of {config['hidden_layers']} hidden layers, {config['epochs']} epochs on "
        f"{results['train_examples']} examples")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {1: ("*",)}
