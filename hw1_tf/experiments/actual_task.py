"""HW1-1 "train on actual tasks": shallow and deep DNNs and CNNs of comparable size on MNIST,
Fashion-MNIST and (where tensorflow-datasets can download it) CIFAR-10; training and test loss
and accuracy per epoch."""

from __future__ import annotations

import dataclasses

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
    skip_unavailable: bool = option(True, "Skip a dataset that cannot be loaded (CIFAR-10 "
                                    "offline) and record why, instead of failing.")
    train_size: int | None = option(None, "Use a seeded subset of the training set.", lower=1)
    test_size: int | None = option(None, "Use a seeded subset of the test set.", lower=1)
    data_dir: str | None = option(None, "Folder with <dataset>/ IDX files and tfds/ (default "
                                  "$HW1_DATA_DIR or <project>/data).")
    allow_download: bool = option(True, "Let tensorflow-datasets download CIFAR-10.")
    epochs: int = option(20, "Training epochs per run.", lower=1)


def run(config: Config) -> dict:
    paths = common.paths_from(config)
    strategy = common.strategy_from(config)
    settings = common.settings_from(config)
    datasets = (config.dataset,) if config.dataset else config.datasets
    runs, skipped, tables = {}, {}, {}
    for name in datasets:
        try:
            splits = data.load(name, config.data_dir, train_size=config.train_size,
                               test_size=config.test_size, seed=config.seed,
                               allow_download=config.allow_download and name == "cifar10")
        except DataError as e:
            if not config.skip_unavailable or len(datasets) == 1:
                raise
            logging.warning("skipping %s: %s", name, e)
            skipped[name] = str(e)
            continue
        specs = [models.family_spec(f, config.target_params, splits.input_shape,
                                    splits.num_classes) for f in config.models]
        rows = []
        for spec in specs:
            run_name = f"{name}_{spec.name}"
            _, record = common.train_run(EXPERIMENT, run_name, spec, splits, settings,
                                         strategy=strategy, paths=paths,
                                         save_model=config.save_models,
                                         tensorboard=config.tensorboard)
            record["dataset"] = name
            runs[run_name] = record
            rows.append((run_name, spec.describe(), record["num_params"]))
        tables[name] = common.log_param_table(rows)
    return common.finish(EXPERIMENT, config, runs, paths, skipped_datasets=skipped,
                         param_tables=tables)
