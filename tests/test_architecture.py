"""The architecture: one experiment = one module (a toy one, registered from this test, runs end to
end through bin/run_all and the report), the import floors (import-linter), the generated
binaries, and bin/compare_results."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hw1_tf import commands, experiments, framework, store

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"

TOY = '''
"""A toy experiment: one module, nothing else in the project names it."""
import dataclasses

import numpy as np

from hw1_tf import framework, markdown
from hw1_tf.config import RunConfig, option
from hw1_tf.figures import FigureSet, finish_axes, plt

EXPERIMENT = "toy"
POSITION = 9999


@dataclasses.dataclass
class Config(RunConfig):
    factor: float = option(1.0, "What the one run multiplies 0..99 by.")


def plan(ctx):
    return [framework.Run("scaled", train, {"factor": ctx.config.factor})]


def train(ctx, factor):
    return {"values": np.arange(100, dtype=np.float64) * factor}


def analyse(records, ctx):
    return framework.Outcome(records, {"total": float(np.sum(records["scaled"]["values"]))})


def figures(results, figures_dir):
    out = FigureSet(figures_dir)
    fig, ax = plt.subplots()
    ax.plot(results["runs"]["scaled"]["values"], label="values")
    finish_axes(ax, "toy", "index", "value")
    out.save(fig, "line")
    return out


TITLE = "Toy experiment"
QUESTIONS = ("What is the total?", "Why?")
QUESTION_FIGURES = {0: ("li*",)}


def report_section(results, ctx):
    return "\\n".join([f"The total is {markdown.fmt(results['total'], 6)}.", "",
                      ctx.figure("line", "the values")])
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module in its own folder with its flag files, on the path of this process and
    of the processes bin/run_all starts, registered."""
    folder = tmp_path / "toy_pkg"
    (folder / "flags" / "quick").mkdir(parents=True)
    (folder / "toy_experiment.py").write_text(textwrap.dedent(TOY))
    (folder / "flags" / "quick" / "toy.flags").write_text("--factor=3\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{ROOT}")
    monkeypatch.delenv(experiments.ENV, raising=False)
    name = experiments.register("toy_experiment")
    yield name
    experiments.unregister("toy_experiment")


def test_toy_experiment_runs_end_to_end_through_run_all_and_the_report(toy, tmp_path):
    assert toy == "toy" and experiments.names()[-1] == "toy"  # registered, sorted last
    out = tmp_path / "out"
    commands.run_all(commands.RunAllConfig(profile="quick", experiments=("toy",),
                                           output_dir=str(out)))
    results = store.load_results(store.Paths.create(out), "toy")
    assert results["config"]["factor"] == 3.0  # its flag file was read
    assert results["total"] == 3 * 4950
    np.testing.assert_array_equal(results["runs"]["scaled"]["values"], 3 * np.arange(100))
    assert list((out / "results/toy").glob("arrays-*.npz"))  # the long array went to the .npz
    assert (out / "figures/toy/line.png").stat().st_size > 5_000
    report = (out / "REPORT.md").read_text()
    assert "## Toy experiment" in report and "The total is 14850." in report
    # the figure numbered, captioned, and named beside the question it answers
    assert "![Figure 1: the values](figures/toy/line.png)\n\n*Figure 1: the values.*" in report
    assert "- What is the total? (Figure 1)\n- Why?\n" in report
    # a rerun through the ledger trains nothing and gives the same results
    again = framework.run(experiments.get("toy"), experiments.get("toy").Config(
        output_dir=str(out), factor=3.0))
    assert again["total"] == results["total"]
    assert framework.ExperimentContext("toy", experiments.get("toy").Config(
        output_dir=str(out), factor=3.0)).ledger.finished("scaled") is not None


def test_a_section_asking_for_a_figure_the_experiment_does_not_draw_fails(toy, tmp_path):
    module = experiments.get("toy")
    framework.run(module, module.Config(output_dir=str(tmp_path)))
    from hw1_tf import markdown

    ctx = markdown.Context(store.Paths.create(tmp_path), "toy")
    assert ctx.figure("line", "x").startswith("![x](")
    with pytest.raises(KeyError, match="toy draws no figure 'lines'"):
        ctx.figure("lines", "x")
    assert ctx.figure("lines", "x", optional=True) == ""


