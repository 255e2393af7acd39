"""Drawing helpers only: the style every figure shares, atomic saving, axes finishing, and the
line/contour/surface primitives several experiments draw with. No experiment's figure lives
here: each experiment module's `figures(results, figures_dir)` draws its own, from its results
dict only, and returns a `FigureSet` ({key: path}) whose keys its REPORT.md section refers to.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.colors
import matplotlib.font_manager
import matplotlib.legend
import matplotlib.text
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hw1_tf import store  # noqa: E402

__all__ = ["FigureSet", "plt", "matplotlib", "save", "finish_axes", "epochs_axis",
           "model_label", "spans_decades", "running_median", "surface_levels", "contour",
           "surface3d", "log_x_if_wide"]

INDEX_NAME = "figures.json"  # results/<exp>/: {key: file name} of the figures last drawn


class FigureSet(dict):
    """The figures one experiment drew: {key: path}. `save(fig, key)` writes
    `<figures_dir>/<key>.png`, so a figure's file name is decided here, once, from its key."""

    def __init__(self, figures_dir: str | Path):
        super().__init__()
        self.figures_dir = Path(figures_dir)

    def save(self, fig, key: str, *, tight: bool = True) -> Path:
        if key in self:
            raise ValueError(f"figure key {key!r} drawn twice")
        self[key] = save(fig, self.figures_dir / f"{key}.png", tight=tight)
        return self[key]


# The width a report shows a figure at (GitHub's column; REPORT.html's images), in pixels, and
# the smallest text a reader can read there. A figure wider than ~7.5 inches is scaled down
# to that width, and its text with it: `readable_text` enlarges the text to compensate.
REPORT_WIDTH_PX = 900
MIN_TEXT_PX = 9.0
BASE_WIDTH_IN = 7.5


def readable_text(fig) -> None:
    """Enlarges the text of a figure wider than BASE_WIDTH_IN, which a report shows scaled
    down to REPORT_WIDTH_PX: titles, labels and tick labels by sqrt(width / BASE_WIDTH_IN)
    (they keep their order of sizes), and no text below MIN_TEXT_PX as shown. Legends only get
    the floor: enlarged further they would cover the data they label."""
    width = fig.get_figwidth()
    if width <= BASE_WIDTH_IN:
        return
    scale = (width / BASE_WIDTH_IN) ** 0.5
    floor = MIN_TEXT_PX * 72.0 * width / REPORT_WIDTH_PX  # the points shown as MIN_TEXT_PX
    legends = {id(t) for leg in fig.findobj(matplotlib.legend.Legend)
               for t in [*leg.get_texts(), leg.get_title()]}
    for text in fig.findobj(matplotlib.text.Text):
        if text.get_text():
            size = text.get_fontsize()
            text.set_fontsize(max(size if id(text) in legends else size * scale, floor))
    for ax in fig.axes:  # tick labels are made at draw time: through the axes' settings
        size = matplotlib.font_manager.FontProperties(
            size=matplotlib.rcParams["xtick.labelsize"]).get_size_in_points()
        ax.tick_params(labelsize=max(size * scale, floor))


def save(fig, path: Path, *, tight: bool = True) -> Path:
    """Saves atomically as PNG (150 dpi) and closes the figure, its text enlarged to stay
    readable at the report's width (`readable_text`). `tight=False` for figures whose colour
    bar spans several axes (tight_layout cannot place it): a tight bounding box instead."""
    readable_text(fig)
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=150)
    else:
        fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return store.atomic_write_bytes(Path(path), buf.getvalue())


def spans_decades(values, decades: float = 2.0) -> bool:
    """True when positive values span more than `decades` orders of magnitude (use log y)."""
    v = np.asarray([x for x in np.ravel(values) if x is not None], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return v.size > 1 and np.log10(v.max() / v.min()) > decades


def epochs_axis(values) -> np.ndarray:
    """1, 2, ... len(values): the epoch of each per-epoch value."""
    return np.arange(1, len(values) + 1)


def finish_axes(ax, title: str, xlabel: str, ylabel: str, values=None,
                log_y: bool | None = None) -> None:
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


def model_label(run: Any) -> str:
    """"<model name> (<n> params)" of a run record (a records.RunRecord)."""
    return f"{run.model['name']} ({run.num_params} params)"


def log_x_if_wide(ax, values) -> None:
    """Log x when the positive values span more than a decade; a few distinct values (the
    settings of a sweep) each get a tick labelled with its number (16, 64, 256, not 10^2)."""
    v = np.asarray(values, float)
    if v.min() > 0 and v.max() / v.min() > 10:
        ax.set_xscale("log")
        settings = np.unique(v)
        if settings.size <= 12:  # a few settings (batch sizes): a tick at each, as numbers
            ax.set_xticks(settings)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
                lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def running_median(values, window: int) -> np.ndarray:
    """Median of each `window` consecutive values (centred; shorter at the ends): a trend
    through noisy per-iteration mini-batch values that one outlier batch cannot drag."""
    values = np.asarray(values, float)
    if window <= 1 or values.size <= 2:
        return values
    half = window // 2
    return np.array([np.nanmedian(values[max(0, i - half):i + half + 1])
                     for i in range(values.size)])


def surface_levels(losses: np.ndarray, count: int = 25) -> tuple[np.ndarray, Any]:
    """Contour levels (geometric where the losses span decades) and the matching norm."""
    finite = losses[np.isfinite(losses)]
    low, high = finite.min(), finite.max()
    if low > 0 and spans_decades(finite, 1.0):
        return (np.geomspace(low, high, count),
                matplotlib.colors.LogNorm(vmin=low, vmax=high))
    return np.linspace(low, high, count), None


def contour(ax, xs, ys, losses, title: str, xlabel: str, ylabel: str, loss_label: str):
    """Filled contours of losses[i, j] at (xs[i], ys[j]) with a colour bar, and the trained
    weights (the origin) marked."""
    levels, norm = surface_levels(losses)
    filled = ax.contourf(xs, ys, losses.T, levels=levels, norm=norm, cmap="viridis")
    ax.contour(xs, ys, losses.T, levels=levels[::3], colors="white", linewidths=0.4,
               norm=norm)
    cbar = ax.figure.colorbar(filled, ax=ax, format=matplotlib.ticker.FormatStrFormatter("%.3g"))
    cbar.set_label(loss_label + (" (log scale)" if norm is not None else ""))
    ax.plot(0, 0, "r*", ms=12, label="trained weights θ")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)


def surface3d(xs, ys, losses, title: str, xlabel: str, ylabel: str, loss_label: str):
    """A 3-D surface of losses[i, j] at (xs[i], ys[j]) (log10 where they span a decade); returns
    the figure, to be saved by the caller's FigureSet."""
    fig = plt.figure(figsize=(7.5, 6))
    ax = fig.add_subplot(projection="3d")
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    log = spans_decades(losses, 1.0) and np.nanmin(losses) > 0
    z = np.log10(losses) if log else losses
    ax.plot_surface(gx, gy, z, cmap="viridis", linewidth=0, antialiased=True, alpha=0.95)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel,
           zlabel=f"log10 {loss_label}" if log else loss_label)
    return fig
