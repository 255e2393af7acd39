"""The tool binaries that are not experiments (bin/fetch_data, bin/make_figures,
bin/make_report): each a Config (its flags, as for experiments) and the function it runs."""

from __future__ import annotations

import dataclasses

from absl import logging

from hw1_tf import data, experiments, store
from hw1_tf.config import option


@dataclasses.dataclass
class FetchConfig:
    datasets: tuple[str, ...] = option(("mnist",), "Datasets to fetch (verified by size and "
                                       "sha256).", choices=data.IMAGE_DATASETS)
    data_dir: str | None = option(None, "Folder to fill (default $HW1_DATA_DIR or "
                                  "<project>/data).")


def fetch_data(config: FetchConfig) -> None:
    from hw1_tf import fetch

    for name in config.datasets:
        fetch.fetch(name, config.data_dir or data.default_data_dir(), log=logging.info)


@dataclasses.dataclass
class FiguresConfig:
    experiments: tuple[str, ...] = option(experiments.ORDER, "Experiments whose figures to "
                                          "redraw from their results.json.",
                                          choices=experiments.ORDER)
    output_dir: str | None = option(None, "Root of results/ and figures/ (default: the "
                                    "project root).")
    skip_missing: bool = option(False, "Skip experiments that have no results yet instead of "
                                "failing.")


def make_figures(config: FiguresConfig) -> None:
    """Redraws figures from results.json files, never retraining."""
    from hw1_tf import plots

    paths = store.Paths.create(config.output_dir)
    for name in config.experiments:
        if config.skip_missing and not paths.results_json(name).is_file():
            logging.info("%s: no results yet, skipped", name)
            continue
        figures = plots.make_figures(store.load_results(paths, name), paths.figures_dir(name))
        logging.info("%s: %d figures in %s", name, len(figures), paths.figures_dir(name))


@dataclasses.dataclass
class RunAllConfig:
    profile: str = option("full", "Flag files to use: flags/<profile>/<experiment>.flags.",
                          choices=("quick", "full"))
    experiments: tuple[str, ...] = option(experiments.ORDER, "Experiments to run, in this "
                                          "order (those without a flag file are skipped).",
                                          choices=experiments.ORDER)
    output_dir: str | None = option(None, "Root of results/, figures/, saved_models/ and "
                                    "REPORT.md (default: the project root).")
    extra_flags: str = option("", "More flags for every experiment binary, e.g. "
                              "'--strategy=mirrored --logical_cpus=2'.")


def run_all(config: RunAllConfig) -> None:
    """Runs each experiment's binary with its profile's flag file (one process each, so each
    starts TensorFlow with its own devices), then writes REPORT.md from every results.json.
    A failed experiment does not stop the others; the run then ends with an error naming it."""
    import shlex
    import subprocess
    import sys

    from hw1_tf.errors import Hw1Error

    root = store.project_root()
    extra = shlex.split(config.extra_flags)
    if config.output_dir:
        extra.append(f"--output_dir={config.output_dir}")
    failed = []
    for name in config.experiments:
        flagfile = root / "flags" / config.profile / f"{name}.flags"
        if not flagfile.is_file():
            logging.info("%s: no %s, skipped", name, flagfile.relative_to(root))
            continue
        logging.info("== %s (%s)", name, config.profile)
        cmd = [sys.executable, str(root / "bin" / f"run_{name}"), f"--flagfile={flagfile}", *extra]
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
    make_report(ReportConfig(output_dir=config.output_dir, profile=config.profile))
    if failed:
        raise Hw1Error(f"{len(failed)} experiment(s) failed: {', '.join(failed)} (their "
                       "errors are above; the others' results and REPORT.md are written)")


@dataclasses.dataclass
class ReportConfig:
    output_dir: str | None = option(None, "Root of results/ and figures/; REPORT.md is written "
                                    "there (default: the project root).")
    profile: str = option("full", "Flag files named in the commands the report suggests for "
                          "missing results.", choices=("quick", "full"))


def make_report(config: ReportConfig) -> None:
    """Writes REPORT.md from the results.json files present (never retrains)."""
    from hw1_tf import report

    path = report.write_report(store.Paths.create(config.output_dir), config.profile)
    logging.info("report: %s", path)
