"""The absl flags every binary shares, and the entry helper that turns errors into one line.

A binary in bin/ defines only its own flags, then calls
    cli.main(lambda: experiment.run(cli.config_from_flags(experiment.Config)))
Every dataclass field of the config whose name is a defined flag takes that flag's value, so a
config and its flags cannot drift apart (the remaining fields keep their defaults).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

from absl import app, flags

from hw1_tf import distribute
from hw1_tf.errors import Hw1Error

FLAGS = flags.FLAGS

flags.DEFINE_string("dataset", None, "mnist | fashion_mnist | cifar10 | digits (experiment "
                    "default when unset).")
flags.DEFINE_string("data_dir", None, "Folder with <dataset>/ IDX files and tfds/ "
                    "(default $HW1_DATA_DIR or <project>/data).")
flags.DEFINE_integer("batch_size", None, "Global batch size (split across replicas).",
                     lower_bound=1)
flags.DEFINE_integer("epochs", None, "Training epochs per run.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed for initialisation, data order and subsets.")
flags.DEFINE_float("learning_rate", None, "Optimizer learning rate.", lower_bound=0.0)
flags.DEFINE_enum("optimizer", None, ["adam", "sgd", "rmsprop", "adagrad"], "Optimizer.")
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_string("output_dir", None, "Root of results/, figures/ and saved_models/ "
                    "(default: the project root).")
flags.DEFINE_string("saved_models_dir", None, "Where SavedModels go (default "
                    "<output_dir>/saved_models).")
flags.DEFINE_boolean("jit_compile", True, "XLA-compile the train step (one device only).")
flags.DEFINE_integer("steps_per_execution", 64, "Train steps per tf.function call (one device "
                     "only); the per-iteration history stays exact.", lower_bound=1)
flags.DEFINE_enum("objective", None, ["loss", "grad_norm"], "What training minimises at the "
                  "start: the loss, or the squared gradient norm ||grad L||^2.")
flags.DEFINE_float("switch_grad_norm_below", None, "Switch from loss to gradient-norm "
                   "minimisation once ||grad L|| falls below this.", lower_bound=0.0)
flags.DEFINE_integer("switch_after_epochs", None, "Switch from loss to gradient-norm "
                     "minimisation after this many epochs.", lower_bound=0)
flags.DEFINE_float("stop_grad_norm_below", None, "Stop once ||grad L|| falls below this (while "
                   "minimising the norm when a switch is set).", lower_bound=0.0)
flags.DEFINE_float("grad_norm_learning_rate", None, "Learning rate after the switch to "
                   "gradient-norm minimisation (default: --learning_rate).", lower_bound=0.0)
flags.DEFINE_integer("logical_cpus", 1, "Split the CPU into this many logical devices, so "
                     "--strategy=mirrored has several replicas without GPUs.", lower_bound=1)
flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 bar, 2 line per epoch.",
                     lower_bound=0, upper_bound=2)


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """List flags arrive as lists of strings; a `tuple[int, ...]`/`tuple[float, ...]` field
    gets numbers (a bad item is a usage error: one line, exit 2)."""
    if not isinstance(value, list):
        return value
    kind = str(field.type)
    cast = int if "tuple[int" in kind else float if "tuple[float" in kind else str
    try:
        return tuple(cast(v) for v in value)
    except ValueError:
        raise app.UsageError(f"--{field.name} must be a comma-separated list of "
                             f"{cast.__name__}s, got {','.join(value)}") from None


def config_from_flags(config_cls: type, **overrides: Any):
    """Builds `config_cls` from every flag sharing a field's name whose value is not None
    (the user's, or the flag's own default); `overrides` win."""
    values = {}
    for field in dataclasses.fields(config_cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.name in FLAGS and FLAGS[field.name].value is not None:
            values[field.name] = _coerce(field, FLAGS[field.name].value)
    return config_cls(**values)


def _usage_error(message: str) -> None:
    print(f"usage error: {message} (see --helpshort)", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _usage_error(str(e))


def main(work: Callable[[], Any]) -> None:
    """Runs `work` as an absl program. A bad flag -> one line, exit 2; Hw1Error -> one line,
    exit 1; never a traceback for either."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def _main(argv):
        if len(argv) > 1:
            _usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
        import tensorflow as tf

        tf.get_logger().setLevel("WARNING")  # TF's INFO chatter (SavedModel export, collectives)
        if FLAGS.logical_cpus > 1:
            distribute.configure_logical_cpus(FLAGS.logical_cpus)
        try:
            work()
        except app.UsageError as e:
            _usage_error(str(e))
        except Hw1Error as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("error: interrupted; files already written are intact", file=sys.stderr)
            sys.exit(130)

    app.run(_main, flags_parser=_parse_flags)
