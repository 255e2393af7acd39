"""Bad input, as a user gives it to the binaries (the README's table, one probe per row): one
line naming the problem (no traceback), a non-zero exit, and nothing written before destroyed.
The binaries run concurrently (each starts TensorFlow) to keep the module to tens of seconds."""

import concurrent.futures
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hw1_tf import framework, store

ROOT = Path(__file__).resolve().parents[1]
TINY_SIM = ["--functions=sinc", "--depths=1", "--target_params=40", "--n_train=32",
            "--n_test=20", "--epochs=2", "--batch_size=16", "--nosave_models",
            "--notensorboard"]
TINY_TASK = ["--models=dnn_shallow", "--target_params=500", "--epochs=1", "--nosave_models",
             "--notensorboard"]


def _idx(array):
    array = np.asarray(array, np.uint8)
    return bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big")
                                                   for d in array.shape) + array.tobytes()


def _mnist_folder(root, *, train_images=None, train_labels=None):
    """A data folder with the four MNIST IDX files, small (their checksums differ from the
    real ones: what is probed must be found before the checksum is)."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    files = {"train-images-idx3-ubyte": train_images or _idx(np.zeros((3, 28, 28))),
             "train-labels-idx1-ubyte": train_labels or _idx(np.zeros(3)),
             "t10k-images-idx3-ubyte": _idx(np.zeros((2, 28, 28))),
             "t10k-labels-idx1-ubyte": _idx(np.zeros(2))}
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return root


def _idx_probe(folder, **files):
    return ["--dataset=mnist", f"--data_dir={_mnist_folder(folder / 'data', **files)}",
            *TINY_TASK]


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
        lambda d: _idx_probe(d, train_images=_idx(np.zeros((3, 28, 28)))[:-50]),
        1, "but its header announces"),
    "IDX wrong magic": (
        "run_actual_task", lambda d: _idx_probe(d, train_labels=b"PK" + _idx(np.zeros(3))[2:]),
        1, "bad magic number"),
    "IDX image count != label count": (
        "run_actual_task", lambda d: _idx_probe(d, train_labels=_idx(np.zeros(5))),
        1, "3 images but train-labels-idx1-ubyte has 5 labels"),
    "unwritable output dir": (
        "run_simulate_function", lambda d: [*TINY_SIM, f"--output_dir={d / 'blocker' / 'x'}"],
        1, "could not be written (Not a directory)"),
    "NaN loss": ("run_simulate_function", lambda d: [*TINY_SIM, "--optimizer=sgd",
                                                      "--learning_rate=1e30"], 1,
                 "the loss became"),
    "corrupt results.json to make_figures": (
        "make_figures", lambda d: ["--experiments=actual_task"], 1, "not valid JSON"),
}
BEFORE = b'{"experiment": "x", "runs": {"kept": 1}}\n'


def _probe(name, folder):
    binary, args, _, _ = PROBES[name]
    folder.mkdir(parents=True)
    (folder / "blocker").write_text("a file, not a folder")
    results = folder / "results" / ("actual_task" if binary != "run_simulate_function"
                                    else "simulate_function") / "results.json"
    results.parent.mkdir(parents=True)
    results.write_bytes(BEFORE if name != "corrupt results.json to make_figures"
                        else b'{"experiment": "actual_task", "runs": {')
    argv = args(folder)
    if not any(a.startswith("--output_dir") for a in argv):
        argv.append(f"--output_dir={folder}")
    # no npm nor apt-get on PATH (and no internet for tensorflow-datasets): nothing fetches
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PATH=str(folder))
    proc = subprocess.run([sys.executable, f"bin/{binary}", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, results, results.read_bytes()


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    root = tmp_path_factory.mktemp("probes")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = {name: pool.submit(_probe, name, root / f"p{i}")
                   for i, name in enumerate(PROBES)}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(PROBES))
def test_bad_input_is_one_line_nonzero_exit_nothing_destroyed(probes, name):
    proc, results, before = probes[name]
    _, _, code, expected = PROBES[name]
    lines = [line for line in proc.stderr.splitlines()
             if line.startswith(("error:", "usage error:"))]
    print(f"\n{name}: exit {proc.returncode}: {lines}")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-3000:]
    assert results.read_bytes() == before  # the earlier results.json is untouched
    assert not list(results.parent.glob(".*.tmp"))  # and nothing half-written beside it


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
        batch_size=1000, save_models=False, tensorboard=False, output_dir=str(tmp_path)))
    history = results["runs"]["sinc_dnn_d1"]["history"]
    assert history["epoch_end_iteration"] == [1, 2, 3]  # one step of all 32 examples each
    assert any("exceeds the 32 training examples" in w for w in warnings), warnings
