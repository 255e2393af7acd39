"""HW1-2 "visualize the optimization process": one dense architecture trained several times
(different seeds: initialisation and batch order) as one population; every member's weights are
collected every few epochs, for the whole model and for one layer, with the training loss and
accuracy at those weights; PCA fitted on all runs' snapshots together reduces them to 2-D."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from hw1_tf import framework, landscape, markdown, population, trainer
from hw1_tf.config import TaskConfig, option
from hw1_tf.experiments import tasks
from hw1_tf.figures import FigureSet, plt
from hw1_tf.records import RunRecord

EXPERIMENT = "trajectory"
POSITION = 210  # its place in the slides' order (the registry sorts by it)
BACKUP = "population"  # the population's backup folder, removed once its records are kept


@dataclasses.dataclass
class Config(TaskConfig):
    task: str = option("image", "Train on the image dataset (--dataset) or the 1-D function.",
                       choices=("image", "function"))
    runs: int = option(8, "Training runs (seeds seed, seed+1, ...), trained as one population.",
                       lower=2)
    snapshot_every: int = option(3, "Collect the weights every this many epochs (and before "
                                 "the first and after the last).", lower=1)
    layer: int = option(0, "Dense layer whose weights get their own PCA (0: the first; "
                        "negative counts from the output).")
    hidden: tuple[int, ...] = option((32,), "Hidden widths of the image task's dense net.",
                                     lower=1)
    eval_size: int = option(10000, "Training examples the loss/accuracy at each snapshot is "
                            "evaluated on (a seeded subset; all when fewer).", lower=1)
    epochs: int = option(24, "Training epochs per run.", lower=1)
    save_models: bool = option(False, "Export each trained member as a SavedModel.")


def run_names(config: Config) -> list[str]:
    """One run per seed, in seed order."""
    return [f"run{i}" for i in range(config.runs)]


def plan(ctx: framework.ExperimentContext) -> list[framework.Group]:
    """One group: the runs train as one population, so a rerun of the same config skips them
    together (and an interrupted one resumes the population from its backup)."""
    return [framework.Group(run_names(ctx.config), train, backup=BACKUP)]


def train(ctx: framework.ExperimentContext) -> dict[str, dict]:
    """Every run as a member of one population (seeds seed, seed+1, ...), its weights and
    training loss/accuracy collected every --snapshot_every epochs."""
    config = ctx.config
    name, splits, spec, chosen = tasks.shared_task(ctx)
    seeds = [config.seed + i for i in range(config.runs)]
    names = run_names(config)
    snaps = landscape.Snapshots(config.snapshot_every, config.epochs, config.layer,
                                splits.x_train[chosen], splits.y_train[chosen],
                                splits.num_classes)
    # a population of the same seeds holds exactly the weights training starts from
    snaps.initial(population.Population(spec, splits.input_shape, splits.num_classes or 1,
                                        seeds, ctx.strategy))
    # backed up with the snapshots: a run resumed after a kill has them all
    pop, histories = population.train_population(
        spec, splits, trainer.population_settings(config), seeds, strategy=ctx.strategy,
        run_name=name, callbacks=[snaps], backup_dir=ctx.backup_dir(BACKUP))
    arrays = snaps.arrays()
    if config.save_models:
        saved = population.export_members(pop, lambda i: ctx.paths.saved_model(EXPERIMENT,
                                                                              f"run{i}"))
    kept = {}
    for i, history in enumerate(histories):
        kept[names[i]] = {"seed": seeds[i], **RunRecord.of(
            spec, history, snapshot_epochs=arrays["epochs"],
            snapshots={"whole": arrays["whole"][i], "layer": arrays["layer"][i],
                       "loss": arrays["loss"][i], "accuracy": arrays["accuracy"][i]}
        ).to_dict()}
        if config.save_models:
            kept[names[i]]["saved_model"] = str(saved[i])
    return kept


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """The PCA of every run's snapshots together, from the records (fresh or kept)."""
    config = ctx.config
    name, splits, spec, chosen = tasks.shared_task(ctx)
    names = run_names(config)
    typed = {n: RunRecord.from_dict(records[n]) for n in names}
    pca = {}
    for part in ("whole", "layer"):
        stacked = np.stack([np.asarray(typed[n].snapshots[part]) for n in names])
        coords, explained = landscape.pca_2d(stacked, seed=config.seed)
        pca[part] = {"coords": coords, "explained_variance_ratio": explained,
                     "num_weights": int(stacked.shape[-1])}
    snapshot_epochs = np.asarray(typed[names[0]].snapshot_epochs)
    layers = len(spec.hidden) + 1
    return framework.Outcome(records, dict(
        task=name, pca=pca, snapshot_epochs=snapshot_epochs,
        layer_index=int(config.layer % layers), num_layers=layers,
        eval_examples=int(len(chosen)), num_classes=splits.num_classes))


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """The slides' figure: one layer (left) and the whole model (right) after PCA, one colour
    per run, each snapshot annotated with its training accuracy (or loss), the explained
    variance on the axes."""
    runs = results["runs"]
    classes = results["num_classes"]
    metric = "accuracy" if classes else "loss"
    epochs = np.asarray(results["snapshot_epochs"])
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.2))
    for ax, part, title in ((axes[0], "layer", f"dense layer {results['layer_index']}"),
                            (axes[1], "whole", "whole model")):
        coords = np.asarray(results["pca"][part]["coords"])
        ev = np.asarray(results["pca"][part]["explained_variance_ratio"])
        for i, (name, run) in enumerate(runs.items()):
            xy = coords[i]
            values = np.asarray(run.snapshots[metric], float)
            color = f"C{i % 10}"
            ax.plot(xy[:, 0], xy[:, 1], "-", color=color, lw=0.9, alpha=0.7)
            ax.plot(xy[:, 0], xy[:, 1], "o", color=color, ms=3.5,
                    label=f"{name} (seed {run.seed}): final {metric} {values[-1]:.3g}")
            ax.plot(xy[0, 0], xy[0, 1], "s", mfc="none", color=color, ms=8)
            ax.plot(xy[-1, 0], xy[-1, 1], "*", color=color, ms=11)
            for (px, py), v in zip(xy, values):
                ax.annotate(f"{v:.2f}" if classes else f"{v:.1e}", (px, py),
                            textcoords="offset points", xytext=(3, 3), fontsize=5.5,
                            color=color)
        ax.plot([], [], "s", mfc="none", color="gray", label="initialisation (epoch 0)")
        ax.plot([], [], "*", color="gray", ms=10, label=f"end (epoch {int(epochs[-1])})")
        ax.set_title(f"{title} ({results['pca'][part]['num_weights']} weights)")
        ax.set_xlabel(f"PC 1 ({100 * ev[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * ev[1]:.1f}% of variance)")
        ax.grid(True, alpha=0.3)
    # the runs are the same in both panels: one legend for the figure, below them
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.02),
               ncol=min(3, len(labels)), fontsize=9, frameon=False)
    fig.suptitle(f"HW1-2 weight trajectories of {len(runs)} runs on {results['task']}: PCA of "
                 f"weights every {results['config']['snapshot_every']} epochs, "
                 f"points annotated with training {metric}")
    out = FigureSet(figures_dir)
    fig.tight_layout(rect=(0, 0, 1, 0.95), w_pad=3)
    out.save(fig, "trajectory", tight=False)  # the bounding box takes in the legend below
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-2 Optimization: visualize the optimization process"
QUESTIONS = (
    "Describe your experiment settings. (The cycle you record the model parameters, "
    "optimizer, dimension reduction method, etc)",
    "Train the model for 8 times, selecting the parameters of any one layer and whole model "
    "and plot them on the figures separately.",
    "Comment on your result.",
)


