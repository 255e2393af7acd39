"""The experiment registry: every experiment module, in the order of the slides' questions.

An experiment is one module that defines
  EXPERIMENT   its name (results/<name>/, figures/<name>/, bin/run_<name>)
  POSITION     its place in the slides' order (a number; the registry sorts by it)
  Config       a dataclass of hw1_tf.config options: the one source of its flags
  plan(ctx) (optional) + analyse(records, ctx)     its work (hw1_tf.framework)
  figures(results, figures_dir) -> FigureSet       its figures, by key
  TITLE, QUESTIONS, report_section(results, ctx)   its part of REPORT.md, figures by key
and optionally
  QUESTION_FIGURES  {question index: figure key patterns}: the figures REPORT.md names beside
                    each question
  SCORECARD, scorecard(results)   {key: quantity} and {key: scorecard.Measured}: its rows of
                    the scorecard REPORT.md opens with (the earlier reports' values by key in
                    hw1_tf/seeds.json)
Nothing else lists it: the modules of this package that define EXPERIMENT are found by reading
their source (no import needed), and modules elsewhere are added with `register` (or the
HW1_TF_EXPERIMENTS environment variable: comma-separated module names, which `register` sets so
that the processes `bin/run_all` starts see them too). `bin/run_<name>` is generated from the
registry (`make bin`); flag files are flags/{quick,full}/<name>.flags, for a registered module
beside it (<its folder>/flags/...).
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

from hw1_tf import console
from hw1_tf.errors import Hw1Error

ENV = "HW1_TF_EXPERIMENTS"
_PACKAGE = Path(__file__).resolve().parent


def _literal(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    return None


@functools.lru_cache(maxsize=None)
def _builtin() -> dict[str, tuple[float, str]]:
    """{name: (position, module)} of this package's experiment modules."""
    found = {}
    for path in sorted(_PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        name = _literal(tree, "EXPERIMENT")
        if name is None:
            continue  # a helper module shared by experiments
        position = _literal(tree, "POSITION")
        if not isinstance(position, (int, float)):
            raise Hw1Error(f"{path}: an experiment module needs POSITION = <number>")
        found[name] = (float(position), f"hw1_tf.experiments.{path.stem}")
    return found


def _registered() -> dict[str, tuple[float, str]]:
    found = {}
    for module_name in filter(None, os.environ.get(ENV, "").split(",")):
        try:
            module = importlib.import_module(module_name.strip())
        except ImportError as e:
            raise Hw1Error(f"${ENV} names {module_name!r}, which cannot be imported: {e}") \
                from None
        found[module.EXPERIMENT] = (float(module.POSITION), module.__name__)
    return found


def _all() -> dict[str, tuple[float, str]]:
    return {**_builtin(), **_registered()}


def _sorted(found: dict[str, tuple[float, str]]) -> tuple[str, ...]:
    return tuple(sorted(found, key=lambda n: (found[n][0], n)))


def names() -> tuple[str, ...]:
    """Every experiment's name, in the slides' order."""
    return _sorted(_all())


def builtin_names() -> tuple[str, ...]:
    """The names of this package's experiments (no registered module is imported)."""
    return _sorted(_builtin())


def get(name: str) -> ModuleType:
    """The experiment module called `name`, imported quietly the first time (the notices of
    the TensorFlow import it may bring are dropped: hw1_tf.console)."""
    everything = _all()
    if name not in everything:
        raise Hw1Error(f"unknown experiment {name!r}; choose from {', '.join(names())}")
    module_name = everything[name][1]
    if module_name in sys.modules:
        return sys.modules[module_name]
    with console.quiet_startup():
        return importlib.import_module(module_name)


def modules() -> list[ModuleType]:
    return [get(name) for name in names()]


def register(module_name: str) -> str:
    """Adds the experiment module `module_name` (importable) to the registry, here and in the
    processes started from here; returns its experiment name."""
    module = importlib.import_module(module_name)
    for attr in ("EXPERIMENT", "POSITION", "Config", "analyse", "figures", "TITLE",
                 "QUESTIONS", "report_section"):
        if not hasattr(module, attr):
            raise Hw1Error(f"{module_name} is not an experiment module: it lacks {attr}")
    current = [m for m in os.environ.get(ENV, "").split(",") if m]
    if module_name not in current:
        os.environ[ENV] = ",".join(current + [module_name])
    return module.EXPERIMENT


def unregister(module_name: str) -> None:
    current = [m for m in os.environ.get(ENV, "").split(",") if m and m != module_name]
    os.environ[ENV] = ",".join(current)


def flag_file(name: str, profile: str) -> Path:
    """flags/<profile>/<name>.flags: the project's for its own experiments, else beside the
    registered module."""
    if name in _builtin():
        from hw1_tf import store

        return store.project_root() / "flags" / profile / f"{name}.flags"
    module_file = Path(get(name).__file__).resolve()
    return module_file.parent / "flags" / profile / f"{name}.flags"
