"""Bad input, as a user gives it to the binaries (the README's table, one probe per row): one
line naming the problem (no traceback), a non-zero exit, and nothing written before destroyed.
The rows run in this process (tests/probing.py, as tests/test_probes.py's table does: no
TensorFlow start-up per row); one row also runs as the real binary in a subprocess (the
others of that kind: tests/test_cli.py)."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hw1_tf import framework, store
from probing import check_probe, idx_bytes, mnist_folder, one_line

ROOT = Path(__file__).resolve().parents[1]
TINY_SIM = ["--functions=sinc", "--depths=1", "--target_params=40", "--n_train=32",
            "--n_test=20", "--epochs=2", "--batch_size=16", "--nosave_models",
            "--notensorboard", "--nojit_compile"]  # XLA compiles cost more than these runs
TINY_TASK = ["--models=dnn_shallow", "--target_params=500", "--epochs=1", "--nosave_models",
             "--notensorboard", "--nojit_compile"]


def _idx_probe(folder, **files):
    return ["--dataset=mnist", f"--data_dir={mnist_folder(folder / 'data', **files)}",
            *TINY_TASK]


def _blocked(folder):
    """An output folder below a file: it cannot be created."""
    (folder / "blocker").write_text("a file, not a folder")
    return [*TINY_SIM, f"--output_dir={folder / 'blocker' / 'x'}"]


def _corrupt_results(folder):
    (folder / "results/actual_task/results.json").write_bytes(
        b'{"experiment": "actual_task", "runs": {')
    return ["--experiments=actual_task"]


# name -> (binary, args (callable of the probe's folder), expected exit, expected line part)
PROBES = {
    "unknown flag": ("run_actual_task", lambda d: ["--no_such_flag=1"], 2,
                     "Unknown command line flag 'no_such_flag'"),
    "negative batch size": ("run_simulate_function", lambda d: ["--batch_size=-4"], 2,
                            "--batch_size"),
    "zero epochs": ("run_actual_task", lambda d: ["--epochs=0"], 2, "--epochs"),
    "unknown dataset": ("run_actual_task", lambda d: ["--dataset=svhn"], 2, "svhn"),
    "unknown strategy": ("run_simulate_function", lambda d: ["--strategy=tpu"], 2, "tpu"),
    "unknown function": ("run_simulate_function", lambda d: ["--functions=sinc,nope"], 2,
                         "--functions: 'nope' is not one of"),
    "unknown optimizer": ("run_actual_task", lambda d: ["--optimizer=lbfgs"], 2, "lbfgs"),
    "missing data, cannot be fetched": (
        "run_actual_task", lambda d: ["--dataset=mnist", f"--data_dir={d / 'nodata'}",
                                      *TINY_TASK], 1, "mnist: could not fetch"),
    "IDX truncated": (
        "run_actual_task",
        lambda d: _idx_probe(d, train_images=idx_bytes(np.zeros((3, 28, 28)))[:-50]),
        1, "but its header announces"),
    "IDX wrong magic": (
        "run_actual_task",
        lambda d: _idx_probe(d, train_labels=b"PK" + idx_bytes(np.zeros(3))[2:]),
        1, "bad magic number"),
    "IDX image count != label count": (
        "run_actual_task", lambda d: _idx_probe(d, train_labels=idx_bytes(np.zeros(5))),
        1, "3 images but train-labels-idx1-ubyte has 5 labels"),
    "unwritable output dir": ("run_simulate_function", _blocked, 1,
                              "could not be written (Not a directory)"),
    "NaN loss": ("run_simulate_function", lambda d: [*TINY_SIM, "--optimizer=sgd",
                                                      "--learning_rate=1e30"], 1,
                 "the loss became"),
    "corrupt results.json to make_figures": ("make_figures", _corrupt_results, 1,
                                             "not valid JSON"),
}


@pytest.mark.parametrize("name", list(PROBES))
def test_bad_input_is_one_line_nonzero_exit_nothing_destroyed(name, tmp_path, monkeypatch):
    binary, args, code, expected = PROBES[name]
    check_probe((binary, name, args, code, expected), tmp_path, monkeypatch)


def test_the_real_binary_fails_mid_run_with_one_line(tmp_path):
    """The NaN row as a user meets it: bin/run_simulate_function in its own process (TensorFlow
    started by the binary, the error raised inside training), one line, exit 1, the earlier
    results.json byte-identical and no half-written file beside it."""
    results = tmp_path / "results/simulate_function/results.json"
    results.parent.mkdir(parents=True)
    results.write_bytes(b'{"experiment": "x", "runs": {"kept": 1}}\n')
    before = results.read_bytes()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "bin/run_simulate_function", *TINY_SIM,
                           "--optimizer=sgd", "--learning_rate=1e30", f"--output_dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = one_line(proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(lines) == 1 and "the loss became" in lines[0], proc.stderr[-3000:]
    assert results.read_bytes() == before
    assert not list(results.parent.rglob("*.tmp"))


def test_full_disk_while_writing_results_keeps_the_old_ones(tmp_path, monkeypatch):
    paths = store.Paths.create(tmp_path)
    store.save_results(paths, "exp", {"k": 1}, {"a": {"curve": np.arange(500.0)}})
    before = paths.results_json("exp").read_bytes()
    npz_before = sorted(p.name for p in paths.results_dir("exp").iterdir())

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(store.Hw1Error, match="results.json|arrays-.*npz") as e:
        store.save_results(paths, "exp", {"k": 2}, {"a": {"curve": np.arange(500.0) + 1}})
    assert "No space left on device" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    assert paths.results_json("exp").read_bytes() == before
    assert sorted(p.name for p in paths.results_dir("exp").iterdir()) == npz_before
    np.testing.assert_array_equal(store.load_results(paths, "exp")["runs"]["a"]["curve"],
                                  np.arange(500.0))


def test_full_disk_on_the_json_after_the_arrays_removes_the_new_arrays(tmp_path, monkeypatch):
    paths = store.Paths.create(tmp_path)
    store.save_results(paths, "exp", {"k": 1}, {"a": {"curve": np.arange(500.0)}})
    before = sorted(p.name for p in paths.results_dir("exp").iterdir())
    real, calls = store.os.fsync, []

    def full_on_second(fd):  # the .npz is written, the results.json is not
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(store.os, "fsync", full_on_second)
    with pytest.raises(store.Hw1Error, match="results.json: could not be written"):
        store.save_results(paths, "exp", {"k": 2}, {"a": {"curve": np.arange(500.0) + 1}})
    assert sorted(p.name for p in paths.results_dir("exp").iterdir()) == before


def test_batch_larger_than_the_dataset_is_one_full_batch_step(tmp_path, monkeypatch):
    from hw1_tf import training
    from hw1_tf.experiments import simulate_function

    warnings = []
    monkeypatch.setattr(training.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    results = framework.run(simulate_function, simulate_function.Config(
        functions=("sinc",), depths=(1,), target_params=40, n_train=32, n_test=20, epochs=3,
        batch_size=1000, save_models=False, tensorboard=False, jit_compile=False,
        output_dir=str(tmp_path)))
    history = results["runs"]["sinc_dnn_d1"]["history"]
    assert history["epoch_end_iteration"] == [1, 2, 3]  # one step of all 32 examples each
    assert any("exceeds the 32 training examples" in w for w in warnings), warnings
