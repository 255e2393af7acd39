"""The two kinds of task of the HW1-2 optimisation studies (trajectory, grad_norm, minimal_ratio,
error_surface): fitting a 1-D function with a small dense net, or classifying images with a
dense net. Their options are `hw1_tf.config.TaskConfig`."""

from __future__ import annotations

import numpy as np

from hw1_tf import data, fetch, models
from hw1_tf.config import TaskConfig
from hw1_tf.data import Splits


def run_name(config: TaskConfig, task: str) -> str:
    """The run name of `task` under `config` (known without loading its data)."""
    return f"function_{config.function}" if task == "function" else config.dataset


def task_setup(config: TaskConfig, task: str) -> tuple[str, Splits, models.ModelSpec]:
    """(run name, splits, model spec) of `task` ("function" or "image") under `config`."""
    if task == "function":
        splits = data.function_splits(config.function, config.n_train, 1000, seed=config.seed)
        hidden = models.solve_dense_widths(config.function_depth, config.function_params, 1, 1)
        return (run_name(config, task), splits,
                models.ModelSpec(f"dnn_d{config.function_depth}", "dense", hidden=hidden,
                                 activation=config.function_activation))
    spec = models.ModelSpec("dnn", "dense", hidden=tuple(config.hidden))
    return run_name(config, task), fetch.load_splits(config), spec


def shared_task(ctx) -> tuple[str, Splits, models.ModelSpec, np.ndarray]:
    """(run name, splits, spec, sorted indices of the `eval_size` seeded training examples the
    losses are evaluated on) of `ctx.config.task`, made once per context: the train and the
    analyse phase both need them."""
    def make():
        config = ctx.config
        name, splits, spec = task_setup(config, config.task)
        rng = np.random.RandomState(config.seed)
        chosen = np.sort(rng.choice(len(splits.x_train),
                                    min(config.eval_size, len(splits.x_train)), replace=False))
        return name, splits, spec, chosen
    return ctx.shared("task", make)
