"""The run record: what every engine's run is stored as, built in one place and read back typed.

A record is {"model": the ModelSpec's fields, "description", "num_params", "history": the
engine's history (per-iteration values as arrays, which the store keeps in the .npz), ...the
experiment's own fields}. `RunRecord.of` builds it; the Keras core (`trainer.train_model`) and
the experiments whose runs train as populations go through it, so the layout cannot drift
between producers, and `RunRecord.to_dict` is that stored layout, key for key.

Read back, a stored record becomes a `RunRecord` again (`RunRecord.from_dict`): its `History`
has typed fields (per-epoch and per-iteration values as numpy arrays, the iteration a run
switched, stopped or failed at, its seconds) and the readers a figure needs (`last`, `best`,
`epochs`), and the experiment's own fields are attributes (`run.task`, `run.final_test_loss`;
`run.get(name, default)`). `typed_runs(results)` is the one conversion of stored results
before figures and report sections read them (framework.draw_figures, report_writer.section).

Only training records (entries with a "history") become RunRecords. The runs of experiments
whose entries are analysis results, not trained runs, stay the dicts they were stored as:
minimal_ratio (its critical-point endpoints), measures (measures of other experiments' models),
hessian_spectrum (the curvature of a SavedModel) and scratch (the hand-written Solver's
entries: its own loss_history/train_acc_history/val_acc_history layout, no "history").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from hw1_tf.errors import Hw1Error

# The record's own keys; every other key of a stored record is the experiment's field.
CORE = ("model", "description", "num_params", "history")


def history_arrays(history: dict[str, Any]) -> dict[str, Any]:
    """`history` with its per-iteration values as arrays (int8 objective ids, float32 values),
    which the store keeps in the .npz rather than in results.json."""
    history["iteration"] = {k: np.asarray(v, np.int8 if k == "objective" else np.float32)
                            for k, v in history["iteration"].items()}
    return history


def _epoch_array(values: Any) -> np.ndarray:
    """Per-epoch values as a float array (None, how results.json stores NaN: NaN)."""
    return np.asarray(values, dtype=float)


def _iteration_array(name: str, values: Any) -> np.ndarray:
    """Per-iteration values as an array: as the .npz restored them, or, for a short run whose
    values stayed in results.json as a list, the list's numbers (objective ids as integers)."""
    if isinstance(values, np.ndarray):
        return values
    return np.asarray(values, dtype=np.int8 if name == "objective" else float)


@dataclasses.dataclass
class History:
    """What a training engine recorded of one run (the Keras core's `training.train`, a
    population member's `population.train_population`). Engine-specific keys are optional:
    `failed_at_iteration` and `population_size` only a population writes, `stopped_at_epoch`
    only the Keras core; keys no field names are kept in `extras`."""

    epoch: dict[str, np.ndarray]  # train_loss, test_loss, (train_/test_)accuracy per epoch
    iteration: dict[str, np.ndarray]  # loss, grad_norm, objective of every iteration
    objective_names: list[str] = dataclasses.field(default_factory=list)
    epoch_end_iteration: list[int] = dataclasses.field(default_factory=list)
    switched_at_iteration: int | None = None  # to minimising ||g||^2 (the objective switch)
    stopped_at_iteration: int | None = None  # below the gradient-norm target
    stopped_at_epoch: int | None = None  # 1-based, at the loss/accuracy target (Keras core)
    failed_at_iteration: int | None = None  # loss NaN/inf there (population member)
    seconds: float | None = None  # wall time (of the whole population for a member)
    population_size: int | None = None  # members trained together (population)
    # the convergence rule (--patience): why and where a run stopped, its best monitored epoch
    stop_reason: str | None = None
    best_epoch: int | None = None
    best_monitor: str | None = None
    best_value: float | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the stored keys in their stored order: `to_dict` writes exactly these
    stored_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "History":
        """The history of a record, as an engine returned it or as the store read it back."""
        for key in ("epoch", "iteration"):
            if not isinstance(d.get(key), Mapping):
                raise Hw1Error(f"a run's history has no {key!r} values (it has: "
                               f"{', '.join(map(str, d)) or 'nothing'})")
        names = {f.name for f in dataclasses.fields(cls)} - {"epoch", "iteration", "extras",
                                                             "stored_keys"}
        return cls(epoch={k: _epoch_array(v) for k, v in d["epoch"].items()},
                   iteration={k: _iteration_array(k, v) for k, v in d["iteration"].items()},
                   **{k: (list(v) if k in ("objective_names", "epoch_end_iteration") else v)
                      for k, v in d.items() if k in names},
                   extras={k: v for k, v in d.items() if k not in names
                           and k not in ("epoch", "iteration")},
                   stored_keys=tuple(d))

    def to_dict(self) -> dict[str, Any]:
        """The stored layout: the keys the history was made from, in their order (per-epoch
        values as lists: they stay readable in results.json); a history made without them
        writes its fields that are set."""
        keys = self.stored_keys or tuple(
            [f.name for f in dataclasses.fields(self)
             if f.name not in ("extras", "stored_keys") and getattr(self, f.name) is not None]
            + list(self.extras))
        out = {}
        for key in keys:
            if key == "epoch":
                out[key] = {k: v.tolist() for k, v in self.epoch.items()}
            elif key in self.extras:
                out[key] = self.extras[key]
            else:
                out[key] = getattr(self, key)
        return out

    # ---------------------------------------------------------------------- what figures read

    @property
    def epochs(self) -> int:
        """Epochs recorded (of a run stopped early: fewer than it was given)."""
        return len(self.epoch_end_iteration)

    @property
    def iterations(self) -> int:
        """Iterations recorded."""
        return len(self.iteration.get("loss", ()))

    def recorded(self, name: str) -> bool:
        """Whether the per-epoch series `name` holds any value (test_* only with a test
        split; accuracy only for a classifier)."""
        return len(self.epoch.get(name, ())) > 0

    def series(self, name: str) -> np.ndarray:
        """The per-epoch series `name`, e.g. "test_accuracy"; KeyError naming the recorded
        ones when it is not."""
        if name not in self.epoch:
            raise KeyError(f"no per-epoch {name!r} in this history (it has: "
                           f"{', '.join(self.epoch) or 'none'})")
        return self.epoch[name]

    def last(self, name: str) -> float:
        """The last epoch's value of `name` (NaN when it diverged)."""
        values = self.series(name)
        if not len(values):
            raise ValueError(f"the per-epoch {name!r} of this history is empty")
        return float(values[-1])

    def best(self, name: str, *, lower_is_better: bool) -> tuple[int | None, float | None]:
        """(0-based epoch, value) of the best finite value of `name` (the first of equal ones);
        (None, None) when none is finite."""
        values = self.series(name)
        if not np.isfinite(values).any():
            return None, None
        i = int(np.nanargmin(values) if lower_is_better else np.nanargmax(values))
        return i, float(values[i])


