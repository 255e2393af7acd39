"""The binaries' entry: flags generated from an experiment's Config, and errors as one line.

A binary in bin/ is only
    cli.run_experiment("<name>")
which defines one flag per field of the experiment's Config (hw1_tf.config: name, type, default,
help and bounds all come from the field, so a flag and its config cannot drift apart), parses
the command line (config default < flag file < command line, as absl reads them in order),
applies the process-level settings before TensorFlow starts, and runs the experiment.

Errors never show a traceback: a bad flag or config value is one `usage error:` line and exit 2;
an `Hw1Error` (missing data, missing model, NaN loss ...) is one `error:` line and exit 1.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

from absl import app, flags

from hw1_tf import config as config_lib
from hw1_tf import console
from hw1_tf.errors import Hw1Error, filesystem_error

FLAGS = flags.FLAGS


def _list_default(value) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


def define_flags(config_cls: type, flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines one flag per field of `config_cls` on `flag_values`."""
    for field in dataclasses.fields(config_cls):
        kind = config_lib.field_kind(config_cls, field)
        meta = field.metadata
        if "help" not in meta:
            raise TypeError(f"{config_cls.__name__}.{field.name}: declare it with "
                            "hw1_tf.config.option(default, help)")
        default, help_text = field.default, meta["help"]
        # flags of the program's main module are what --helpshort lists
        common = {"flag_values": flag_values, "module_name": sys.argv[0]}
        if kind.is_tuple:
            flags.DEFINE_list(field.name, _list_default(default), help_text, **common)
        elif kind.base is bool:
            flags.DEFINE_boolean(field.name, default, help_text, **common)
        elif kind.base in (int, float):
            define = flags.DEFINE_integer if kind.base is int else flags.DEFINE_float
            define(field.name, default, help_text, lower_bound=meta.get("lower"),
                   upper_bound=meta.get("upper"), **common)
        elif meta.get("choices") and not kind.optional:
            flags.DEFINE_enum(field.name, default, [str(c) for c in meta["choices"]],
                              help_text, **common)
        else:
            flags.DEFINE_string(field.name, default, help_text, **common)


def _coerce(config_cls: type, field: dataclasses.Field, value: Any) -> Any:
    """Flag values to the field's type: lists of strings to tuples of numbers (a bad item is a
    usage error), '' / 'none' to None for optional fields."""
    kind = config_lib.field_kind(config_cls, field)
    if value is None:
        return None
    if kind.optional and isinstance(value, str) and value.lower() in ("", "none"):
        return None
    if not kind.is_tuple:
        return value
    cast = kind.base if kind.base in (int, float, str) else str
    try:
        return tuple(cast(v) for v in value)
    except ValueError:
        raise app.UsageError(f"--{field.name} must be a comma-separated list of "
                             f"{cast.__name__}s, got {','.join(value)}") from None


