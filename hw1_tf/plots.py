"""Every figure of the study, drawn from results dicts (results.json) only, never from models.

`PLOTTERS[experiment](results, figures_dir) -> [paths]` redraws an experiment's figures;
`bin/make_figures --experiment=X` calls it without retraining. Each figure answers one question
of the slides, with a title, labelled axes (units / scale), a legend, and log scales where the
values span decades.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hw1_tf import store  # noqa: E402

PLOTTERS: dict[str, Callable[[dict[str, Any], Path], list[Path]]] = {}


def plotter(experiment: str):
    """Registers a function as the figure maker of `experiment`."""

    def register(fn):
        PLOTTERS[experiment] = fn
        return fn

    return register


def save(fig, path: Path) -> Path:
    """Saves atomically as PNG (150 dpi) and closes the figure."""
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    return store.atomic_write_bytes(path, buf.getvalue())


def spans_decades(values, decades: float = 2.0) -> bool:
    """True when positive values span more than `decades` orders of magnitude (use log y)."""
    v = np.asarray([x for x in np.ravel(values) if x is not None], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return v.size > 1 and np.log10(v.max() / v.min()) > decades


def _epochs(values) -> np.ndarray:
    return np.arange(1, len(values) + 1)


def _finish_axes(ax, title: str, xlabel: str, ylabel: str, values=None, log_y: bool | None = None):
    """Title, labels, legend, grid; log y when asked or when `values` span decades."""
    if log_y or (log_y is None and values is not None and spans_decades(values)):
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _label(run: dict[str, Any]) -> str:
    return f"{run['model']['name']} ({run['num_params']} params)"


# ------------------------------------------------------------------- HW1-1 simulate_function


@plotter("simulate_function")
def plot_simulate_function(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """Per function: the training loss of every model (its best restart bold, the other
    restarts faint), and the best restarts' predictions against the ground truth."""
    out = []
    runs = results["runs"]
    for fn_name, target in results["targets"].items():
        best = {key.split("/", 1)[1]: runs[name] for key, name in results["best_runs"].items()
                if key.split("/", 1)[0] == fn_name}
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (model_name, best_run) in enumerate(best.items()):
            for run in runs.values():
                if run["function"] == fn_name and run["model"]["name"] == model_name \
                        and run is not best_run:
                    loss = run["history"]["epoch"]["train_loss"]
                    ax.plot(_epochs(loss), loss, color=f"C{i}", alpha=0.25, linewidth=0.8)
            loss = best_run["history"]["epoch"]["train_loss"]
            ax.plot(_epochs(loss), loss, color=f"C{i}", label=_label(best_run))
        restarts = results["config"].get("restarts", 1)
        note = f" (best of {restarts} inits bold)" if restarts > 1 else ""
        _finish_axes(ax, f"HW1-1 training loss fitting {target['formula']}{note}", "epoch",
                     "training loss (MSE)", log_y=True)
        out.append(save(fig, figures_dir / f"loss_{fn_name}.png"))

        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(target["x"], target["y"], color="black", linewidth=2.5, label="ground truth")
        for i, run in enumerate(best.values()):
            ax.plot(target["x"], run["prediction"], color=f"C{i}", linewidth=1.3,
                    label=f"{_label(run)}, test MSE {run['test_mse']:.2e}")
        _finish_axes(ax, f"HW1-1 predictions vs ground truth: {target['formula']}", "x", "y",
                     log_y=False)
        out.append(save(fig, figures_dir / f"prediction_{fn_name}.png"))
    return out


# ------------------------------------------------------------------------ HW1-1 actual_task


