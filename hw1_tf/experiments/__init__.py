"""One module per experiment: a `Config` dataclass (every knob with its default) and
`run(config) -> results`, which also writes results.json, SavedModels and figures.

`ORDER` lists the experiments in the order of the slides' questions; `bin/`, the figures and
REPORT.md (`hw1_tf.report`) read it, so an experiment is added in one place.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hw1_tf.errors import Hw1Error

ORDER = ("simulate_function", "actual_task", "scratch")


def get(name: str) -> ModuleType:
    """The experiment module `name` (imported on first use: each pulls in TensorFlow)."""
    if name not in ORDER:
        raise Hw1Error(f"unknown experiment {name!r}; choose from {', '.join(ORDER)}")
    return importlib.import_module(f"hw1_tf.experiments.{name}")


def modules() -> list[ModuleType]:
    return [get(n) for n in ORDER]
