"""What every experiment does around the training core: settings from its config, one run
(build in the strategy scope, train, export), the parameter table, and writing results+figures
(`finish`, which every experiment ends with)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import keras
import numpy as np

from absl import logging

from hw1_tf import data, distribute, models, plots, store, training
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
    # per-iteration values as arrays: the store keeps them in the .npz, not in results.json
    history["iteration"] = {k: np.asarray(v, np.int8 if k == "objective" else np.float32)
                            for k, v in history["iteration"].items()}
    record = {"model": dataclasses.asdict(spec), "description": spec.describe(),
              "num_params": history.pop("num_params"), "history": history}
    if save_model:
        path = store.export_model(model.network, paths.saved_model(experiment, run_name))
        record["saved_model"] = str(path)
    return model, record


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



@dataclasses.dataclass
class ImageTrainConfig(TrainConfig):
    """A TrainConfig whose runs train on one image dataset (the HW1-3 experiments)."""

    dataset: str = option("mnist", "Dataset to train on.", choices=data.IMAGE_DATASETS)
    data_dir: str | None = option(None, "Folder with <dataset>/ IDX files and tfds/ (default "
                                  "$HW1_DATA_DIR or <project>/data).")
    train_size: int | None = option(None, "Use a seeded subset of the training set.", lower=1)
    test_size: int | None = option(None, "Use a seeded subset of the test set.", lower=1)


def load_splits(config: ImageTrainConfig, **kwargs: Any) -> Splits:
    """The dataset `config` names, with its subsets (kwargs go to `data.load`)."""
    return data.load(config.dataset, config.data_dir, train_size=config.train_size,
                     test_size=config.test_size, seed=config.seed, **kwargs)
