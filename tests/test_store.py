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


def test_float64_is_stored_exactly_and_float32_compactly_whatever_the_length(tmp_path):
    """The critical-point study's end points are float64: with 10 runs (the quick profile) the
    losses stay in results.json, with 100 they go to the .npz; both must come back bit for bit.
    float32 quantities stay compact: the shortest decimal that reads back as the same float32."""
    from hw1_tf import ledger

    rng = np.random.RandomState(0)
    paths = store.Paths.create(tmp_path)
    for runs in (10, 100):
        loss = np.exp(rng.uniform(-30, 0, runs))  # float64 end-point losses, 1e-13 .. 1
        grad_norm = [float(g) for g in rng.uniform(1e-9, 1e-3, runs)]  # Python floats: float64
        history = rng.randn(runs).astype(np.float32)
        config = {"runs": runs, "tolerance": 1e-6, "learning_rate": 1 / 3}
        ledger.Ledger("m", config, paths).write(
            {"r": {"loss": history}},
            end_points={"loss": loss, "grad_norm": grad_norm, "best": loss.min()})
        back = store.load_results(paths, "m")
        end = back["end_points"]
        assert np.asarray(end["loss"]).dtype == np.float64
        np.testing.assert_array_equal(end["loss"], loss)  # exact, in the JSON or the .npz
        assert end["grad_norm"] == grad_norm and end["best"] == loss.min()
        assert back["config"]["learning_rate"] == 1 / 3
        np.testing.assert_array_equal(np.asarray(back["runs"]["r"]["loss"], np.float32), history)
    text = (tmp_path / "results/m/results.json").read_text()
    small = store.to_jsonable(history[:10])
    assert all(len(repr(v).lstrip("-").replace(".", "").lstrip("0").split("e")[0]) <= 9
               for v in small)  # float32: at most 9 significant digits
    assert "arrays_file" in json.loads(text)  # the 100-run arrays went to the .npz