@dataclasses.dataclass
class RunRecord:
    """One trained run: its model, size and history, and the experiment's fields, which read
    as attributes (`run.task`) or with `run.get(name, default)`."""

    model: dict[str, Any]
    description: str
    num_params: int
    history: History
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, spec, history: dict[str, Any], num_params: int | None = None,
           **fields: Any) -> "RunRecord":
        """The record of a run of `spec` (a models.ModelSpec) with the engine's `history`
        (its "num_params" is taken out of it unless given)."""
        counted = history.pop("num_params", None)
        count = counted if num_params is None else num_params
        return cls(dataclasses.asdict(spec), spec.describe(), int(count),
                   History.from_dict(history_arrays(history)), dict(fields))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunRecord":
        """A stored record (`to_dict`'s layout, read back by the store) as a RunRecord."""
        missing = [k for k in CORE if k not in d]
        if missing:
            raise Hw1Error(f"not a run record: no {', '.join(missing)} (it has: "
                           f"{', '.join(map(str, d)) or 'nothing'})")
        return cls(dict(d["model"]), d["description"], int(d["num_params"]),
                   History.from_dict(d["history"]),
                   {k: v for k, v in d.items() if k not in CORE})

    def to_dict(self) -> dict[str, Any]:
        """The stored layout: the four fields, then the experiment's."""
        return {"model": self.model, "description": self.description,
                "num_params": self.num_params, "history": self.history.to_dict(),
                **self.fields}

    def __getattr__(self, name: str) -> Any:
        # only called when `name` is none of the dataclass's attributes: an experiment field
        fields = self.__dict__.get("fields")
        if fields is None or name.startswith("__"):
            raise AttributeError(name)
        if name in fields:
            return fields[name]
        raise AttributeError(f"this run record ({self.model.get('name', '?')}) has no field "
                             f"{name!r}; its fields: {', '.join(fields) or 'none'}")

    def get(self, name: str, default: Any = None) -> Any:
        """The field `name` (an experiment's, or one of the record's own), else `default`."""
        if name in CORE:
            return getattr(self, name)
        return self.fields.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in CORE or name in self.fields


def is_training_record(entry: Any) -> bool:
    """Whether a stored runs entry is a trained run's record (it has a history)."""
    return isinstance(entry, RunRecord) or (isinstance(entry, Mapping)
                                            and isinstance(entry.get("history"), Mapping))


def typed_runs(results: Mapping[str, Any]) -> dict[str, Any]:
    """`results` (as the store read them) with every training record of its runs a
    RunRecord; the other entries (analysis results) as they are. A new dict: `results` is not
    changed. Converting twice gives the same."""
    runs = results.get("runs") or {}
    return {**results, "runs": {
        name: RunRecord.from_dict(entry) if is_training_record(entry)
        and not isinstance(entry, RunRecord) else entry for name, entry in runs.items()}}
