"""Resume after a kill for the population, the scratch Solver and the trajectory snapshots: a run
killed in the middle of an epoch (SIGKILL, in a subprocess) or interrupted in-process, started
again with the same arguments, ends with the history and weights of an uninterrupted run."""

import functools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hw1_tf import cli, data, landscape, models, population, store

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
               steps_per_execution=3, switch_after_epochs=3, grad_norm_learning_rate=0.01,
               jit_compile=False),  # the same loop as a plain tf.function: no compile time
        **kw})
    snaps = landscape.Snapshots(2, EPOCHS, 0, CLASSES.x_train, CLASSES.y_train, 3)
    pop, histories = population.train_population(
        SPEC, CLASSES, settings, (3, 4, 5), run_name="pop", backup_dir=backup_dir,
        callbacks=[snaps, *callbacks])
    return pop, histories, snaps


@functools.cache
def _straight():
    """The uninterrupted run that every crash epoch below is compared with, trained once per
    process (the tests only read it)."""
    return _train(None)


@pytest.mark.parametrize("crash_epoch", [2, 4])
def test_population_restored_from_its_backup_continues_bit_identically(tmp_path, monkeypatch,
                                                                        crash_epoch):
    monkeypatch.setattr(store.BackupSchedule, "due", lambda self, final=False: True)
    with pytest.raises(_Interrupt):
        _train(tmp_path / "a", [_crash_after(crash_epoch)])
    backup = store.load_state(tmp_path / "a" / population.BACKUP_FILE)["state"]
    assert backup["progress"]["epochs_done"] == crash_epoch - 1  # the epoch before the crash
    resumed, h1, snaps1 = _train(tmp_path / "a")
    straight, h2, snaps2 = _straight()
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


def test_solver_restored_from_its_backup_continues_bit_identically(tmp_path, monkeypatch):
    """Adam, batch norm, dropout (seeded by the step), lr decay and the accuracy subsample
    (the Solver's RNG) across an interruption after epoch 2 of 4."""
    from hw1_tf.scratch import FullyConnectedNet, Solver

    monkeypatch.setattr(store.BackupSchedule, "due", lambda self, final=False: True)
    rng = np.random.RandomState(0)
    arrays = {"X_train": rng.randn(90, 6), "y_train": rng.randint(0, 3, 90),
              "X_val": rng.randn(30, 6), "y_val": rng.randint(0, 3, 30)}

    def solver(path):
        model = FullyConnectedNet((8, 8), 6, 3, dropout=0.2, normalization="batchnorm",
                                  weight_scale=0.1, seed=2)
        return Solver(model, arrays, update_rule="adam", optim_config={"learning_rate": 1e-2},
                      lr_decay=0.9, batch_size=16, num_epochs=4, num_train_samples=40,
                      compile="eager", seed=3, verbose=False, backup_path=path)

    interrupted = solver(tmp_path / "solver.npz")
    original = interrupted._end_of_epoch

    def end_of_epoch():
        original()
        if interrupted.epoch == 2:
            raise _Interrupt

    interrupted._end_of_epoch = end_of_epoch
    with pytest.raises(_Interrupt):
        interrupted.train()
    assert store.load_state(tmp_path / "solver.npz")["state"]["epoch"] == 2
    resumed = solver(tmp_path / "solver.npz").train()
    straight = solver(None).train()
    assert len(resumed.loss_history) == 4 * (90 // 16)
    assert resumed.loss_history == straight.loss_history
    assert resumed.train_acc_history == straight.train_acc_history
    assert resumed.val_acc_history == straight.val_acc_history
    assert (resumed.best_epoch, resumed.best_val_acc) == (straight.best_epoch,
                                                          straight.best_val_acc)
    a, b = resumed.model.get_weights(), straight.model.get_weights()
    for key in b:
        np.testing.assert_array_equal(a[key], b[key])


def _keras_run(backup_dir, crash_in_epoch=None):
    """A tiny core run with weight snapshots every 2 epochs (and a crash in the middle of
    epoch `crash_in_epoch`, counted from 0)."""
    import keras

    from hw1_tf import callbacks, training

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == crash_in_epoch and batch >= 2:
                raise _Interrupt

    settings = training.TrainSettings(epochs=5, batch_size=8, steps_per_execution=2, verbose=0,
                                      seed=1)
    model = training.build_instrumented(
        lambda: keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                                  keras.layers.Dense(3)]), 3, settings)
    snaps = callbacks.WeightSnapshots(every_epochs=2, layer=1)
    history = training.train(model, (CLASSES.x_train, CLASSES.y_train), settings,
                             callbacks=[snaps, Crash()], backup_dir=backup_dir)
    return model, history, snaps


