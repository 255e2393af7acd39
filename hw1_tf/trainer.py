"""The trainer front: what experiments train through. Settings from a config, one model trained
by the instrumented Keras core (build in the strategy scope, train with a backup to resume from,
export), population settings, and the parameter table, each in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import keras
from absl import logging

from hw1_tf import models, population, store, training
from hw1_tf.data import Splits
from hw1_tf.errors import Hw1Error
from hw1_tf.records import RunRecord


def settings_from(config: Any, **overrides: Any) -> training.TrainSettings:
    """TrainSettings taking every field that `config` has under the same name."""
    names = {f.name for f in dataclasses.fields(training.TrainSettings)}
    values = {n: getattr(config, n) for n in names if hasattr(config, n)}
    values.update(overrides)
    return training.TrainSettings(**values)


def population_settings(config: Any, **extra: Any) -> population.PopulationSettings:
    """PopulationSettings from `config` (as `settings_from`), with the population's own knobs
    in `extra` (shared_order, evaluate_test)."""
    return population.PopulationSettings(**dataclasses.asdict(settings_from(config)), **extra)


def population_refuses(spec: models.ModelSpec, wide: models.ModelSpec, options: Any) -> str | None:
    """Why `spec` cannot train as a member of a population zero-padded to `wide` under
    `options` (a config or settings), or None when it can: the population follows none of the
    options only a model trained alone follows (population.unsupported) and pads only what
    computes the same function (population.check_paddable)."""
    refused = population.unsupported(options)
    if refused:
        return f"{' / '.join('--' + k for k in refused)}: only a model trained alone follows it"
    try:
        population.check_paddable(spec, wide)
    except Hw1Error as e:
        return str(e)
    return None


def partition(specs: Sequence[models.ModelSpec], mode: str, options: Any, *,
              group_max_width: int | None = None
              ) -> tuple[list[models.ModelSpec], list[models.ModelSpec]]:
    """The trainer front's choice of engine per model: (specs trained together as one
    zero-padded population, specs trained alone by the Keras core). `mode`: "population"
    (every spec a population can take), "grouped" (those at most `group_max_width` wide) or
    "one_by_one". A spec goes to the population only where it supports it
    (`population_refuses`); a population of one gains nothing, so it trains alone."""
    if mode == "population":
        candidates = list(specs)
    elif mode == "grouped":
        candidates = [s for s in specs if group_max_width is None
                      or max(s.hidden) <= group_max_width]
    else:
        candidates = []
    if candidates:
        wide = max(candidates, key=lambda s: max(s.hidden))  # what the population pads to
        candidates = [s for s in candidates if population_refuses(s, wide, options) is None]
    if len(candidates) < 2:
        candidates = []
    return candidates, [s for s in specs if s not in candidates]


def train_model(ctx, run_name: str, spec: models.ModelSpec, splits: Splits,
                settings: training.TrainSettings, *, save_model: bool = True,
                tensorboard: bool = True, evaluate_test: bool = True,
                callbacks: Sequence[keras.callbacks.Callback] = (), backup: bool = True,
                **fields: Any) -> tuple[Any, dict[str, Any]]:
    """Builds `spec` for `splits`, trains it in `ctx`'s strategy (evaluating the test split
    every epoch unless `evaluate_test` is False; `callbacks` join the core's, e.g. weight
    snapshots), exports it; returns (model, record with `fields`). With `backup`, a killed run
    started again resumes from its last epoch (the ledger removes the backup once the record is
    kept)."""
    outputs = splits.num_classes or 1
    model = training.build_instrumented(
        lambda: models.build(spec, splits.input_shape, outputs), splits.num_classes, settings,
        strategy=ctx.strategy)
    logging.info("%s/%s: %s, %d parameters, %d epochs", ctx.name, run_name, spec.describe(),
                 model.network.count_params(), settings.epochs)
    history = training.train(
        model, (splits.x_train, splits.y_train), settings,
        test_xy=(splits.x_test, splits.y_test) if evaluate_test else None, run_name=run_name,
        callbacks=callbacks,
        tensorboard_dir=ctx.paths.tensorboard_dir(ctx.name, run_name) if tensorboard else None,
        backup_dir=ctx.backup_dir(run_name) if backup else None)
    record = RunRecord.of(spec, history, **fields).to_dict()
    if save_model:
        path = store.export_model(model.network, ctx.paths.saved_model(ctx.name, run_name))
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
