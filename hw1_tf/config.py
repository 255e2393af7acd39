"""Experiment configs: one dataclass per experiment is the one source of its flags.

Every field is declared with `option(default, help, ...)`; `hw1_tf.cli` turns each field into an
absl flag of the same name (type from the annotation, default from the field, help and bounds
from the metadata), so a flag's default can never differ from the config's. Precedence is
config default < flag file < command line.

`RunConfig` holds the fields every experiment has; `TrainConfig` adds the knobs of the
instrumented training core (hw1_tf.training) for experiments that train Keras models; the
mixins below it add what groups of experiments share: one image dataset (`ImageTrainConfig`),
the stopping rules of a model trained alone (`StopOptions`) and the two tasks of the HW1-2
studies (`TaskConfig`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from hw1_tf import data, functions
from hw1_tf.distribute import STRATEGIES
from hw1_tf.errors import Hw1Error


class ConfigError(Hw1Error):
    """A config value is out of range or inconsistent with another (a usage error: exit 2)."""


def option(default: Any, help: str, *, choices: tuple | None = None,
           lower: float | None = None, upper: float | None = None,
           increasing: bool = False, process: bool = False) -> Any:
    """A config field with its flag's help text and validation.

    `choices`: allowed values (each item, for a tuple field); `lower`/`upper`: inclusive bounds
    (each item, for a tuple field); `increasing`: a tuple field's items must rise strictly (a
    range given as first,last); `process`: applied by the binary before TensorFlow starts
    (e.g. logical devices), still recorded in the config.
    """
    meta = {"help": help, "choices": choices, "lower": lower, "upper": upper,
            "increasing": increasing, "process": process}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a list-valued option (dataclass defaults are shared)")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class FieldKind:
    """What a field holds: its base type (bool/int/float/str), a tuple of it, optional or not."""

    base: type
    is_tuple: bool
    optional: bool


@functools.cache
def _type_hints(config_cls: type) -> dict[str, Any]:
    """A class's evaluated annotations, once per class: with string annotations (`from
    __future__ import annotations`) each `typing.get_type_hints` compiles every one of them."""
    return typing.get_type_hints(config_cls)


def field_kind(config_cls: type, field: dataclasses.Field) -> FieldKind:
    hint = _type_hints(config_cls)[field.name]
    optional = False
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        optional = True
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return FieldKind(typing.get_args(hint)[0], True, optional)
    return FieldKind(hint, False, optional)


def validate(config: Any) -> None:
    """Checks every field against its option's choices and bounds; raises ConfigError."""
    for field in dataclasses.fields(config):
        meta = field.metadata
        value = getattr(config, field.name)
        if value is None:
            continue
        items = value if isinstance(value, tuple) else (value,)
        if meta.get("increasing") and any(b <= a for a, b in zip(items, items[1:])):
            raise ConfigError(f"--{field.name}={','.join(map(str, items))}: the values must "
                              "increase (a range is given first,last)")
        for item in items:
            if meta.get("choices") is not None and item not in meta["choices"]:
                raise ConfigError(f"--{field.name}: {item!r} is not one of "
                                  f"{', '.join(map(str, meta['choices']))}")
            if meta.get("lower") is not None and item < meta["lower"]:
                raise ConfigError(f"--{field.name}: {item} is below the minimum {meta['lower']}")
            if meta.get("upper") is not None and item > meta["upper"]:
                raise ConfigError(f"--{field.name}: {item} is above the maximum {meta['upper']}")


@dataclasses.dataclass
class RunConfig:
    """Fields every experiment has."""

    seed: int = option(0, "Seed of initialisation, data order, subsets and probes.")
    output_dir: str | None = option(None, "Root of results/, figures/ and saved_models/ "
                                    "(default: the project root).")
    verbose: int = option(1, "Progress output: 0 log lines with ETA, 1 Keras bar, 2 a line "
                          "per epoch.", lower=0, upper=2)

    def __post_init__(self):
        validate(self)


OPTIMIZERS = ("adam", "sgd", "rmsprop", "adagrad")  # the one list: the core and populations


@dataclasses.dataclass
class DistributeOptions:
    """Where the heavy computation runs: an experiment's training, Hessian-vector products,
    interpolation and input Jacobians all follow these two fields."""

    strategy: str = option("default", "tf.distribute strategy.", choices=STRATEGIES)
    logical_cpus: int = option(1, "Split the CPU into this many logical devices, so "
                               "--strategy=mirrored has several replicas without GPUs.",
                               lower=1, process=True)


@dataclasses.dataclass
class TrainConfig(DistributeOptions, RunConfig):
    """The knobs of the instrumented training core; an experiment that trains Keras models
    subclasses it (and redeclares a field to change its default)."""

    epochs: int = option(10, "Training epochs per run.", lower=1)
    batch_size: int = option(128, "Global batch size (split across replicas).", lower=1)
    learning_rate: float = option(1e-3, "Optimizer learning rate.", lower=0.0)
    optimizer: str = option("adam", "Optimizer of the training runs.", choices=OPTIMIZERS)
    jit_compile: bool = option(True, "XLA-compile the train step (one device only; off for "
                               "convolutions on CPU, where XLA is slow).")
    steps_per_execution: int = option(64, "Train steps per tf.function call (one device only); "
                                      "the per-iteration history stays exact.", lower=1)
    objective: str = option("loss", "What training minimises at the start: the loss, or the "
                            "squared gradient norm ||grad L||^2.", choices=("loss", "grad_norm"))
    switch_grad_norm_below: float | None = option(
        None, "Switch from loss to gradient-norm minimisation once ||grad L|| falls below "
        "this.", lower=0.0)
    switch_after_epochs: int | None = option(
        None, "Switch from loss to gradient-norm minimisation after this many epochs.", lower=0)
    stop_grad_norm_below: float | None = option(
        None, "Stop once ||grad L|| falls below this (while minimising the norm when a switch "
        "is set).", lower=0.0)
    grad_norm_learning_rate: float | None = option(
        None, "Learning rate after the switch to gradient-norm minimisation (default: "
        "--learning_rate).", lower=0.0)
    tensorboard: bool = option(True, "Write TensorBoard logs (per-iteration loss, gradient "
                               "norm and objective; per-epoch metrics) under results/.")
    save_models: bool = option(True, "Export each trained model as a SavedModel (and .keras).")
    saved_models_dir: str | None = option(None, "Where SavedModels go (default "
                                          "<output_dir>/saved_models).")
    force: bool = option(False, "Rerun the runs already finished for the same config (they "
                         "are recorded in results/; without --force they are skipped).")


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
    these fields; those that train populations do not offer them. A field counts as set when
    it differs from its default (population.unsupported)."""

    stop_loss_below: float | None = option(
        None, "Stop a run after the first epoch whose training loss is at most this (models "
        "compared at one training loss; --epochs is then the most it may take).", lower=0.0)
    stop_accuracy_above: float | None = option(
        None, "Stop a run after the first epoch whose training accuracy is at least this "
        "(e.g. once the training set is fitted).", lower=0.0, upper=1.0)
    learning_rate_decay: float | None = option(
        None, "Multiply the learning rate by this after every epoch (Zhang et al. 2017: "
        "0.95).", lower=0.0, upper=1.0)
    patience: int | None = option(
        None, "Convergence rule: stop a run once --patience_monitor has not improved for this "
        "many epochs (--epochs is then the most it may take); the history records the stop "
        "epoch, why, and the best epoch (the final weights are the stop epoch's).", lower=1)
    patience_monitor: str = option(
        "test_accuracy", "What --patience watches: an epoch's test accuracy or loss (the test "
        "split evaluated every epoch) or its mean training loss or accuracy.",
        choices=("test_accuracy", "test_loss", "train_loss", "train_accuracy"))
    patience_min_delta: float = option(
        0.0, "An epoch improves on the best only by more than this, in the monitor's unit "
        "(accuracy as a fraction: 1e-3 is 0.1 point).", lower=0.0)


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