def test_import_floors_hold_and_an_upward_import_breaks_them(tmp_path):
    ok = subprocess.run([str(LINT), "--config", str(ROOT / "setup.cfg")], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 kept, 0 broken" in ok.stdout
    # the same contract on a copy of the package whose store (a low floor) imports the CLI
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "hw1_tf", copy / "hw1_tf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    store_py = copy / "hw1_tf" / "store.py"
    store_py.write_text(store_py.read_text() + "\n\ndef _up():\n    from hw1_tf import cli\n")
    broken = subprocess.run([str(LINT), "--config", str(ROOT / "setup.cfg")], cwd=copy,
                            capture_output=True, text=True,
                            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert broken.returncode != 0
    assert "hw1_tf.store is not allowed to import hw1_tf.cli" in broken.stdout


def test_binaries_are_generated_from_the_registry():
    for name in experiments.builtin_names():
        path = ROOT / "bin" / f"run_{name}"
        assert path.read_text() == commands.binary_text(name), f"{path}: run `make bin`"
    commands.make_binaries(commands.BinariesConfig(check=True))  # raises when one is stale


def _results(folder: Path, value: float, seconds: float = 1.0, force: bool = False) -> None:
    paths = store.Paths.create(folder)
    store.save_results(paths, "grad_norm", {"seed": 0, "force": force}, {
        "a": {"loss": value, "curve": np.linspace(0, value, 100), "seconds": seconds,
              "saved_model": str(folder / "saved_models/a")}})


def test_compare_results_tolerates_rounding_and_names_a_real_difference(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _results(a, 0.5)
    # float32-level change, another timing, folder, and --force (it changes no number)
    _results(b, 0.5 * (1 + 1e-8), seconds=7.0, force=True)
    _results(c, 0.5 * (1 + 1e-4))
    commands.compare_results(commands.CompareConfig(first=str(a), second=str(b)))
    assert "grad_norm: same" in capsys.readouterr().out
    with pytest.raises(commands.Hw1Error, match="results differ: grad_norm"):
        commands.compare_results(commands.CompareConfig(first=str(a), second=str(c)))
    printed = capsys.readouterr().out
    assert "runs/a/loss: 0.5 vs 0.50005" in printed
    assert "runs/a/curve: 99 of 100 values differ" in printed


def test_compare_results_binary_exit_codes(tmp_path):
    a, c = tmp_path / "a", tmp_path / "c"
    _results(a, 0.5)
    _results(c, 0.6)
    same = subprocess.run([sys.executable, str(ROOT / "bin/compare_results"), str(a), str(a)],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    differ = subprocess.run([sys.executable, str(ROOT / "bin/compare_results"), str(a), str(c)],
                            capture_output=True, text=True)
    assert differ.returncode == 1
    assert differ.stderr.strip().splitlines()[-1] == "error: results differ: grad_norm"
    missing = subprocess.run([sys.executable, str(ROOT / "bin/compare_results"), str(a),
                              str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 1 and "no such folder" in missing.stderr


def test_unknown_or_unimportable_experiments_are_one_line_errors(tmp_path):
    unknown = subprocess.run([sys.executable, "-m", "hw1_tf", "nope"], cwd=ROOT,
                             capture_output=True, text=True)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("usage error: unknown experiment 'nope'")
    assert "Traceback" not in unknown.stderr
    env = {**__import__("os").environ, experiments.ENV: "no_such_module"}
    bad = subprocess.run([sys.executable, str(ROOT / "bin/make_report"),
                          f"--output_dir={tmp_path}"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: $HW1_TF_EXPERIMENTS names 'no_such_module', which cannot be imported: No "
        "module named 'no_such_module'")
    assert not (tmp_path / "REPORT.md").exists()
