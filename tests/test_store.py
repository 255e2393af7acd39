"""Store: atomic JSON, SavedModel export whose variables can be assigned and differentiated."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from hw1_tf import store
from hw1_tf.errors import ModelNotFoundError


def test_write_json_is_atomic_and_numpy_safe(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    store.write_json(path, {"a": np.float32(0.5), "b": np.arange(3), "c": float("nan")})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": None}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store.os, "replace", broken)
    with pytest.raises(RuntimeError):
        store.write_json(path, {"new": 1})
    assert json.loads(path.read_text())["a"] == 0.5  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp left behind


def test_read_json_errors_are_one_line(tmp_path):
    with pytest.raises(ModelNotFoundError, match="run the experiment first"):
        store.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Exception, match="not valid JSON"):
        store.read_json(tmp_path / "bad.json")


def test_exported_saved_model_variables_drive_serve(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])
    path = store.export_model(model, tmp_path / "m")
    assert (tmp_path / "m.keras").is_file()
    loaded = store.load_saved_model(path)
    x = tf.constant(np.random.RandomState(0).randn(5, 3), tf.float32)
    np.testing.assert_allclose(loaded.serve(x), model(x), rtol=1e-6)
    variables = loaded.trainable_variables
    assert [tuple(v.shape) for v in variables] == [tuple(w.shape) for w in model.weights]
    # assigning the variables changes serve's output, exactly as the Keras model's would
    variables[2].assign(variables[2] * 2.0)
    model.weights[2].assign(model.weights[2] * 2.0)
    np.testing.assert_allclose(loaded.serve(x), model(x), rtol=1e-6)
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(loaded.serve(x) ** 2)
    grads = tape.gradient(out, variables)
    assert all(g is not None for g in grads)


def test_export_replaces_existing_model(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    store.export_model(model, tmp_path / "m")
    store.export_model(model, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.keras"]


def test_missing_saved_model_is_clear(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no SavedModel"):
        store.load_saved_model(tmp_path / "nothing")
