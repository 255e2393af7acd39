"""A real multi-worker run: two worker processes on localhost ports (TF_CONFIG,
--strategy=multi_worker) record the same per-iteration loss and gradient norms and end with the
same weights as one process alone (the test's own, running the binary's flags in process);
only the chief writes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from hw1_tf import cli, store

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--functions=sinc", "--depths=2", "--target_params=60", "--n_train=64",
         "--batch_size=16", "--epochs=2", "--notensorboard", "--verbose=0"]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(out, tf_config=None, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "bin/run_simulate_function", *FLAGS, *extra,
                             f"--output_dir={out}"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _final_weights(out):
    path = out / "saved_models/simulate_function/sinc_dnn_d2.keras"
    return [w.numpy() for w in keras.saving.load_model(path, compile=False).weights]


def test_two_workers_equal_one_process(tmp_path):
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    outs = [tmp_path / "worker0", tmp_path / "worker1", tmp_path / "single"]
    started = time.perf_counter()
    procs = [_start(outs[i], {"cluster": cluster, "task": {"type": "worker", "index": i}},
                    "--strategy=multi_worker") for i in range(2)]
    try:
        # the one process is this one, with the same flags (what the binary does, without a
        # third TensorFlow start-up), while the workers run
        assert cli.invoke_experiment("simulate_function",
                                     [*FLAGS, f"--output_dir={outs[2]}"]) == 0
        logs = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:  # bounded: never leave a worker waiting for its peer
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    assert "num_workers = 2" in logs[0]
    assert not outs[1].exists()  # the non-chief worker wrote only to its discarded scratch
    multi = store.load_results(store.Paths.create(outs[0]), "simulate_function")
    single = store.load_results(store.Paths.create(outs[2]), "simulate_function")
    a = multi["runs"]["sinc_dnn_d2"]["history"]["iteration"]
    b = single["runs"]["sinc_dnn_d2"]["history"]["iteration"]
    assert len(a["grad_norm"]) == len(b["grad_norm"]) == 2 * 4
    diffs = {k: float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))))
             for k in ("loss", "grad_norm")}
    weights = max(float(np.max(np.abs(x - y)))
                  for x, y in zip(_final_weights(outs[0]), _final_weights(outs[2])))
    print(f"\n2 workers vs 1 process, {time.perf_counter() - started:.0f} s: max |diff| "
          f"loss {diffs['loss']:.1e}, grad norm {diffs['grad_norm']:.1e}, weights {weights:.1e}")
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert weights <= 1e-5


# 16 iterations an epoch; an epoch of two workers lasts about 0.3 s on an idle machine
# (all-reduces over gRPC), longer under load: the kill half a second after the first backup
# lands around epochs 2-3, well before the end (a run that ended first fails the test)
RESUME_EPOCHS = 8
RESUME_FLAGS = ["--functions=sinc", "--depths=2", "--target_params=60", "--n_train=64",
                "--batch_size=4", f"--epochs={RESUME_EPOCHS}", "--notensorboard", "--verbose=0"]


def _start_logged(out, log, tf_config=None, flags=RESUME_FLAGS):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
        flags = [*flags, "--strategy=multi_worker"]
    return subprocess.Popen([sys.executable, "bin/run_simulate_function", *flags,
                             f"--output_dir={out}"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def _workers(out, logs):
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    return [_start_logged(out[i], logs[i], {"cluster": cluster,
                                             "task": {"type": "worker", "index": i}})
            for i in range(2)]


def _finish(procs, timeout):
    deadline = time.perf_counter() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        pass  # killed below; the caller's return-code checks fail
    finally:
        for p in procs:  # bounded: never leave a worker waiting for its peer
            if p.poll() is None:
                p.kill()
                p.wait()


def test_two_workers_killed_mid_run_resume_to_the_uninterrupted_result_and_then_skip(tmp_path):
    """Worker 1 is killed with SIGKILL mid-run (after the chief's first backup), the chief then
    too (it waits on its lost peer); both restarted with the same flags resume from the chief's
    backup, sent to each worker (ledger.backup_dir), and end where one uninterrupted process
    ends. A third start of the finished config skips it on both workers."""
    chief, other, single = tmp_path / "w0", tmp_path / "w1", tmp_path / "single"
    log = lambda name: tmp_path / f"{name}.log"  # noqa: E731
    started = time.perf_counter()
    procs = _workers([chief, other], [log("w0a"), log("w1a")])
    backups = chief / "results/simulate_function/backup"
    try:
        while not list(backups.glob("*/population.npz")):
            assert all(p.poll() is None for p in procs), log("w0a").read_text()[-3000:]
            assert time.perf_counter() - started < 180, "no backup within 180 s"
            time.sleep(0.05)
        time.sleep(0.5)  # into a later epoch
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=30)
        time.sleep(0.2)
        if procs[0].poll() is None:
            procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
    finally:
        _finish(procs, 1)
    killed_at = time.perf_counter() - started
    assert procs[1].returncode == -signal.SIGKILL
    assert not (chief / "results/simulate_function/results.json").exists()  # mid-run
    restarted = _workers([chief, other], [log("w0b"), log("w1b")])
    try:  # the uninterrupted reference: this process, same flags, while the workers resume
        assert cli.invoke_experiment("simulate_function",
                                     [*RESUME_FLAGS, f"--output_dir={single}"]) == 0
    finally:
        _finish(restarted, 300)
    for p, name in zip(restarted, ("w0b", "w1b")):
        assert p.returncode == 0, log(name).read_text()[-3000:]
    resumed = [re.search(r"resuming after epoch (\d+)", log(n).read_text()) for n in
               ("w0b", "w1b")]
    assert all(resumed), [log(n).read_text()[-2000:] for n in ("w0b", "w1b")]
    epochs = {int(m.group(1)) for m in resumed}
    assert len(epochs) == 1 and 1 <= epochs.copy().pop() < RESUME_EPOCHS  # the chief's epoch
    multi = store.load_results(store.Paths.create(chief), "simulate_function")
    alone = store.load_results(store.Paths.create(single), "simulate_function")
    a = multi["runs"]["sinc_dnn_d2"]["history"]
    b = alone["runs"]["sinc_dnn_d2"]["history"]
    assert len(a["iteration"]["loss"]) == len(b["iteration"]["loss"]) == RESUME_EPOCHS * 16
    diffs = {k: float(np.max(np.abs(np.asarray(a["iteration"][k]) -
                                    np.asarray(b["iteration"][k])))) for k in ("loss", "grad_norm")}
    weights = max(float(np.max(np.abs(x - y)))
                  for x, y in zip(_final_weights(chief), _final_weights(single)))
    print(f"\nkilled at {killed_at:.0f} s, resumed after epoch {epochs.pop()} on both workers, "
          f"done at {time.perf_counter() - started:.0f} s: max |diff| vs one uninterrupted "
          f"process: loss {diffs['loss']:.1e}, grad norm {diffs['grad_norm']:.1e}, "
          f"final weights {weights:.1e}")
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(a["iteration"][key], b["iteration"][key], rtol=1e-5,
                                   atol=1e-6)
    assert weights <= 1e-5
    assert not (chief / "results/simulate_function/backup").exists()
    before = (chief / "results/simulate_function/results.json").read_bytes()
    again = _workers([chief, other], [log("w0c"), log("w1c")])  # finished: skipped by both
    _finish(again, 180)
    for p, name in zip(again, ("w0c", "w1c")):
        assert p.returncode == 0, log(name).read_text()[-3000:]
        assert "already finished for this config, skipped" in log(name).read_text()
    after = store.load_results(store.Paths.create(chief), "simulate_function")
    np.testing.assert_array_equal(after["runs"]["sinc_dnn_d2"]["history"]["iteration"]["loss"],
                                  a["iteration"]["loss"])
    assert after["runs"]["sinc_dnn_d2"]["history"]["seconds"] == a["seconds"]  # not retrained
