"""Concurrent writers of one results.json: N binaries of one experiment (one config, each its
own selection of runs, as a student launches several into one output folder) that finish at
the same moment keep all N runs. Each writer is a process of its own (the lock is a kernel
flock between processes), released together by a barrier into `Ledger.write`, whose read of
the earlier results is slowed down so that, without the lock, every writer reads before any
writes (and all but one run would be lost). The writers import no TensorFlow: their config is a
stand-in with simulate_function's run selection (`functions`), so each starts in well under a
second instead of ~5 CPU seconds of TensorFlow import."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hw1_tf import store

ROOT = Path(__file__).resolve().parents[1]
N = 4
FUNCTIONS = ("sinc", "sign", "exp_sin", "sawtooth")

# a config like an experiment's: the runs chosen by `functions` (its RUN_SELECTION), so writers
# of other functions share one results.json (hw1_tf.ledger.result_key)
CONFIG = r"""
import dataclasses
from typing import ClassVar
from hw1_tf.config import RunConfig

@dataclasses.dataclass
class Config(RunConfig):
    RUN_SELECTION: ClassVar[tuple[str, ...]] = ("functions",)
    functions: tuple[str, ...] = ("sinc",)
    epochs: int = 3
"""
WRITER = CONFIG + r"""
import sys, time
from pathlib import Path
import numpy as np
from hw1_tf import ledger, store

out, function, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
config = Config(functions=(function,), output_dir=out)
read = store.read_results
def slow_read(path):  # widen the read-merge-write window
    results = read(path)
    time.sleep(0.5)
    return results
store.read_results = slow_read
Path(f"{go}.{function}").touch()  # ready
while not go.exists():  # the barrier: every writer released at once
    time.sleep(0.001)
run = {"history": {"loss": np.arange(100, dtype=np.float32) + len(function)},
       "function": function}
ledger.Ledger("simulate_function", config, store.Paths.create(out)).write(
    {f"{function}_run": run}, best_runs={function: f"{function}_run"})
print(time.time())
assert "tensorflow" not in sys.modules  # a start of well under a second
"""


def test_n_writers_finishing_together_keep_all_n_runs(tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    # an earlier run of the same config is there: every writer must read and keep it too
    namespace = {}
    exec(CONFIG, namespace)
    earlier = namespace["Config"](functions=("sinc",), output_dir=str(out))
    from hw1_tf import ledger

    ledger.Ledger("simulate_function", earlier, store.Paths.create(out)).write(
        {"earlier_run": {"function": "sinc"}}, best_runs={"earlier": "earlier_run"})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), f, str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in FUNCTIONS[:N]]
    try:
        started = time.perf_counter()
        while not all(Path(f"{go}.{f}").exists() for f in FUNCTIONS[:N]):
            assert time.perf_counter() - started < 120, "writers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        released = time.time()
        go.touch()
        finished = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, stderr[-3000:]
            finished.append(float(stdout.split()[-1]) - released)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = store.load_results(store.Paths.create(out), "simulate_function")
    print(f"\n{N} writers released together, finished {min(finished):.2f}-{max(finished):.2f} s "
          f"later; runs kept: {sorted(results['runs'])}")
    assert set(results["runs"]) == {"earlier_run", *(f"{f}_run" for f in FUNCTIONS[:N])}
    assert set(results["best_runs"]) == {"earlier", *FUNCTIONS[:N]}  # extras merged too
    for f in FUNCTIONS[:N]:
        np.testing.assert_array_equal(results["runs"][f"{f}_run"]["history"]["loss"],
                                      np.arange(100, dtype=np.float32) + len(f))
    # they took turns: each waited for the ones before it (N slowed reads one after another)
    assert max(finished) >= 0.5 * N * 0.9
    assert not list(out.rglob("*.tmp"))
