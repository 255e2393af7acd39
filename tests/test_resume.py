"""Resume after a kill, runs done once, merged reruns: a run killed with SIGKILL in the middle of
an epoch and started again with the same flags ends exactly where an uninterrupted run ends;
finished runs are skipped (--force reruns them); a rerun never empties results.json."""

import json
import logging
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from hw1_tf import cli, fetch, framework, store, training
from hw1_tf.errors import Hw1Error
from hw1_tf.experiments import actual_task, simulate_function

ROOT = Path(__file__).resolve().parents[1]


def _binary(flags, out):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "bin/run_actual_task", *flags,
                             f"--output_dir={out}"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _weights(out):
    model = keras.saving.load_model(out / "saved_models/actual_task/digits_dnn_shallow.keras",
                                    compile=False)
    return [w.numpy() for w in model.weights]


def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted(tmp_path, caplog):
    # 360 one-step executions per epoch (seconds) through the training core (simulate_function
    # trains populations, which do not back up): a kill lands inside an epoch
    flags = ["--datasets=digits", "--models=dnn_shallow", "--target_params=3000",
             "--batch_size=4", "--epochs=3", "--steps_per_execution=1", "--notensorboard",
             "--verbose=0"]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    started = time.perf_counter()
    proc = _binary(flags, killed)
    try:
        metadata = killed / "results/actual_task/backup/digits_dnn_shallow/current" \
                            "/training_metadata.json"
        while not metadata.is_file():  # the first epoch's backup
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.perf_counter() - started < 120
            time.sleep(0.05)
        backed_up = time.perf_counter()
        time.sleep(0.5)  # into the second epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = time.perf_counter()
    assert proc.returncode == -signal.SIGKILL
    epoch = json.loads(metadata.read_text())["epoch"]
    assert 1 <= epoch < 3 and not (killed / "results/actual_task/results.json").exists()
    # started again with the same flags, then the uninterrupted reference, in this process:
    # what the binary does, without two more TensorFlow start-ups (~5 CPU s each)
    caplog.set_level(logging.INFO, logger="absl")
    assert cli.invoke_experiment("actual_task", [*flags, f"--output_dir={killed}"]) == 0
    assert f"resuming after epoch {epoch}" in caplog.text
    assert cli.invoke_experiment("actual_task", [*flags, f"--output_dir={reference}"]) == 0
    print(f"\nfirst backup {backed_up - started:.1f} s, killed {killed_at - started:.1f} s "
          f"(after epoch {epoch}), both done {time.perf_counter() - started:.1f} s")
    a = store.load_results(store.Paths.create(killed), "actual_task")["runs"]
    b = store.load_results(store.Paths.create(reference), "actual_task")["runs"]
    ha, hb = a["digits_dnn_shallow"]["history"], b["digits_dnn_shallow"]["history"]
    assert len(ha["iteration"]["loss"]) == 1080 and ha["epoch_end_iteration"] == [360, 720, 1080]
    for key in ("loss", "grad_norm", "objective"):
        np.testing.assert_allclose(ha["iteration"][key], hb["iteration"][key], rtol=1e-6,
                                   atol=0)
    np.testing.assert_allclose(ha["epoch"]["train_loss"], hb["epoch"]["train_loss"], rtol=1e-6)
    for wa, wb in zip(_weights(killed), _weights(reference)):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
    assert not (killed / "results/actual_task/backup").exists()  # removed once recorded


