"""How an experiment runs: its `ExperimentContext`, built once by the CLI, and the phases.

An experiment module (hw1_tf.experiments) does its work in phases:
  * `plan(ctx) -> [Run | Group]` lists the runs to train (a Group: runs trained together, one
    population); the framework trains each through the ledger (skipped when finished for the
    same config, kept at once, resumed from its backup; a Run kept as a SavedModel is reused
    from there). An experiment that only analyses models trained elsewhere (measures,
    hessian_spectrum) has no plan;
  * then `analyse(records, ctx) -> Outcome` turns the records ({run name: record}) into results.
The framework then writes the results through the ledger (merged with earlier runs of the same
config), draws the figures from what was written (`figures(results, figures_dir)` ->
FigureSet, its keys indexed in results/<exp>/figures.json for the report), and logs where they are.
No experiment repeats this preamble: config, paths, strategy, ledger and progress come in `ctx`.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from absl import logging

from hw1_tf import distribute, fetch, store
from hw1_tf.records import typed_runs
from hw1_tf.figures import INDEX_NAME, FigureSet
from hw1_tf.ledger import Ledger


@dataclasses.dataclass
class Run:
    """One run of a plan: its name and how to train it: `train(ctx, **options)` -> its record
    (a module-level function of the experiment, so the plan is data, not closures)."""

    name: str
    train: Callable[..., dict[str, Any]]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the run is kept as its SavedModel (with its record beside it) and reused from there,
    #: by any output folder sharing the --saved_models_dir (Ledger.model_once), rather than as
    #: a finished record of this output folder (Ledger.once)
    saved_model: bool = False


@dataclasses.dataclass
class Group:
    """Runs of a plan trained together (one population): their names, and how to train them:
    `train(ctx, **options)` -> {name: record} for every one of `names`. Skipped only when all
    finished; `backup` names the group's backup folder (removed once they are kept)."""

    names: list[str]
    train: Callable[..., dict[str, dict[str, Any]]]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    backup: str | None = None


@dataclasses.dataclass
class Outcome:
    """What an experiment produced: its runs' records and the results beside them."""

    runs: dict[str, Any]
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Progress:
    """One log line per unit of work done: k of n, elapsed time and an ETA."""

    def __init__(self, name: str):
        self.name = name
        self.start = time.perf_counter()

    def step(self, done: int, total: int, what: str) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (total - done) if done else float("nan")
        logging.info("%s: %d/%d %s, %.0f s elapsed, ETA %.0f s", self.name, done, total, what,
                     elapsed, eta)


