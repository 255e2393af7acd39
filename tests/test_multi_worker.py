"""A real multi-worker run: two worker processes on localhost ports (TF_CONFIG,
--strategy=multi_worker) record the same per-iteration loss and gradient norms and end with the
same weights as one process alone; only the chief writes."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from hw1_tf import store

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
    procs.append(_start(outs[2]))
    try:
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
