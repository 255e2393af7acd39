"""The tool binaries that are not experiments (bin/fetch_data, bin/make_figures, bin/make_report,
bin/run_all, bin/compare_results, bin/make_binaries): each a Config (its flags, as for
experiments) and the function it runs."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from absl import logging

from hw1_tf import data, experiments, markdown, store
from hw1_tf.config import option
from hw1_tf.errors import Hw1Error
from hw1_tf.ledger import EXECUTION_FIELDS, StudyLog

_BUILTIN = ", ".join(experiments.builtin_names())


def _selected(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names`, or every registered experiment when empty; an unknown name is an error."""
    for name in names:
        experiments.get(name)
    return names or experiments.names()


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
    experiments: tuple[str, ...] = option((), "Experiments whose figures to redraw from their "
                                          f"results.json (default: all of {_BUILTIN}).")
    output_dir: str | None = option(None, "Root of results/ and figures/ (default: the "
                                    "project root).")
    skip_missing: bool = option(False, "Skip experiments that have no results yet instead of "
                                "failing.")


def make_figures(config: FiguresConfig) -> None:
    """Redraws figures from results.json files, never retraining."""
    from hw1_tf import framework

    paths = store.Paths.create(config.output_dir)
    for name in _selected(config.experiments):
        if config.skip_missing and not paths.results_json(name).is_file():
            logging.info("%s: no results yet, skipped", name)
            continue
        drawn = framework.draw_figures(experiments.get(name), store.load_results(paths, name),
                                       paths.figures_dir(name),
                                       framework.figure_index(paths, name))
        logging.info("%s: %d figures in %s", name, len(drawn), paths.figures_dir(name))


@dataclasses.dataclass
class RunAllConfig:
    profile: str = option("full", "Flag files to use: flags/<profile>/<experiment>.flags.",
                          choices=("quick", "full"))
    experiments: tuple[str, ...] = option((), "Experiments to run, in this order (default: "
                                          f"every registered one: {_BUILTIN}; those without a "
                                          "flag file are skipped).")
    output_dir: str | None = option(None, "Root of results/, figures/, saved_models/ and "
                                    "REPORT.md (default: the project root).")
    extra_flags: str = option("", "More flags for every experiment binary, e.g. "
                              "'--strategy=mirrored --logical_cpus=2'.")
    redo: bool = option(False, "Run every experiment, also those an earlier run_all finished "
                        "with the same flag file, flags and code (each one's own ledger still "
                        "skips its finished runs; add --extra_flags=--force to retrain).")


def _fingerprint(name: str, flagfile: Path, extra: list[str], profile: str) -> str:
    """What decides an experiment's results besides the data: its flag file, the extra flags
    and the code (the package's modules and the experiment's own module)."""
    digest = hashlib.sha256()
    files = sorted(Path(store.__file__).resolve().parent.rglob("*.py"))
    files.append(Path(experiments.get(name).__file__).resolve())
    for path in [flagfile, *files]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps([profile, extra]).encode())
    return digest.hexdigest()[:16]


class StudyProgress:
    """The one progress line of the whole run: experiment k of n, elapsed time and an ETA from
    the seconds an earlier run_all recorded (else from this run's mean so far)."""

    def __init__(self, estimates: dict[str, float | None]):
        self.estimates = dict(estimates)  # {experiment still to run: earlier seconds or None}
        self.start = time.perf_counter()
        self.measured: list[float] = []

    def finished(self, name: str, seconds: float | None = None) -> None:
        self.estimates.pop(name, None)
        if seconds is not None:
            self.measured.append(seconds)

    def eta(self) -> str:
        known = [s for s in self.estimates.values() if s is not None]
        unknown = len(self.estimates) - len(known)
        if unknown and not (known or self.measured):
            return "ETA unknown (no earlier run timed these)"
        fill = float(np.mean(known or self.measured)) if unknown else 0.0
        text = f"ETA {markdown.duration(sum(known) + unknown * fill)}"
        if unknown:
            text += f" ({unknown} of {len(self.estimates)} not timed before: guessed)"
        return text

    def line(self, k: int, n: int, name: str) -> str:
        return (f"run_all [{k}/{n}] {name}: {markdown.duration(time.perf_counter() - self.start)}"
                f" elapsed, {self.eta()}")


