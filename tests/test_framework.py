"""The experiment framework: flags generated from each registered Config (precedence, help,
only the experiment's own flags), config validation, arrays in the store, run callbacks, the
public Keras API of the training core, the binaries' environment and a quiet console."""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from hw1_tf import callbacks, cli, config, console, experiments, store, training
from hw1_tf.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _parse(config_cls, argv):
    values = flags.FlagValues()
    cli.define_flags(config_cls, values)
    values(["prog", *argv])
    return cli.config_from_flags(config_cls, values)


def _changed_value(config_cls, field):
    """A valid value of `field` other than its default."""
    kind = config.field_kind(config_cls, field)
    meta, default = field.metadata, field.default
    if kind.is_tuple and default and len(set(default)) > 1:  # same length, other order
        value = tuple(reversed(default))
        if meta.get("increasing"):  # a range: the same one, wider
            value = tuple(v * 2 for v in default)
        return value, ",".join(map(str, value))
    if kind.optional and default is not None and kind.base is str:
        return None, "none"
    if meta.get("choices"):
        options = [c for c in meta["choices"] if (c,) != default and c != default]
        value = options[0]
        return ((value,) if kind.is_tuple else value), str(value)
    if kind.base is bool:
        return (not default), ("true" if not default else "false")
    if kind.base in (int, float):
        lower, upper = meta.get("lower"), meta.get("upper")
        base = default[0] if kind.is_tuple and default else default
        if base is None:
            value = kind.base(max(lower or 0, 1))
        else:
            value = kind.base(base * 2 if kind.base is float and base else base + 1)
            if upper is not None and value > upper:
                value = kind.base(lower if lower is not None else base - 1)
        return ((value,) if kind.is_tuple else value), str(value)
    return ("x",) if kind.is_tuple else "x", "x"


@pytest.mark.parametrize("name", experiments.names())
def test_config_default_lt_flagfile_lt_command_line(name, tmp_path):
    config_cls = experiments.get(name).Config
    # nothing given: exactly the Config's defaults (the bug was a shared --verbose=1 beating
    # simulate_function's verbose=0)
    assert _parse(config_cls, []) == config_cls()
    for field in dataclasses.fields(config_cls):
        value, text = _changed_value(config_cls, field)
        flagfile = tmp_path / f"{field.name}.flags"
        flagfile.write_text(f"--{field.name}={text}\n")
        from_file = _parse(config_cls, [f"--flagfile={flagfile}"])
        assert getattr(from_file, field.name) == value, field.name
        assert getattr(from_file, field.name) != field.default
        back = field.default if not isinstance(field.default, tuple) else field.default
        back_text = ",".join(map(str, back)) if isinstance(back, tuple) else (
            "none" if back is None else str(back).lower() if isinstance(back, bool) else str(back))
        if back is None and config.field_kind(config_cls, field).base is not str and \
                not config.field_kind(config_cls, field).is_tuple:
            continue  # a numeric flag cannot be reset to None from the command line
        from_cli = _parse(config_cls, [f"--flagfile={flagfile}", f"--{field.name}={back_text}"])
        assert getattr(from_cli, field.name) == field.default, field.name


@pytest.mark.parametrize("name", experiments.names())
def test_a_binary_offers_exactly_its_configs_fields(name):
    config_cls = experiments.get(name).Config
    values = flags.FlagValues()
    cli.define_flags(config_cls, values)
    assert set(values) == {f.name for f in dataclasses.fields(config_cls)}
    for field in dataclasses.fields(config_cls):
        assert len(field.metadata["help"]) > 10, field.name
    if name == "scratch":  # it trains with its own Solver: no core knobs
        assert not {"strategy", "objective", "steps_per_execution"} & set(values)


def test_bad_values_are_config_errors():
    sim = experiments.get("simulate_function").Config
    with pytest.raises(ConfigError, match="--functions"):
        sim(functions=("sinc", "nope"))
    with pytest.raises(ConfigError, match="--depths"):
        sim(depths=(0,))
    with pytest.raises(flags.IllegalFlagValueError):
        _parse(sim, ["--epochs=0"])
    with pytest.raises(flags.IllegalFlagValueError):
        _parse(sim, ["--optimizer=lbfgs"])


def test_store_keeps_large_arrays_in_npz_named_in_results(tmp_path):
    paths = store.Paths.create(tmp_path)
    big = np.arange(1000, dtype=np.float32)
    runs = {"a": {"curve": big, "small": np.arange(3), "nested": [{"w": big * 2}]}}
    json_path = store.save_results(paths, "exp", {"k": 1}, runs, grid=np.eye(20))
    text = json_path.read_text()
    assert len(text) < 2000 and '"$array"' in text and "999" not in text
    loaded = store.load_results(paths, "exp")
    np.testing.assert_array_equal(loaded["runs"]["a"]["curve"], big)
    np.testing.assert_array_equal(loaded["runs"]["a"]["nested"][0]["w"], big * 2)
    np.testing.assert_array_equal(loaded["grid"], np.eye(20))
    assert loaded["runs"]["a"]["small"] == [0, 1, 2]
    first = loaded["arrays_file"]
    store.save_results(paths, "exp", {"k": 2}, {"a": {"curve": big + 1}})
    npz = sorted(p.name for p in paths.results_dir("exp").glob("arrays-*.npz"))
    assert len(npz) == 1 and npz[0] != first  # the replaced arrays are gone, the new named
    np.testing.assert_array_equal(store.load_results(paths, "exp")["runs"]["a"]["curve"],
                                  big + 1)


