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


def make_figures(results: dict[str, Any], figures_dir: Path) -> list[Path]:
    experiment = results["experiment"]
    if experiment not in PLOTTERS:
        from hw1_tf.errors import Hw1Error

        raise Hw1Error(f"no figures defined for experiment {experiment!r}; known: "
                       f"{', '.join(sorted(PLOTTERS))}")
    return PLOTTERS[experiment](results, Path(figures_dir))
