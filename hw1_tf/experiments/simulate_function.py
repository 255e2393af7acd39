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
    all_splits = {fn_name: data.function_splits(fn_name, config.n_train, config.n_test,
                                                seed=config.seed)
                  for fn_name in config.functions}
    for fn_name, splits in all_splits.items():
        fn = functions.get(fn_name)
        targets[fn_name] = {"formula": fn.formula, "domain": fn.domain,
                            "x": splits.x_test[:, 0], "y": splits.y_test[:, 0]}
    # Every (function, restart) of a model is one member of one population (one batched
    # computation), on that function's data with seed config.seed + restart: exactly the run
    # the single-model core would make with that seed.
    members = [(fn_name, r) for fn_name in config.functions for r in range(config.restarts)]
    pop_settings = population.PopulationSettings(**dataclasses.asdict(settings),
                                                 evaluate_test=False)  # grid scored below
    for spec in specs:
        names = [f"{fn_name}_{spec.name}" + (f"_r{r}" if config.restarts > 1 else "")
                 for fn_name, r in members]
        pop, histories = population.train_population(
            spec, [all_splits[fn_name] for fn_name, _ in members], pop_settings,
            [config.seed + r for _, r in members], strategy=strategy, run_name=spec.name)
        predictions = pop.predict(np.stack([all_splits[fn_name].x_test
                                            for fn_name, _ in members]))[:, :, 0]
        if config.save_models:
            saved = population.export_members(
                pop, lambda i: paths.saved_model(EXPERIMENT, names[i]))
        for i, ((fn_name, restart), run_name, history) in enumerate(
                zip(members, names, histories)):
            pred = predictions[i]
            runs[run_name] = {
                "model": dataclasses.asdict(spec), "description": spec.describe(),
                "num_params": history.pop("num_params"), "history": history,
                "function": fn_name, "restart": restart, "prediction": pred,
                "test_mse": float(np.mean((pred - all_splits[fn_name].y_test[:, 0]) ** 2))}
            if config.save_models:
                runs[run_name]["saved_model"] = str(saved[i])
        # "tune all models to the best" (slides): keep the lowest final training loss (a
        # member that diverged is never the best while another finished)
        for fn_name in config.functions:
            own = [n for n, (f, _) in zip(names, members) if f == fn_name]
            best[f"{fn_name}/{spec.name}"] = min(own, key=lambda n: _final_loss(runs[n]))
    order = [(f, s.name) for f in config.functions for s in specs]  # function, then model
    runs = dict(sorted(runs.items(), key=lambda kv: (
        order.index((kv[1]["function"], kv[1]["model"]["name"])), kv[1]["restart"])))
    best = {f"{f}/{m}": best[f"{f}/{m}"] for f, m in order}
    return common.finish(EXPERIMENT, config, runs, paths, targets=targets, best_runs=best)