def test_weight_snapshots_of_a_resumed_core_run_are_all_there(tmp_path):
    with pytest.raises(_Interrupt):
        _keras_run(tmp_path, crash_in_epoch=3)
    model, history, snaps = _keras_run(tmp_path)
    straight, straight_history, straight_snaps = _keras_run(None)
    assert history["iteration"] == straight_history["iteration"]
    a, b = snaps.arrays(), straight_snaps.arrays()
    assert list(a["epochs"]) == [0, 2, 4, 5]  # 0 and 2 were taken before the crash
    for key in b:
        np.testing.assert_array_equal(a[key], b[key])
    for wa, wb in zip(model.network.weights, straight.network.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


# ------------------------------------------------------------------- SIGKILL, subprocesses


def _start(binary, flags, out):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, f"bin/{binary}", *flags, f"--output_dir={out}"],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _kill_mid_epoch_and_rerun(binary, flags, tmp_path, backup, epoch_line, epochs_done,
                              epochs, caplog):
    """Runs `binary`; SIGKILLs it half an epoch after its log shows the second epoch's end
    (`epoch_line`: a regex of the per-epoch log line; its first backup, `backup` relative to
    the output folder, exists then); then, in this process, starts it again with the same
    flags and runs the uninterrupted reference (what the binary does, without two more
    TensorFlow start-ups at ~5 CPU s each). Returns the (killed, reference) output folders,
    the resumed run's log and the backup's epoch (`epochs_done(state)`) at the kill."""
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    started = time.perf_counter()
    proc = _start(binary, flags, killed)
    ends = []  # when the killed run logged its epoch ends

    def watch(stream):
        for line in stream:
            if re.search(epoch_line, line):
                ends.append(time.perf_counter())

    watcher = threading.Thread(target=watch, args=(proc.stderr,), daemon=True)
    watcher.start()
    path = killed / backup
    try:
        while len(ends) < 2:
            assert proc.poll() is None, f"{binary} ended before its second epoch"
            assert time.perf_counter() - started < 120
            time.sleep(0.01)
        time.sleep((ends[1] - ends[0]) / 2)  # into the third epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = time.perf_counter() - started
    assert proc.returncode == -signal.SIGKILL
    epoch = epochs_done(store.load_state(path)["state"])
    assert 1 <= epoch < epochs
    caplog.set_level(logging.INFO, logger="absl")
    name = binary.removeprefix("run_")
    assert cli.invoke_experiment(name, [*flags, f"--output_dir={killed}"]) == 0
    log = caplog.text
    assert f"resuming after epoch {epoch} " in log
    assert cli.invoke_experiment(name, [*flags, f"--output_dir={reference}"]) == 0
    print(f"\n{binary}: killed at {killed_at:.1f} s, backed up after epoch {epoch} of "
          f"{epochs}, both done {time.perf_counter() - started:.1f} s")
    assert not path.exists()  # removed once the results are kept
    return killed, reference, log, epoch


def _weights(path):
    import keras

    model = keras.saving.load_model(path, compile=False)
    return [w.numpy() for w in model.weights]


def test_population_experiment_killed_mid_epoch_resumes_exactly(tmp_path, caplog):
    # one population: two functions x two restarts, 100 one-step executions per epoch
    epochs = 4
    flags = ["--functions=sinc,sign", "--depths=2", "--target_params=60", "--n_train=400",
             "--n_test=50", "--restarts=2", f"--epochs={epochs}", "--batch_size=4",
             "--steps_per_execution=1", "--learning_rate=0.003", "--save_models",
             "--verbose=2"]
    killed, reference, log, _ = _kill_mid_epoch_and_rerun(
        "run_simulate_function", flags, tmp_path,
        "results/simulate_function/backup/dnn_d2/population.npz", r": epoch \d+/",
        lambda state: state["progress"]["epochs_done"], epochs, caplog)
    a = store.load_results(store.Paths.create(killed), "simulate_function")["runs"]
    b = store.load_results(store.Paths.create(reference), "simulate_function")["runs"]
    assert set(a) == set(b) and len(a) == 4
    for name in b:
        ha, hb = a[name]["history"], b[name]["history"]
        assert len(ha["iteration"]["loss"]) == epochs * 100
        assert ha["epoch_end_iteration"] == hb["epoch_end_iteration"]
        for key in ("loss", "grad_norm", "objective"):
            np.testing.assert_allclose(ha["iteration"][key], hb["iteration"][key], rtol=1e-6,
                                       atol=0)
        np.testing.assert_allclose(ha["epoch"]["train_loss"], hb["epoch"]["train_loss"],
                                   rtol=1e-6)
        np.testing.assert_allclose(a[name]["prediction"], b[name]["prediction"], rtol=1e-6,
                                   atol=1e-7)
        for wa, wb in zip(_weights(killed / f"saved_models/simulate_function/{name}.keras"),
                          _weights(reference / f"saved_models/simulate_function/{name}.keras")):
            np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
    assert not (killed / "results/simulate_function/backup").exists()


