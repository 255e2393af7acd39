"""The capacity experiment trained together: a narrow dense net zero-padded into a wider
population member trains exactly as it does alone through the core (history, weights; the
padding stays zero), the three training modes give the same numbers, and --dataset=fashion_mnist
runs end to end on a fake IDX folder (checked against a numpy forward pass)."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from hw1_tf import data, framework, idx, landscape, models, population, trainer, training
from hw1_tf.errors import Hw1Error
from hw1_tf.experiments import capacity

SPLITS = data.load("digits", train_size=192, test_size=64, seed=0)  # 6 batches of 32
WIDE = models.ModelSpec("wide", hidden=(16, 16))
BASE = dict(epochs=2, batch_size=32, learning_rate=0.01, verbose=0, optimizer="adam")
TINY = dict(dataset="digits", train_size=192, test_size=64, epochs=2, batch_size=32,
            learning_rate=0.01, verbose=0, steps_per_execution=8, tensorboard=False,
            jit_compile=False, widths=(2, 8, 32))


def test_activations_used_for_padding_are_silent_at_zero():
    """Why padding works: a padded unit's pre-activation is 0, so its output must be 0 (and
    relu'(0) = 0 in TF, so not even its incoming weights see a gradient from it)."""
    z = tf.zeros([3])
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = tf.nn.relu(z)
    assert np.all(out.numpy() == 0) and np.all(tape.gradient(out, z).numpy() == 0)
    narrow = models.ModelSpec("n", hidden=(4, 4), activation="sigmoid")
    with pytest.raises(Hw1Error, match="activation\\(0\\) = 0"):
        population.padded_initial_weights(narrow, models.ModelSpec("w", hidden=(8, 8),
                                                                   activation="sigmoid"),
                                          (8, 8, 1), 10, 0)
    with pytest.raises(Hw1Error, match="cannot be padded"):
        population.padded_initial_weights(models.ModelSpec("n", hidden=(32, 4)), WIDE,
                                          (8, 8, 1), 10, 0)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_padded_members_train_as_the_narrow_models_alone(activation):
    wide = models.ModelSpec("wide", hidden=(16, 16), activation=activation)
    narrow = [models.ModelSpec(f"n{w}", hidden=(w, w), activation=activation)
              for w in (2, 5, 16)]
    seeds = (0, 1, 2)  # each member its own seed: its own init and batch order
    shape = SPLITS.input_shape
    initial = [population.padded_initial_weights(s, wide, shape, 10, seed)
               for s, seed in zip(narrow, seeds)]
    settings = population.PopulationSettings(**BASE, steps_per_execution=6, jit_compile=False)
    pop, histories = population.train_population(wide, SPLITS, settings, seeds,
                                                 initial=initial)
    for i, (spec, seed) in enumerate(zip(narrow, seeds)):
        single = training.TrainSettings(**BASE, seed=seed, steps_per_execution=1,
                                        jit_compile=False)
        model = training.build_instrumented(lambda: models.build(spec, shape, 10), 10, single)
        alone = training.train(model, (SPLITS.x_train, SPLITS.y_train), single,
                               test_xy=(SPLITS.x_test, SPLITS.y_test))
        for key in ("loss", "grad_norm"):  # the padding adds nothing to the norm
            np.testing.assert_allclose(histories[i]["iteration"][key], alone["iteration"][key],
                                       rtol=1e-5)
        for key, values in alone["epoch"].items():
            np.testing.assert_allclose(histories[i]["epoch"][key], values, rtol=1e-5)
        weights = pop.member_weights(i)
        block = population.cropped_weights(weights, spec, shape, 10)
        for got, want in zip(block, model.network.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # every padded weight is still exactly zero
        for full, kept in zip(weights, block):
            padded = full.copy()
            padded[tuple(slice(0, n) for n in kept.shape)] = 0
            assert np.all(padded == 0), spec.name


def test_initial_weights_of_the_wrong_shape_are_refused():
    settings = population.PopulationSettings(**BASE, jit_compile=False)
    wrong = [population.initial_weights(models.ModelSpec("n", hidden=(4, 4)),
                                        SPLITS.input_shape, 10, 0)]
    with pytest.raises(Hw1Error, match="initial weights"):
        population.train_population(WIDE, SPLITS, settings, [0], initial=wrong)


def test_training_modes_give_the_same_runs(tmp_path):
    results = {}
    for mode in ("one_by_one", "population", "grouped"):
        results[mode] = framework.run(capacity, capacity.Config(
            **TINY, training_mode=mode, group_max_width=8, output_dir=str(tmp_path / mode)))
    assert results["one_by_one"]["training_mode"] == "one after another"
    assert "zero-padded to 32" in results["population"]["training_mode"]
    assert "zero-padded to 8" in results["grouped"]["training_mode"] and \
        "one after another (widths 32)" in results["grouped"]["training_mode"]
    assert results["grouped"]["training_mode_name"] == "grouped"
    ref = results["one_by_one"]["runs"]
    for mode in ("population", "grouped"):
        runs = results[mode]["runs"]
        assert set(runs) == set(ref) == {"w2", "w8", "w32"}
        for name, want in ref.items():
            got = runs[name]
            assert got["num_params"] == want["num_params"] == \
                models.param_count(64, (got["width"],) * 2, 10)
            for key in ("final_train_loss", "final_train_accuracy", "final_test_loss",
                        "final_test_accuracy"):
                np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6)
            for key in ("loss", "grad_norm"):
                np.testing.assert_allclose(got["history"]["iteration"][key],
                                           want["history"]["iteration"][key], rtol=1e-5)
            assert got["history"]["epoch_end_iteration"] == \
                want["history"]["epoch_end_iteration"]


