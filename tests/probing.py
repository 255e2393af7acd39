"""The in-process probe runner shared by the probe tables (tests/test_probes.py,
tests/test_bad_input.py): a binary given bad input, run in this process through
`hw1_tf.cli.invoke` (its own flags, config, work and exit code, no TensorFlow start-up per
probe), in a folder holding an earlier results.json; and the checks every probe must pass.

A probe is (binary, what it is, args of the probe's folder, exit code, part of its one line).
A new one is a row in a table: no subprocess, so it costs what its work costs, not ~5 CPU
seconds of TensorFlow import."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from hw1_tf import cli, commands

BEFORE = b'{"experiment": "x", "runs": {"kept": 1}}\n'
TOOLS = {"fetch_data": (commands.FetchConfig, commands.fetch_data),
         "make_figures": (commands.FiguresConfig, commands.make_figures),
         "make_report": (commands.ReportConfig, commands.make_report),
         "run_all": (commands.RunAllConfig, commands.run_all),
         "compare_results": (commands.CompareConfig, commands.compare_results),
         "make_binaries": (commands.BinariesConfig, commands.make_binaries)}


def idx_bytes(array) -> bytes:
    """`array` as an IDX file (uint8)."""
    array = np.asarray(array, np.uint8)
    return bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big")
                                                   for d in array.shape) + array.tobytes()


def mnist_folder(root: Path, *, train_images: bytes | None = None,
                 train_labels: bytes | None = None) -> str:
    """A data folder `root` with the four MNIST IDX files, small (their checksums differ from
    the real ones: what is probed must be found before the checksum is)."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    files = {"train-images-idx3-ubyte": train_images or idx_bytes(np.zeros((3, 28, 28))),
             "train-labels-idx1-ubyte": train_labels or idx_bytes(np.zeros(3)),
             "t10k-images-idx3-ubyte": idx_bytes(np.zeros((2, 28, 28))),
             "t10k-labels-idx1-ubyte": idx_bytes(np.zeros(2))}
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return str(root)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def run_probe(probe, folder: Path) -> tuple[int, str, str, dict, dict]:
    """(exit code, stderr, argv shown, files before, files after) of one probe in `folder`."""
    binary, _, args, _, _ = probe
    folder.mkdir(parents=True)
    experiment = binary[4:] if binary.startswith("run_") and binary != "run_all" else None
    results = folder / "results" / (experiment or "actual_task") / "results.json"
    results.parent.mkdir(parents=True)
    results.write_bytes(BEFORE)
    argv = args(folder)
    if not any(a.startswith(("--output_dir", "--first", "extra")) for a in argv) and \
            binary not in ("fetch_data", "make_binaries"):
        argv.append(f"--output_dir={folder}")
    before = snapshot(folder)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        if experiment:
            code = cli.invoke_experiment(experiment, argv)
        else:
            code = cli.invoke(*TOOLS[binary], argv)
    shown = " ".join(a.replace(str(folder), "<dir>") for a in argv
                     if not a.startswith("--output_dir"))
    return code, err.getvalue(), shown, before, snapshot(folder)


def one_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error:", "usage error:"))]


def check_probe(probe, tmp_path: Path, monkeypatch) -> None:
    """Runs `probe` in tmp_path/probe with nothing to fetch with (PATH: no npm nor apt-get)
    and asserts: no traceback, its exit code, exactly one error line holding its part,
    nothing lost, nothing written but the ledger's records of runs that trained to their end
    before the error (results/<exp>/finished/, merged by the next write)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    code, stderr, shown, before, after = run_probe(probe, tmp_path / "probe")
    lines = one_line(stderr)
    print(f"\n{probe[0]} {shown}: exit {code}: {lines}")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == probe[3], stderr[-3000:]
    assert len(lines) == 1 and probe[4] in lines[0], stderr[-3000:]
    assert {k: after.get(k) for k in before} == before  # nothing lost
    assert all("/finished/" in k for k in set(after) - set(before)), set(after) - set(before)
