"""The experiment registry: every experiment, in the order of the slides' questions.

An experiment is a module `hw1_tf.experiments.<name>` with
  EXPERIMENT   its name (results/<name>/, figures/<name>/, bin/run_<name>)
  Config       a dataclass of hw1_tf.config options: the one source of its flags
  run(config)  trains/analyses and returns the results (written by `common.finish`)
  TITLE, QUESTIONS, report_section(results, ctx)   its part of REPORT.md (hw1_tf.report)
and its figures are drawn by `hw1_tf.plots.PLOTTERS[<name>]`. The binaries, `bin/make_figures`,
`bin/make_report` and `make report` all read this registry; adding an experiment is adding its
module, its name below, `bin/run_<name>` (three lines) and `flags/{quick,full}/<name>.flags`.
"""

from __future__ import annotations

import importlib

from hw1_tf.errors import Hw1Error

ORDER = ("simulate_function", "actual_task",  # HW1-1
         "trajectory", "grad_norm", "minimal_ratio", "error_surface",  # HW1-2
         "random_labels", "capacity", "flatness",  # HW1-3 part 1
         "sensitivity", "sharpness", "reparametrization", "measures",  # HW1-3 part 2
         "scratch", "hessian_spectrum")  # from-scratch nets; curvature toolkit


def get(name: str):
    """The experiment module called `name`."""
    if name not in ORDER:
        raise Hw1Error(f"unknown experiment {name!r}; choose from {', '.join(ORDER)}")
    return importlib.import_module(f"hw1_tf.experiments.{name}")


def modules() -> list:
    return [get(name) for name in ORDER]
