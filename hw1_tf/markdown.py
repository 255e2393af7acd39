"""Report helpers only: the markdown a REPORT.md section is written with (numbers, tables,
rankings) and the `Context` a section writer gets (where things are on disk, figures by key, the
commands that produce and redraw the results). The writer of REPORT.md is
`hw1_tf.report_writer`, a floor above the experiments; this module is below them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hw1_tf import store
from hw1_tf.figures import INDEX_NAME

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

    @functools.cached_property
    def drawn_figures(self) -> dict[str, Path] | None:
        """{key: path} of the figures the experiment last drew (results/<exp>/figures.json,
        written with them), or None when none were drawn."""
        index = self.paths.results_dir(self.experiment) / INDEX_NAME
        if not index.is_file():
            return None
        return {k: self.figures_dir / v for k, v in store.read_json(index).items()}

    def link(self, path: str | Path) -> str:
        """`path` relative to REPORT.md's folder, with forward slashes (markdown links)."""
        return Path(os.path.relpath(Path(path), self.report_path.parent)).as_posix()

    def figure(self, key: str, caption: str, *, optional: bool = False) -> str:
        """An image link to the experiment's figure `key` (a key of its `figures()`), else the
        command that redraws it (REPORT.md never links to a missing file). A key the
        experiment's drawn figures do not have is a bug of the section (KeyError), unless
        `optional` (a figure drawn only for some results): then ""."""
        drawn = self.drawn_figures  # read once per section
        if drawn is not None and key not in drawn:
            if optional:
                return ""
            raise KeyError(f"{self.experiment} draws no figure {key!r} (it drew: "
                           f"{', '.join(sorted(drawn)) or 'none'})")
        path = drawn.get(key) if drawn else None
        if path is None or not path.is_file():
            return f"*Figure `{key}` is missing; `{self.figures_command}` redraws it.*"
        return f"![{caption.replace(']', ')').replace('[', '(')}]({self.link(path)})"

    def output_flag(self) -> str:
        if self.paths.output_dir.resolve() == store.project_root().resolve():
            return ""
        return f" --output_dir={project_path(self.paths.output_dir)}"

    @property
    def command(self) -> str:
        """The command that produces this experiment's results."""
        name = self.experiment
        return f"bin/run_{name} --flagfile=flags/{self.profile}/{name}.flags{self.output_flag()}"

    @property
    def figures_command(self) -> str:
        return f"bin/make_figures --experiments={self.experiment}{self.output_flag()}"


# -------------------------------------------------------------------------- markdown helpers


def project_path(path: str | Path) -> str:
    """`path` relative to the project root when inside it, else as it is."""
    try:
        return Path(path).resolve().relative_to(store.project_root().resolve()).as_posix()
    except ValueError:
        return str(path)


def project_command(command: str) -> str:
    """A recorded command with its paths relative to the project, as a reader runs it there: a
    path inside the project root relative to it, and a flag file of a profile
    (.../flags/<profile>/<name>.flags, maybe in another checkout) as the project's
    flags/<profile>/<name>.flags where the project has that file."""
    words = []
    for word in command.split(" "):
        flag, eq, value = word.partition("=")
        if eq and value.startswith("/"):
            parts = Path(value).parts
            own = "/".join(parts[-3:])
            if flag == "--flagfile" and len(parts) >= 3 and parts[-3] == "flags" and \
                    (store.project_root() / own).is_file():
                value = own
            else:
                value = project_path(value)
            word = f"{flag}={value}"
        words.append(word)
    return " ".join(words)


def duration(seconds: float | None) -> str:
    """A wall time for a reader: 0.4 s, 42 s, 3 min 05 s, 1 h 02 min."""
    if seconds is None or not math.isfinite(float(seconds)):
        return "n/a"
    seconds = float(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


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