def run_all(config: RunAllConfig) -> None:
    """Runs each experiment (`python -m hw1_tf <name>`) with its profile's flag file, one process
    each so each starts TensorFlow with its own devices, then writes REPORT.md from every
    results.json. One progress line per experiment (k of n, elapsed, ETA); an experiment that an
    earlier run_all finished with the same fingerprint is skipped (results/run_all.json), so an
    interrupted run resumes where it was. A failed experiment does not stop the others; the run
    ends with a table of every experiment and, when one failed, an error naming it."""
    root = store.project_root()
    paths = store.Paths.create(config.output_dir)
    log = StudyLog(paths)
    extra = shlex.split(config.extra_flags)
    if config.output_dir:
        extra.append(f"--output_dir={config.output_dir}")
    names = _selected(config.experiments)
    progress = StudyProgress({n: log.seconds(n, config.profile) for n in names})
    outcomes: dict[str, tuple[str, float | None]] = {}
    for k, name in enumerate(names, 1):
        flagfile = experiments.flag_file(name, config.profile)
        if not flagfile.is_file():
            logging.info("run_all [%d/%d] %s: no %s, skipped", k, len(names), name, flagfile)
            outcomes[name] = ("skipped (no flag file)", None)
            progress.finished(name)
            continue
        fingerprint = _fingerprint(name, flagfile, extra, config.profile)
        earlier = None if config.redo else log.done(name, fingerprint)
        if earlier is not None:
            logging.info("run_all [%d/%d] %s: already done (%s), skipped (--redo reruns it)",
                         k, len(names), name, earlier.get("finished"))
            outcomes[name] = ("skipped (already done)", earlier.get("seconds"))
            progress.finished(name)
            continue
        logging.info(progress.line(k, len(names), name))
        flag = markdown.project_path(flagfile)
        shown = " ".join([f"bin/run_{name}" if (root / "bin" / f"run_{name}").is_file()
                          else f"python -m hw1_tf {name}", f"--flagfile={flag}",
                          *map(shlex.quote, extra)])
        entry = dict(profile=config.profile, fingerprint=fingerprint, command=shown,
                     last_done_seconds=(log.read().get(name) or {}).get("last_done_seconds"),
                     machine=machine())
        log.record(name, status="running", started=_now(), **entry)
        started, cpu_before = time.perf_counter(), _children_cpu()
        code = subprocess.run([sys.executable, "-m", "hw1_tf", name, f"--flagfile={flag}",
                               *extra], cwd=root).returncode
        seconds = round(time.perf_counter() - started, 1)
        cpu_seconds = round(_children_cpu() - cpu_before, 1)
        status = "done" if code == 0 else "failed"
        if code == 0:
            entry["last_done_seconds"] = seconds
        log.record(name, status=status, returncode=code, seconds=seconds,
                   cpu_seconds=cpu_seconds, finished=_now(), created=log.created(name), **entry)
        outcomes[name] = (status if code == 0 else f"failed (exit status {code})", seconds)
        progress.finished(name, seconds)
    failed = [n for n, (status, _) in outcomes.items() if status.startswith("failed")]
    try:
        make_report(ReportConfig(output_dir=config.output_dir, profile=config.profile))
    finally:
        print(study_table(outcomes, time.perf_counter() - progress.start), flush=True)
    if failed:
        raise Hw1Error(f"{len(failed)} experiment(s) failed: {', '.join(failed)} (their "
                       "errors are above; the others' results and REPORT.md are written)")


def study_table(outcomes: dict[str, tuple[str, float | None]], total: float) -> str:
    """The table run_all ends with: every experiment, what happened to it and its time."""
    rows = [(name, status, markdown.duration(seconds) if seconds is not None else "-")
            for name, (status, seconds) in outcomes.items()]
    rows.append(("all", f"{sum(s == 'done' for s, _ in outcomes.values())} done, "
                 f"{sum(s.startswith('skipped') for s, _ in outcomes.values())} skipped, "
                 f"{sum(s.startswith('failed') for s, _ in outcomes.values())} failed",
                 markdown.duration(total)))
    return markdown.table(("experiment", "status", "wall time"), rows)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process' finished children: an experiment's CPU time
    is the difference around it. Unlike wall time it hardly changes when other work shares the
    machine; it is not idle wall time / cores (one experiment keeps 1.0-1.7 of 2 cores busy
    idle, docs/speed.md), so compare it only with other CPU times."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