def test_store_names_a_missing_arrays_file(tmp_path):
    paths = store.Paths.create(tmp_path)
    store.save_results(paths, "exp", {}, {"a": np.zeros(500)})
    for p in paths.results_dir("exp").glob("arrays-*.npz"):
        p.unlink()
    with pytest.raises(store.ModelNotFoundError, match="arrays file missing"):
        store.load_results(paths, "exp")


def _tiny_classifier_run(cbs, tmp_path=None, epochs=4):
    rng = np.random.RandomState(0)
    x = rng.randn(96, 5).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    settings = training.TrainSettings(epochs=epochs, batch_size=16, steps_per_execution=4,
                                      verbose=0, seed=1)
    model = training.build_instrumented(
        lambda: keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                                  keras.layers.Dense(2)]), 2, settings)
    history = training.train(model, (x, y), settings, test_xy=(x, y), callbacks=cbs,
                             tensorboard_dir=tmp_path)
    return model, history, (x, y)


def test_weight_snapshots_every_k_epochs():
    snaps = callbacks.WeightSnapshots(every_epochs=2, layer=1)
    model, _, _ = _tiny_classifier_run([snaps], epochs=5)
    arrays = snaps.arrays()
    assert list(arrays["epochs"]) == [0, 2, 4, 5]
    assert arrays["whole"].shape == (4, model.network.count_params())
    assert arrays["layer"].shape == (4, 4 * 2 + 2)
    final = np.concatenate([w.numpy().ravel() for w in model.network.trainable_weights])
    np.testing.assert_array_equal(arrays["whole"][-1], final)
    assert not np.allclose(arrays["whole"][0], arrays["whole"][-1])


def test_tensorboard_gets_every_iteration_and_epoch_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, history, _ = _tiny_classifier_run([], tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    for tag in ("iteration/loss", "iteration/grad_norm", "iteration/objective",
                "epoch/train_loss", "epoch/test_accuracy"):
        assert tag in tags, tags
    loss = [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("iteration/loss")]
    np.testing.assert_allclose(loss, history["iteration"]["loss"], rtol=1e-6)
    assert len(events.Tensors("epoch/train_loss")) == 4


def test_unwritable_tensorboard_dir_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(training.Hw1Error, match="cannot write TensorBoard logs"):
        _tiny_classifier_run([], blocker / "tb")


def test_core_uses_its_own_metrics_and_exact_mean_loss():
    """Public Keras API only: our loss tracker and metrics are the model's metrics (Keras' own
    compile-time tracker is not reported), and the evaluated loss is the exact per-example
    mean, computed here independently."""
    model, history, (x, y) = _tiny_classifier_run([])
    assert [m.name for m in model.metrics] == ["loss", "accuracy"]
    assert sorted(history["epoch"]) == ["test_accuracy", "test_loss", "train_accuracy",
                                        "train_loss"]
    logits = model.network(x).numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -logp[np.arange(len(y)), y].mean()
    got = model.evaluate(x, y, batch_size=40, verbose=0, return_dict=True)
    np.testing.assert_allclose(got["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(history["epoch"]["test_loss"][-1], expected, rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], np.mean(logits.argmax(1) == y), rtol=1e-6)


def test_console_drops_notices_keeps_errors():
    assert console.is_notice("I0000 00:00:1 port.cc:153] oneDNN custom operations are on.")
    assert console.is_notice("E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit: x",
                             driver=False)
    assert not console.is_notice("E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit: x",
                                 driver=True)
    assert not console.is_notice("E0000 00:00:1 something.cc:1] a real error")


def test_binary_help_with_system_python_is_quiet_and_complete():
    """As the README writes it (the shebang's python3, not .venv's): the binary finds the
    project's environment, offers its own flags only, and prints no TensorFlow notices."""
    python = shutil.which("python3") or sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                             "VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.run([python, "bin/run_scratch", "--helpshort"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and not proc.stderr.strip(), proc.stderr[-1000:]  # absl: help
    assert "--overfit_samples" in proc.stdout and "--strategy" not in proc.stdout
    assert "cuInit" not in proc.stderr and "oneDNN" not in proc.stderr, proc.stderr


def test_run_quiet_start_shows_no_notices(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("--functions=sinc\n--depths=1\n--target_params=40\n--n_train=32\n"
                        "--n_test=20\n--epochs=1\n--batch_size=16\n--nosave_models\n")
    proc = subprocess.run([sys.executable, "bin/run_simulate_function", f"--flagfile={flagfile}",
                           f"--output_dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for notice in ("cuInit", "oneDNN", "absl::InitializeLog", "rebuild TensorFlow"):
        assert notice not in proc.stderr, proc.stderr[:2000]
    assert (tmp_path / "results/simulate_function/results.json").is_file()  # the flag file's run
    assert (tmp_path / "figures/simulate_function/prediction_sinc.png").is_file()
