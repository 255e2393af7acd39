"""HW1-3 generalization: corruptions of the data layer, the random-label, capacity and flatness
experiments on sklearn digits (seconds each), and the interpolation between SavedModels checked
against the SavedModels' own `serve` and a numpy forward pass."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hw1_tf import data, distribute, framework, landscape, models, store, trainer
from hw1_tf.config import ConfigError, StopOptions
from hw1_tf.errors import Hw1Error, ModelNotFoundError
from hw1_tf.experiments import flatness

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", epochs=2, verbose=0, steps_per_execution=8, tensorboard=False,
            jit_compile=False)  # XLA compiles cost more than these tiny runs


def _flat_config(tmp_path, **kw):
    values = dict(TINY, hidden=(16,), batch_sizes=(16, 256), num_alphas=7,
                  output_dir=str(tmp_path))
    values.update(kw)
    return flatness.Config(**values)


def _context(folder) -> framework.ExperimentContext:
    return framework.ExperimentContext("t", flatness.Config(**TINY), store.Paths.create(folder))


def _train_spec(tmp_path, spec, name, batch_size=32, seed=0):
    splits = data.load("digits")
    settings = trainer.settings_from(flatness.Config(**TINY), batch_size=batch_size, seed=seed)
    ctx = framework.ExperimentContext("flatness", flatness.Config(**TINY),
                                      store.Paths.create(tmp_path))
    model, record = ctx.train_model(name, spec, splits, settings, tensorboard=False)
    return model, Path(record["saved_model"]), splits


def _export_untrained(spec, path):
    """A SavedModel of `spec` at its initial weights (shapes are all some tests need)."""
    net = models.build(spec, (8, 8, 1), 10)
    return store.export_model(net, path, keras_file=False)


# ------------------------------------------------------------------------------- flatness


@pytest.fixture(scope="module")
def flat_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flat")
    return tmp, framework.run(flatness, _flat_config(tmp))


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
    assert Path(next(iter(results["figures"].values()))).is_file()


def test_flatness_reuses_saved_models_and_retrain_forces(flat_results):
    tmp, first = flat_results
    again = framework.run(flatness, _flat_config(tmp))
    assert all(r["reused"] for r in again["runs"].values())
    (a,), (b,) = first["lines"].values(), again["lines"].values()
    np.testing.assert_array_equal(a["test_loss"], b["test_loss"])
    assert all("history" in r for r in again["runs"].values())  # kept beside the SavedModel
    # models saved elsewhere: --saved_models_dir points at them, results go to another root
    import shutil

    elsewhere = tmp / "elsewhere"
    shutil.copytree(tmp / "saved_models", elsewhere)
    moved = framework.run(flatness, _flat_config(tmp / "other_root", saved_models_dir=str(elsewhere),
                                      train_missing=False))
    assert all(r["reused"] and r["saved_model"].startswith(str(elsewhere))
               for r in moved["runs"].values())
    np.testing.assert_array_equal(next(iter(moved["lines"].values()))["test_loss"],
                                  a["test_loss"])
    retrained = framework.run(flatness, _flat_config(tmp, batch_sizes=(16,), learning_rates=(1e-3, 3e-3),
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
        # moving variances geometric (positive beyond the endpoints), all else linear
        theta = [np.exp((1 - alpha) * np.log(a) + alpha * np.log(b))
                 if name.endswith("moving_variance") else (1 - alpha) * a + alpha * b
                 for name, a, b in zip(first.names, first.arrays, second.arrays)]
        loss, acc = landscape.evaluate_serve(first, splits.x_test, splits.y_test, theta)
        np.testing.assert_allclose(curves["test"]["loss"][i], loss, rtol=1e-4)
        # argmax may flip only where serve's two top logits (nearly) tie
        top2 = np.sort(landscape.serve_predictions(first, splits.x_test, theta), -1)[:, -2:]
        ties = int((top2[:, 1] - top2[:, 0] < 1e-4).sum())
        assert abs(curves["test"]["accuracy"][i] - acc) <= (ties + 1e-3) / len(splits.y_test)
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
        framework.run(flatness, config)
    # a SavedModel of another width where this config's first run would be reused
    target = store.Paths.create(tmp_path).saved_model("flatness", flatness.run_name(
        config, 16, config.learning_rate))
    _export_untrained(models.ModelSpec("m", "dense", hidden=(5,)), target)
    with pytest.raises(landscape.IncompatibleModelsError, match=str(target)):
        framework.run(flatness, _flat_config(tmp_path))
    assert not (tmp_path / "results").exists() and not (tmp_path / "figures").exists()


def test_flatness_config_rejects_a_backwards_range():
    with pytest.raises(ConfigError, match="alpha_max"):
        flatness.Config(alpha_min=2.0, alpha_max=-1.0)
    with pytest.raises(ConfigError, match="two training approaches"):
        flatness.Config(batch_sizes=(64,))


def test_run_flatness_binary_missing_model_is_one_line_exit_1(tmp_path, capsys):
    """bin/run_flatness's flags, config and exit code, run in this process (hw1_tf.cli.invoke;
    the real binary's process: tests/test_cli.py)."""
    from hw1_tf import cli

    code = cli.invoke_experiment("flatness", ["--dataset=digits", "--notrain_missing",
                                              f"--output_dir={tmp_path}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("error: ") and "saved_models/flatness/" \
        in lines[-1], lines[-5:]
    assert "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "results").exists()
    code = cli.invoke_experiment("flatness", ["--alpha_min=2", "--alpha_max=-1",
                                              f"--output_dir={tmp_path}"])
    assert code == 2 and "alpha_max" in capsys.readouterr().err


# ---------------------------------------------------------------------------- corruptions


def _splits():
    return data.load("digits")


def test_label_corruption_changes_the_chosen_fraction_and_keeps_the_test_set():
    clean = _splits()
    for fraction in (0.0, 0.4, 1.0):
        s = data.corrupt(clean, "labels", fraction, seed=3)
        changed = s.y_train != clean.y_train
        chosen = int(round(fraction * len(clean.y_train)))
        assert changed.sum() <= chosen  # only chosen examples may change
        if fraction == 1.0:
            assert changed.mean() > 0.8  # a shuffle of 10 classes changes ~90%
        np.testing.assert_array_equal(np.bincount(s.y_train, minlength=10),
                                      np.bincount(clean.y_train, minlength=10))
        np.testing.assert_array_equal(s.y_test, clean.y_test)
        np.testing.assert_array_equal(s.x_train, clean.x_train)
        np.testing.assert_array_equal(s.y_train_clean, clean.y_train)
    again = data.corrupt(clean, "labels", 0.4, seed=3)
    np.testing.assert_array_equal(again.y_train, data.corrupt(clean, "labels", 0.4,
                                                              seed=3).y_train)
    assert (data.corrupt(clean, "labels", 1.0, corrupt_test=True).y_test != clean.y_test).any()


def test_pixel_corruptions():
    clean = _splits()
    shuffled = data.corrupt(clean, "shuffled_pixels", 1.0, seed=1)
    flat, ref = shuffled.x_train.reshape(len(clean.x_train), -1), \
        clean.x_train.reshape(len(clean.x_train), -1)
    # one permutation for every image, train and test alike: find it from the first image pair
    perm = np.random.RandomState(1).permutation(flat.shape[1])
    np.testing.assert_array_equal(flat, ref[:, perm])
    np.testing.assert_array_equal(shuffled.x_test.reshape(len(clean.x_test), -1),
                                  clean.x_test.reshape(len(clean.x_test), -1)[:, perm])
    np.testing.assert_array_equal(shuffled.y_train, clean.y_train)

    rand = data.corrupt(clean, "random_pixels", 1.0, seed=1)
    flat = rand.x_train.reshape(len(clean.x_train), -1)
    np.testing.assert_array_equal(np.sort(flat, 1), np.sort(ref, 1))  # same pixel values
    # per-image permutations differ: pixel positions no longer line up across images
    assert np.corrcoef(flat.mean(0), ref.mean(0))[0, 1] < 0.5
    np.testing.assert_array_equal(rand.x_test, clean.x_test)

    half = data.corrupt(clean, "gaussian", 0.5, seed=1)
    changed = (half.x_train != clean.x_train).reshape(len(ref), -1).any(1)
    assert changed.sum() == round(0.5 * len(ref))
    noise = half.x_train[changed]
    assert abs(noise.mean() - ref.mean()) < 0.02 and abs(noise.std() - ref.std()) < 0.02
    with pytest.raises(Hw1Error, match="unknown corruption"):
        data.corrupt(clean, "blur", 0.5)


# ------------------------------------------------------------------ random labels, capacity


def test_random_labels_memorises_and_test_stays_at_chance(tmp_path):
    from hw1_tf.experiments import random_labels

    config = random_labels.Config(**dict(TINY, epochs=40, hidden=(128,), ratios=(0.0, 1.0),
                                         learning_rate=3e-3, batch_size=64,
                                         output_dir=str(tmp_path)))
    results = framework.run(random_labels, config)
    runs = {r["ratio"]: r for r in results["runs"].values()}
    # shuffled labels: training accuracy climbs far above chance (memorising, 3x chance in
    # this short run) while the clean test set stays near chance
    acc = runs[1.0]["history"]["epoch"]["train_accuracy"]
    assert runs[1.0]["final_train_accuracy"] > 0.3 and acc[-1] > acc[0] + 0.15
    assert runs[1.0]["final_test_accuracy"] < 0.2
    assert runs[0.0]["final_test_accuracy"] > 0.9
    fit = random_labels.epochs_to_fit(runs[0.0]["history"]["epoch"]["train_accuracy"], 0.9)
    acc = runs[0.0]["history"]["epoch"]["train_accuracy"]
    assert acc[fit - 1] >= 0.9 and (fit == 1 or acc[fit - 2] < 0.9)
    assert {Path(p).name for p in results["figures"].values()} == {
        "epochs_labels_0p00.png", "epochs_labels_1p00.png", "ratio_sweep.png"}


def test_capacity_parameter_counts_and_final_evaluation(tmp_path):
    from hw1_tf.experiments import capacity

    config = capacity.Config(**dict(TINY, widths=(2, 8, 32), save_models=True,
                                    output_dir=str(tmp_path)))
    results = framework.run(capacity, config)
    runs = sorted(results["runs"].values(), key=lambda r: r["num_params"])
    splits = data.load("digits")
    for run in runs:  # 64 inputs, two hidden layers of the width, 10 classes
        assert run["num_params"] == models.param_count(64, (run["width"],) * 2, 10)
        # the final numbers are the trained model's on the whole sets (checked through serve)
        endpoint = landscape.load_endpoint(run["saved_model"])
        loss, acc = landscape.evaluate_serve(endpoint, splits.x_train, splits.y_train)
        np.testing.assert_allclose(run["final_train_loss"], loss, rtol=1e-4)
        np.testing.assert_allclose(run["final_train_accuracy"], acc, atol=1e-6)
    assert runs[-1]["final_train_accuracy"] > runs[0]["final_train_accuracy"]
    assert len(results["figures"]) == 2


@pytest.mark.parametrize("corruption", ["shuffled_pixels", "random_pixels", "gaussian"])
def test_random_labels_input_corruptions_end_to_end(tmp_path, corruption):
    from hw1_tf.experiments import random_labels

    config = random_labels.Config(**dict(TINY, epochs=3, hidden=(16,), ratios=(0.0, 1.0),
                                         corruption=corruption, output_dir=str(tmp_path)))
    results = framework.run(random_labels, config)
    assert set(results["runs"]) == {f"{corruption}_0p00", f"{corruption}_1p00"}
    for run in results["runs"].values():
        assert run["labels_changed"] == 0.0  # the inputs are corrupted, never the labels
        assert len(run["history"]["epoch"]["train_loss"]) == 3
    # the corrupted run saw other inputs than the clean one: its first iterations differ
    losses = [results["runs"][f"{corruption}_{r}"]["history"]["iteration"]["loss"]
              for r in ("0p00", "1p00")]
    assert not np.allclose(losses[0], losses[1])
    assert {Path(p).name for p in results["figures"].values()} == {
        f"epochs_{corruption}_0p00.png", f"epochs_{corruption}_1p00.png", "ratio_sweep.png"}
    stored = store.read_results(store.Paths.create(tmp_path).results_json("random_labels"))
    assert stored["config"]["corruption"] == corruption


def test_random_labels_stops_once_fitted_and_a_rerun_skips_finished_fractions(tmp_path,
                                                                              monkeypatch):
    from hw1_tf.experiments import random_labels

    config = random_labels.Config(**dict(TINY, epochs=30, hidden=(64,), ratios=(0.0,),
                                         learning_rate=3e-3, batch_size=64,
                                         stop_accuracy_above=0.95, output_dir=str(tmp_path)))
    results = framework.run(random_labels, config)
    run = results["runs"]["labels_0p00"]
    acc = run["history"]["epoch"]["train_accuracy"]
    # it stopped after the first epoch at the target, well before the 30 allowed
    assert acc[-1] >= 0.95 and all(a < 0.95 for a in acc[:-1]) and len(acc) < 30
    assert run["history"]["stopped_at_epoch"] == len(acc)
    assert len(run["history"]["iteration"]["loss"]) == run["history"]["epoch_end_iteration"][-1]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fraction was trained again")

    # the same config again: the finished fraction is reused, nothing trains
    monkeypatch.setattr(trainer, "train_model", no_training)
    again = framework.run(random_labels, dataclasses.replace(config))
    np.testing.assert_array_equal(again["runs"]["labels_0p00"]["history"]["iteration"]["loss"],
                                  run["history"]["iteration"]["loss"])


def test_core_stops_at_a_training_loss_target(tmp_path):
    splits = _splits()
    spec = models.ModelSpec("m", "dense", hidden=(32,))
    settings = trainer.settings_from(flatness.Config(**TINY), epochs=25, batch_size=64,
                                     learning_rate=3e-3)
    free = _context(tmp_path / "a").train_model("free", spec, splits, settings,
                                                save_model=False, tensorboard=False)[1]["history"]
    losses = free["epoch"]["train_loss"]
    target = float(losses[6])  # reached at epoch 7 at the latest
    first = next(i for i, v in enumerate(losses) if v <= target) + 1
    settings.stop_loss_below = target
    stopped = _context(tmp_path / "b").train_model("stopped", spec, splits, settings,
                                                   save_model=False,
                                                   tensorboard=False)[1]["history"]
    # the same run, cut after the first epoch at the target: same history up to there
    assert stopped["stopped_at_epoch"] == first == len(stopped["epoch"]["train_loss"])
    np.testing.assert_allclose(stopped["epoch"]["train_loss"], losses[:first], rtol=1e-6)
    assert free["stopped_at_epoch"] is None


def test_population_refuses_a_loss_target():
    from hw1_tf import population

    settings = population.PopulationSettings(epochs=1, stop_loss_below=0.1)
    with pytest.raises(Hw1Error, match="does not stop at a training loss.*--stop_loss_below$"):
        population.train_population(models.ModelSpec("m", "dense", hidden=(4,)), _splits(),
                                    settings, seeds=(0, 1))
    # every option only a model alone follows (config.StopOptions) is refused, by name
    settings = population.PopulationSettings(epochs=1, learning_rate_decay=0.9,
                                             stop_accuracy_above=0.9)
    assert population.unsupported(settings) == ["stop_accuracy_above", "learning_rate_decay"]
    with pytest.raises(Hw1Error, match="--stop_accuracy_above / --learning_rate_decay$"):
        population.train_population(models.ModelSpec("m", "dense", hidden=(4,)), _splits(),
                                    settings, seeds=(0, 1))


def test_learning_rate_decays_every_epoch(tmp_path):
    splits = _splits()
    spec = models.ModelSpec("m", "dense", hidden=(16,))
    settings = trainer.settings_from(flatness.Config(**TINY), epochs=3, batch_size=64,
                                     learning_rate=1e-2)

    def history(decay, folder):
        settings.learning_rate_decay = decay
        model, record = _context(tmp_path / folder).train_model(
            folder, spec, splits, settings, save_model=False, tensorboard=False)
        return model, record["history"]

    plain_model, plain = history(None, "plain")
    model, decayed = history(0.5, "decayed")
    first = plain["epoch_end_iteration"][0]
    loss, ref = decayed["iteration"]["loss"], plain["iteration"]["loss"]
    # epoch 1 runs at the base rate: the same iterations; later epochs at half, a quarter
    np.testing.assert_array_equal(loss[:first], ref[:first])
    assert not np.allclose(loss[first + 1:], ref[first + 1:])
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-2 * 0.5 ** 2)
    assert float(plain_model.optimizer.learning_rate) == pytest.approx(1e-2)


def test_per_model_options_only_where_models_train_alone():
    """The loss/accuracy targets and the decay are fields (so flags) of the experiments whose
    models the core trains one by one, and of no experiment that trains populations."""
    from hw1_tf import experiments

    options = {f.name for f in dataclasses.fields(StopOptions)}
    alone = {"random_labels", "capacity", "flatness", "sensitivity", "sharpness",
             "reparametrization", "actual_task"}
    for name in experiments.names():
        fields = {f.name for f in dataclasses.fields(experiments.get(name).Config)}
        assert (options <= fields) == (name in alone), name
        assert not (options & fields) or options <= fields, name
