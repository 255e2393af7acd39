"""Runs first: splits the CPU into 2 logical devices before TensorFlow initialises, so the
multi-replica (MirroredStrategy) tests can run on a machine without GPUs. Single-device code
keeps using the default strategy on CPU:0."""

import dataclasses
import fcntl
import gc
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hw1_tf import console, distribute  # noqa: E402



def pytest_configure(config):
    """TensorFlow in the processes that run tests: the xdist workers, or pytest itself with
    `-n 0` (or without xdist); the xdist controller runs none and skips its ~5 CPU s import.
    Its import and device notices filtered as in the binaries (console): its C++ lines would
    otherwise land after pytest's summary line."""
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    console.import_tensorflow()
    with console.quiet_startup():
        distribute.configure_logical_cpus(2)


# The heaviest tests first (per-test CPU seconds from tests/cpu_durations.py, 2026-12-06,
# idle: 43, 22, 18, 18, 17, 16, 10, 9.4, 9.4 s). Under xdist's worksteal a long test
# that starts last keeps one worker busy while the other has nothing left: the kill and
# multi-worker tests sat at the end of the collection (test_multi_worker, test_resume*).
# Only tests without module-scoped fixtures move (a fixture would be built twice), and none
# reading the shared runs below (two workers would wait on one lock).
SLOW_FIRST = (
    "test_multi_worker.py::test_two_workers_killed_mid_run",
    "test_resume.py::test_sigkill_mid_epoch",
    "test_multi_worker.py::test_two_workers_equal_one_process",
    "test_resume_population_scratch.py::test_population_experiment_killed",
    "test_resume_population_scratch.py::test_trajectory_killed",
    "test_resume_population_scratch.py::test_scratch_killed",
    "test_hessian_operators.py::test_hessian_spectrum_reports_every_number",
    "test_resume_population_scratch.py::test_weight_snapshots_of_a_resumed",
    "test_hw13_generalization.py::test_random_labels_memorises",
)


def pytest_collection_finish(session):
    """Python's collector, tuned for a long-lived process full of TensorFlow objects: what
    importing TensorFlow, Keras and the test modules made is frozen out of its scans, and it
    runs less often (each full pass walks every tracked object). Measured 2026-12-06 on
    test_population + test_hw13_generalization + test_framework (`-n 0`, `gc.callbacks`
    timing): 5.1 CPU s of collection in 3224 passes before, 2.6 s in 1291 after."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 50)


def pytest_collection_modifyitems(config, items):
    """The SLOW_FIRST tests at the front, in that order; the rest keep theirs."""
    def rank(item):
        return next((i for i, name in enumerate(SLOW_FIRST) if name in item.nodeid),
                    len(SLOW_FIRST))

    items.sort(key=rank)


# ------------------------------------------------------ tiny runs shared by the test modules

# tiny settings of the image experiments (no XLA: compiling costs more than these few steps)
TINY_IMAGE = dict(dataset="digits", epochs=2, jit_compile=False, verbose=0, tensorboard=False,
                  steps_per_execution=4)


def _shared_configs():
    """{experiment: its tiny Config but output_dir}: the runs several modules read
    (test_report, test_scorecard, test_hw13_measures), trained once per session."""
    from hw1_tf.experiments import flatness, random_labels, sensitivity

    return {
        "random_labels": lambda: random_labels.Config(hidden=(16,), ratios=(0.0, 1.0),
                                                      **TINY_IMAGE),
        # batch sizes out of order: the scorecard reads sweeps in numeric order
        "flatness": lambda: flatness.Config(hidden=(8,), batch_sizes=(128, 16), num_alphas=5,
                                            **TINY_IMAGE),
        # trained to a loss target (or 3 epochs), SavedModels kept: the measures' source
        "sensitivity": lambda: sensitivity.Config(**{
            **TINY_IMAGE, "epochs": 3, "steps_per_execution": 8}, hidden=(8,),
            batch_sizes=(256, 16, 64), sensitivity_examples=50, stop_loss_below=0.5),
    }


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """`shared_run(name, into)`: experiment `name` run once per session on its tiny config
    (`_shared_configs`) into a folder the xdist workers share (beside their own base temp
    folders, under a file lock while the first one trains it), its results/ and figures/
    copied into the output root `into`; returns its results as written."""
    from hw1_tf import experiments, framework, store

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # <pytest's base temp>/popen-gw<N>: the workers' common folder

    def run(name: str, into: Path) -> dict:
        root = base / f"shared-{name}"
        with open(base / f"shared-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (root / "done").is_file():
                shutil.rmtree(root, ignore_errors=True)
                config = dataclasses.replace(_shared_configs()[name](), output_dir=str(root))
                framework.run(experiments.get(name), config)
                (root / "done").touch()
        for sub in ("results", "figures"):
            shutil.copytree(root / sub / name, Path(into) / sub / name)
        return store.load_results(store.Paths.create(root), name)

    return run