def config_from_flags(config_cls: type, flag_values: flags.FlagValues = FLAGS,
                      **overrides: Any):
    """Builds `config_cls` from its parsed flags; `overrides` win."""
    values = {}
    for field in dataclasses.fields(config_cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        else:
            values[field.name] = _coerce(config_cls, field, flag_values[field.name].value)
    config = config_cls(**values)
    config_lib.validate(config)  # the tools' configs too (RunConfig's do it on creation)
    return config


def _usage_error(message: str) -> None:
    print(f"usage error: {message} (see --helpshort)", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _usage_error(str(e))


def guarded(work: Callable[[], Any]) -> Any:
    """`work()`, its errors as one line on stderr and SystemExit: a usage or config error exit
    2, an Hw1Error or any filesystem error (OSError: permission, full disk ...) exit 1, an
    interrupt exit 130."""
    try:
        return work()
    except (app.UsageError, config_lib.ConfigError) as e:
        _usage_error(str(e))
    except Hw1Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # one the write sites did not name (they raise FileSystemError)
        print(f"error: {filesystem_error(e.filename or 'a file', e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; files already written are intact", file=sys.stderr)
        sys.exit(130)


def main(work: Callable[[], Any], *, logical_cpus: Callable[[], int] = lambda: 1,
         strategy: Callable[[], str | None] = lambda: None,
         arguments: Callable[[list[str]], None] | None = None,
         tensorflow: bool = True) -> None:
    """Runs `work` as an absl program with one-line errors (see the module doc).

    `logical_cpus()` (read after parsing) splits the CPU into that many devices before
    TensorFlow initialises, so a mirrored strategy has replicas without GPUs. `arguments`
    takes the positional arguments (none are allowed without it). A command that needs no
    TensorFlow (`tensorflow=False`) starts without it, in well under a second, not in ~5 s,
    unless its config asks for a strategy or several logical CPUs."""

    def _main(argv):
        if arguments is not None:
            arguments(argv[1:])
        elif len(argv) > 1:
            _usage_error(f"unexpected arguments: {' '.join(argv[1:])}")

        def start_and_work():
            if tensorflow or strategy() not in (None, "default") or logical_cpus() > 1:
                console.start_tensorflow(logical_cpus(),
                                         multi_worker=strategy() == "multi_worker")
            work()

        guarded(start_and_work)

    app.run(_main, flags_parser=_parse_flags)


def invoke(config_cls: type, work: Callable[[Any], Any], argv: list[str]) -> int:
    """What a binary does with the flags `argv`, in this process (for tests and probes): its
    own flags (a fresh FlagValues, so binaries can follow each other), the config, `work`, and
    the exit code the binary would end with (0 on success), its errors printed as one line."""
    flag_values = flags.FlagValues()
    define_flags(config_cls, flag_values)
    try:
        try:
            rest = flag_values([sys.argv[0] if sys.argv else "hw1_tf", *argv])
        except flags.Error as e:
            _usage_error(str(e))
        if len(rest) > 1:
            _usage_error(f"unexpected arguments: {' '.join(rest[1:])}")
        guarded(lambda: work(config_from_flags(config_cls, flag_values)))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def invoke_experiment(name: str, argv: list[str]) -> int:
    """`bin/run_<name> argv` in this process: its exit code (see `invoke`)."""
    from hw1_tf import experiments, framework

    experiment = experiments.get(name)
    return invoke(experiment.Config, lambda config: framework.execute(
        experiment, framework.ExperimentContext(name, config)), argv)


def run_command(config_cls: type, work: Callable[[Any], Any],
                positional: tuple[str, ...] = (), *, tensorflow: bool = True) -> None:
    """The whole of a binary: flags from `config_cls`, then `work(config)`. `positional` names
    the fields that positional arguments may give instead of their flags, in order;
    `tensorflow=False`: the command starts no TensorFlow (compare_results and run_all, whose
    experiments start in processes of their own, import none; make_figures and make_report
    only through the experiment modules whose figures and sections they draw, quietly).
    TensorFlow starts after the flags are parsed: --help and a usage error take about a
    second, not ~5."""
    define_flags(config_cls)
    built, given = {}, {}

    def arguments(args: list[str]) -> None:
        if len(args) > len(positional):
            _usage_error(f"unexpected arguments: {' '.join(args[len(positional):])}")
        given.update(zip(positional, args))

    def config():
        if "config" not in built:
            built["config"] = config_from_flags(config_cls, **given)
        return built["config"]

    main(lambda: work(config()), logical_cpus=lambda: getattr(config(), "logical_cpus", 1),
         strategy=lambda: getattr(config(), "strategy", None), arguments=arguments,
         tensorflow=tensorflow)


def run_experiment(name: str) -> None:
    """The whole of `bin/run_<name>`: flags from the experiment's Config, then its work in an
    ExperimentContext made once here (hw1_tf.framework). TensorFlow starts when the
    experiment's module imports it (every built-in one does); one that imports none (a numpy
    experiment registered from elsewhere) starts in about a second."""
    from hw1_tf import experiments, framework

    experiment = experiments.get(name)  # quietly: the notices of TensorFlow's import dropped
    tensorflow = "tensorflow" in sys.modules
    if tensorflow:  # its devices listed quietly before absl's app.run, whose init callbacks
        console.import_tensorflow()  # would otherwise touch CUDA (cuInit) unfiltered
    run_command(experiment.Config, lambda config: framework.execute(
        experiment, framework.ExperimentContext(name, config)), tensorflow=tensorflow)
