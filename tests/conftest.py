"""Runs first: splits the CPU into 2 logical devices before TensorFlow initialises, so the
multi-replica (MirroredStrategy) tests can run on a machine without GPUs. Single-device code
keeps using the default strategy on CPU:0."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hw1_tf import console, distribute  # noqa: E402

# TensorFlow's import and device notices filtered as in the binaries (console): each xdist
# worker imports it, and its C++ lines would otherwise land after pytest's summary line
console.import_tensorflow()
with console.quiet_startup():
    distribute.configure_logical_cpus(2)
