"""HW1-1 "simulate a function": dense nets of equal parameter count but different depth fit
1-D non-linear functions; compares their training loss and their fitted curves."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hw1_tf import data, framework, functions, markdown, models, population, trainer
from hw1_tf.config import TrainConfig, option
from hw1_tf.errors import TrainingDivergedError
from hw1_tf.figures import FigureSet, epochs_axis, finish_axes, model_label, plt
from hw1_tf.records import RunRecord

EXPERIMENT = "simulate_function"
POSITION = 110  # its place in the slides' order (the registry sorts by it)


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


def _final_loss(run: RunRecord) -> float:
    history = run.history
    if history.failed_at_iteration is not None or not history.recorded("train_loss"):
        return float("inf")
    return history.last("train_loss")


def _members(config: Config) -> list[tuple[str, int]]:
    """(function, restart) of every member of a model's population, in member order."""
    return [(fn_name, r) for fn_name in config.functions for r in range(config.restarts)]


def run_names(config: Config, spec: models.ModelSpec) -> list[str]:
    """The runs of model `spec`, one per member of its population."""
    return [f"{fn_name}_{spec.name}" + (f"_r{r}" if config.restarts > 1 else "")
            for fn_name, r in _members(config)]


def _splits(ctx: framework.ExperimentContext) -> dict[str, data.Splits]:
    """{function: its splits}, made once: every model's population and analyse use them."""
    config = ctx.config
    return ctx.shared("splits", lambda: {
        fn_name: data.function_splits(fn_name, config.n_train, config.n_test, seed=config.seed)
        for fn_name in config.functions})


def plan(ctx: framework.ExperimentContext) -> list[framework.Group]:
    """One group per model: its runs train as one population (backed up to the folder named
    after the model) and are skipped together once all have finished."""
    config = ctx.config
    specs = model_specs(config)
    trainer.log_param_table([(s.name, s.describe(), models.param_count(1, s.hidden, 1))
                            for s in specs])
    return [framework.Group(run_names(config, spec), train, {"spec": spec}, backup=spec.name)
            for spec in specs]


def train(ctx: framework.ExperimentContext, spec: models.ModelSpec) -> dict[str, dict]:
    """Every (function, restart) of model `spec` as one member of one population (one batched
    computation), on that function's data with seed config.seed + restart: exactly the run the
    single-model core would make with that seed."""
    config = ctx.config
    all_splits = _splits(ctx)
    members = _members(config)
    names = run_names(config, spec)
    pop, histories = population.train_population(
        spec, [all_splits[fn_name] for fn_name, _ in members],
        trainer.population_settings(config, evaluate_test=False),  # scored below
        [config.seed + r for _, r in members], strategy=ctx.strategy,
        run_name=spec.name, backup_dir=ctx.backup_dir(spec.name))
    predictions = pop.predict(np.stack([all_splits[fn_name].x_test
                                        for fn_name, _ in members]))[:, :, 0]
    if config.save_models:
        saved = population.export_members(
            pop, lambda i: ctx.paths.saved_model(EXPERIMENT, names[i]))
    kept = {}
    for i, ((fn_name, restart), run_name, history) in enumerate(zip(members, names, histories)):
        pred = predictions[i]
        kept[run_name] = RunRecord.of(
            spec, history, function=fn_name, restart=restart, prediction=pred,
            test_mse=float(np.mean((pred - all_splits[fn_name].y_test[:, 0]) ** 2))
        ).to_dict()
        if config.save_models:
            kept[run_name]["saved_model"] = str(saved[i])
    return kept


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """The best restart of every (function, model), the runs in (function, model, restart)
    order, and the targets; raises TrainingDivergedError when every run diverged."""
    config = ctx.config
    specs = model_specs(config)
    targets = {}
    for fn_name, splits in _splits(ctx).items():
        fn = functions.get(fn_name)
        targets[fn_name] = {"formula": fn.formula, "domain": fn.domain,
                            "x": splits.x_test[:, 0], "y": splits.y_test[:, 0]}
    members = _members(config)
    typed = {n: RunRecord.from_dict(r) for n, r in records.items()}
    best = {}
    for spec in specs:
        names = run_names(config, spec)
        # "tune all models to the best" (slides): keep the lowest final training loss (a
        # member that diverged is never the best while another finished)
        for fn_name in config.functions:
            own = [n for n, (f, _) in zip(names, members) if f == fn_name]
            best[f"{fn_name}/{spec.name}"] = min(own, key=lambda n: _final_loss(typed[n]))
    order = [(f, s.name) for f in config.functions for s in specs]  # function, then model
    names = sorted(records, key=lambda n: (
        order.index((typed[n].function, typed[n].model["name"])), typed[n].restart))
    runs = {n: records[n] for n in names}
    best = {f"{f}/{m}": best[f"{f}/{m}"] for f, m in order}
    failed = {n: typed[n].history.failed_at_iteration for n in names}
    if all(at is not None for at in failed.values()):  # nothing to report: an error, exit 1
        raise TrainingDivergedError(
            f"every run diverged: the loss became NaN/inf (first at iteration "
            f"{min(failed.values())}); lower --learning_rate (now {config.learning_rate:g})")
    return framework.Outcome(runs, dict(targets=targets, best_runs=best))


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Per function: the training loss of every model (its best restart bold, the other
    restarts faint), and the best restarts' predictions against the ground truth."""
    out = FigureSet(figures_dir)
    runs = results["runs"]
    for fn_name, target in results["targets"].items():
        best = {key.split("/", 1)[1]: runs[name] for key, name in results["best_runs"].items()
                if key.split("/", 1)[0] == fn_name}
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (model_name, best_run) in enumerate(best.items()):
            for run in runs.values():
                if run.function == fn_name and run.model["name"] == model_name \
                        and run is not best_run:
                    loss = run.history.series("train_loss")
                    ax.plot(epochs_axis(loss), loss, color=f"C{i}", alpha=0.25, linewidth=0.8)
            loss = best_run.history.series("train_loss")
            ax.plot(epochs_axis(loss), loss, color=f"C{i}", label=model_label(best_run))
        restarts = results["config"].get("restarts", 1)
        note = f" (best of {restarts} inits bold)" if restarts > 1 else ""
        finish_axes(ax, f"HW1-1 training loss fitting {target['formula']}{note}", "epoch",
                    "training loss (MSE)", log_y=True)
        out.save(fig, f"loss_{fn_name}")

        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(target["x"], target["y"], color="black", linewidth=2.5, label="ground truth")
        for i, run in enumerate(best.values()):
            ax.plot(target["x"], run.prediction, color=f"C{i}", linewidth=1.3,
                    label=f"{model_label(run)}, test MSE " + (f"{run.test_mse:.2e}" if
                                                           run.test_mse is not None
                                                           else "n/a (diverged)"))
        finish_axes(ax, f"HW1-1 predictions vs ground truth: {target['formula']}", "x", "y",
                    log_y=False)
        out.save(fig, f"prediction_{fn_name}")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-1 Deep vs shallow: simulate a function"
