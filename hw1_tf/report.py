"""REPORT.md from the results on disk, one section per experiment, never retraining.

Every experiment module in `hw1_tf.experiments.ORDER` (the order of the slides' questions) has
  TITLE       the slides' heading it answers
  QUESTIONS   the slides' questions it answers
  report_section(results, ctx) -> str   markdown: its figures, a table of its key numbers and
                                         a comment computed from those numbers
This module gives a section writer its `Context` (figures on disk, links relative to
REPORT.md, the command that produces the results) and the markdown helpers, and writes
`<output_dir>/REPORT.md` atomically. A question whose results are missing or unreadable gets
the command that produces them instead of a section.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from absl import logging

from hw1_tf import experiments, store
from hw1_tf.errors import Hw1Error

REPORT_NAME = "REPORT.md"


@dataclasses.dataclass(frozen=True)
class Context:
    """What a section writer may know besides the results: where things are on disk."""

    paths: store.Paths
    experiment: str
    profile: str = "full"  # flag files the suggested commands use: flags/<profile>/

    @property
    def report_path(self) -> Path:
        return self.paths.output_dir / REPORT_NAME

    @property
    def figures_dir(self) -> Path:
        return self.paths.figures_dir(self.experiment)

    @property
    def figures(self) -> list[Path]:
        """The experiment's figure files that exist."""
        return sorted(self.figures_dir.glob("*.png")) if self.figures_dir.is_dir() else []

    def link(self, path: str | Path) -> str:
        """`path` relative to REPORT.md's folder, with forward slashes (markdown links)."""
        return Path(os.path.relpath(Path(path), self.report_path.parent)).as_posix()

    def figure(self, name: str, caption: str) -> str:
        """An image link to figures/<experiment>/<name> when the file exists, else the command
        that redraws it (REPORT.md never links to a missing file)."""
        path = self.figures_dir / name
        if not path.is_file():
            return f"*Figure `{name}` is missing; `{self.figures_command}` redraws it.*"
        return f"![{caption.replace(']', ')').replace('[', '(')}]({self.link(path)})"

    def _output_flag(self) -> str:
        if self.paths.output_dir.resolve() == store.project_root().resolve():
            return ""
        return f" --output_dir={self.paths.output_dir}"

    @property
    def command(self) -> str:
        """The command that produces this experiment's results."""
        name = self.experiment
        return f"bin/run_{name} --flagfile=flags/{self.profile}/{name}.flags{self._output_flag()}"

    @property
    def figures_command(self) -> str:
        return f"bin/make_figures --experiment={self.experiment}{self._output_flag()}"


# -------------------------------------------------------------------------- markdown helpers


def series(values: Any) -> np.ndarray:
    """A float array from a results list (None: NaN, as results.json stores non-finite
    values) or from an array restored by the store."""
    return np.asarray(values, dtype=float)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table or a sentence: `digits` significant digits, scientific notation
    for values below 1e-3 or from 1e5, integers as they are, n/a for None/NaN."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.{digits - 1}e}"
    return f"{value:#.{digits}g}".rstrip(".")  # '#' keeps trailing zeros: 0.160, not 0.16


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage: 0.9731 -> 97.3%."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{100 * float(value):.{digits}f}%"


def points(difference: float, digits: int = 1) -> str:
    """A difference of two fractions in percentage points: 0.012 -> 1.2 points."""
    return f"{100 * float(difference):.{digits}f} points"


def times(ratio: float) -> str:
    """A ratio as a factor: 3.42 -> 3.4×."""
    return f"{fmt(ratio, 2 if ratio < 10 else 3)}×"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; floats go through `fmt`, strings are kept (pre-formatted cells)."""

    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else fmt(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def peak(values: Any) -> tuple[int | None, float | None]:
    """(index, value) of the highest finite value; (None, None) when there is none."""
    values = series(values)
    if not np.isfinite(values).any():
        return None, None
    i = int(np.nanargmax(values))
    return i, float(values[i])


def ranked(values: dict[str, float], *, lower_is_better: bool) -> list[tuple[str, float]]:
    """(name, value) pairs best first; NaN (diverged, missing) last."""

    def key(item):
        value = item[1]
        if value is None or not math.isfinite(value):
            return (1, 0.0)
        return (0, value if lower_is_better else -value)

    return sorted(values.items(), key=key)


def join(words: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


# ---------------------------------------------------------------------------------- writing


def _load(ctx: Context) -> tuple[dict[str, Any] | None, str | None]:
    """(results, None), or (None, why they cannot be read)."""
    try:
        return store.load_results(ctx.paths, ctx.experiment), None
    except (Hw1Error, OSError, ValueError, zipfile.BadZipFile) as e:
        return None, str(e)


def missing_section(ctx: Context, reason: str) -> str:
    return (f"No results to report: `{ctx.command}` produces them, then `bin/make_report"
            f"{ctx._output_flag()}` rewrites this file.\n\n({reason})")


def section(module: Any, ctx: Context) -> tuple[str, dict[str, Any] | None]:
    """The markdown of one experiment (its heading, the slides' questions, its body) and the
    results it was written from (None when they are missing or unreadable)."""
    head = [f"## {module.TITLE}", "", "Questions of the slides answered here:", ""]
    head += [f"- {q}" for q in module.QUESTIONS]
    results, reason = _load(ctx)
    if results is not None:
        try:
            body = module.report_section(results, ctx).strip()
        except (KeyError, IndexError, TypeError, ValueError) as e:
            # a results.json from an older version of the experiment: say so, never crash
            logging.warning("%s: results do not fit the report section (%s: %s)",
                            ctx.experiment, type(e).__name__, e)
            results, body = None, missing_section(
                ctx, f"{ctx.paths.results_json(ctx.experiment)} lacks what the section reads: "
                     f"{type(e).__name__} {e}")
    else:
        body = missing_section(ctx, reason)
    return "\n".join(head + ["", body, ""]), results


def render(paths: store.Paths, profile: str = "full",
           names: Sequence[str] | None = None) -> str:
    """The text of REPORT.md from the results under `paths.output_dir`."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    sections, sources = [], []
    for name in names or experiments.ORDER:
        module = experiments.get(name)
        ctx = Context(paths, name, profile)
        text, results = section(module, ctx)
        sections.append(text)
        rel = ctx.link(paths.results_json(name))
        if results is None:
            state = "unreadable" if paths.results_json(name).is_file() else "missing"
            sources.append((module.TITLE, f"{state} ({rel})", f"`{ctx.command}` (to run)"))
        else:
            sources.append((module.TITLE, f"{results.get('created', 'n/a')} ([{rel}]({rel}))",
                            f"`{results.get('command', 'n/a')}`"))
    header = [
        "# HW1 report: deep vs shallow, optimization, generalization",
        "",
        f"Written {now} by `bin/make_report` from the results listed here; it retrains "
        "nothing. Every number and comment below is computed from these files.",
        "",
        table(("section", "results written (UTC)", "by the command"), sources),
        "",
    ]
    return "\n".join(header + sections)


def write_report(paths: store.Paths, profile: str = "full",
                 names: Sequence[str] | None = None) -> Path:
    """Writes `<paths.output_dir>/REPORT.md` atomically; returns its path."""
    path = paths.output_dir / REPORT_NAME
    store.atomic_write_text(path, render(paths, profile, names))
    logging.info("report written to %s", path)
    return path