VERSIONED = ("tensorflow", "keras", "numpy", "scipy", "matplotlib", "hw1_tf")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What an experiment's wall time was measured on (run_all records it per experiment and
    REPORT.md's appendix prints it): CPU, cores, memory, OS, Python and library versions. Read
    without importing TensorFlow (run_all starts without it)."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "versions": {p: _version(p) for p in VERSIONED}}


@dataclasses.dataclass
class ReportConfig:
    output_dir: str | None = option(None, "Root of results/ and figures/; REPORT.md is written "
                                    "there (default: the project root).")
    profile: str = option("full", "Flag files named in the commands the report suggests for "
                          "missing results.", choices=("quick", "full"))


def make_report(config: ReportConfig) -> None:
    """Writes REPORT.md from the results.json files present (never retrains)."""
    from hw1_tf import report_writer

    path = report_writer.write_report(store.Paths.create(config.output_dir), config.profile)
    logging.info("report: %s", path)


# ------------------------------------------------------------------------ compare_results

# Keys whose values say when, by which command or how fast a result was made, not what it is.
VOLATILE_KEYS = ("created", "command", "timings", "hvp_timings", "figures", "arrays_file")
VOLATILE_SUFFIXES = ("seconds",)


@dataclasses.dataclass
class CompareConfig:
    first: str = option("", "One output folder (with results/<experiment>/results.json).")
    second: str = option("", "The other output folder.")
    experiments: tuple[str, ...] = option((), "Experiments to compare (default: every one "
                                          "that has results in either folder).")
    rtol: float = option(1e-6, "Relative tolerance of two numbers (float32 rounding is about "
                         "6e-8; summation-order changes stay well inside 1e-6).", lower=0.0)
    atol: float = option(1e-9, "Absolute tolerance, for numbers near zero.", lower=0.0)
    ignore: tuple[str, ...] = option((), "More result keys to ignore (besides timings, "
                                     f"dates and commands: {', '.join(VOLATILE_KEYS)}, "
                                     "*seconds).")
    show: int = option(10, "Differences to print per experiment.", lower=0)


def _volatile(key: str, ignore: tuple[str, ...]) -> bool:
    return key in VOLATILE_KEYS or key in ignore or key.endswith(VOLATILE_SUFFIXES)


