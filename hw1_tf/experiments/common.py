"""What every experiment does around the training core: settings from its config, one run
(build in the strategy scope, train, export), the parameter table, and writing results+figures
(`finish`, which every experiment ends with)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import keras
import numpy as np

from absl import logging

from hw1_tf import data, distribute, functions, models, plots, store, training
from hw1_tf.config import TrainConfig, option
from hw1_tf.data import Splits


def settings_from(config: Any, **overrides: Any) -> training.TrainSettings:
    """TrainSettings taking every field that `config` has under the same name."""
    names = {f.name for f in dataclasses.fields(training.TrainSettings)}
    values = {n: getattr(config, n) for n in names if hasattr(config, n)}
    values.update(overrides)
    return training.TrainSettings(**values)


def paths_from(config: Any) -> store.Paths:
    """The output folders named by `config` (RunConfig.output_dir, TrainConfig.saved_models_dir)."""
    return store.Paths.create(getattr(config, "output_dir", None),
                              getattr(config, "saved_models_dir", None))


def train_run(experiment: str, run_name: str, spec: models.ModelSpec, splits: Splits,
              settings: training.TrainSettings, *, strategy, paths: store.Paths,
              save_model: bool = True, tensorboard: bool = True, evaluate_test: bool = True,
              callbacks: Sequence[keras.callbacks.Callback] = ()) -> tuple[Any, dict[str, Any]]:
    """Builds `spec` for `splits`, trains it (evaluating the test split every epoch unless
    `evaluate_test` is False; `callbacks` join the core's, e.g. weight snapshots or
    BackupAndRestore), exports it; returns (model, record)."""
    outputs = splits.num_classes or 1
    model = training.build_instrumented(
        lambda: models.build(spec, splits.input_shape, outputs), splits.num_classes, settings,
        strategy=strategy)
    logging.info("%s/%s: %s, %d parameters, %d epochs", experiment, run_name, spec.describe(),
                 model.network.count_params(), settings.epochs)
    history = training.train(
        model, (splits.x_train, splits.y_train), settings,
        test_xy=(splits.x_test, splits.y_test) if evaluate_test else None, run_name=run_name,
        callbacks=callbacks,
        tensorboard_dir=paths.tensorboard_dir(experiment, run_name) if tensorboard else None)
    record = {"model": dataclasses.asdict(spec), "description": spec.describe(),
              "num_params": history.pop("num_params"), "history": history_arrays(history)}
    if save_model:
        path = store.export_model(model.network, paths.saved_model(experiment, run_name))
        record["saved_model"] = str(path)
    return model, record


def history_arrays(history: dict[str, Any]) -> dict[str, Any]:
    """`history` with its per-iteration values as arrays, which the store keeps in the .npz
    rather than in results.json."""
    history["iteration"] = {k: np.asarray(v, np.int8 if k == "objective" else np.float32)
                            for k, v in history["iteration"].items()}
    return history


def log_param_table(rows: list[tuple[str, str, int]]) -> str:
    """Logs and returns a plain-text table of (run, architecture, parameters)."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'run':<{width}}  {'parameters':>10}  architecture"]
    lines += [f"{name:<{width}}  {n:>10d}  {desc}" for name, desc, n in rows]
    table = "\n".join(lines)
    logging.info("parameter table:\n%s", table)
    return table


def finish(experiment: str, config: Any, runs: dict[str, Any], paths: store.Paths,
           **extra: Any) -> dict[str, Any]:
    """Writes results.json (numpy arrays to the .npz beside it) and draws the figures from
    what was written, so a redraw (bin/make_figures) sees exactly what this run saw."""
    path = store.save_results(paths, experiment, config, runs, **extra)
    results = store.load_results(paths, experiment)
    figures = plots.make_figures(results, paths.figures_dir(experiment))
    logging.info("%s: results in %s, %d figures in %s", experiment, path, len(figures),
                 paths.figures_dir(experiment))
    results["figures"] = [str(p) for p in figures]
    return results


def strategy_from(config: Any):
    return distribute.make_strategy(getattr(config, "strategy", "default"))



# ------------------------------------------------------ the two tasks of the HW1-2 studies


@dataclasses.dataclass
class TaskConfig(TrainConfig):
    """The slides' two kinds of task for the optimisation studies: fitting a 1-D function with
    a small dense net, or classifying images (MNIST) with a dense net."""

    function: str = option("sinc", "Target of the function task.",
                           choices=tuple(functions.names()))
    function_depth: int = option(4, "Hidden layers of the function net.", lower=1)
    function_params: int = option(571, "Parameter count the function net is solved to.",
                                  lower=10)
    function_activation: str = option("relu", "Hidden activation of the function net.")
    n_train: int = option(4096, "Training points of the function task.", lower=8)
    dataset: str = option("mnist", "Dataset of the image task (digits: tiny, for tests).",
                          choices=data.IMAGE_DATASETS)
    hidden: tuple[int, ...] = option((128,), "Hidden widths of the image task's dense net.",
                                     lower=1)
    train_size: int | None = option(None, "Seeded subset of the image training set.", lower=1)
    test_size: int | None = option(None, "Seeded subset of the image test set.", lower=1)
    data_dir: str | None = option(None, "Folder with <dataset>/ IDX files (default "
                                  "$HW1_DATA_DIR or <project>/data).")


def task_setup(config: TaskConfig, task: str) -> tuple[str, Splits, models.ModelSpec]:
    """(run name, splits, model spec) of `task` ("function" or "image") under `config`."""
    if task == "function":
        splits = data.function_splits(config.function, config.n_train, 1000, seed=config.seed)
        hidden = models.solve_dense_widths(config.function_depth, config.function_params, 1, 1)
        return (f"function_{config.function}", splits,
                models.ModelSpec(f"dnn_d{config.function_depth}", "dense", hidden=hidden,
                                 activation=config.function_activation))
    splits = data.load(config.dataset, config.data_dir, train_size=config.train_size,
                       test_size=config.test_size, seed=config.seed)
    return config.dataset, splits, models.ModelSpec("dnn", "dense", hidden=tuple(config.hidden))
