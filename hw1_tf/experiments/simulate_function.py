"""HW1-1 "simulate a function": dense nets of equal parameter count but different depth fit
1-D non-linear functions; compares their training loss and their fitted curves."""

from __future__ import annotations

import dataclasses

import numpy as np

from hw1_tf import data, functions, models, population
from hw1_tf.experiments import common

EXPERIMENT = "simulate_function"


@dataclasses.dataclass
class Config(common.RunConfig):
    functions: tuple[str, ...] = ("sinc", "sign")
    depths: tuple[int, ...] = (1, 4, 7)  # hidden layers of each model
    target_params: int = 571  # the slides' models have 571-572 parameters
    activation: str = "relu"
    n_train: int = 4096
    n_test: int = 1000  # evenly spaced grid for the prediction figure
    restarts: int = 1  # initialisations (seeds seed, seed+1, ...) per model; the best is kept
    epochs: int = 2000
    batch_size: int = 256
    verbose: int = 0


def model_specs(config: Config) -> list[models.ModelSpec]:
    specs = []
    for depth in config.depths:
        hidden = models.solve_dense_widths(depth, config.target_params, 1, 1)
        specs.append(models.ModelSpec(f"dnn_d{depth}", "dense", hidden=hidden,
                                      activation=config.activation))
    return specs


def _final_loss(run: dict) -> float:
    history = run["history"]
    if history["failed_at_iteration"] is not None or not history["epoch"]["train_loss"]:
        return float("inf")
    return history["epoch"]["train_loss"][-1]


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
            # the restarts of a model train as one population (one batched computation);
            # member r is exactly the run seeded config.seed + r
            seeds = [config.seed + r for r in range(config.restarts)]
            names = [f"{fn_name}_{spec.name}" + (f"_r{r}" if config.restarts > 1 else "")
                     for r in range(config.restarts)]
            pop, histories = population.train_population(
                spec, splits, population.PopulationSettings(
                    **dataclasses.asdict(settings), evaluate_test=False),  # grid scored below
                seeds, strategy=strategy, run_name=f"{fn_name}_{spec.name}")
            predictions = pop.predict(splits.x_test)[:, :, 0]
            if config.save_models:
                saved = population.export_members(
                    pop, lambda r: paths.saved_model(EXPERIMENT, names[r]))
            for restart, (run_name, history) in enumerate(zip(names, histories)):
                pred = predictions[restart]
                runs[run_name] = {
                    "model": dataclasses.asdict(spec), "description": spec.describe(),
                    "num_params": history.pop("num_params"), "history": history,
                    "function": fn_name, "restart": restart, "prediction": pred,
                    "test_mse": float(np.mean((pred - splits.y_test[:, 0]) ** 2))}
                if config.save_models:
                    runs[run_name]["saved_model"] = str(saved[restart])
            # "tune all models to the best" (slides): keep the lowest final training loss
            # (a member that diverged is never the best while another finished)
            best[f"{fn_name}/{spec.name}"] = min(names, key=lambda n: _final_loss(runs[n]))
    return common.finish(EXPERIMENT, config, runs, paths, targets=targets, best_runs=best)