def _spread(coords: np.ndarray) -> tuple[float, float]:
    """(mean distance of the runs' end points from their centroid, mean length of a run's
    path) in PCA units: do the runs end together, relative to how far they travel?"""
    ends = coords[:, -1]
    spread = float(np.mean(np.linalg.norm(ends - ends.mean(0), axis=1)))
    path = float(np.mean(np.sum(np.linalg.norm(np.diff(coords, axis=1), axis=2), axis=1)))
    return spread, path


def report_section(results: dict, ctx: markdown.Context) -> str:
    """Settings, the figure, per-run final loss/accuracy and a comment from the PCA numbers."""
    config, runs, pca = results["config"], results["runs"], results["pca"]
    first = next(iter(runs.values()))
    epochs = [int(e) for e in results["snapshot_epochs"]]
    classes = results["num_classes"]
    layer = results["layer_index"]
    out = ["### Settings", "",
           f"- Task: {results['task']}; model {first.description}, {first.num_params} "
           f"parameters; {len(runs)} runs with seeds {first.seed}.."
           f"{first.seed + len(runs) - 1}"
           " (initialisation and batch order), trained together as one population.",
           f"- Optimizer {config['optimizer']}, learning rate {config['learning_rate']:g}, batch "
           f"{config['batch_size']}, {config['epochs']} epochs.",
           f"- Weights recorded every {config['snapshot_every']} epochs, at epochs "
           f"{', '.join(map(str, epochs))} (0: initialisation), each with the training "
           f"{'accuracy and ' if classes else ''}loss at those weights on "
           f"{results['eval_examples']} training examples.",
           f"- Dimension reduction: scikit-learn PCA to 2-D, fitted on all "
           f"{len(runs) * len(epochs)} snapshots of all runs together; once on the whole "
           f"model ({pca['whole']['num_weights']} weights) and once on dense layer {layer} of "
           f"{results['num_layers']} ({pca['layer']['num_weights']} weights: kernel and bias).",
           "", ctx.figure("trajectory", "weight trajectories of all runs after PCA"), ""]
    metric = "accuracy" if classes else "loss"
    final = {n: float(markdown.series(r.snapshots[metric])[-1]) for n, r in runs.items()}
    rows = [(n, r.seed, float(markdown.series(r.snapshots["loss"])[-1]),
             *( [float(markdown.series(r.snapshots["accuracy"])[-1])] if classes else []))
            for n, r in runs.items()]
    out += [markdown.table(("run", "seed", "final training loss",
                          *(["final training accuracy"] if classes else [])), rows), ""]
    out += ["### Comment", ""]
    for part, label in (("whole", "whole model"), ("layer", f"layer {layer}")):
        coords = np.asarray(pca[part]["coords"])
        ev = markdown.series(pca[part]["explained_variance_ratio"])
        spread, path = _spread(coords)
        out.append(f"- **{label}**: the 2 PCA axes explain {markdown.pct(ev[0])} and "
                   f"{markdown.pct(ev[1])} of the variance ({markdown.pct(ev.sum())} together). "
                   f"The runs' end points lie {markdown.fmt(spread)} (mean distance to their "
                   f"centroid) apart against paths of {markdown.fmt(path)} on average: "
                   + ("they end in DIFFERENT places, each moving along its own direction "
                      "away from its own initialisation"
                      if spread > 0.5 * path else "they end close together, relative to "
                      "how far they travelled") + ".")
    values = np.asarray(list(final.values()))
    best, worst = markdown.ranked(final, lower_is_better=not classes)[0], \
        markdown.ranked(final, lower_is_better=not classes)[-1]
    out.append(f"- Yet they perform alike: final training {metric} {markdown.fmt(values.min())}"
               f" to {markdown.fmt(values.max())} (best {best[0]}, worst {worst[0]}), so "
               "different weights give (nearly) the same loss: many equally good minima, "
               "related e.g. by permuting hidden units." if values.max() - values.min()
               < 0.1 * max(abs(values.mean()), 1e-12) else
               f"- Their final training {metric} differs: {markdown.fmt(values.min())} to "
               f"{markdown.fmt(values.max())} (best {best[0]}, worst {worst[0]}).")
    return "\n".join(out)


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"trajectory.cycle": "runs and weight-recording cycle"}


def scorecard(results: dict) -> dict[str, Measured]:
    config = results["config"]
    run = next(iter(results["runs"].values()))
    explained = sum(results["pca"]["whole"]["explained_variance_ratio"])
    return {"trajectory.cycle": Measured(
        f"{len(results['runs'])} runs, every {config['snapshot_every']} epochs "
        f"({config['epochs']} epochs); 2 PCA axes explain {markdown.pct(explained)}",
        f"{run.description} on {results['task']}, {config['optimizer']} at learning rate "
        f"{config['learning_rate']:g}")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {1: ("trajectory",)}
