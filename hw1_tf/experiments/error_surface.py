"""HW1-2 bonus "visualize the error surface": one dense net is trained (its weights kept every
epoch), then the training loss is evaluated on grids around the trained weights theta:
  * theta + a d1 + b d2 along two filter-normalised random directions that are exactly
    orthogonal (`landscape.filter_normalized_directions`), in 1-D and 2-D;
  * theta + a u1 + b u2 along the top-2 PCA directions of the net's own training trajectory,
    with the trajectory projected onto that plane;
  * the straight line from the initial to the trained weights (linear interpolation).
Every grid is stored as arrays, so the figures are redrawn without recomputation."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from hw1_tf import framework, landscape, markdown, population, trainer
from hw1_tf.config import TaskConfig, option
from hw1_tf.experiments import tasks
from hw1_tf.figures import FigureSet, contour, finish_axes, plt, surface3d
from hw1_tf.records import RunRecord

EXPERIMENT = "error_surface"
POSITION = 240  # its place in the slides' order (the registry sorts by it)
BACKUP = "population"  # the trained net's backup folder, removed once its record is kept


@dataclasses.dataclass
class Config(TaskConfig):
    task: str = option("image", "Train on the image dataset (--dataset) or the 1-D function.",
                       choices=("image", "function"))
    hidden: tuple[int, ...] = option((32,), "Hidden widths of the image task's dense net.",
                                     lower=1)
    epochs: int = option(20, "Training epochs (the weights are kept after every epoch for "
                         "the trajectory's PCA).", lower=3)
    eval_size: int = option(2000, "Training examples the surface's loss is evaluated on (a "
                            "seeded subset; all when fewer).", lower=1)
    grid_points: int = option(25, "Points per axis of each 2-D grid (odd keeps the trained "
                              "weights on the grid).", lower=3)
    line_points: int = option(51, "Points of each 1-D curve.", lower=3)
    span: float = option(1.0, "Random-direction grids cover [-span, span] x [-span, span] "
                         "(1 = a step as long as the weights, filter by filter).", lower=0.0)
    pca_margin: float = option(1.3, "PCA grids cover the projected trajectory times this.",
                               lower=1.0)
    interpolation_range: tuple[float, float] = option(
        (-0.5, 1.5), "alpha range of the initial-to-trained line (1 - alpha) theta_0 + alpha "
        "theta.", increasing=True)
    save_models: bool = option(False, "Export the trained net as a SavedModel.")


def plan(ctx: framework.ExperimentContext) -> list[framework.Group]:
    """The one net, as a group of one: it trains as a population of one member, backed up to
    the folder BACKUP. Kept at once, a rerun of the same config skips it and redraws the
    surfaces from the kept weights and trajectory."""
    return [framework.Group([tasks.run_name(ctx.config, ctx.config.task)], train,
                            backup=BACKUP)]


def train(ctx: framework.ExperimentContext) -> dict[str, dict]:
    """The net (seed --seed), its weights and training loss kept after every epoch."""
    config = ctx.config
    name, splits, spec, chosen = tasks.shared_task(ctx)
    x, y = splits.x_train[chosen], splits.y_train[chosen]
    snaps = landscape.Snapshots(1, config.epochs, 0, x, y, splits.num_classes)
    snaps.initial(population.Population(spec, splits.input_shape, splits.num_classes or 1,
                                        [config.seed], ctx.strategy))
    pop, histories = population.train_population(
        spec, splits, trainer.population_settings(config), [config.seed], strategy=ctx.strategy,
        run_name=name, callbacks=[snaps], backup_dir=ctx.backup_dir(BACKUP))
    arrays = snaps.arrays()
    trained = pop.member_weights(0)
    record = RunRecord.of(
        spec, histories[0], seed=config.seed, trajectory=arrays["whole"][0],
        weights=landscape.flatten(trained), shapes=[list(w.shape) for w in trained],
        trajectory_epochs=arrays["epochs"], trajectory_loss=arrays["loss"][0]).to_dict()
    if config.save_models:
        record["saved_model"] = str(population.export_members(
            pop, lambda i: ctx.paths.saved_model(EXPERIMENT, name))[0])
    return {name: record}


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """The surfaces around the trained weights (random plane, trajectory's PCA plane, the
    initial-to-trained line), from the record (fresh or kept)."""
    config = ctx.config
    name, splits, spec, chosen = tasks.shared_task(ctx)
    x, y = splits.x_train[chosen], splits.y_train[chosen]
    run = RunRecord.from_dict(records[name])
    theta = np.asarray(run.weights)
    weights = landscape.unflatten(theta, [tuple(s) for s in run.shapes])
    trajectory = np.asarray(run.trajectory)
    trajectory_loss = np.asarray(run.trajectory_loss)

    losses = landscape.SurfaceEvaluator(weights, x, y, splits.num_classes, spec.activation)

    start = time.perf_counter()
    random = landscape.random_plane_surface(losses, weights, config.span, config.line_points,
                                            config.grid_points, seed=config.seed)
    pca = landscape.trajectory_plane_surface(losses, trajectory, theta, config.pca_margin,
                                             config.line_points, config.grid_points,
                                             seed=config.seed)
    pca.update(trajectory_epochs=np.asarray(run.trajectory_epochs),
               trajectory_loss=trajectory_loss)
    interpolation = landscape.straight_line(
        losses, trajectory[0], theta, np.linspace(*config.interpolation_range,
                                                  config.line_points))
    evaluated = sum(part.pop("points") for part in (random, pca, interpolation))
    seconds = time.perf_counter() - start
    logging.info("%s: %d grid points on %d examples in %.1f s (%.0f points/s)", name,
                 evaluated, len(x), seconds, evaluated / seconds)

    centre = config.grid_points // 2
    return framework.Outcome({name: records[name]}, dict(
        task=name, random=random, pca=pca, interpolation=interpolation,
        trained_loss=float(trajectory_loss[-1]),
        centre_loss=float(random["losses"][centre, centre]) if config.grid_points % 2 else None,
        eval_examples=int(len(x)), num_classes=splits.num_classes,
        surface_seconds=seconds, grid_points_evaluated=int(evaluated)))


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """1-D curves (random directions, the trajectory's first PC, initial-to-trained line),
    contours (random plane; PCA plane with the projected trajectory) and 3-D surfaces."""
    out = FigureSet(figures_dir)
    loss_label = "training loss (" + ("cross-entropy" if results["num_classes"] else "MSE") + ")"
    rnd, pca, interp = results["random"], results["pca"], results["interpolation"]
    task = results["task"]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    line_losses = np.asarray(rnd["line_losses"])
    for k in range(len(line_losses)):
        axes[0].plot(rnd["line"], line_losses[k], color=f"C{k}",
                     label=f"filter-normalised random direction d{k + 1}")
    finish_axes(axes[0], f"{task}: 1-D along random directions", "step a (in units of the "
                "filter norms of θ)", loss_label, values=line_losses)
    axes[1].plot(pca["line"], pca["line_losses"], color="C2", label="first PCA direction")
    finish_axes(axes[1], "1-D along the trajectory's first PC", "step along PC 1 (weight-space "
                "distance)", loss_label, values=pca["line_losses"])
    axes[2].plot(interp["alpha"], interp["losses"], color="C3",
                 label="(1-α) θ_initial + α θ_trained")
    for a, text in ((0, "initial"), (1, "trained")):
        axes[2].axvline(a, color="gray", ls=":", lw=1)
    finish_axes(axes[2], "straight line initial → trained", "α (0: initial, 1: trained)",
                loss_label, values=interp["losses"])
    out.save(fig, "lines")

    losses = np.asarray(rnd["losses"])
    fig, ax = plt.subplots(figsize=(7, 5.8))
    contour(ax, rnd["axis"], rnd["axis"], losses,
            f"{task}: loss on two orthogonal filter-normalised random directions",
            "a (along d1)", "b (along d2)", loss_label)
    ax.legend(fontsize=8)
    out.save(fig, "contour_random")
    out.save(surface3d(rnd["axis"], rnd["axis"], losses,
                       f"{task}: loss surface, random directions", "a (d1)", "b (d2)",
                       loss_label), "surface_random")

    losses = np.asarray(pca["losses"])
    ev = np.asarray(pca["explained_variance_ratio"])
    fig, ax = plt.subplots(figsize=(7, 5.8))
    xlabel = f"PC 1 ({100 * ev[0]:.1f}% of the trajectory's variance)"
    ylabel = f"PC 2 ({100 * ev[1]:.1f}%)"
    contour(ax, pca["axis_x"], pca["axis_y"], losses,
            f"{task}: loss on the training trajectory's PCA plane", xlabel, ylabel, loss_label)
    traj = np.asarray(pca["trajectory"])
    ax.plot(traj[:, 0], traj[:, 1], "o-", color="C3", ms=3.5, lw=1.2,
            label="training trajectory (projected), one point per epoch")
    ax.plot(traj[0, 0], traj[0, 1], "s", color="C3", ms=8, mfc="none", label="initialisation")
    for (px, py), e in zip(traj, pca["trajectory_epochs"]):
        if e % max(1, len(traj) // 6) == 0:
            ax.annotate(f"ep {int(e)}", (px, py), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color="white")
    ax.legend(fontsize=7, loc="best")
    out.save(fig, "contour_pca")
    out.save(surface3d(pca["axis_x"], pca["axis_y"], losses,
                       f"{task}: loss surface, trajectory PCA plane", "PC 1", "PC 2",
                       loss_label), "surface_pca")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-2 Optimization (bonus): the error surface"
QUESTIONS = (
    "Use any method to visualize the error surface.",
    "Concretely describe your method and comment your result.",
)


def report_section(results: dict, ctx: markdown.Context) -> str:
    config, rnd, pca, interp = (results["config"], results["random"], results["pca"],
                                results["interpolation"])
    run = next(iter(results["runs"].values()))
    loss_name = "cross-entropy" if results["num_classes"] else "MSE"
    r_losses, p_losses = np.asarray(rnd["losses"]), np.asarray(pca["losses"])
    ev = markdown.series(pca["explained_variance_ratio"])
    off = markdown.series(pca["off_plane_fraction"])
    out = ["### Method", "",
           f"A {run.description} net ({run.num_params} parameters) is trained on "
           f"{results['task']} for {config['epochs']} epochs ({config['optimizer']}, learning "
           f"rate {config['learning_rate']:g}), its weights kept after every epoch. Around the "
           f"trained weights θ the training {loss_name} (on {results['eval_examples']} "
           "training examples) is evaluated on grids θ + a·d1 + b·d2:",
           "",
           f"- **random directions** d1, d2, filter-normalised as in Li et al. 2018 (every "
           "output unit's incoming weights scaled to the norm of θ's; biases not moved) and "
           "exactly orthogonal: d2 is orthogonalised against d1 inside every filter before "
           f"the scaling (measured cosine {markdown.fmt(rnd['cosine'])}); a, b in "
           f"[-{config['span']:g}, {config['span']:g}], {config['grid_points']}² points;",
           f"- **the training trajectory's PCA plane**: the top-2 principal directions of the "
           f"{len(pca['trajectory'])} snapshots' offsets from θ (explaining "
           f"{markdown.pct(ev[0])} and {markdown.pct(ev[1])}), with the trajectory projected on "
           f"it (at most {markdown.pct(np.nanmax(off))} of a snapshot's offset lies off the "
           "plane);",
           "- the straight line from the initial weights (α=0) to θ (α=1).",
           "",
           f"All {results['grid_points_evaluated']} points took "
           f"{markdown.fmt(results['surface_seconds'])} s, evaluated in batches of grid points "
           "(stacked weight sets, one batched matmul per layer).", "",
           ctx.figure("lines", "1-D loss curves"),
           ctx.figure("contour_random", "contour along random directions"),
           ctx.figure("contour_pca", "contour on the trajectory's PCA plane"),
           ctx.figure("surface_random", "3-D surface along random directions"),
           ctx.figure("surface_pca", "3-D surface on the PCA plane"), "",
           "### Comment", ""]
    centre = results["trained_loss"]
    out.append(f"- The surface's centre is the trained net: {markdown.fmt(results['centre_loss'])}"
               f" on the grid vs {markdown.fmt(centre)} evaluated directly.")
    for label, losses in (("random plane", r_losses), ("PCA plane", p_losses)):
        finite = losses[np.isfinite(losses)]
        i, j = np.unravel_index(np.nanargmin(losses), losses.shape)
        c = losses.shape[0] // 2
        out.append(f"- {label}: loss from {markdown.fmt(finite.min())} to "
                   f"{markdown.fmt(finite.max())} "
                   f"({markdown.times(finite.max() / max(finite.min(), 1e-30))} range); "
                   + ("the minimum of the grid is at its centre: θ sits in a basin."
                      if (i, j) == (c, c) else
                      f"the grid's minimum is off-centre at grid cell ({i}, {j}) vs centre "
                      f"({c}, {c}), {markdown.pct(1 - finite.min() / centre)} below θ's loss: "
                      "training had not reached the bottom along this plane."))
    line = np.asarray(rnd["line_losses"])
    k = line.shape[1] // 2
    rise = [line[d, [0, -1]].mean() / line[d, k] for d in range(2)]
    out.append(f"- Along the random directions the loss rises {markdown.times(rise[0])} and "
               f"{markdown.times(rise[1])} from θ to the ends (±{config['span']:g}); along the "
               f"trajectory's first PC the curve spans {markdown.fmt(np.min(pca['line_losses']))}"
               f" to {markdown.fmt(np.max(pca['line_losses']))}.")
    alpha, il = markdown.series(interp["alpha"]), markdown.series(interp["losses"])
    inside = (alpha >= 0) & (alpha <= 1)
    bump = il[inside].max() - max(il[inside][0], il[inside][-1])
    monotone = np.all(np.diff(il[inside]) <= 1e-6 * max(il[inside].max(), 1e-12))
    out.append(f"- Initial to trained weights: the loss goes from {markdown.fmt(il[inside][0])} "
               f"to {markdown.fmt(il[inside][-1])} "
               + ("decreasing monotonically along the line: no barrier between them "
                  "(as Goodfellow et al. 2015 observed)." if monotone else
                  f"not monotonically (a bump of {markdown.fmt(max(bump, 0))} above the ends)."))
    return "\n".join(out)



# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"error_surface.basin": "training loss around the trained weights"}


def scorecard(results: dict) -> dict[str, Measured]:
    losses = markdown.series(results["random"]["losses"])
    finite = losses[np.isfinite(losses)]
    c = losses.shape[0] // 2
    at_centre = np.unravel_index(np.nanargmin(losses), losses.shape) == (c, c)
    return {"error_surface.basin": Measured(
        f"{markdown.fmt(finite.min())} to {markdown.fmt(finite.max())} on the random plane; "
        f"its minimum {'at θ: a basin' if at_centre else 'off θ'}",
        f"filter-normalised random directions (Li et al. 2018), {losses.size} points, "
        f"{results['eval_examples']} training examples")}

# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {0: ("*",)}
