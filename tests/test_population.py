"""The population against the single-model core: N members trained as one computation give each
member the numbers of its own `training.train` run (same seed, batches and optimizer), and the
per-member masks (switch, stop, failure) act on one member only."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from hw1_tf import data, models, pipeline, population, store, training
from hw1_tf.errors import Hw1Error

SPLITS = data.function_splits("sinc", 64, 20, seed=0)  # 4 batches of 16 per epoch
SPEC = models.ModelSpec("pop", hidden=(8, 6), activation="tanh")
SEEDS = (0, 1, 2)
BASE = dict(epochs=3, batch_size=16, learning_rate=0.01, verbose=0, shuffle=True)


def _population(strategy=None, callbacks=(), seeds=SEEDS, jit=True, **kw):
    """Fused: 4 iterations per call (one epoch), under XLA unless `jit` is False (which only
    saves compile time in tests; the same loop runs as a plain tf.function)."""
    st = population.PopulationSettings(**{**BASE, **kw}, steps_per_execution=4, jit_compile=jit)
    return population.train_population(SPEC, SPLITS, st, seeds, strategy=strategy,
                                       callbacks=callbacks)


def _single(seed, **kw):
    """The core run with one step per execution, where it checks thresholds every iteration."""
    st = training.TrainSettings(**{**BASE, **kw}, seed=seed, steps_per_execution=1,
                                jit_compile=False)
    model = training.build_instrumented(lambda: models.build(SPEC, SPLITS.input_shape, 1), 0, st)
    history = training.train(model, (SPLITS.x_train, SPLITS.y_train), st,
                             test_xy=(SPLITS.x_test, SPLITS.y_test))
    return model, history


def _assert_same_run(pop, i, record, model, history, rtol):
    assert record["iteration"]["objective"] == history["iteration"]["objective"]
    for key in ("loss", "grad_norm"):
        assert len(record["iteration"][key]) == len(history["iteration"][key])
        np.testing.assert_allclose(record["iteration"][key], history["iteration"][key],
                                   rtol=rtol)
    assert set(record["epoch"]) == set(history["epoch"])
    for key, values in history["epoch"].items():
        np.testing.assert_allclose(record["epoch"][key], values, rtol=rtol)
    for key in ("epoch_end_iteration", "switched_at_iteration", "stopped_at_iteration",
                "objective_names", "num_params"):
        assert record[key] == history[key], key
    for got, want in zip(pop.member_weights(i), model.network.get_weights()):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("optimizer, switch, jit, rtol", [
    ("sgd", {"switch_after_epochs": 2}, True, 1e-5),
    ("adam", {"switch_grad_norm_below": 0.3}, True, 1e-5),
    ("rmsprop", {}, False, 1e-4),  # g / sqrt(rho-averaged g^2) amplifies float32 rounding
    ("adagrad", {}, False, 1e-5),
])
def test_members_equal_separate_core_runs(optimizer, switch, jit, rtol):
    pop, records = _population(optimizer=optimizer, jit=jit, **switch)
    switched = set()
    for i, seed in enumerate(SEEDS):
        model, history = _single(seed, optimizer=optimizer, **switch)
        _assert_same_run(pop, i, records[i], model, history, rtol)
        switched.add(history["switched_at_iteration"])
    if "switch_grad_norm_below" in switch:  # the threshold must fire at different iterations
        assert len(switched - {None}) >= 2 and len(switched) == 3, switched


def test_stopped_member_is_frozen_and_matches_core():
    _, free = _population(optimizer="sgd", learning_rate=0.01, epochs=1, jit=False)
    first = sorted(r["iteration"]["grad_norm"][0] for r in free)
    threshold = (first[0] + first[1]) / 2  # the member with the smallest norm stops at once
    snapshots = []
    pop, records = _population(
        optimizer="sgd", learning_rate=0.01, stop_grad_norm_below=threshold,
        callbacks=[lambda epoch, p: snapshots.append([w.copy() for w in p.params[0].numpy()])])
    stopped = [i for i, r in enumerate(records) if r["stopped_at_iteration"] == 1]
    assert stopped, [r["stopped_at_iteration"] for r in records]
    i = stopped[0]
    assert len(records[i]["iteration"]["loss"]) == 1 and records[i]["epoch_end_iteration"] == [1]
    np.testing.assert_array_equal(snapshots[0][i], snapshots[-1][i])  # no move after the stop
    # the others went on past the first epoch (and may stop later, each at its own iteration)
    assert any(len(r["iteration"]["loss"]) > 4 for r in records)
    for j, seed in enumerate(SEEDS):
        model, history = _single(seed, optimizer="sgd", learning_rate=0.01,
                                 stop_grad_norm_below=threshold)
        if j == i:  # the core stops on the whole run after that iteration too
            assert history["stopped_at_iteration"] == 1
        _assert_same_run(pop, j, records[j], model, history, 1e-5)


def test_member_is_a_keras_model_predicting_as_the_population(tmp_path):
    pop, _ = _population(optimizer="adam", epochs=1, jit=False)
    x = SPLITS.x_test
    together = pop.predict(x)
    assert together.shape == (len(SEEDS), len(x), 1)
    for i in range(len(SEEDS)):
        member = pop.member(i)
        assert isinstance(member, keras.Model) and member.count_params() == pop.num_params
        np.testing.assert_allclose(member.predict(x, verbose=0), together[i], rtol=1e-5,
                                   atol=1e-6)
    paths = population.export_members(pop, lambda i: tmp_path / f"m{i}", members=[2])
    loaded = store.load_saved_model(paths[0])
    np.testing.assert_allclose(loaded.serve(tf.constant(x)), together[2], rtol=1e-5, atol=1e-6)


def test_mirrored_two_replicas_equal_one_device():
    assert len(tf.config.list_logical_devices("CPU")) == 2, "conftest must split the CPU"
    kw = dict(optimizer="adam", switch_grad_norm_below=0.3)
    one, records = _population(**kw)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two, mirrored = _population(strategy=strategy, **kw)
    assert {r["switched_at_iteration"] for r in mirrored} == \
        {r["switched_at_iteration"] for r in records}
    for a, b in zip(mirrored, records):
        assert a["iteration"]["objective"] == b["iteration"]["objective"]
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(a["iteration"][key], b["iteration"][key], rtol=1e-5)
        np.testing.assert_allclose(a["epoch"]["test_loss"], b["epoch"]["test_loss"], rtol=1e-5)
    for p, q in zip(two.params, one.params):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)


def test_member_that_diverges_is_marked_failed_and_the_others_finish():
    def blow_up(epoch, pop):  # member 1's outputs overflow float32 from epoch 2 on
        if epoch == 0:
            last = pop.params[-2]
            last.assign(tf.tensor_scatter_nd_update(last, [[1]], [last[1] * 1e38]))

    _, clean = _population(optimizer="adam", jit=False)
    pop, records = _population(optimizer="adam", callbacks=[blow_up], jit=False)
    per_epoch = clean[0]["epoch_end_iteration"][0]
    failed = records[1]
    assert failed["failed_at_iteration"] == per_epoch
    assert len(failed["iteration"]["loss"]) == per_epoch and np.isfinite(
        failed["iteration"]["loss"]).all()
    assert failed["epoch"]["train_loss"] == clean[1]["epoch"]["train_loss"][:1]
    assert all(np.isfinite(w).all() for w in pop.member_weights(1))  # frozen before the NaN
    for i in (0, 2):
        assert records[i]["failed_at_iteration"] is None
        assert records[i]["iteration"] == clean[i]["iteration"]
        assert records[i]["epoch"] == clean[i]["epoch"]


def test_shared_order_gives_every_member_the_batches_of_the_settings_seed():
    pop, records = _population(optimizer="sgd", shared_order=True, seed=1, seeds=(1, 2),
                               jit=False)
    model, history = _single(1, optimizer="sgd")
    _assert_same_run(pop, 0, records[0], model, history, 1e-5)
    # member 1 (initialised with seed 2) started on seed 1's first batch, not on its own
    first = next(iter(pipeline.epoch_order(64, shuffle=True, seed=1))).numpy()[:16]
    net = models.build(SPEC, SPLITS.input_shape, 1)
    net.set_weights(population.initial_weights(SPEC, SPLITS.input_shape, 1, 2))
    pred = net.predict(SPLITS.x_train[first], verbose=0)
    expected = np.mean((pred - SPLITS.y_train[first]) ** 2)
    assert records[1]["iteration"]["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_members_on_different_data_equal_their_own_core_runs():
    """One dataset per member (here two target functions): member i trains on its own."""
    sign = data.function_splits("sign", 64, 20, seed=0)
    st = population.PopulationSettings(**BASE, optimizer="adam", steps_per_execution=4)
    pop, records = population.train_population(SPEC, [SPLITS, sign, sign], st, (0, 0, 1))
    for i, (splits, seed) in enumerate([(SPLITS, 0), (sign, 0), (sign, 1)]):
        single = training.TrainSettings(**BASE, optimizer="adam", seed=seed,
                                        steps_per_execution=1, jit_compile=False)
        model = training.build_instrumented(lambda: models.build(SPEC, (1,), 1), 0, single)
        history = training.train(model, (splits.x_train, splits.y_train), single,
                                 test_xy=(splits.x_test, splits.y_test))
        _assert_same_run(pop, i, records[i], model, history, 1e-5)
    grids = np.stack([SPLITS.x_test, sign.x_test, sign.x_test])
    np.testing.assert_allclose(pop.predict(grids)[1], pop.member(1).predict(sign.x_test,
                                                                             verbose=0),
                               rtol=1e-5, atol=1e-6)


DIGITS = data.load("digits", train_size=96, test_size=32, seed=0)  # 3 batches of 32
WIDE = models.ModelSpec("wide", hidden=(12, 12))
NARROW = [models.ModelSpec(f"n{w}", hidden=(w, w)) for w in (3, 7, 12)]  # one unpadded


def test_member_of_a_padded_population_is_the_narrow_model_alone_and_exports(tmp_path):
    """member(i, spec) of a population zero-padded to a wider net (the capacity experiment's
    setup) is the narrow model trained alone with member i's seed: its weights and outputs;
    exported (SavedModel and .keras) and loaded back it gives the same outputs."""
    shape, seeds = DIGITS.input_shape, (0, 1, 2)
    base = dict(epochs=2, batch_size=32, learning_rate=0.01, verbose=0, optimizer="adam")
    initial = [population.padded_initial_weights(s, WIDE, shape, 10, seed)
               for s, seed in zip(NARROW, seeds)]
    settings = population.PopulationSettings(**base, steps_per_execution=3, jit_compile=False)
    pop, _ = population.train_population(WIDE, DIGITS, settings, seeds, initial=initial)
    x = DIGITS.x_test
    padded = pop.predict(x)
    for i, (spec, seed) in enumerate(zip(NARROW, seeds)):
        single = training.TrainSettings(**base, seed=seed, steps_per_execution=1,
                                        jit_compile=False)
        alone = training.build_instrumented(lambda: models.build(spec, shape, 10), 10, single)
        training.train(alone, (DIGITS.x_train, DIGITS.y_train), single)
        member = pop.member(i, spec)
        assert member.name == spec.name
        assert member.count_params() == alone.network.count_params() == \
            models.param_count(64, spec.hidden, 10)
        for got, want in zip(member.get_weights(), alone.network.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        out = member.predict(x, verbose=0)
        np.testing.assert_allclose(out, alone.network.predict(x, verbose=0), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(out, padded[i], rtol=1e-5, atol=1e-6)  # padding is silent
        path = store.export_model(member, tmp_path / spec.name)
        loaded = store.load_saved_model(path)  # kept: serve needs its variables alive
        np.testing.assert_allclose(loaded.serve(tf.constant(x)), out, rtol=0, atol=1e-6)
        reloaded = keras.models.load_model(str(path.with_suffix(".keras")), compile=False)
        np.testing.assert_allclose(reloaded.predict(x, verbose=0), out, rtol=0, atol=1e-6)
    with pytest.raises(Hw1Error, match="cannot be padded"):
        pop.member(0, models.ModelSpec("n", hidden=(16, 4)))
    with pytest.raises(Hw1Error, match="cannot be padded"):
        pop.member(0, models.ModelSpec("n", hidden=(3, 3), activation="tanh"))


def test_population_from_flat_vectors_holds_them_as_members():
    """`from_flat`: rows of (M, P) parameter vectors (the layout critical.MemberLosses uses)
    become members; member(i) holds row i rounded to float32, shapes from the spec alone."""
    shapes = population.dense_shapes(SPEC, (1,), 1)
    assert shapes == [(1, 8), (8,), (8, 6), (6,), (6, 1), (1,)]
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(3, sum(math.prod(s) for s in shapes)))  # float64
    pop = population.Population.from_flat(SPEC, (1,), 1, theta, seeds=(5, 6, 7))
    assert pop.size == 3 and pop.seeds == [5, 6, 7] and pop.num_params == theta.shape[1]
    x = SPLITS.x_test
    for i in range(3):
        member = pop.member(i)
        got = np.concatenate([w.ravel() for w in member.get_weights()])
        np.testing.assert_array_equal(got, theta[i].astype(np.float32))
        np.testing.assert_allclose(member.predict(x, verbose=0), pop.predict(x)[i], rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(Hw1Error, match="flat weights"):
        population.Population.from_flat(SPEC, (1,), 1, theta[:, :-1])
