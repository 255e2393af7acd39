"""Training approaches of HW1-3 part 2 (sensitivity, sharpness, reparametrization): one model
per (batch size, learning rate), trained by the one training core, each recorded with its
initial weights and the exact loss and accuracy of its final weights on both splits."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from hw1_tf import callbacks, data, framework, measures, models, trainer
from hw1_tf.config import option


@dataclasses.dataclass
class SharpnessOptions:
    """The knobs of the three sharpness definitions (hw1_tf.measures), shared by every
    experiment that computes them."""

    epsilon: float = option(1e-4, "Radius eps of the slides' sharpness.", lower=0.0)
    keskar_epsilon: float = option(1e-3, "Box size eps of Keskar et al.'s sharpness.",
                                   lower=0.0)
    keskar_maxiter: int = option(10, "L-BFGS-B iterations per start (Keskar et al.: 10).",
                                 lower=1)
    keskar_restarts: int = option(2, "L-BFGS-B starts: the centre, then seeded random "
                                  "points in the box.", lower=1)
    max_block_mb: float = option(256.0, "tf.hessians blocks up to this size; larger blocks' "
                                 "norms come from HVPs.", lower=0.0)


def approach_name(batch_size: int, learning_rate: float) -> str:
    return f"bs{batch_size}_lr{learning_rate:g}"


def train_approach(ctx: framework.ExperimentContext, splits: data.Splits,
                   spec: models.ModelSpec, batch_size: int,
                   learning_rate: float) -> tuple[Any, dict]:
    """Trains `spec` with this batch size and learning rate; returns (network, record)."""
    config = ctx.config
    name = approach_name(batch_size, learning_rate)
    settings = trainer.settings_from(config, batch_size=batch_size, learning_rate=learning_rate)
    initial = callbacks.InitialWeights()
    # no per-epoch test evaluation: these experiments read only the final weights' exact
    # losses below (and a --patience_monitor=test_* then says it needs the test split)
    model, record = ctx.train_model(name, spec, splits, settings, save_model=config.save_models,
                                    tensorboard=config.tensorboard, callbacks=[initial],
                                    evaluate_test=False)
    network = model.network
    final = {"train": measures.evaluate(network, splits.x_train, splits.y_train),
             "test": measures.evaluate(network, splits.x_test, splits.y_test)}
    record.update({
        "batch_size": batch_size, "learning_rate": learning_rate, "dataset": splits.name,
        "initial_theta": np.asarray(initial.theta, np.float32),
        "train_loss": final["train"]["loss"], "test_loss": final["test"]["loss"],
        "train_accuracy": final["train"]["accuracy"],
        "test_accuracy": final["test"]["accuracy"],
        "loss_gap": final["test"]["loss"] - final["train"]["loss"],
        "error_gap": final["test"]["error"] - final["train"]["error"]})
    return network, record


def plan_approaches(pairs: Sequence[tuple[int, float]],
                    train: Callable[..., dict]) -> list[framework.Run]:
    """One run per (batch size, learning rate) of `pairs`, named by `approach_name`, trained
    by the experiment's module-level `train(ctx, batch_size, learning_rate)`. Each finished
    approach is kept at once (the ledger): an interrupted study resumes at the next one, and a
    rerun skips those already done."""
    return [framework.Run(approach_name(b, lr), train, {"batch_size": b, "learning_rate": lr})
            for b, lr in pairs]


def train_and_measure(ctx: framework.ExperimentContext, splits: data.Splits,
                      spec: models.ModelSpec, batch_size: int, learning_rate: float,
                      measure: Callable[[framework.ExperimentContext, Any, dict],
                                        dict[str, Any]]) -> dict:
    """One approach trained (`train_approach`), its record completed with
    `measure(ctx, network, record)`'s values (a module-level function of the experiment) and
    `<experiment>_seconds` (the time `measure` took)."""
    experiment = ctx.name
    network, record = train_approach(ctx, splits, spec, batch_size, learning_rate)
    start = time.perf_counter()
    record.update(measure(ctx, network, record))
    record[f"{experiment}_seconds"] = time.perf_counter() - start
    logging.info("%s/%s: test accuracy %.4f, measured in %.1fs", experiment,
                 approach_name(batch_size, learning_rate), record["test_accuracy"],
                 record[f"{experiment}_seconds"])
    return record


def analysis_subset(splits: data.Splits, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same `n` training examples for every model (seeded)."""
    n = min(n, len(splits.x_train))
    keep = np.sort(np.random.RandomState(seed + 1).choice(len(splits.x_train), n,
                                                          replace=False))
    return splits.x_train[keep], splits.y_train[keep]