class _Crash(keras.callbacks.Callback):
    """Raises in the middle of epoch `epoch` (an in-process stand-in for a kill)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch >= 2:
            raise KeyboardInterrupt


def _tiny(tmp_path, cbs=(), switch=None, spe=4, seed=1):
    rng = np.random.RandomState(0)
    x = rng.randn(96, 5).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    settings = training.TrainSettings(epochs=5, batch_size=8, steps_per_execution=spe,
                                      verbose=0, seed=seed, switch_after_epochs=switch)
    model = training.build_instrumented(
        lambda: keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                                  keras.layers.Dense(2)]), 2, settings)
    history = training.train(model, (x, y), settings, test_xy=(x, y), callbacks=list(cbs),
                             backup_dir=tmp_path / "backup")
    return model, history


@pytest.mark.parametrize("switch,spe", [(None, 4), (2, 1)])
def test_interrupted_run_resumes_with_the_same_history_and_weights(tmp_path, switch, spe):
    """Fused XLA path (spe 4) and Keras' one-step path through an objective switch (the
    optimizer is replaced at the switch; the resumed run must rebuild it before loading)."""
    with pytest.raises(KeyboardInterrupt):
        _tiny(tmp_path / "a", [_Crash(3)], switch, spe)
    assert (tmp_path / "a/backup/current/run_state.npz").is_file()
    resumed, h1 = _tiny(tmp_path / "a", [], switch, spe)
    straight, h2 = _tiny(tmp_path / "b", [], switch, spe)
    assert h1["iteration"] == h2["iteration"] and h1["epoch_end_iteration"] == [12, 24, 36, 48, 60]
    assert h1["switched_at_iteration"] == h2["switched_at_iteration"]
    for key in h2["epoch"]:
        np.testing.assert_allclose(h1["epoch"][key], h2["epoch"][key], rtol=1e-6)
    for a, b in zip(resumed.network.weights, straight.network.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_a_backup_of_another_run_is_discarded_not_restored(tmp_path):
    """The Keras core's backup carries the run's fingerprint (store.Backup's protocol): one of
    another seed in the same folder must not be resumed (Keras alone would restore its weights
    and epoch)."""
    with pytest.raises(KeyboardInterrupt):
        _tiny(tmp_path / "a", [_Crash(3)], seed=1)
    assert (tmp_path / "a/backup/current/fingerprint.json").is_file()
    _, other = _tiny(tmp_path / "a", [], seed=2)  # same folder, another run
    _, fresh = _tiny(tmp_path / "b", [], seed=2)
    assert other["iteration"] == fresh["iteration"]  # from scratch: all 5 epochs, its own
    assert other["epoch_end_iteration"] == [12, 24, 36, 48, 60]


def _sim(tmp_path, **kw):
    base = dict(functions=("sinc",), depths=(1,), target_params=40, n_train=32, n_test=20,
                epochs=2, batch_size=16, steps_per_execution=2, save_models=False,
                tensorboard=False, jit_compile=False, output_dir=str(tmp_path))
    return simulate_function.Config(**{**base, **kw})


def test_finished_runs_are_skipped_force_reruns_and_other_selections_merge(tmp_path):
    def seconds(results, run):  # a retrained run has its own training time
        return results["runs"][run]["history"]["seconds"]

    first = framework.run(simulate_function, _sim(tmp_path))
    loss = first["runs"]["sinc_dnn_d1"]["history"]["iteration"]["loss"]
    again = framework.run(simulate_function, _sim(tmp_path, depths=(1, 2)))  # d1 skipped, d2 added
    assert set(again["runs"]) == {"sinc_dnn_d1", "sinc_dnn_d2"}
    assert seconds(again, "sinc_dnn_d1") == seconds(first, "sinc_dnn_d1")  # not retrained
    np.testing.assert_array_equal(again["runs"]["sinc_dnn_d1"]["history"]["iteration"]["loss"],
                                  loss)
    only = framework.run(simulate_function, _sim(tmp_path, depths=(2,), force=True))  # reruns d2 only
    assert seconds(only, "sinc_dnn_d2") != seconds(again, "sinc_dnn_d2")  # retrained
    assert set(only["runs"]) == {"sinc_dnn_d1", "sinc_dnn_d2"}  # d1 kept from before
    assert seconds(only, "sinc_dnn_d1") == seconds(first, "sinc_dnn_d1")
    assert set(only["best_runs"]) == {"sinc/dnn_d1", "sinc/dnn_d2"}
    other = framework.run(simulate_function, _sim(tmp_path, epochs=3))  # another config: replaced
    assert set(other["runs"]) == {"sinc_dnn_d1"}
    assert len(other["runs"]["sinc_dnn_d1"]["history"]["iteration"]["loss"]) == 6
    assert not (tmp_path / "results/simulate_function/finished").exists()  # merged


def test_a_run_that_produced_nothing_errors_and_keeps_the_old_results(tmp_path):
    config = actual_task.Config(datasets=("digits",), models=("dnn_shallow",),
                                target_params=500, epochs=1, batch_size=64, verbose=0,
                                save_models=False, tensorboard=False, jit_compile=False,
                                output_dir=str(tmp_path))
    framework.run(actual_task, config)
    path = tmp_path / "results/actual_task/results.json"
    before = path.read_bytes()
    empty = actual_task.Config(datasets=("mnist",), models=("dnn_shallow",), target_params=500,
                               epochs=1, data_dir=str(tmp_path / "none"), allow_download=False,
                               optional_datasets=("mnist",), output_dir=str(tmp_path))
    with pytest.raises(Hw1Error, match="nothing was produced .*mnist.*left as it was"):
        framework.run(actual_task, empty)
    assert path.read_bytes() == before
    with pytest.raises(Hw1Error, match="no mnist data"):  # not optional: the error itself
        framework.run(actual_task, actual_task.Config(**{**empty.__dict__, "optional_datasets": ()}))
    assert path.read_bytes() == before


def test_optional_skip_is_recorded_and_cleared_once_produced(tmp_path, monkeypatch):
    kw = dict(datasets=("digits", "mnist"), optional_datasets=("mnist",), models=("dnn_shallow",),
              target_params=500, epochs=1, batch_size=64, verbose=0, save_models=False,
              tensorboard=False, jit_compile=False, output_dir=str(tmp_path), allow_download=False,
              data_dir=str(tmp_path / "none"))
    results = framework.run(actual_task, actual_task.Config(**kw))
    assert list(results["skipped_datasets"]) == ["mnist"] and list(results["runs"]) == [
        "digits_dnn_shallow"]
    on_disk = json.loads((tmp_path / "results/actual_task/results.json").read_text())
    assert "no mnist data" in on_disk["skipped_datasets"]["mnist"]
    load = fetch.load_dataset  # mnist available now (digits standing in for it)
    monkeypatch.setattr(fetch, "load_dataset", lambda name, *a, **k: load("digits", *a, **k))
    results = framework.run(actual_task, actual_task.Config(**kw))
    assert results["skipped_datasets"] == {} and set(results["runs"]) == {
        "digits_dnn_shallow", "mnist_dnn_shallow"}


def test_store_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = store.write_json(tmp_path / "r.json", {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        assert store.write_json(tmp_path / "s.json", {}).stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_force_discards_a_stale_backup_instead_of_resuming_it(tmp_path, monkeypatch):
    """--force means from scratch: a leftover backup of an unfinished run of the same config is
    discarded, not resumed. The backup's history is tampered with after the crash, so a resume
    would show (the control without --force resumes it and carries the marker)."""
    from hw1_tf import trainer

    kw = dict(datasets=("digits",), models=("dnn_shallow",), target_params=500, epochs=3,
              batch_size=64, steps_per_execution=1, verbose=0, save_models=False,
              tensorboard=False, jit_compile=False)  # XLA compiles cost more than these runs
    train = training.train
    monkeypatch.setattr(trainer.training, "train", lambda *a, callbacks=(), **k: train(
        *a, callbacks=[*callbacks, _Crash(1)], **k))
    with pytest.raises(KeyboardInterrupt):
        framework.run(actual_task, actual_task.Config(output_dir=str(tmp_path / "a"), **kw))
    monkeypatch.setattr(trainer.training, "train", train)
    backup = tmp_path / "a/results/actual_task/backup/digits_dnn_shallow/current"
    state = store.load_state(backup / "run_state.npz")
    assert state[0]["epoch_end_iteration"] == [23]  # one epoch of 23 batches backed up
    state[0]["loss"] = [-1.0] * len(state[0]["loss"])  # the marker of a resumed backup
    store.save_state(backup / "run_state.npz", state)
    stale = tmp_path / "stale"
    shutil.copytree(tmp_path / "a", stale)

    def loss(out, **extra):
        results = framework.run(actual_task, actual_task.Config(output_dir=str(out), **kw,
                                                                **extra))
        return np.asarray(results["runs"]["digits_dnn_shallow"]["history"]["iteration"]["loss"])

    forced, resumed, fresh = loss(tmp_path / "a", force=True), loss(stale), loss(tmp_path / "b")
    assert len(fresh) == 69 and np.all(fresh > 0)
    np.testing.assert_array_equal(forced, fresh)  # from scratch: its own first epoch
    assert np.all(resumed[:23] == -1.0)  # without --force the same backup is resumed
    np.testing.assert_array_equal(resumed[23:], fresh[23:])
    assert not (tmp_path / "a/results/actual_task/backup").exists()
