"""The scorecard REPORT.md opens with: per slide question, the key number this study measured
beside the same quantity as each of the three earlier reports (the project's seeds 000_, 001_,
002_) states it, and a note where they differ.

The earlier reports' values live in `seeds.json` beside this module, each with the lines of the
report it quotes (tests/test_scorecard.py checks every number at its line). An experiment module
names its rows in `SCORECARD` ({key: the quantity}) and measures them in
`scorecard(results) -> {key: Measured}`; `hw1_tf.report_writer` puts the rows together.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any, Sequence

from hw1_tf import markdown
from hw1_tf.errors import Hw1Error

SEEDS_FILE = Path(__file__).with_name("seeds.json")
REPORTS = ("000", "001", "002")
HEADER = ("question", "quantity", "this study", *(f"report {r}" for r in REPORTS),
          "where ours differs, and why")


@dataclasses.dataclass(frozen=True)
class Cite:
    line: int  # 1-based line of the report's text
    quote: str  # exactly as it stands on that line


@dataclasses.dataclass(frozen=True)
class Quote:
    """What one earlier report states for one scorecard row."""

    key: str
    report: str
    file: str
    value: str
    setting: str
    cite: tuple[Cite, ...]

    def cell(self) -> str:
        lines = ", ".join(str(n) for n in sorted({c.line for c in self.cite}))
        return f"{self.value} ({self.setting}; {self.report} l. {lines})"


@functools.lru_cache(maxsize=None)
def quotes(path: Path = SEEDS_FILE) -> tuple[Quote, ...]:
    try:
        data = json.loads(Path(path).read_text())
        return tuple(Quote(q["key"], q["report"], data["files"][q["report"]], q["value"],
                           q["setting"], tuple(Cite(int(c["line"]), c["quote"])
                                               for c in q["cite"]))
                     for q in data["quotes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Hw1Error(f"{path}: not a readable seeds file ({type(e).__name__}: {e})") from None


NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def problems(found: Sequence[Quote], seed_dir: Path) -> list[str]:
    """Where `found` misquotes the reports' texts in `seed_dir`: a quote not on its cited line,
    or a number of a value or setting that none of its quotes contains."""
    out = []
    for q in found:
        path = Path(seed_dir) / q.file
        if not path.is_file():
            out.append(f"{q.key} ({q.report}): no {path}")
            continue
        lines = path.read_text().splitlines()
        for c in q.cite:
            if not 1 <= c.line <= len(lines) or c.quote not in lines[c.line - 1]:
                out.append(f"{q.key} ({q.report}): {c.quote!r} is not on line {c.line} of "
                           f"{q.file}")
        for number in NUMBER.findall(f"{q.value} {q.setting}"):
            if not any(number in c.quote for c in q.cite):
                out.append(f"{q.key} ({q.report}): {number} is in none of its quotes")
    return out


def quoted(key: str) -> dict[str, Quote]:
    """{report: its quote} for the scorecard row `key`."""
    return {q.report: q for q in quotes() if q.key == key}


@dataclasses.dataclass(frozen=True)
class Measured:
    """This study's value of one scorecard row, and a note on how it differs from the reports'
    (setting, precision, method)."""

    ours: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Row:
    question: str
    quantity: str
    key: str
    ours: str
    note: str = ""

    def cells(self) -> tuple[str, ...]:
        found = quoted(self.key)
        return (self.question, self.quantity, self.ours,
                *(found[r].cell() if r in found else "—" for r in REPORTS), self.note)


def rows_of(module: Any, results: dict[str, Any] | None, missing: str) -> list[Row]:
    """The scorecard rows of experiment `module` from its `results` (None: `missing` stands in
    for this study's value)."""
    wanted = getattr(module, "SCORECARD", {})
    measured = module.scorecard(results) if results is not None and wanted else {}
    return [Row(module.TITLE, quantity, key, measured[key].ours if key in measured else missing,
                measured[key].note if key in measured else "")
            for key, quantity in wanted.items()]


def table(rows: Sequence[Row]) -> str:
    return markdown.table(HEADER, [row.cells() for row in rows])
