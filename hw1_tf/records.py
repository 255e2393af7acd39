"""The run record: what every engine's run is stored as, built in one place.

A record is {"model": the ModelSpec's fields, "description", "num_params", "history": the
engine's history (per-iteration values as arrays, which the store keeps in the .npz), ...the
experiment's own fields}. `RunRecord.of` builds it; the Keras core (`trainer.train_model`) and
the experiments whose runs train as populations (or on the scratch Solver's histories) go
through it, so the layout cannot drift between producers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def history_arrays(history: dict[str, Any]) -> dict[str, Any]:
    """`history` with its per-iteration values as arrays (int8 objective ids, float32 values),
    which the store keeps in the .npz rather than in results.json."""
    history["iteration"] = {k: np.asarray(v, np.int8 if k == "objective" else np.float32)
                            for k, v in history["iteration"].items()}
    return history


@dataclasses.dataclass
class RunRecord:
    """One trained run: its model, size and history, and the experiment's fields."""

    model: dict[str, Any]
    description: str
    num_params: int
    history: dict[str, Any]
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, spec, history: dict[str, Any], num_params: int | None = None,
           **fields: Any) -> "RunRecord":
        """The record of a run of `spec` (a models.ModelSpec) with the engine's `history`
        (its "num_params" is taken out of it unless given)."""
        counted = history.pop("num_params", None)
        count = counted if num_params is None else num_params
        return cls(dataclasses.asdict(spec), spec.describe(), int(count),
                   history_arrays(history), dict(fields))

    def to_dict(self) -> dict[str, Any]:
        """The stored layout: the four fields, then the experiment's."""
        return {"model": self.model, "description": self.description,
                "num_params": self.num_params, "history": self.history, **self.fields}
