"""A readable console: TensorFlow's start-up notices are dropped, its real errors are kept.

TensorFlow's C++ libraries log before their logging is initialised, so TF_CPP_MIN_LOG_LEVEL does
not hold them back: importing TensorFlow and creating its devices prints oneDNN and CPU-feature
notices, and on a machine without an NVIDIA driver `failed call to cuInit` as an *error*.
`start_tensorflow` captures file descriptor 2 while TensorFlow imports and initialises its
devices, then re-emits every line except those notices (a cuInit failure is dropped only when
no NVIDIA driver is installed; on a GPU machine it is a real error and is shown).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

_NOTICES = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
    "Could not find cuda drivers on your machine",
)
_started = False
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO/WARNING once initialised


def nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def is_notice(line: str, *, driver: bool | None = None) -> bool:
    """True for a start-up line that says nothing the user must act on."""
    if any(n in line for n in _NOTICES):
        return True
    if "failed call to cuInit" in line:
        return not (nvidia_driver_present() if driver is None else driver)
    return line.startswith("I0000 ")  # C++ INFO lines logged before logging is initialised


@contextlib.contextmanager
def quiet_startup():
    """Captures file descriptor 2 inside the block, then re-emits all but the notices."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines() if line.strip() and not is_notice(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def import_tensorflow() -> None:
    """Imports TensorFlow and lists its physical devices (where CUDA is initialised), quietly.
    Listing physical devices leaves the logical ones unconfigured, so `start_tensorflow` can
    still split the CPU afterwards."""
    with quiet_startup():
        import tensorflow as tf

        tf.config.list_physical_devices()


def start_tensorflow(logical_cpus: int = 1, multi_worker: bool = False) -> None:
    """Creates TensorFlow's devices (the CPU split into `logical_cpus` devices when above 1),
    printing only the start-up lines that matter. Idempotent. `multi_worker` creates the
    MultiWorkerMirroredStrategy first: its collectives can be set up only before the devices."""
    global _started
    if _started:
        return
    with quiet_startup():
        import tensorflow as tf

        from hw1_tf import distribute

        distribute.configure_logical_cpus(logical_cpus)
        if multi_worker:
            distribute.make_strategy("multi_worker")
        tf.config.list_logical_devices()  # initialises the devices (cuInit happens here)
    tf.get_logger().setLevel("WARNING")  # TF's Python INFO chatter (SavedModel export ...)
    _started = True
