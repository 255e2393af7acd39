"""The tf.distribute strategy of a run, created once at the top and passed down.

`make_strategy(name)`: default | one_device | mirrored | multi_worker. Models, optimizers and
metrics are built inside `strategy.scope()`; the global batch size is what the flags say, and
Keras splits it across replicas.

`execution_settings` picks the fast path per strategy. Measured with Keras 3.15 on 2 logical CPUs:
under several replicas `steps_per_execution > 1` fails (keras-team/keras#19246) and
`jit_compile=True` fails (XLA cannot reach another device's resources), so there the run uses one
step per execution without XLA, and says so in the log.
"""

from __future__ import annotations

import json
import os

from absl import logging

from hw1_tf.errors import Hw1Error

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
_multi_worker = None  # created once, before TensorFlow initialises (console.start_tensorflow)
_strategies: dict = {}


def configure_logical_cpus(count: int) -> None:
    """Splits the host CPU into `count` logical devices (for multi-replica runs without GPUs).

    Must run before TensorFlow initialises its devices (first thing in a process).
    """
    import tensorflow as tf

    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != count:
            raise Hw1Error(f"cannot split the CPU into {count} logical devices: TensorFlow is "
                           f"already initialised with {existing}") from None


def _replica_devices() -> list[str]:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(name: str = "default"):
    """Returns the tf.distribute strategy called `name`."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_replica_devices()[0])
    if name == "mirrored":
        # one per process: a second MirroredStrategy's collectives reuse the first one's
        # instance keys (measured: "Shape mismatch in the collective instance" on CPUs)
        if "mirrored" not in _strategies:
            _strategies["mirrored"] = tf.distribute.MirroredStrategy(devices=_replica_devices())
        return _strategies["mirrored"]
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if config:
            try:
                json.loads(config)
            except json.JSONDecodeError as e:
                raise Hw1Error(f"TF_CONFIG is not valid JSON ({e})") from None
        else:
            logging.warning("multi_worker without TF_CONFIG: running as a single worker")
        global _multi_worker
        if _multi_worker is None:  # one per process: its collectives are set up at start-up
            _multi_worker = tf.distribute.MultiWorkerMirroredStrategy()
        return _multi_worker
    raise Hw1Error(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def is_chief() -> bool:
    """Whether this process writes the results: always, except a multi-worker task other than
    the chief (TF_CONFIG's "chief" task, else "worker" 0, as tf.distribute decides)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError:
        return True  # make_strategy reports the bad TF_CONFIG
    task = config.get("task") or {}
    if not task:
        return True
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    if has_chief:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def in_multi_worker_mode(strategy) -> bool:
    """Whether `strategy` spans several worker processes (Keras' own test, keras 3.15)."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def execution_settings(strategy, jit_compile: bool,
                       steps_per_execution: int) -> tuple[bool, int]:
    """(jit_compile, steps_per_execution) that work under `strategy`."""
    if strategy.num_replicas_in_sync > 1 and (jit_compile or steps_per_execution > 1):
        logging.info("%d replicas: using steps_per_execution=1 and no XLA (Keras 3 cannot do "
                     "either across replicas); per-iteration history stays exact",
                     strategy.num_replicas_in_sync)
        return False, 1
    return jit_compile, steps_per_execution


def broadcast_from_chief(strategy, data: bytes | None) -> bytes:
    """The chief's `data`, on every worker of `strategy` (what the others pass is ignored):
    how the workers take one decision from what only the chief has on its disk (a finished
    run's record, a backup to resume). Two all-reduces (SUM) in which only the chief's values
    are non-zero: the length, then the bytes as float32 (CPU collectives segfault on int64). Every worker must call it at the same
    point of its program, as every collective."""
    import numpy as np
    import tensorflow as tf

    chief = is_chief()
    payload = np.frombuffer(data or b"", np.uint8) if chief else np.zeros(0, np.uint8)

    def all_reduce(values: np.ndarray) -> np.ndarray:
        local = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(values, tf.float32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None).numpy()

    # float32 sums of one non-zero term: exact for bytes, and for lengths below 2**24
    length = int(all_reduce(np.asarray([payload.size if chief else 0], np.float32))[0])
    if length >= 2 ** 24:
        raise Hw1Error(f"{length} bytes to share between workers: more than 16 MB")
    buffer = np.zeros(max(length, 1), np.float32)
    if chief:
        buffer[:length] = payload
    return all_reduce(buffer)[:length].astype(np.uint8).tobytes()