@plotter("actual_task")
def plot_actual_task(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    out = []
    datasets = sorted({r["dataset"] for r in results["runs"].values()})
    for ds in datasets:
        runs = {k: r for k, r in results["runs"].items() if r["dataset"] == ds}
        for metric, ylabel in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            values = []
            for i, run in enumerate(runs.values()):
                color = f"C{i}"
                train = run["history"]["epoch"][f"train_{metric}"]
                ax.plot(_epochs(train), train, color=color, label=f"{_label(run)} train")
                test = run["history"]["epoch"].get(f"test_{metric}")
                if test:
                    ax.plot(_epochs(test), test, color=color, linestyle="--",
                            label=f"{run['model']['name']} test")
                values += train + (test or [])
            _finish_axes(ax, f"HW1-1 {ds}: training (solid) and test (dashed) {metric}", "epoch",
                         ylabel, values=values if metric == "loss" else None,
                         log_y=None if metric == "loss" else False)
            out.append(save(fig, figures_dir / f"{ds}_{metric}.png"))
    return out


def make_figures(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    experiment = results["experiment"]
    if experiment not in PLOTTERS:
        from hw1_tf.errors import Hw1Error

        raise Hw1Error(f"no figures defined for experiment {experiment!r}; known: "
                       f"{', '.join(sorted(PLOTTERS))}")
    return PLOTTERS[experiment](results, Path(figures_dir))


# ------------------------------------------------------------- scratch (fully-connected nets from scratch)


def _scratch_curves(ax_loss, ax_acc, run: dict[str, Any], label: str | None = None,
                    color=None) -> None:
    """Per-iteration loss on ax_loss, per-epoch train (solid) / val (dashed) accuracy on ax_acc."""
    loss = [np.nan if v is None else v for v in run["loss_history"]]
    per_epoch = max(run.get("iterations_per_epoch", 1), 1)
    it_epochs = np.arange(1, len(loss) + 1) / per_epoch
    ax_loss.plot(it_epochs, loss, color=color, lw=0.8, label=label)
    epochs = np.arange(len(run["train_acc_history"]))
    ax_acc.plot(epochs, run["train_acc_history"], color=color, marker=".",
                label=f"{label}: train" if label else "train")
    ax_acc.plot(epochs, run["val_acc_history"], color=color, ls="--", marker=".",
                label=f"{label}: validation" if label else "validation")


def _scratch_loss_axis(ax, values, title: str) -> None:
    ax.set(title=title, xlabel="epoch", ylabel="training loss (per iteration)")
    if spans_decades(values):
        ax.set_yscale("log")


@plotter("scratch")
def plot_scratch(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """Overfitting 50 examples, the weight-scale/learning-rate grid, the four update rules and the
    final net, from results/scratch/results.json."""
    paths = []
    dataset = results.get("dataset_used", "?")
    runs = results["runs"]

    overfit = runs["overfit"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    _scratch_curves(ax_loss, ax_acc, overfit)
    _scratch_loss_axis(ax_loss, overfit["loss_history"], "Training loss")
    ax_acc.set(title=f"Accuracy (train reaches {results['overfit_train_accuracy']:.0%})",
               xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax_acc.axhline(1.0, color="gray", lw=0.5)
    ax_acc.legend()
    fig.suptitle(f"Overfitting {overfit['num_train']} training examples: "
                 f"{len(overfit['hidden_dims']) + 1}-layer net, {dataset}")
    paths.append(save(fig, figures_dir / "overfit.png"))

    search = results["search"]
    acc = np.array([[np.nan if v is None else v for v in row] for row in search["train_acc"]],
                   dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    image = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, "div." if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                color="black" if np.isnan(v) or v >= 0.6 else "white", fontsize=8)
    ax.set_xticks(range(len(search["learning_rates"])),
                  [f"{v:g}" for v in search["learning_rates"]])
    ax.set_yticks(range(len(search["weight_scales"])),
                  [f"{v:g}" for v in search["weight_scales"]])
    ax.set(xlabel="learning rate (log grid)", ylabel="weight scale (log grid)",
           title=f"{len(search['hidden_dims']) + 1}-layer net on a small set: final train "
                 f"accuracy\n(best: weight_scale={search['best']['weight_scale']:g}, "
                 f"lr={search['best']['learning_rate']:g})")
    fig.colorbar(image, ax=ax, label="training accuracy")
    paths.append(save(fig, figures_dir / "search.png"))

    rules = results["update_rules"]
    fig, (ax_loss, ax_train, ax_val) = plt.subplots(1, 3, figsize=(15, 4.2))
    all_losses = []
    for k, (name, run) in enumerate(rules.items()):
        color = f"C{k}"
        label = f"{name} (lr={run['learning_rate']:g})"
        loss = [np.nan if v is None else v for v in run["loss_history"]]
        all_losses += loss
        per_epoch = max(run.get("iterations_per_epoch", 1), 1)
        ax_loss.plot(np.arange(1, len(loss) + 1) / per_epoch, loss, color=color, lw=0.7,
                     alpha=0.85, label=label)
        epochs = np.arange(len(run["train_acc_history"]))
        ax_train.plot(epochs, run["train_acc_history"], color=color, marker="o", label=label)
        ax_val.plot(epochs, run["val_acc_history"], color=color, marker="o", label=label)
    _scratch_loss_axis(ax_loss, all_losses, "Training loss")
    ax_train.set(title="Training accuracy", xlabel="epoch", ylabel="accuracy")
    ax_val.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_train, ax_val):
        ax.legend(fontsize=8)
    first = next(iter(rules.values()), {})
    fig.suptitle(f"Update rules on a {len(first.get('hidden_dims', [])) + 1}-layer net, "
                 f"{dataset}")
    paths.append(save(fig, figures_dir / "update_rules.png"))

    final = runs["final"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    _scratch_curves(ax_loss, ax_acc, final)
    _scratch_loss_axis(ax_loss, final["loss_history"], "Training loss")
    ax_acc.axhline(final["test_accuracy"], color="k", lw=0.8, ls=":",
                   label=f"test (best-val params): {final['test_accuracy']:.4f}")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    ax_acc.legend()
    fig.suptitle(f"Final net {final['hidden_dims']} ({final['update_rule']}, "
                 f"{final['normalization'] or 'no norm'}, dropout {final['dropout']:g}) on "
                 f"{dataset}: test accuracy {final['test_accuracy']:.2%}")
    paths.append(save(fig, figures_dir / "final.png"))
    return paths


# ----------------------------------------------------------------- HW1-3 generalization


def _knob_text(knob: str, value) -> str:
    return f"batch {int(value)}" if knob == "batch_size" else f"lr {float(value):g}"


@plotter("flatness")
def plot_flatness(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """As the slides: cross-entropy (log scale, left axis) and accuracy (right axis), training
    (solid) and test (dashed), against the interpolation ratio α; one figure per pair."""
    out = []
    for key, line in results["lines"].items():
        alphas = np.asarray(line["alphas"], float)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        acc_ax = ax.twinx()
        for split, style in (("train", "-"), ("test", "--")):
            ax.plot(alphas, line[f"{split}_loss"], "C0" + style, label=f"{split} cross-entropy")
            acc_ax.plot(alphas, line[f"{split}_accuracy"], "C3" + style,
                        label=f"{split} accuracy")
        for x in (0.0, 1.0):
            ax.axvline(x, color="grey", linewidth=0.8, alpha=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("interpolation ratio α  (θ = (1-α)·θ₁ + α·θ₂)")
        ax.set_ylabel("cross-entropy (log scale)", color="C0")
        acc_ax.set_ylabel("accuracy", color="C3")
        acc_ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        first = _knob_text(line["knob"], line["first_value"])
        second = _knob_text(line["knob"], line["second_value"])
        bn = ", BN recomputed" if line.get("recomputed_batch_norm") else ""
        ax.set_title(f"HW1-3 flatness, {results.get('dataset', '')}: θ₁ = {first} (α=0), "
                     f"θ₂ = {second} (α=1){bn}", fontsize=10)
        handles = ax.get_legend_handles_labels()
        acc_handles = acc_ax.get_legend_handles_labels()
        ax.legend(handles[0] + acc_handles[0], handles[1] + acc_handles[1], fontsize=8,
                  loc="center left")
        out.append(save(fig, figures_dir / f"{key}.png"))
    return out


@plotter("random_labels")
def plot_random_labels(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """Per run: training and test loss (left) and accuracy (right) against epochs; with several
    fractions, the final accuracies and the epochs to fit against the fraction."""
    out = []
    corruption = results["config"]["corruption"]
    for key, run in results["runs"].items():
        epoch = run["history"]["epoch"]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
        for split, style in (("train", "-"), ("test", "--")):
            ax_loss.plot(_epochs(epoch[f"{split}_loss"]), epoch[f"{split}_loss"], style,
                         color="C0", label=f"{split}")
            ax_acc.plot(_epochs(epoch[f"{split}_accuracy"]), epoch[f"{split}_accuracy"], style,
                        color="C3", label=f"{split}")
        ax_acc.axhline(0.1, color="grey", linewidth=0.8, linestyle=":",
                       label="chance (10 classes)")
        what = f"{corruption} corrupted, fraction {run['ratio']:g}"
        _finish_axes(ax_loss, f"HW1-3 {results['dataset']}: loss ({what})", "epoch",
                     "cross-entropy", values=epoch["train_loss"] + epoch["test_loss"])
        _finish_axes(ax_acc, f"accuracy ({what})", "epoch", "accuracy", log_y=False)
        out.append(save(fig, figures_dir / f"epochs_{key}.png"))
    if len(results["runs"]) > 1:
        runs = sorted(results["runs"].values(), key=lambda r: r["ratio"])
        ratios = [r["ratio"] for r in runs]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(ratios, [r["final_train_accuracy"] for r in runs], "o-", color="C3",
                label="final training accuracy")
        ax.plot(ratios, [r["final_test_accuracy"] for r in runs], "s--", color="C3",
                label="final test accuracy")
        ax.set_ylim(0, 1.02)
        fit_ax = ax.twinx()
        fitted = [(x, r["epochs_to_fit"]) for x, r in zip(ratios, runs) if r["epochs_to_fit"]]
        if fitted:
            fit_ax.plot(*zip(*fitted), "^:", color="C0", label="epochs to fit training set")
        missed = [x for x, r in zip(ratios, runs) if not r["epochs_to_fit"]]
        if missed:
            top = results["config"]["epochs"]
            fit_ax.plot(missed, [top] * len(missed), "x", color="C0",
                        label=f"not fitted in {top} epochs")
        fit_ax.set_ylabel("epochs to reach the fit accuracy", color="C0")
        fit_ax.set_ylim(0, results["config"]["epochs"] * 1.05)
        handles = [a.get_legend_handles_labels() for a in (ax, fit_ax)]
        ax.legend(handles[0][0] + handles[1][0], handles[0][1] + handles[1][1], fontsize=8,
                  loc="center left")
        ax.set_xlabel(f"fraction of training examples corrupted ({corruption})")
        ax.set_ylabel("accuracy", color="C3")
        ax.set_title(f"HW1-3 {results['dataset']}: fitting corrupted data")
        ax.grid(True, alpha=0.3)
        out.append(save(fig, figures_dir / "ratio_sweep.png"))
    return out


@plotter("capacity")
def plot_capacity(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """Final training and test loss, and accuracy, against the parameter count (log x), one
    point per model."""
    runs = sorted(results["runs"].values(), key=lambda r: r["num_params"])
    params = [r["num_params"] for r in runs]
    out = []
    for metric, ylabel in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        values = []
        for split, marker, color in (("train", "o", "C0"), ("test", "s", "C1")):
            v = [r[f"final_{split}_{metric}"] for r in runs]
            ax.scatter(params, v, marker=marker, color=color, label=f"{split}")
            values += v
        ax.set_xscale("log")
        _finish_axes(ax, f"HW1-3 {results['dataset']}: final {metric} vs model size "
                     f"({results['config']['hidden_layers']} hidden layers, growing width)",
                     "number of parameters (log scale)", ylabel,
                     values=values if metric == "loss" else None,
                     log_y=None if metric == "loss" else False)
        out.append(save(fig, figures_dir / f"{metric}_vs_params.png"))
    return out
