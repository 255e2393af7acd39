"""Every figure of the study, drawn from results dicts (results.json) only, never from models.

`PLOTTERS[experiment](results, figures_dir) -> [paths]` redraws an experiment's figures;
`bin/make_figures --experiments=X` calls it without retraining. Each figure answers one question
of the slides, with a title, labelled axes (units / scale), a legend, and log scales where the
values span decades.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import matplotlib
import matplotlib.colors
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
                    label=f"{_label(run)}, test MSE " + (f"{run['test_mse']:.2e}" if
                                                           run["test_mse"] is not None
                                                           else "n/a (diverged)"))
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

    rules = {rule: runs[name] for rule, name in results["update_rules"].items()}
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


# ------------------------------------------------------------------------- benchmarks


def plot_population_scaling(bench: dict[str, Any], path: Path) -> Path:
    """Time per member-step against population size (log-log), with training the members one
    by one as the reference line. `bench`: sizes, member_step_seconds, single_step_seconds,
    title."""
    sizes = np.asarray(bench["sizes"])
    ms = 1e3 * np.asarray(bench["member_step_seconds"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(sizes, ms, "o-", label="population (one batched XLA computation)")
    ax.axhline(1e3 * bench["single_step_seconds"], color="C3", linestyle="--",
               label="one by one (fused XLA core)")
    ax.set_xscale("log")
    _finish_axes(ax, f"Population training: {bench['title']}", "members N (log scale)",
                 "time per member-step (ms)", log_y=True)
    return save(fig, Path(path))


# ---------------------------------------------------------------------- curvature (Hessian)


@plotter("hessian_spectrum")
def plot_hessian_spectrum(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """Per run: the Hessian's spectral density by stochastic Lanczos quadrature (log density,
    since the bulk near zero dwarfs the outliers), with the top eigenvalues and the trace in the
    legend and the exact eigenvalues (when computed) as a rug."""
    out = []
    for name, run in results["runs"].items():
        grid = np.asarray(run["density_grid"], float)
        density = np.asarray(run["density"], float)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        floor = max(density.max() * 1e-8, 1e-300)
        ax.plot(grid, np.maximum(density, floor), color="C0",
                label=f"SLQ density ({len(run['slq_nodes'][0])} Lanczos steps, "
                      f"{len(run['slq_nodes'])} probe(s))")
        top = np.asarray(run["top_eigenvalues"], float)
        for i, value in enumerate(top):
            ax.axvline(value, color="C3", lw=0.8, alpha=0.8,
                       label=f"top {len(top)}: " + ", ".join(f"{v:.3g}" for v in top)
                       if i == 0 else None)
        bottom = np.asarray(run["bottom_eigenvalues"], float)
        ax.axvline(bottom[0], color="C2", lw=0.8, ls="--",
                   label=f"smallest: {bottom[0]:.3g}")
        if "eigenvalues" in run:
            ax.plot(np.asarray(run["eigenvalues"], float),
                    np.full(len(run["eigenvalues"]), floor), "|", color="k", ms=8,
                    label=f"exact eigenvalues ({len(run['eigenvalues'])})")
        ax.plot([], [], " ", label=f"trace {run['trace']:.4g} +- {run['trace_standard_error']:.2g}"
                                   f" (Hutchinson), {run['hutchpp_trace']:.4g} (Hutch++)")
        ax.set_yscale("log")
        ax.set_title(f"Hessian spectrum of {name}\n({run['num_params']} parameters, loss over "
                     f"{run['num_examples']} {run.get('dataset', '')} examples)")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("spectral density (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        out.append(save(fig, figures_dir / f"density_{name}.png"))
    return out


def plot_hvp_scaling(rows: list[dict[str, Any]], path: Path) -> Path:
    """bench/hessian.py: seconds per Hessian-vector product against the parameter count, one
    line per tool, log-log."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, tool in enumerate(sorted({r["tool"] for r in rows})):
        mine = sorted((r for r in rows if r["tool"] == tool), key=lambda r: r["params"])
        ax.plot([r["params"] for r in mine], [r["seconds"] for r in mine], "o-", color=f"C{i}",
                label=tool)
    ax.set_xscale("log")
    ax.set_yscale("log")
    examples = rows[0].get("examples", "?") if rows else "?"
    ax.set_title(f"One Hessian-vector product over {examples} examples (min of rounds)")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("seconds per HVP (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save(fig, path)


# ------------------------------------------------------- HW1-2 minimal ratio at critical points


def _ratio_panel(ax, x, loss, norm, reached, norm_scale, xlabel: str, title: str,
                 threshold: float):
    """Loss against a minimal ratio: critical runs as dots coloured by ||grad L||, the others
    as crosses (same colours), so no run is silently mixed in."""
    points = None
    for mask, marker, label in ((reached, "o", f"||grad L|| <= {threshold:g}"),
                                (~reached, "x", f"||grad L|| > {threshold:g} (not critical)")):
        if mask.any():
            points = ax.scatter(x[mask], loss[mask], c=norm[mask], cmap="viridis",
                                norm=norm_scale, marker=marker, s=28,
                                label=f"{label}: {int(mask.sum())} runs")
    # log once the losses span a decade: the runs' end points differ by orders of magnitude
    _finish_axes(ax, title, xlabel, "training loss (MSE, float64, full batch)", loss,
                 log_y=spans_decades(loss, 1.0))
    ax.set_xlim(-0.02, 1.02)
    return points


@plotter("minimal_ratio")
def plot_minimal_ratio(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """minimal_ratio.png: loss vs minimal ratio, one panel per definition; tolerances.png: the
    eigenvalue ratio at every tolerance; critical_phase.png: ||grad L|| per iteration."""
    from matplotlib.colors import LogNorm

    config, end = results["config"], results["runs"]["endpoints"]
    loss = np.asarray(end["loss"], float)
    norm = np.asarray(end["grad_norm"], float)
    reached = np.asarray(end["reached"], bool)
    ratio = np.asarray(end["eigenvalue_ratio"], float)
    tols = np.asarray(end["eigen_tolerances"], float)
    positive = norm[norm > 0]
    norm_scale = LogNorm(vmin=positive.min() if positive.size else 1e-12,
                         vmax=max(positive.max() if positive.size else 1.0, 1e-12))
    threshold = float(config["critical_grad_norm"])
    title_tail = f"{len(loss)} runs, {results['critical_phase']['method']}"
    out = []

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    panels = ((ratio[:, 0], f"minimal ratio: share of eigenvalues > {tols[0]:g} max|λ|",
               "Exact Hessian eigenvalues"),
              (np.asarray(end["perturbation_ratio"], float),
               "minimal ratio: share of perturbations raising the loss",
               f"{config['perturbation_samples']} random perturbations, radius "
               f"{config['perturbation_radius']:g}"))
    for ax, (x, xlabel, title) in zip(axes, panels):
        points = _ratio_panel(ax, x, loss, norm, reached, norm_scale, xlabel,
                              f"{title}\n({title_tail})", threshold)
    fig.colorbar(points, ax=axes, label="final ||grad L|| (log scale)")
    out.append(save_no_layout(fig, figures_dir / "minimal_ratio.png"))

    fig, axes = plt.subplots(1, len(tols), figsize=(5.5 * len(tols), 5), squeeze=False)
    near = np.asarray(end["near_zero_ratio"], float)
    for j, (ax, tol) in enumerate(zip(axes[0], tols)):
        points = _ratio_panel(ax, ratio[:, j], loss, norm, reached, norm_scale,
                              f"share of eigenvalues > {tol:g} max|λ|",
                              f"tol = {tol:g} max|λ|\nmedian {np.median(near[:, j]):.0%} of "
                              "eigenvalues within it", threshold)
        if j:  # one legend is enough
            ax.get_legend().remove()
    fig.colorbar(points, ax=list(axes[0]), label="final ||grad L|| (log scale)")
    out.append(save_no_layout(fig, figures_dir / "tolerances.png"))

    phase = results["critical_phase"]
    history = np.asarray(phase.get("grad_norm", []), float)
    if history.ndim == 2 and history.shape[0] > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        steps = np.arange(history.shape[0])
        ax.plot(steps, history, color="C0", lw=0.6, alpha=0.35)
        ax.plot(steps, np.nanmedian(history, axis=1), color="k", lw=2, label="median run")
        ax.axhline(threshold, color="C3", ls="--", label=f"critical threshold {threshold:g}")
        unit = ("iteration after the switch (mini-batch norms, float32)"
                if phase["method"] == "grad_norm" else
                f"{phase['method']} iteration (float64, full batch)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        _finish_axes(ax, f"||grad L|| in the critical-point phase ({title_tail})", unit,
                     "||grad L||", log_y=True)
        out.append(save(fig, figures_dir / "critical_phase.png"))
    return out


def save_no_layout(fig, path: Path) -> Path:
    """`save` for figures whose colour bar spans several axes (tight_layout cannot place it)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return store.atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------ HW1-2 optimization


def running_median(values, window: int) -> np.ndarray:
    """Median of each `window` consecutive values (centred; shorter at the ends): a trend
    through noisy per-iteration mini-batch values that one outlier batch cannot drag."""
    values = np.asarray(values, float)
    if window <= 1 or values.size <= 2:
        return values
    half = window // 2
    return np.array([np.nanmedian(values[max(0, i - half):i + half + 1])
                     for i in range(values.size)])


def _iteration_panel(ax, values, color: str, label: str, title: str, ylabel: str) -> None:
    """Per-iteration values (faint) with their running median (bold), log y when they span
    decades."""
    values = np.asarray(values, float)
    iterations = np.arange(1, values.size + 1)
    window = max(5, values.size // 100) | 1 if values.size >= 50 else 1
    ax.plot(iterations, values, color=color, lw=0.5, alpha=0.35,
            label=f"{label} (every iteration)")
    if window > 1:
        ax.plot(iterations, running_median(values, window), color=color, lw=1.5,
                label=f"running median over {window} iterations")
    _finish_axes(ax, title, "iteration", ylabel, values=values)


@plotter("grad_norm")
def plot_grad_norm(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """One figure per task: ||grad L|| (top) and the loss (bottom) of every iteration, on a
    shared iteration axis."""
    out = []
    for name, run in results["runs"].items():
        it = run["history"]["iteration"]
        fig, (ax_norm, ax_loss) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
        loss_name = "cross-entropy" if run["task"] != "function" else "MSE"
        _iteration_panel(ax_norm, it["grad_norm"], "C0", "||grad L||",
                         f"HW1-2 {name}: {run['description']}, {run['num_params']} params",
                         "gradient norm ||grad L||")
        _iteration_panel(ax_loss, it["loss"], "C3", "mini-batch loss",
                         "training loss of the same iterations", f"loss ({loss_name})")
        ax_norm.set_xlabel("")  # shared with the loss panel below
        switch = run["history"].get("switched_at_iteration")
        for ax in (ax_norm, ax_loss) if switch is not None else ():
            ax.axvline(switch, color="k", ls=":", lw=1, label="switch to ||g||^2")
        out.append(save(fig, figures_dir / f"{name}.png"))
    return out


@plotter("trajectory")
def plot_trajectory(results: dict[str, Any], figures_dir: Path) -> list[Path]:
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
            values = np.asarray(run["snapshots"][metric], float)
            color = f"C{i % 10}"
            ax.plot(xy[:, 0], xy[:, 1], "-", color=color, lw=0.9, alpha=0.7)
            ax.plot(xy[:, 0], xy[:, 1], "o", color=color, ms=3.5,
                    label=f"{name} (seed {run['seed']}): final {metric} {values[-1]:.3g}")
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
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"HW1-2 weight trajectories of {len(runs)} runs on {results['task']}: PCA of "
                 f"weights every {results['config']['snapshot_every']} epochs, "
                 f"points annotated with training {metric}")
    return [save(fig, figures_dir / "trajectory.png")]


def _surface_levels(losses: np.ndarray, count: int = 25) -> tuple[np.ndarray, Any]:
    """Contour levels (geometric where the losses span decades) and the matching norm."""
    finite = losses[np.isfinite(losses)]
    low, high = finite.min(), finite.max()
    if low > 0 and spans_decades(finite, 1.0):
        return (np.geomspace(low, high, count),
                matplotlib.colors.LogNorm(vmin=low, vmax=high))
    return np.linspace(low, high, count), None


def _contour(ax, xs, ys, losses, title: str, xlabel: str, ylabel: str, loss_label: str):
    levels, norm = _surface_levels(losses)
    filled = ax.contourf(xs, ys, losses.T, levels=levels, norm=norm, cmap="viridis")
    ax.contour(xs, ys, losses.T, levels=levels[::3], colors="white", linewidths=0.4,
               norm=norm)
    cbar = ax.figure.colorbar(filled, ax=ax, format=matplotlib.ticker.FormatStrFormatter("%.3g"))
    cbar.set_label(loss_label + (" (log scale)" if norm is not None else ""))
    ax.plot(0, 0, "r*", ms=12, label="trained weights θ")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)


def _surface3d(xs, ys, losses, title: str, xlabel: str, ylabel: str, loss_label: str, path):
    fig = plt.figure(figsize=(7.5, 6))
    ax = fig.add_subplot(projection="3d")
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    log = spans_decades(losses, 1.0) and np.nanmin(losses) > 0
    z = np.log10(losses) if log else losses
    ax.plot_surface(gx, gy, z, cmap="viridis", linewidth=0, antialiased=True, alpha=0.95)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel,
           zlabel=f"log10 {loss_label}" if log else loss_label)
    return save(fig, path)


@plotter("error_surface")
def plot_error_surface(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """1-D curves (random directions, the trajectory's first PC, initial-to-trained line),
    contours (random plane; PCA plane with the projected trajectory) and 3-D surfaces."""
    out = []
    loss_label = "training loss (" + ("cross-entropy" if results["num_classes"] else "MSE") + ")"
    rnd, pca, interp = results["random"], results["pca"], results["interpolation"]
    task = results["task"]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    line_losses = np.asarray(rnd["line_losses"])
    for k in range(len(line_losses)):
        axes[0].plot(rnd["line"], line_losses[k], color=f"C{k}",
                     label=f"filter-normalised random direction d{k + 1}")
    _finish_axes(axes[0], f"{task}: 1-D along random directions", "step a (in units of the "
                 "filter norms of θ)", loss_label, values=line_losses)
    axes[1].plot(pca["line"], pca["line_losses"], color="C2", label="first PCA direction")
    _finish_axes(axes[1], "1-D along the trajectory's first PC", "step along PC 1 (weight-space "
                 "distance)", loss_label, values=pca["line_losses"])
    axes[2].plot(interp["alpha"], interp["losses"], color="C3",
                 label="(1-α) θ_initial + α θ_trained")
    for a, text in ((0, "initial"), (1, "trained")):
        axes[2].axvline(a, color="gray", ls=":", lw=1)
    _finish_axes(axes[2], "straight line initial → trained", "α (0: initial, 1: trained)",
                 loss_label, values=interp["losses"])
    out.append(save(fig, figures_dir / "lines.png"))

    losses = np.asarray(rnd["losses"])
    fig, ax = plt.subplots(figsize=(7, 5.8))
    _contour(ax, rnd["axis"], rnd["axis"], losses,
             f"{task}: loss on two orthogonal filter-normalised random directions",
             "a (along d1)", "b (along d2)", loss_label)
    ax.legend(fontsize=8)
    out.append(save(fig, figures_dir / "contour_random.png"))
    out.append(_surface3d(rnd["axis"], rnd["axis"], losses,
                          f"{task}: loss surface, random directions", "a (d1)", "b (d2)",
                          loss_label, figures_dir / "surface_random.png"))

    losses = np.asarray(pca["losses"])
    ev = np.asarray(pca["explained_variance_ratio"])
    fig, ax = plt.subplots(figsize=(7, 5.8))
    xlabel = f"PC 1 ({100 * ev[0]:.1f}% of the trajectory's variance)"
    ylabel = f"PC 2 ({100 * ev[1]:.1f}%)"
    _contour(ax, pca["axis_x"], pca["axis_y"], losses,
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
    out.append(save(fig, figures_dir / "contour_pca.png"))
    out.append(_surface3d(pca["axis_x"], pca["axis_y"], losses,
                          f"{task}: loss surface, trajectory PCA plane", "PC 1", "PC 2",
                          loss_label, figures_dir / "surface_pca.png"))
    return out


# ------------------------------------------- HW1-3 part 2: sensitivity, sharpness, measures

_SENSITIVITIES = (("sensitivity_loss_grad", "||d loss / d x||_F (slides)", "-"),
                  ("sensitivity_jacobian", "||d softmax / d x||_F (Novak et al.)", ":"))


def _log_x(ax, values) -> None:
    v = np.asarray(values, float)
    if v.min() > 0 and v.max() / v.min() > 10:
        ax.set_xscale("log")


@plotter("sensitivity")
def plot_sensitivity(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """The slides' figure: loss (or accuracy) of training and test on the left axis and both
    sensitivities on the right, against the varied batch size or learning rate."""
    vary = results["vary"]
    runs = sorted(results["runs"].values(), key=lambda r: r[vary])
    xs = [r[vary] for r in runs]
    xlabel = ("batch size" if vary == "batch_size" else "learning rate") + " (log scale)"
    out = []
    for metric, ylabel in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for split, style in (("train", "-o"), ("test", "--o")):
            ax.plot(xs, [r[f"{split}_{metric}"] for r in runs], style, color="C0",
                    label=f"{split} {metric}")
        _log_x(ax, xs)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel, color="C0")
        ax.grid(True, which="both", alpha=0.3)
        right = ax.twinx()
        for key, label, style in _SENSITIVITIES:
            right.plot(xs, [r[key] for r in runs], style, marker="s", color="C3", label=label)
        right.set_yscale("log")
        right.set_ylabel("sensitivity, test mean (log scale)", color="C3")
        handles = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="best")
        ax.set_title(f"HW1-3 {metric} and sensitivity vs {vary.replace('_', ' ')}")
        out.append(save(fig, figures_dir / f"{metric}_sensitivity.png"))
    return out


_SHARPNESS = (("sharpness_slides", "slides: block-diagonal ||H||_2 eps^2/(2(1+L))"),
              ("sharpness_whole", "whole-model ||H||_2 eps^2/(2(1+L))"),
              ("sharpness_keskar", "Keskar et al.: max over eps-box (L-BFGS-B)"))


_SHORT = {"sharpness_slides": "slides (block-diagonal ||H||_2)",
          "sharpness_whole": "whole-model ||H||_2", "sharpness_keskar": "Keskar et al. (box)"}


def _at_rate(runs: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    return sorted((r for r in runs if r["learning_rate"] == lr), key=lambda r: r["batch_size"])


@plotter("sharpness")
def plot_sharpness(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """Each sharpness and the training/test loss against batch size, one series per learning
    rate; and each sharpness against the generalization gap."""
    runs = list(results["runs"].values())
    rates = sorted({r["learning_rate"] for r in runs})
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (key, title) in zip(axes.flat, _SHARPNESS):
        for i, lr in enumerate(rates):
            rs = _at_rate(runs, lr)
            ax.plot([r["batch_size"] for r in rs], [r[key] for r in rs], "-o", color=f"C{i}",
                    label=f"lr {lr:g}")
        ax.set_xscale("log")
        _finish_axes(ax, title, "batch size (log scale)", "sharpness", log_y=True)
    ax = axes.flat[3]
    for i, lr in enumerate(rates):
        rs = _at_rate(runs, lr)
        bs = [r["batch_size"] for r in rs]
        ax.plot(bs, [r["train_loss"] for r in rs], "-o", color=f"C{i}",
                label=f"train, lr {lr:g}")
        ax.plot(bs, [r["test_loss"] for r in rs], "--s", color=f"C{i}", label=f"test, lr {lr:g}")
    ax.set_xscale("log")
    _finish_axes(ax, "training (solid) and test (dashed) loss", "batch size (log scale)",
                 "cross-entropy loss", values=[r[k] for r in runs for k in ("train_loss",
                                                                             "test_loss")])
    fig.suptitle(f"HW1-3 bonus: sharpness of {len(runs)} training approaches")
    out = [save(fig, figures_dir / "sharpness.png")]

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
    for ax, (key, title) in zip(axes, _SHARPNESS):
        for i, lr in enumerate(rates):
            rs = [r for r in runs if r["learning_rate"] == lr]
            ax.scatter([r["loss_gap"] for r in rs], [r[key] for r in rs], color=f"C{i}",
                       label=f"lr {lr:g}")
            for r in rs:
                ax.annotate(str(r["batch_size"]), (r["loss_gap"], r[key]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        _finish_axes(ax, _SHORT[key], "test - training loss", "sharpness", log_y=True)
    fig.suptitle("sharpness vs generalization gap (labels: batch size)")
    out.append(save(fig, figures_dir / "sharpness_vs_gap.png"))
    return out


@plotter("reparametrization")
def plot_reparametrization(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """Dinh et al.'s rescaling: the function's change (float64 rounding) and each sharpness,
    against alpha."""
    r = results["runs"]["model"]
    alphas = np.asarray(r["alphas"], float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    floor = 1e-17  # exact zeros drawn here, below float64's epsilon
    left.plot(alphas, np.maximum(r["output_change"], floor), "-o",
              label="max |outputs change| / max |outputs|")
    left.plot(alphas, np.maximum(r["loss_change"], floor), "-s",
              label="|loss change| / loss (0 drawn at 1e-17)")
    left.axhline(np.finfo(np.float64).eps, color="gray", linestyle=":", label="float64 epsilon")
    left.set_ylim(1e-18, 1e-6)
    left.set_xscale("log")
    _finish_axes(left, "the function is unchanged", "alpha (log scale)", "relative change",
                 log_y=True)
    for key, label in _SHARPNESS:
        right.plot(alphas, r[key], "-o", label=_SHORT[key])
    right.set_xscale("log")
    _finish_axes(right, "while every sharpness changes", "alpha (log scale)", "sharpness",
                 log_y=True)
    fig.suptitle(f"HW1-3 bonus: layer {r['layer']} x alpha, layer {r['layer'] + 1} x 1/alpha "
                 "(ReLU)")
    return [save(fig, figures_dir / "reparametrization.png")]


@plotter("measures")
def plot_measures(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    """Kendall's tau of every measure against both generalization gaps, best first."""
    from hw1_tf.experiments.measures import GAPS, MEASURES

    # an undefined tau (a measure constant over the models) is stored as null
    taus = {m: {g: np.nan if v is None else float(v) for g, v in t.items()}
            for m, t in results["kendall_tau"].items()}
    names = sorted(taus, key=lambda m: -np.nan_to_num(taus[m]["loss_gap"], nan=-2))
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    for i, (gap, label) in enumerate(GAPS.items()):
        values = [np.nan_to_num(taus[m][gap], nan=0.0) for m in names]
        ax.barh(y + (i - 0.5) * 0.4, values, height=0.4, color=f"C{i}", label=f"vs {label}")
    ax.set_yticks(y)
    ax.set_yticklabels([MEASURES[m] for m in names], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(-1, 1)
    _finish_axes(ax, f"Kendall's tau over {len(results['runs'])} models (best first)",
                 "Kendall's tau", "measure", log_y=False)
    return [save(fig, figures_dir / "kendall_tau.png")]


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
