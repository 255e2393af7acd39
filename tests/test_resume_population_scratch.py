"""Resume after a kill for the population, the scratch Solver and the trajectory snapshots: a run
killed in the middle of an epoch (SIGKILL, in a subprocess) or interrupted in-process, started
again with the same arguments, ends with the history and weights of an uninterrupted run."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hw1_tf import data, landscape, models, population, store

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- population, in process

CLASSES = data.Splits("blobs", *(lambda r: (r.randn(60, 3).astype(np.float32),
                                            r.randint(0, 3, 60).astype(np.int32),
                                            r.randn(20, 3).astype(np.float32),
                                            r.randint(0, 3, 20).astype(np.int32)))(
    np.random.RandomState(0)), num_classes=3)
SPEC = models.ModelSpec("pop", hidden=(6,), activation="tanh")
EPOCHS = 6


class _Interrupt(Exception):
    pass


def _crash_after(epoch):
    """A callback raising after `epoch` epochs (the in-process stand-in for a kill)."""
    def fn(e, pop):
        if e + 1 == epoch:
            raise _Interrupt
    return fn


def _train(backup_dir, callbacks=(), **kw):
    # 60 examples in batches of 8: 7 full + 1 partial per epoch, 3 iterations per execution;
    # adam with a switch to ||grad L||^2 after 3 epochs: slots, step counters and a restart
    settings = population.PopulationSettings(**{
        **dict(epochs=EPOCHS, batch_size=8, learning_rate=0.05, optimizer="adam", verbose=0,
               steps_per_execution=3, switch_after_epochs=3, grad_norm_learning_rate=0.01),
        **kw})
    snaps = landscape.Snapshots(2, EPOCHS, 0, CLASSES.x_train, CLASSES.y_train, 3)
    pop, histories = population.train_population(
        SPEC, CLASSES, settings, (3, 4, 5), run_name="pop", backup_dir=backup_dir,
        callbacks=[snaps, *callbacks])
    return pop, histories, snaps


@pytest.mark.parametrize("crash_epoch", [2, 4])
def test_population_restored_from_its_backup_continues_bit_identically(tmp_path, monkeypatch,
                                                                        crash_epoch):
    monkeypatch.setattr(store.BackupSchedule, "due", lambda self, final=False: True)
    with pytest.raises(_Interrupt):
        _train(tmp_path / "a", [_crash_after(crash_epoch)])
    backup = store.load_state(tmp_path / "a" / population.BACKUP_FILE)
    assert backup["progress"]["epochs_done"] == crash_epoch - 1  # the epoch before the crash
    resumed, h1, snaps1 = _train(tmp_path / "a")
    straight, h2, snaps2 = _train(None)
    for a, b in zip(h1, h2):
        assert a["iteration"] == b["iteration"]  # exact: lists of float32 values
        assert a["epoch"] == b["epoch"]
        for key in ("epoch_end_iteration", "switched_at_iteration", "stopped_at_iteration"):
            assert a[key] == b[key], key
    assert h1[0]["switched_at_iteration"] == 3 * 8  # the switch happened (after epoch 3)
    for a, b in zip(resumed.params, straight.params):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    arrays1, arrays2 = snaps1.arrays(), snaps2.arrays()
    assert list(arrays1["epochs"]) == [2, 4, 6]
    for key in arrays2:
        np.testing.assert_array_equal(arrays1[key], arrays2[key])


def test_population_backup_of_other_settings_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(store.BackupSchedule, "due", lambda self, final=False: True)
    with pytest.raises(_Interrupt):
        _train(tmp_path, [_crash_after(3)])
    _, h1, _ = _train(tmp_path, learning_rate=0.02)  # another run: must not resume
    _, h2, _ = _train(None, learning_rate=0.02)
    assert [h["iteration"] for h in h1] == [h["iteration"] for h in h2]


def test_population_ended_by_its_stop_threshold_resumes_as_ended(tmp_path, caplog):
    """All members stopped before the last epoch: the backup says the run is over, and the
    restarted run trains no further epoch."""
    kw = dict(stop_grad_norm_below=1e9, switch_after_epochs=None)  # stop at the 1st iteration
    _, h1, _ = _train(tmp_path, **kw)
    caplog.set_level(logging.INFO, logger="absl")
    _, h2, _ = _train(tmp_path, **kw)
    assert "resuming after epoch 1 " in caplog.text
    assert h1[0]["stopped_at_iteration"] == 1 and h1[0]["epoch_end_iteration"] == [1]
    assert [h["iteration"] for h in h1] == [h["iteration"] for h in h2]
    assert [h["epoch_end_iteration"] for h in h2] == [[1]] * 3