def test_auto_mode_is_the_measured_one_and_one_by_one_with_tensorboard():
    assert capacity.resolve_mode(capacity.Config(**TINY)) == capacity.AUTO_MODE
    assert capacity.resolve_mode(capacity.Config(**{**TINY, "tensorboard": True})) == \
        "one_by_one"
    specs = capacity.model_specs(capacity.Config(**TINY))
    together, alone = capacity.partition(specs, "grouped",
                                         capacity.Config(**TINY, group_max_width=8))
    assert [s.name for s in together] == ["w2", "w8"] and [s.name for s in alone] == ["w32"]
    assert capacity.partition(specs, "grouped", capacity.Config(**TINY, group_max_width=2)) == \
        ([], specs)  # one member: alone


def test_trainer_front_puts_in_a_population_only_what_it_supports():
    from hw1_tf import trainer

    dense = [models.ModelSpec(f"w{w}", "dense", hidden=(w, w)) for w in (2, 4, 8)]
    other_depth = models.ModelSpec("deep", "dense", hidden=(4, 4, 4))
    sigmoid = models.ModelSpec("sig", "dense", hidden=(4, 4), activation="sigmoid")  # s(0) != 0
    plain = capacity.Config(**TINY)
    together, alone = trainer.partition(dense + [other_depth, sigmoid], "population", plain)
    assert [s.name for s in together] == ["w2", "w4", "w8"]
    assert [s.name for s in alone] == ["deep", "sig"]
    assert "cannot be padded" in trainer.population_refuses(other_depth, dense[-1], plain)
    assert "same depth and activation" in trainer.population_refuses(sigmoid, dense[-1], plain)
    sigmoid_wide = models.ModelSpec("sig8", "dense", hidden=(8, 8), activation="sigmoid")
    assert "activation(0) = 0" in trainer.population_refuses(sigmoid, sigmoid_wide, plain)
    # an option only a model alone follows: every model alone, and the reason names it
    stopping = capacity.Config(**TINY, stop_loss_below=0.5)
    assert trainer.partition(dense, "population", stopping) == ([], dense)
    assert trainer.population_refuses(dense[0], dense[-1], stopping).startswith(
        "--stop_loss_below")
    assert trainer.partition(dense, "one_by_one", plain) == ([], dense)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _forward(weights, x):
    """Logits of a dense relu net in numpy (kernels and biases alternating)."""
    h = x.reshape(len(x), -1).astype(np.float64)
    for j in range(0, len(weights), 2):
        h = h @ weights[j] + weights[j + 1]
        if j < len(weights) - 2:
            h = np.maximum(h, 0)
    return h


def test_fashion_mnist_end_to_end_on_a_fake_idx_folder(tmp_path, monkeypatch):
    """A 4-file Fashion-MNIST IDX folder registered with its own sizes and checksums: the
    dataset loads from it (no fetch) and the final numbers are the saved models' own."""
    rng = np.random.RandomState(0)
    arrays = {"train-images-idx3-ubyte": rng.randint(0, 256, (96, 28, 28)),
              "train-labels-idx1-ubyte": rng.randint(0, 10, 96),
              "t10k-images-idx3-ubyte": rng.randint(0, 256, (32, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.randint(0, 10, 32)}
    folder = tmp_path / "data" / "fashion_mnist"
    folder.mkdir(parents=True)
    specs = []
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        specs.append(idx.IdxFile(name, len(raw), hashlib.sha256(raw).hexdigest()))
        (folder / name).write_bytes(raw)
    monkeypatch.setitem(idx.IDX_SETS, "fashion_mnist", tuple(specs))
    config = capacity.Config(**{**TINY, "dataset": "fashion_mnist", "train_size": None,
                                "test_size": None, "widths": (2, 4)},
                             data_dir=str(tmp_path / "data"), save_models=True,
                             output_dir=str(tmp_path / "out"))
    results = framework.run(capacity, config)
    assert results["dataset"] == "fashion_mnist"
    assert (results["train_examples"], results["test_examples"]) == (96, 32)
    splits = data.load("fashion_mnist", tmp_path / "data")
    for run in results["runs"].values():
        assert run["num_params"] == models.param_count(784, (run["width"],) * 2, 10)
        weights = landscape.load_endpoint(run["saved_model"]).arrays
        for split, x, y in (("train", splits.x_train, splits.y_train),
                            ("test", splits.x_test, splits.y_test)):
            logits = _forward(weights, x)
            top = logits.max(1, keepdims=True)
            log_softmax = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
            loss = -np.mean(log_softmax[np.arange(len(y)), y])
            np.testing.assert_allclose(run[f"final_{split}_loss"], loss, rtol=1e-4)
            np.testing.assert_allclose(run[f"final_{split}_accuracy"],
                                       np.mean(logits.argmax(1) == y), atol=1e-6)


def test_finished_models_are_skipped_in_every_mode(tmp_path, monkeypatch):
    config = capacity.Config(**TINY, training_mode="grouped", group_max_width=8,
                             output_dir=str(tmp_path))
    first = framework.run(capacity, config)

    def trains(*args, **kwargs):
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr(population, "train_population", trains)
    monkeypatch.setattr(trainer, "train_model", trains)
    again = framework.run(capacity, config)
    for name, run in first["runs"].items():
        assert again["runs"][name]["final_test_loss"] == run["final_test_loss"]


def test_per_model_options_train_alone_or_are_refused_in_a_population():
    from hw1_tf.config import ConfigError

    config = capacity.Config(dataset="digits", stop_loss_below=0.5)
    assert capacity.resolve_mode(config) == "one_by_one"
    with pytest.raises(ConfigError, match="stop_loss_below"):
        capacity.Config(dataset="digits", learning_rate_decay=0.9, stop_loss_below=0.5,
                        training_mode="grouped")