class ExperimentContext:
    """Everything an experiment's work needs besides its own config, made once."""

    def __init__(self, name: str, config: Any, paths: store.Paths | None = None):
        self.name = name
        self.config = config
        self.paths = paths or _paths_from(config)
        self.ledger = Ledger(name, config, self.paths, several_workers=self._several_workers(),
                             share=lambda data: distribute.broadcast_from_chief(self.strategy,
                                                                                data))
        self.progress = Progress(name)
        self._shared: dict[str, Any] = {}
        self.training_seconds: float | None = None  # the plan's wall time, for analyse

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """`make()`, made once per context: what several runs of a plan share (a dataset)."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    @functools.cached_property
    def strategy(self):
        """The tf.distribute strategy the config names (`--strategy`; default: TF's default)."""
        return distribute.make_strategy(getattr(self.config, "strategy", "default"))

    def _several_workers(self) -> bool:
        if getattr(self.config, "strategy", None) != "multi_worker":
            return False
        return distribute.in_multi_worker_mode(self.strategy)

    def splits(self):
        """The dataset the config names (ImageTrainConfig: dataset, subsets, seed), fetched on
        first use and loaded once for every run of the plan."""
        return self.shared("splits", lambda: fetch.load_splits(self.config))

    def backup_dir(self, name: str) -> Path:
        """Where run (or group) `name` backs up while it trains (across several workers: each
        its own folder, filled first with the chief's backup)."""
        return self.ledger.backup_dir(name)

    def train_model(self, run_name: str, spec, splits, settings, **kwargs):
        """`trainer.train_model` in this context: (model, record)."""
        from hw1_tf import trainer  # Keras: here, so an experiment without it starts without TF

        return trainer.train_model(self, run_name, spec, splits, settings, **kwargs)


def _paths_from(config: Any) -> store.Paths:
    """The output folders named by `config` (output_dir, saved_models_dir), checked writable now
    rather than after hours of training."""
    paths = store.Paths.create(getattr(config, "output_dir", None),
                               getattr(config, "saved_models_dir", None))
    if getattr(config, "strategy", None) == "multi_worker" and not distribute.is_chief():
        paths = _worker_scratch_paths()
    store.ensure_writable_dir(paths.output_dir)
    if getattr(config, "save_models", False):
        store.ensure_writable_dir(paths.saved_models_root, "--saved_models_dir")
    return paths


def _worker_scratch_paths() -> store.Paths:
    """A multi-worker task other than the chief computes everything (the collectives need every
    worker) but writes to a temporary folder, removed at exit: only the chief's files count."""
    import atexit

    scratch = Path(tempfile.mkdtemp(prefix="hw1_worker_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    logging.info("multi-worker task other than the chief: writing to %s (discarded)", scratch)
    return store.Paths.create(scratch)


# ------------------------------------------------------------------------------------ phases


def train_plan(module: Any, ctx: ExperimentContext) -> dict[str, Any]:
    """Trains `module.plan(ctx)`'s runs (Run) and groups of runs (Group) through the ledger:
    {run name: record}, in the plan's order."""
    plan = list(module.plan(ctx))
    records = {}
    for i, item in enumerate(plan):
        if isinstance(item, Group):
            records.update(ctx.ledger.group_once(
                item.names, lambda item=item: item.train(ctx, **item.options),
                backup=item.backup))
            what = f"groups ({len(item.names)} runs)"
        else:
            keep = ctx.ledger.model_once if item.saved_model else ctx.ledger.once
            records[item.name] = keep(item.name, lambda item=item: item.train(ctx, **item.options))
            what = f"runs ({item.name})"
        ctx.progress.step(i + 1, len(plan), what)
    return records


def produce(module: Any, ctx: ExperimentContext) -> Outcome:
    """The experiment's Outcome, by its phases: plan (if any), trained through the ledger,
    then analyse."""
    started = time.perf_counter()
    records = train_plan(module, ctx) if hasattr(module, "plan") else {}
    ctx.training_seconds = time.perf_counter() - started  # finished runs skipped included
    outcome = module.analyse(records, ctx)
    if not isinstance(outcome, Outcome):
        raise TypeError(f"{ctx.name}: its work returned {type(outcome).__name__}, not an Outcome")
    return outcome


def draw_figures(module: Any, results: dict[str, Any], figures_dir: Path,
                 index: Path | None = None) -> FigureSet:
    """`module.figures(results, figures_dir)`, its training records typed
    (`records.typed_runs`); with `index`, {key: file name} written there for the report, which
    refers to figures by key."""
    drawn = module.figures(typed_runs(results), Path(figures_dir))
    if not isinstance(drawn, FigureSet):
        raise TypeError(f"{module.__name__}.figures returned {type(drawn).__name__}, not a "
                        "FigureSet")
    if index is not None:
        store.write_json(index, {key: Path(path).name for key, path in drawn.items()})
    return drawn


def figure_index(paths: store.Paths, experiment: str) -> Path:
    """Where the keys of an experiment's last drawn figures are kept: beside its results."""
    return paths.results_dir(experiment) / INDEX_NAME


def execute(module: Any, ctx: ExperimentContext) -> dict[str, Any]:
    """Runs the experiment `module` in `ctx`: produce, write (merged through the ledger), draw
    the figures from what was written (so a redraw sees exactly what this run saw). Returns the
    results as written, with "figures": {key: path}."""
    outcome = produce(module, ctx)
    results = ctx.ledger.write(outcome.runs, **outcome.extras)
    figures_dir = ctx.paths.figures_dir(ctx.name)
    drawn = draw_figures(module, results, figures_dir, figure_index(ctx.paths, ctx.name))
    logging.info("%s: results in %s, %d figures in %s", ctx.name,
                 ctx.paths.results_json(ctx.name), len(drawn), figures_dir)
    results["figures"] = {k: str(p) for k, p in drawn.items()}
    return results



def run(module: Any, config: Any, paths: store.Paths | None = None) -> dict[str, Any]:
    """Runs the experiment `module` with `config` from Python (what its binary does after
    parsing its flags): `execute` in a new context."""
    return execute(module, ExperimentContext(module.EXPERIMENT, config, paths))
