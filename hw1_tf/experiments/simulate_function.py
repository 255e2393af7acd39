"""HW1-1 "simulate a function": dense nets of equal parameter count but different depth fit
1-D non-linear functions; compares their training loss and their fitted curves."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from hw1_tf import data, functions, models
from hw1_tf.config import TrainConfig, option
from hw1_tf.experiments import common

EXPERIMENT = "simulate_function"


@dataclasses.dataclass
class Config(TrainConfig):
    functions: tuple[str, ...] = option(("sinc", "sign"), "Target functions.",
                                        choices=tuple(functions.names()))
    depths: tuple[int, ...] = option((1, 4, 7), "Hidden layers of each model.", lower=1)
    target_params: int = option(571, "Parameter count every model is solved to (the slides' "
                                "models have 571-572).", lower=10)
    activation: str = option("relu", "Hidden activation (any Keras name).")
    n_train: int = option(4096, "Training points sampled from the domain.", lower=8)
    n_test: int = option(1000, "Evenly spaced points of the prediction figure and test MSE.",
                         lower=2)
    restarts: int = option(1, "Initialisations per model (seeds seed, seed+1, ...); the one "
                           "with the lowest final training loss is the model's result.", lower=1)
    epochs: int = option(2000, "Training epochs per run.", lower=1)
    batch_size: int = option(256, "Global batch size (split across replicas).", lower=1)
    verbose: int = option(0, "Progress output: 0 log lines with ETA, 1 Keras bar, 2 a line per "
                          "epoch.", lower=0, upper=2)

    # which runs to do, not what each run is: results of other selections merge (common)
    RUN_SELECTION: ClassVar[tuple[str, ...]] = ("functions", "depths")


def model_specs(config: Config) -> list[models.ModelSpec]:
    specs = []
    for depth in config.depths:
        hidden = models.solve_dense_widths(depth, config.target_params, 1, 1)
        specs.append(models.ModelSpec(f"dnn_d{depth}", "dense", hidden=hidden,
                                      activation=config.activation))
    return specs


def run(config: Config) -> dict:
    paths = common.paths_from(config)
    strategy = common.strategy_from(config)
    settings = common.settings_from(config)
    specs = model_specs(config)
    common.log_param_table([(s.name, s.describe(), models.param_count(1, s.hidden, 1))
                            for s in specs])
    runs, targets, best = {}, {}, {}
    for fn_name in config.functions:
        splits = data.function_splits(fn_name, config.n_train, config.n_test, seed=config.seed)
        fn = functions.get(fn_name)
        targets[fn_name] = {"formula": fn.formula, "domain": fn.domain,
                            "x": splits.x_test[:, 0], "y": splits.y_test[:, 0]}
        for spec in specs:
            names = []
            for restart in range(config.restarts):
                run_name = f"{fn_name}_{spec.name}"
                if config.restarts > 1:
                    run_name += f"_r{restart}"

                def train(spec=spec, run_name=run_name, restart=restart):
                    model, record = common.train_run(
                        EXPERIMENT, run_name, spec, splits,
                        dataclasses.replace(settings, seed=config.seed + restart),
                        strategy=strategy, paths=paths, save_model=config.save_models,
                        tensorboard=config.tensorboard,
                        evaluate_test=False)  # the grid is scored once, at the end
                    pred = model.predict(splits.x_test, batch_size=4096, verbose=0)[:, 0]
                    record.update(function=fn_name, restart=restart, prediction=pred,
                                  test_mse=float(np.mean((pred - splits.y_test[:, 0]) ** 2)))
                    return record

                runs[run_name] = common.run_once(EXPERIMENT, config, paths, run_name, train)
                names.append(run_name)
            # "tune all models to the best" (slides): keep the lowest final training loss
            best[f"{fn_name}/{spec.name}"] = min(
                names, key=lambda n: runs[n]["history"]["epoch"]["train_loss"][-1])
    return common.finish(EXPERIMENT, config, runs, paths, targets=targets, best_runs=best)