def differences(a: Any, b: Any, *, rtol: float, atol: float, ignore: tuple[str, ...] = (),
                roots: tuple[str, str] = ("", ""), where: str = "") -> Iterator[str]:
    """Every place where results `a` and `b` differ beyond the tolerances, as "path: what".
    Strings are compared with each folder's root replaced (`roots`), so the paths of two
    output folders compare equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if _volatile(str(key), ignore):
                continue
            here = f"{where}/{key}" if where else str(key)
            if key not in a or key not in b:
                yield f"{here}: only in {'the second' if key not in a else 'the first'}"
                continue
            yield from differences(a[key], b[key], rtol=rtol, atol=atol, ignore=ignore,
                                   roots=roots, where=here)
        return
    numeric = (int, float, np.integer, np.floating, np.ndarray, list, tuple, bool, np.bool_)
    if isinstance(a, numeric) and isinstance(b, numeric) and not (
            isinstance(a, (list, tuple)) and any(isinstance(v, (dict, str)) for v in a)):
        try:
            x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        except (TypeError, ValueError):
            x = y = None
        if x is not None:
            if x.shape != y.shape:
                yield f"{where}: shape {x.shape} vs {y.shape}"
                return
            same_nan = np.isnan(x) & np.isnan(y)
            close = np.isclose(x, y, rtol=rtol, atol=atol) | same_nan
            if not close.all():
                diff = np.abs(x - y)[~close]
                scale = np.maximum(np.abs(x), np.abs(y))[~close]
                rel = float(np.max(diff / np.where(scale > 0, scale, 1)))
                what = (f"{x.item():.9g} vs {y.item():.9g}" if x.size == 1 else
                        f"{int((~close).sum())} of {x.size} values differ")
                yield f"{where}: {what} (relative {rel:.2e})"
            return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            yield f"{where}: {len(a)} vs {len(b)} items"
            return
        for i, (u, v) in enumerate(zip(a, b)):
            yield from differences(u, v, rtol=rtol, atol=atol, ignore=ignore, roots=roots,
                                   where=f"{where}[{i}]")
        return
    if isinstance(a, str) and isinstance(b, str):
        if a.replace(roots[0], "<root>") != b.replace(roots[1], "<root>"):
            yield f"{where}: {a!r} vs {b!r}"
        return
    if a != b and not (a is None and b is None):
        yield f"{where}: {a!r} vs {b!r}"


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    """`results` without the config fields that change how a run executes or where it
    writes, not its numbers (the ledger's EXECUTION_FIELDS: --force, --output_dir, ...)."""
    config = results.get("config")
    if isinstance(config, dict):
        results = {**results, "config": {k: v for k, v in config.items()
                                         if k not in EXECUTION_FIELDS}}
    return results


def compare_results(config: CompareConfig) -> None:
    """Compares the results of two output folders experiment by experiment; raises Hw1Error
    (exit 1) naming every experiment that differs beyond the tolerances."""
    if not config.first or not config.second:
        raise Hw1Error("give both folders: --first=A --second=B")
    paths = [store.Paths.create(Path(config.first)), store.Paths.create(Path(config.second))]
    for p in paths:
        if not p.output_dir.is_dir():
            raise Hw1Error(f"{p.output_dir}: no such folder")
    present = [n for n in experiments.names()
               if any(p.results_json(n).is_file() for p in paths)]
    names = config.experiments or tuple(present)
    if not names:
        raise Hw1Error(f"no results/<experiment>/results.json in {config.first} nor "
                       f"{config.second}")
    roots = tuple(str(p.output_dir.resolve()) for p in paths)
    differing = []
    for name in names:
        missing = [str(p.results_json(name)) for p in paths if not p.results_json(name).is_file()]
        if missing:
            print(f"{name}: DIFFERS: no {' nor '.join(missing)}")
            differing.append(name)
            continue
        first, second = (_comparable(store.load_results(p, name)) for p in paths)
        found = list(differences(first, second, rtol=config.rtol, atol=config.atol,
                                 ignore=config.ignore, roots=roots))
        if found:
            differing.append(name)
            print(f"{name}: DIFFERS at {len(found)} place(s)")
            for line in found[:config.show]:
                print(f"    {line}")
        else:
            print(f"{name}: same (rtol {config.rtol:g}, atol {config.atol:g})")
    print(f"{len(names) - len(differing)} of {len(names)} experiments the same")
    if differing:
        raise Hw1Error(f"results differ: {', '.join(differing)}")


# ------------------------------------------------------------------------- make_binaries

BINARY_TEMPLATE = '''#!/usr/bin/env python3
"""{title}"""
import _venv  # noqa: F401  (the project's .venv, whatever python3 started this)
from hw1_tf import cli

cli.run_experiment("{name}")
'''


def binary_text(name: str) -> str:
    """The text of bin/run_<name>: three lines and the experiment's title."""
    return BINARY_TEMPLATE.format(title=experiments.get(name).TITLE, name=name)


@dataclasses.dataclass
class BinariesConfig:
    check: bool = option(False, "Only check that every bin/run_<name> is as generated (exit 1 "
                         "otherwise).")


def make_binaries(config: BinariesConfig) -> None:
    """Writes bin/run_<name> for every experiment of the package from the registry."""
    stale = []
    for name in experiments.builtin_names():
        path = store.project_root() / "bin" / f"run_{name}"
        text = binary_text(name)
        if path.is_file() and path.read_text() == text:
            continue
        if config.check:
            stale.append(str(path))
            continue
        store.atomic_write_text(path, text)
        path.chmod(0o755)
        logging.info("wrote %s", path)
    if stale:
        raise Hw1Error(f"not as generated (run `make bin`): {', '.join(stale)}")
