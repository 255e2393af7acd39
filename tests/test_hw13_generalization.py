"""HW1-3 generalization: corruptions of the data layer, the random-label, capacity and flatness
experiments on sklearn digits (seconds each), and the interpolation between SavedModels checked
against the SavedModels' own `serve` and a numpy forward pass."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from hw1_tf import data, distribute, landscape, models, store
from hw1_tf.config import ConfigError
from hw1_tf.errors import Hw1Error, ModelNotFoundError
from hw1_tf.experiments import common, flatness

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", epochs=2, verbose=0, steps_per_execution=8, tensorboard=False,
            jit_compile=False)  # XLA compiles cost more than these tiny runs


def _flat_config(tmp_path, **kw):
    values = dict(TINY, hidden=(16,), batch_sizes=(16, 256), num_alphas=7,
                  output_dir=str(tmp_path))
    values.update(kw)
    return flatness.Config(**values)


def _train_spec(tmp_path, spec, name, batch_size=32, seed=0):
    splits = data.load("digits")
    settings = common.settings_from(flatness.Config(**TINY), batch_size=batch_size, seed=seed)
    paths = store.Paths.create(tmp_path)
    model, record = common.train_run("flatness", name, spec, splits, settings,
                                     strategy=tf.distribute.get_strategy(), paths=paths,
                                     tensorboard=False)
    return model, Path(record["saved_model"]), splits


def _export_untrained(spec, path):
    """A SavedModel of `spec` at its initial weights (shapes are all some tests need)."""
    net = models.build(spec, (8, 8, 1), 10)
    return store.export_model(net, path, keras_file=False)


# ------------------------------------------------------------------------------- flatness


@pytest.fixture(scope="module")
def flat_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flat")
    return tmp, flatness.run(_flat_config(tmp))


def test_flatness_endpoints_equal_the_saved_models_own_losses(flat_results):
    _, results = flat_results
    (line,) = results["lines"].values()
    alphas = np.asarray(line["alphas"])
    assert alphas[0] == -1 and alphas[-1] == 2 and {0.0, 1.0} <= set(alphas.tolist())
    for alpha, run in ((0.0, line["first"]), (1.0, line["second"])):
        own = results["runs"][run]["own"]  # through the loaded SavedModel's serve
        i = int(np.flatnonzero(alphas == alpha)[0])
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(line[key][i], own[key], rtol=1e-4, atol=1e-6)
    # the two models differ, so the curve is not flat
    assert abs(line["train_loss"][2] - line["train_loss"][4]) > 1e-3
    assert Path(results["figures"][0]).is_file()


def test_flatness_reuses_saved_models_and_retrain_forces(flat_results):
    tmp, first = flat_results
    again = flatness.run(_flat_config(tmp))
    assert all(r["reused"] for r in again["runs"].values())
    (a,), (b,) = first["lines"].values(), again["lines"].values()
    np.testing.assert_array_equal(a["test_loss"], b["test_loss"])
    assert all(r["training"] is not None for r in again["runs"].values())  # kept beside it
    retrained = flatness.run(_flat_config(tmp, batch_sizes=(16,), learning_rates=(1e-3, 3e-3),
                                          retrain=True))
    assert not any(r["reused"] for r in retrained["runs"].values())
    (line,) = retrained["lines"].values()
    assert line["knob"] == "learning_rate"


@pytest.fixture(scope="module")
def bn_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bn")
    spec = models.ModelSpec("m", "dense", hidden=(12, 8), batch_norm=True)
    model, p1, splits = _train_spec(tmp, spec, "a", batch_size=16, seed=1)
    _, p2, _ = _train_spec(tmp, spec, "b", batch_size=128, seed=2)
    return (landscape.load_endpoint(p1), landscape.load_endpoint(p2), splits,
            model.network.predict(splits.x_test, verbose=0))


def test_loaded_saved_model_predicts_what_the_saved_model_predicted(bn_pair):
    endpoint, _, splits, expected = bn_pair
    np.testing.assert_allclose(landscape.serve_predictions(endpoint, splits.x_test), expected,
                               rtol=1e-5, atol=1e-5)
    # and the dense-net reading of its variables (BatchNorm with moving averages) does too
    landscape.check_reading(endpoint, splits.x_test)
    assert [layer.kind for layer in endpoint.layers] == ["dense", "batch_norm"] * 2 + ["dense"]


def test_vectorised_line_equals_one_alpha_at_a_time_through_serve(bn_pair):
    first, second, splits, _ = bn_pair
    alphas = np.array([-0.5, 0.0, 0.3, 1.0, 1.7])
    curves = landscape.evaluate_line(first, second, alphas, {"test": (splits.x_test,
                                                                      splits.y_test)},
                                     batch_size=100, alphas_per_pass=2,
                                     recompute_batch_norm=False, jit_compile=False)
    for i, alpha in enumerate(alphas):
        theta = [(1 - alpha) * a + alpha * b for a, b in zip(first.arrays, second.arrays)]
        loss, acc = landscape.evaluate_serve(first, splits.x_test, splits.y_test, theta)
        np.testing.assert_allclose(curves["test"]["loss"][i], loss, rtol=1e-4)
        # argmax may flip only where serve's two top logits (nearly) tie
        top2 = np.sort(landscape.serve_predictions(first, splits.x_test, theta), -1)[:, -2:]
        ties = int((top2[:, 1] - top2[:, 0] < 1e-4).sum())
        assert abs(curves["test"]["accuracy"][i] - acc) <= (ties + 1e-3) / len(splits.y_test)
    xla = landscape.evaluate_line(first, second, alphas, {"test": (splits.x_test,
                                                                   splits.y_test)},
                                  batch_size=100, recompute_batch_norm=False, jit_compile=True)
    np.testing.assert_allclose(xla["test"]["loss"], curves["test"]["loss"], rtol=1e-4)
    # serve's variables were restored after the loop
    np.testing.assert_allclose(first.variables[0].numpy(), first.arrays[0])


def test_vectorised_line_is_the_same_under_mirrored_strategy(bn_pair):
    first, second, splits, _ = bn_pair
    split = {"train": (splits.x_train, splits.y_train)}
    alphas = np.linspace(-1, 2, 4)
    kw = dict(batch_size=300, batch_norm_x=splits.x_train, jit_compile=False)
    one = landscape.evaluate_line(first, second, alphas, split, **kw)
    two = landscape.evaluate_line(first, second, alphas, split,
                                  strategy=distribute.make_strategy("mirrored"), **kw)
    np.testing.assert_allclose(two["train"]["loss"], one["train"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(two["train"]["accuracy"], one["train"]["accuracy"], atol=1e-6)


def _numpy_bn_loss(theta, layers, x, y):
    """Cross-entropy of the dense BN net at weights theta, BatchNorm with the population
    statistics of x itself: an independent float64 forward pass."""
    h = x.reshape(len(x), -1).astype(np.float64)
    for j, layer in enumerate(layers):
        w = {r: theta[i].astype(np.float64) for r, i in layer.index.items()}
        if layer.kind == "dense":
            h = h @ w["kernel"] + w["bias"]
        else:
            h = (h - h.mean(0)) / np.sqrt(h.var(0) + landscape.BN_EPSILON)
            h = np.maximum(h * w["gamma"] + w["beta"], 0)
    h = h - h.max(1, keepdims=True)
    logp = h - np.log(np.exp(h).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


def test_batch_norm_statistics_are_recomputed_at_each_alpha(bn_pair):
    first, second, splits, _ = bn_pair
    x, y = splits.x_train, splits.y_train
    alphas = np.array([0.0, 0.5, 1.5])
    curves = landscape.evaluate_line(first, second, alphas, {"train": (x, y)}, batch_size=200,
                                     batch_norm_x=x, jit_compile=False)
    stale = landscape.evaluate_line(first, second, alphas, {"train": (x, y)}, batch_size=200,
                                    recompute_batch_norm=False, jit_compile=False)
    for i, alpha in enumerate(alphas):
        theta = [(1 - alpha) * a + alpha * b for a, b in zip(first.arrays, second.arrays)]
        np.testing.assert_allclose(curves["train"]["loss"][i],
                                   _numpy_bn_loss(theta, first.layers, x, y), rtol=2e-4)
    assert abs(stale["train"]["loss"][1] - curves["train"]["loss"][1]) > 1e-4


def test_incompatible_saved_models_give_one_error_naming_the_path(tmp_path, bn_pair):
    other = models.ModelSpec("m", "dense", hidden=(12, 9), batch_norm=True)
    path = _export_untrained(other, tmp_path / "other")
    first, _, splits, _ = bn_pair
    with pytest.raises(landscape.IncompatibleModelsError, match=str(path)) as e:
        landscape.evaluate_line(first, landscape.load_endpoint(path), [0.5],
                                {"test": (splits.x_test, splits.y_test)})
    assert "\n" not in str(e.value)


def test_flatness_missing_or_mismatched_saved_model_writes_nothing(tmp_path):
    config = _flat_config(tmp_path, train_missing=False)
    with pytest.raises(ModelNotFoundError, match="saved_models/flatness/digits_bs16"):
        flatness.run(config)
    # a SavedModel of another width where this config's first run would be reused
    target = store.Paths.create(tmp_path).saved_model("flatness", flatness.run_name(
        config, 16, config.learning_rate))
    _export_untrained(models.ModelSpec("m", "dense", hidden=(5,)), target)
    with pytest.raises(landscape.IncompatibleModelsError, match=str(target)):
        flatness.run(_flat_config(tmp_path))
    assert not (tmp_path / "results").exists() and not (tmp_path / "figures").exists()


def test_flatness_config_rejects_a_backwards_range():
    with pytest.raises(ConfigError, match="alpha_max"):
        flatness.Config(alpha_min=2.0, alpha_max=-1.0)
    with pytest.raises(ConfigError, match="two training approaches"):
        flatness.Config(batch_sizes=(64,))


def test_run_flatness_binary_missing_model_is_one_line_exit_1(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "run_flatness"), "--dataset=digits",
         "--notrain_missing", f"--output_dir={tmp_path}"], env=env, capture_output=True,
        text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("error: ") and "saved_models/flatness/"\
        in lines[-1], proc.stderr[-800:]
    assert not (tmp_path / "results").exists()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "run_flatness"), "--alpha_min=2", "--alpha_max=-1",
         f"--output_dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "alpha_max" in proc.stderr
