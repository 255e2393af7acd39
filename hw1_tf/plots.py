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
        ax.set_title(f"Hessian spectrum of {name} ({run['num_params']} params, "
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


# ------------------------------------------------------------ HW1-2 minimal ratio at critical points


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
    _finish_axes(ax, title, xlabel, "training loss (MSE, float64, full batch)", loss)
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

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
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