QUESTIONS = (
    "Describe the models you use, including the number of parameters (at least two models) "
    "and the function you use.",
    "In one chart, plot the training loss of all models.",
    "In one graph, plot the predicted function curve of all models and the ground-truth "
    "function curve.",
    "Comment on your results.",
    "Use more than two models in all previous questions. (bonus)",
    "Use more than one function. (bonus)",
)


def _late_improvement(loss) -> float:
    """How much the lowest training loss fell during the last tenth of the epochs (relative
    to the lowest before it): near 0 once training has converged."""
    loss = markdown.series(loss)
    tail = max(1, len(loss) // 10)
    if len(loss) <= tail:
        return float("nan")
    before, last = np.nanmin(loss[:-tail]), np.nanmin(loss[-tail:])
    return float(max(0.0, 1.0 - last / before)) if before > 0 else float("nan")


def report_section(results: dict, ctx: markdown.Context) -> str:
    """Models and functions, the loss and prediction figures, the final losses of each
    model's best initialisation, and which depth fit each function best and by how much."""
    config, runs, targets = results["config"], results["runs"], results["targets"]
    best = {tuple(key.split("/", 1)): runs[name] for key, name in results["best_runs"].items()}
    model_names = list(dict.fromkeys(m for _, m in best))
    restarts = int(config.get("restarts", 1))
    out = ["### Models and functions", ""]
    first = {m: next(r for (_, mm), r in best.items() if mm == m) for m in model_names}
    out.append(markdown.table(
        ("model", "hidden layers", "widths", "activation", "parameters"),
        [(m, len(r.model["hidden"]), ", ".join(map(str, r.model["hidden"])),
          r.model["activation"], r.num_params) for m, r in first.items()]))
    counts = [r.num_params for r in first.values()]
    out += ["", f"{len(model_names)} dense models with {min(counts)} to {max(counts)} parameters "
            f"(target {config['target_params']}), fitted to {len(targets)} functions:", ""]
    out.append(markdown.table(
        ("function", "formula", "domain"),
        [(name, t["formula"], f"[{t['domain'][0]:g}, {t['domain'][1]:g}]")
         for name, t in targets.items()]))
    out += ["", f"Each model: {config['epochs']} epochs of {config['optimizer']} (learning rate "
            f"{config['learning_rate']:g}, batch {config['batch_size']}) on "
            f"{config['n_train']} random points of the domain, MSE loss; test MSE on "
            f"{config['n_test']} evenly spaced points."]
    if restarts > 1:
        out[-1] += (f" {restarts} initialisations per model; the one with the lowest final "
                    "training loss is the model's result (the other ones are drawn faint).")

    out += ["", "### Training loss and predictions", ""]
    for fn in targets:
        out += [ctx.figure(f"loss_{fn}", f"training loss of every model on {fn}"),
                ctx.figure(f"prediction_{fn}", f"predictions vs ground truth, {fn}"), ""]

    header = ["function", "model", "final training MSE", "test MSE"]
    if restarts > 1:
        header.append(f"final training MSE, all {restarts} inits (min-max)")
    header.append("late improvement (last 10% of epochs)")
    rows, comments, wins = [], [], {m: [] for m in model_names}
    for fn in targets:
        final = {m: best[fn, m].history.last("train_loss") for m in model_names}
        test = {m: float(best[fn, m].test_mse) for m in model_names}
        late = {m: _late_improvement(best[fn, m].history.series("train_loss"))
                for m in model_names}
        for m in model_names:
            row = [fn, m, final[m], test[m]]
            if restarts > 1:
                all_final = [r.history.last("train_loss") for r in runs.values()
                             if r.function == fn and r.model["name"] == m]
                row.append(f"{markdown.fmt(min(all_final))} - {markdown.fmt(max(all_final))}")
            row.append(markdown.pct(late[m]))
            rows.append(row)
        comments.append(_function_comment(fn, final, test, late, int(config["epochs"])))
        wins[markdown.ranked(final, lower_is_better=True)[0][0]].append(fn)
    out += ["### Key numbers", "", markdown.table(header, rows), "", "### Comment", ""]
    out += [f"- {c}" for c in comments]
    tally = [f"{m} on {len(fns)} ({', '.join(fns)})" for m, fns in wins.items() if fns]
    never = [m for m, fns in wins.items() if not fns]
    line = f"- Lowest final training loss per function: {markdown.join(tally)}"
    if never:
        line += f"; {markdown.join(never)} never"
    out.append(line + ".")
    out.append(f"- Bonus: {len(model_names)} models and {len(targets)} functions.")
    return "\n".join(out)


def _function_comment(fn: str, final: dict, test: dict, late: dict, epochs: int) -> str:
    order = markdown.ranked(final, lower_is_better=True)
    (winner, low), others = order[0], order[1:]
    text = f"**{fn}**: {winner} reached the lowest final training MSE, {markdown.fmt(low)}"
    if others and low > 0:
        text += ": " + ", ".join(f"{markdown.times(v / low)} lower than {m}'s {markdown.fmt(v)}"
                                 for m, v in others)
    text += "."
    test_winner, test_low = markdown.ranked(test, lower_is_better=True)[0]
    if test_winner == winner:
        text += f" It also has the lowest test MSE ({markdown.fmt(test_low)})."
    else:
        text += (f" On the test grid {test_winner} is best instead ({markdown.fmt(test_low)} vs "
                 f"{markdown.fmt(test[winner])}, {markdown.pct(1 - test_low / test[winner])} lower)"
                 ", so the lowest training loss did not generalise best.")
    moving = {m: v for m, v in late.items() if np.isfinite(v) and v > 0.05}
    tail = max(1, epochs // 10)
    if moving:
        text += (f" In the last {tail} of {epochs} epochs the loss still fell by "
                 + markdown.join([f"{markdown.pct(v)} ({m})" for m, v in moving.items()])
                 + ": not converged; more epochs may lower it.")
    else:
        text += (f" No model's loss fell by more than 5% in the last {tail} of {epochs} "
                 "epochs: converged.")
    return text


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"simulate_function.num_params": "parameters of the equal-size models",
             "simulate_function.deep_vs_shallow": "deepest vs shallowest: final training MSE"}


def scorecard(results: dict) -> dict[str, Measured]:
    config, runs = results["config"], results["runs"]
    best = {key: runs[name] for key, name in results["best_runs"].items()}
    models_ = {r.model["name"]: r for r in best.values()}
    by_depth = sorted(models_.values(), key=lambda r: len(r.model["hidden"]))
    shallow, deep = by_depth[0].model, by_depth[-1].model
    ratios = []
    for fn in results["targets"]:
        final = {m: best[f"{fn}/{m}"].history.last("train_loss")
                 for m in (shallow["name"], deep["name"])}
        ratio = final[shallow["name"]] / final[deep["name"]] if final[deep["name"]] > 0 else None
        ratios.append(f"{fn}: {markdown.times(ratio) if ratio else 'n/a'} lower")
    depths = ", ".join(str(len(r.model["hidden"])) for r in by_depth)
    return {
        "simulate_function.num_params": Measured(
            ", ".join(str(r.num_params) for r in by_depth),
            f"{shallow['activation']} nets of {depths} hidden layers solved for "
            f"{config['target_params']} parameters"),
        "simulate_function.deep_vs_shallow": Measured(
            f"{len(deep['hidden'])} vs {len(shallow['hidden'])} layers: " + "; ".join(ratios),
            f"measured: final training MSE after {config['epochs']} epochs"
            + (f" (best of {config['restarts']} inits)" if config.get("restarts", 1) > 1
               else "")),
    }


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {1: ("loss_*",), 2: ("prediction_*",)}