def test_trajectory_killed_mid_epoch_resumes_with_all_its_snapshots(tmp_path, caplog):
    epochs = 4
    flags = ["--task=function", "--function=sinc", "--function_depth=2",
             "--function_params=60", "--n_train=400", "--runs=2", "--snapshot_every=1",
             "--eval_size=200", f"--epochs={epochs}", "--batch_size=4",
             "--steps_per_execution=1", "--learning_rate=0.003", "--verbose=2"]
    killed, reference, _, epoch = _kill_mid_epoch_and_rerun(
        "run_trajectory", flags, tmp_path, "results/trajectory/backup/population/population.npz",
        r": epoch \d+/", lambda state: state["progress"]["epochs_done"], epochs, caplog)
    a = store.load_results(store.Paths.create(killed), "trajectory")
    b = store.load_results(store.Paths.create(reference), "trajectory")
    assert list(a["snapshot_epochs"]) == list(range(epochs + 1))  # before the kill too
    for name, run in b["runs"].items():
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(a["runs"][name]["history"]["iteration"][key],
                                       run["history"]["iteration"][key], rtol=1e-6, atol=0)
        for key in ("whole", "layer", "loss"):  # (no accuracy: regression)
            # the last "whole" snapshot is the final weights
            np.testing.assert_allclose(a["runs"][name]["snapshots"][key],
                                       run["snapshots"][key], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a["pca"]["whole"]["coords"], b["pca"]["whole"]["coords"],
                               rtol=1e-4, atol=1e-6)


def test_scratch_killed_mid_epoch_resumes_and_skips_finished_runs(tmp_path, caplog):
    epochs = 4
    flags = ["--dataset=digits", "--train_size=600", "--nojit_compile",
             "--fallback_dataset=digits", "--val_size=200",
             "--overfit_samples=50", "--overfit_hidden_dims=20", "--overfit_epochs=2",
             "--search_hidden_dims=20", "--search_weight_scales=0.1",
             "--search_learning_rates=0.1", "--update_rules=sgd", "--rule_learning_rates=0.01",
             "--rules_train_size=200", "--rules_hidden_dims=20", "--rules_epochs=1",
             "--hidden_dims=64,64", f"--epochs={epochs}", "--batch_size=2", "--dropout=0.1",
             "--print_every=100000", "--verbose=1"]
    killed, reference, log, _ = _kill_mid_epoch_and_rerun(
        "run_scratch", flags, tmp_path, "results/scratch/backup/final/solver.npz",
        r"final: \(Epoch [1-9]", lambda state: state["epoch"], epochs, caplog)
    assert log.count("already finished for this config, skipped") == 3  # all but final
    a = store.load_results(store.Paths.create(killed), "scratch")
    b = store.load_results(store.Paths.create(reference), "scratch")
    assert set(a["runs"]) == set(b["runs"]) == {"overfit", "search/ws=0.1,lr=0.1", "rule/sgd",
                                               "final"}
    fa, fb = a["runs"]["final"], b["runs"]["final"]
    assert len(fa["loss_history"]) == epochs * fb["iterations_per_epoch"]
    np.testing.assert_allclose(fa["loss_history"], fb["loss_history"], rtol=1e-6, atol=0)
    for key in ("train_acc_history", "val_acc_history", "best_epoch", "test_accuracy"):
        assert fa[key] == fb[key], key
    ca = np.load(killed / "results/scratch/checkpoints/final.npz")
    cb = np.load(reference / "results/scratch/checkpoints/final.npz")
    assert set(ca.files) == set(cb.files)
    for key in cb.files:  # last and best parameters, slots, histories
        np.testing.assert_allclose(ca[key], cb[key], rtol=1e-6, atol=1e-7)
