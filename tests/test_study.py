"""bin/run_all as the whole study: one progress line (k of n, elapsed, ETA), a closing table of
every experiment, a failing experiment that stops no other and is marked in REPORT.md with the
command that reproduces it, and a killed run that resumes at the experiment it was in. Toy
experiments registered from here (the registry's HW1_TF_EXPERIMENTS) keep it to seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hw1_tf import commands, experiments, markdown, report_writer, store
from hw1_tf.errors import Hw1Error
from hw1_tf.ledger import StudyLog

ROOT = Path(__file__).resolve().parents[1]

TOY = '''
import dataclasses
import os
import sys
import time

import numpy as np

from hw1_tf import framework, markdown
from hw1_tf.config import RunConfig, option
from hw1_tf.errors import Hw1Error
from hw1_tf.figures import FigureSet, finish_axes, plt

EXPERIMENT = "{name}"
POSITION = {position}


@dataclasses.dataclass
class Config(RunConfig):
    sleep: float = option(0.0, "Seconds the run takes (unless $HW1_TOY_FAST is set).")
    fail: bool = option(False, "Fail with an error instead.")


def plan(ctx):
    return [framework.Run("only", train, {{"sleep": ctx.config.sleep, "fail": ctx.config.fail}})]


def train(ctx, sleep, fail):
    if fail:
        raise Hw1Error("{name} was told to fail")
    if not os.environ.get("HW1_TOY_FAST"):
        time.sleep(sleep)
    return {{"values": np.arange(3.0)}}


def analyse(records, ctx):
    return framework.Outcome(records, {{"total": float(np.sum(records["only"]["values"])),
                                        "tensorflow": "tensorflow" in sys.modules}})


def figures(results, figures_dir):
    out = FigureSet(figures_dir)
    fig, ax = plt.subplots()
    ax.plot(results["runs"]["only"]["values"], label="values")
    finish_axes(ax, "{name}", "index", "value")
    out.save(fig, "line")
    return out


TITLE = "Toy {name}"
QUESTIONS = ("What is the total?",)


def report_section(results, ctx):
    return f"The total is {{markdown.fmt(results['total'])}}."
'''

TOYS = {"toy_a": "", "toy_slow": "--sleep=600\n", "toy_fail": "--fail\n"}


@pytest.fixture
def toys(tmp_path, monkeypatch):
    """Three toy experiments (a quick one, a slow one, a failing one) with quick flag files,
    importable here and in the processes bin/run_all starts, registered."""
    folder = tmp_path / "toys"
    (folder / "flags" / "quick").mkdir(parents=True)
    for i, (name, flags) in enumerate(TOYS.items()):
        (folder / f"{name}.py").write_text(textwrap.dedent(TOY.format(name=name,
                                                                      position=9000 + i)))
        (folder / "flags" / "quick" / f"{name}.flags").write_text(flags)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{ROOT}")
    monkeypatch.delenv(experiments.ENV, raising=False)
    monkeypatch.delenv("HW1_TOY_FAST", raising=False)
    for name in TOYS:
        experiments.register(name)
    yield folder
    for name in TOYS:
        experiments.unregister(name)


def _table(stdout: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| experiment")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_a_failing_experiment_stops_no_other_and_is_marked_in_the_report(toys, tmp_path,
                                                                          capsys, monkeypatch):
    monkeypatch.setenv("HW1_TOY_FAST", "1")
    out = tmp_path / "out"
    config = commands.RunAllConfig(profile="quick", experiments=("toy_fail", "toy_a"),
                                   output_dir=str(out))
    with pytest.raises(Hw1Error, match=r"1 experiment\(s\) failed: toy_fail"):
        commands.run_all(config)
    table = _table(capsys.readouterr().out)
    assert table["toy_fail"][0] == "failed (exit status 1)"
    assert table["toy_a"][0] == "done"
    assert table["all"][0] == "1 done, 0 skipped, 1 failed"
    toy_a = store.load_results(store.Paths.create(out), "toy_a")
    assert toy_a["total"] == 3.0
    assert toy_a["tensorflow"] is False  # a numpy experiment starts without TensorFlow
    report = (out / "REPORT.md").read_text()
    failed = report.split("## Toy toy_fail", 1)[1].split("\n## ", 1)[0]
    assert "**This experiment failed** in the last `bin/run_all` (exit status 1" in failed
    assert (f"`python -m hw1_tf toy_fail --flagfile={toys}/flags/quick/toy_fail.flags "
            f"--output_dir={out}` reproduces it") in failed
    assert "This experiment failed" not in report.split("## Toy toy_a", 1)[1].split("\n## ")[0]
    # the appendix prints each experiment's recorded time, command and machine
    entries = json.loads((out / "results" / "run_all.json").read_text())["experiments"]
    appendix = report.split("## Appendix: how long each experiment took", 1)[1]
    for name, status in (("toy_a", "done"), ("toy_fail", "failed")):
        row = next(line for line in appendix.splitlines() if line.startswith(f"| Toy {name} "))
        assert (f"| {status} | {markdown.duration(entries[name]['seconds'])} | "
                f"{markdown.duration(entries[name]['cpu_seconds'])} | quick |") in row
        assert 0 < entries[name]["cpu_seconds"]
        assert entries[name]["command"] in row
    assert f"{os.cpu_count()} cores" in appendix and "tensorflow " in appendix
    # the rerun skips what is done and retries what failed
    with pytest.raises(Hw1Error, match="toy_fail"):
        commands.run_all(config)
    table = _table(capsys.readouterr().out)
    assert table["toy_a"][0] == "skipped (already done)"
    assert table["toy_fail"][0] == "failed (exit status 1)"
    # another flag file (or other extra flags) is another fingerprint: not skipped
    flagfile = toys / "flags" / "quick" / "toy_a.flags"
    before = commands._fingerprint("toy_a", flagfile, [], "quick")
    assert commands._fingerprint("toy_a", flagfile, ["--seed=1"], "quick") != before
    flagfile.write_text("--sleep=0.01\n")
    assert commands._fingerprint("toy_a", flagfile, [], "quick") != before


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_killed_run_all_resumes_at_the_experiment_it_was_in(toys, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bin" / "run_all"), "--profile=quick",
           "--experiments=toy_a,toy_slow", f"--output_dir={out}"]
    log = StudyLog(store.Paths.create(out))
    first = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (log.read().get("toy_slow") or {}).get("status") == "running", 240,
                  "toy_slow to start")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # run_all and the experiment it started
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    created = log.created("toy_a")
    assert created is not None and log.created("toy_slow") is None
    assert not (out / "REPORT.md").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HW1_TOY_FAST": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    table = _table(again.stdout)
    assert table["toy_a"][0] == "skipped (already done)"
    assert table["toy_slow"][0] == "done"
    assert table["all"][0] == "1 done, 1 skipped, 0 failed"
    assert log.created("toy_a") == created  # not rerun
    assert store.load_results(store.Paths.create(out), "toy_slow")["total"] == 3.0
    assert "run_all [2/2] toy_slow:" in again.stderr
    assert "Toy toy_slow" in (out / "REPORT.md").read_text()
    entries = json.loads(log.path.read_text())["experiments"]
    assert entries["toy_slow"]["status"] == "done" and entries["toy_slow"]["seconds"] > 0


def test_the_eta_comes_from_an_earlier_run_else_from_this_one():
    progress = commands.StudyProgress({"a": 100.0, "b": 50.0})
    assert progress.eta() == "ETA 2 min 30 s"
    progress.finished("a", 90.0)
    assert progress.eta() == "ETA 50 s"
    unknown = commands.StudyProgress({"a": None, "b": None})
    assert unknown.eta() == "ETA unknown (no earlier run timed these)"
    unknown.finished("a", 30.0)  # this run's mean stands in for what was never timed
    assert unknown.eta() == "ETA 30 s (1 of 1 not timed before: guessed)"
    mixed = commands.StudyProgress({"a": 20.0, "b": None, "c": 40.0})
    assert mixed.eta() == "ETA 1 min 30 s (1 of 3 not timed before: guessed)"
    assert progress.line(2, 3, "b").startswith("run_all [2/3] b: ")


def test_the_appendix_follows_the_recorded_times():
    titles = {"a": "Toy a", "b": "Toy b", "c": "Toy c"}
    machine = {"cpu": "CPU X", "cores": 2, "memory_gib": 24.0, "system": "Linux 6",
               "python": "3.11.7", "versions": {"tensorflow": "2.21.0"}}
    entries = {"a": {"status": "done", "seconds": 75.0, "cpu_seconds": 140.0, "profile": "full",
                     "command": "bin/run_a",
                     "finished": "2026-12-06T03:00:00+00:00", "machine": machine},
               "b": {"status": "failed", "seconds": 5.0, "profile": "full", "command": "bin/run_b",
                     "finished": "2026-12-06T03:01:00+00:00", "machine": machine}}
    text = "\n".join(report_writer.timing_appendix(titles, entries))
    assert "| Toy a | done | 1 min 15 s | 2 min 20 s | full |" in text
    assert "| Toy b | failed | 5.0 s | n/a | full |" in text
    assert "| Toy c | not run by bin/run_all | n/a | n/a |" in text
    assert "Together: 1 min 20 s wall, 2 min 20 s CPU." in text
    assert "- CPU X, 2 cores, 24 GiB, Linux 6, Python 3.11.7; tensorflow 2.21.0" in text
    entries["a"]["seconds"] = 3725.0
    text = "\n".join(report_writer.timing_appendix(titles, entries))
    assert "| Toy a | done | 1 h 02 min | 2 min 20 s | full |" in text
    assert "Together: 1 h 02 min wall" in text
