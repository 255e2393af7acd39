"""The training core against independent computations: a hand-written numpy forward/backward,
central finite differences, and a one-device run for the multi-replica path."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hw1_tf import data, distribute, training
from hw1_tf.errors import TrainingDivergedError

N, D, H, C = 48, 5, 6, 3


def _toy(seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(N, D).astype(np.float32)
    y = rng.randint(0, C, size=N).astype(np.int32)
    return x, y


def _net():
    return keras.Sequential([keras.Input((D,)), keras.layers.Dense(H, activation="tanh"),
                             keras.layers.Dense(C)])


def _numpy_loss_grad(params, x, y):
    """Softmax cross-entropy of the tanh net and its gradient, by hand, in float64."""
    w1, b1, w2, b2 = [p.astype(np.float64) for p in params]
    h = np.tanh(x @ w1 + b1)
    z = h @ w2 + b2
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(x)
    loss = -np.log(p[np.arange(n), y]).mean()
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    dz /= n
    dw2, db2 = h.T @ dz, dz.sum(0)
    dh = dz @ w2.T * (1 - h ** 2)
    dw1, db1 = x.T @ dh, dh.sum(0)
    return loss, [dw1, db1, dw2, db2]


def _settings(**kw):
    base = dict(epochs=2, batch_size=16, learning_rate=0.1, optimizer="sgd", shuffle=False,
                verbose=0, steps_per_execution=1, jit_compile=False)
    base.update(kw)
    return training.TrainSettings(**base)


def _weights(model):
    return [v.numpy() for v in model.network.trainable_variables]


def test_loss_and_grad_norm_match_numpy_sgd_every_iteration():
    x, y = _toy()
    st = _settings(epochs=3)
    model = training.build_instrumented(_net, C, st)
    params = [p.astype(np.float64) for p in _weights(model)]
    hist = training.train(model, (x, y), st)
    expected_loss, expected_norm = [], []
    for _ in range(st.epochs):
        for start in range(0, N, st.batch_size):
            xb, yb = x[start:start + st.batch_size], y[start:start + st.batch_size]
            loss, grads = _numpy_loss_grad(params, xb, yb)
            expected_loss.append(loss)
            expected_norm.append(np.sqrt(sum((g ** 2).sum() for g in grads)))
            params = [p - st.learning_rate * g for p, g in zip(params, grads)]
    assert len(hist["iteration"]["loss"]) == len(expected_loss) == 9
    np.testing.assert_allclose(hist["iteration"]["loss"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(hist["iteration"]["grad_norm"], expected_norm, rtol=1e-5)
    for got, want in zip(_weights(model), params):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_grad_norm_objective_step_matches_finite_differences():
    """One SGD step (lr=1) on ||grad L||^2 moves the weights by minus its gradient; compare
    with central differences of the numpy gradient norm in float64 (tolerance 1e-3 relative)."""
    x, y = _toy(1)
    st = _settings(epochs=1, batch_size=N, learning_rate=1.0, objective="grad_norm")
    model = training.build_instrumented(_net, C, st)
    before = [p.astype(np.float64) for p in _weights(model)]
    hist = training.train(model, (x, y), st)
    applied = [b - a for b, a in zip(before, _weights(model))]

    def sq_norm(flat):
        params, offset = [], 0
        for p in before:
            params.append(flat[offset:offset + p.size].reshape(p.shape))
            offset += p.size
        return sum((g ** 2).sum() for g in _numpy_loss_grad(params, x, y)[1])

    theta = np.concatenate([p.ravel() for p in before])
    eps = 1e-5
    fd = np.array([(sq_norm(theta + eps * e) - sq_norm(theta - eps * e)) / (2 * eps)
                   for e in np.eye(theta.size)])
    got = np.concatenate([a.ravel() for a in applied])
    assert np.linalg.norm(got - fd) / np.linalg.norm(fd) < 1e-3
    assert hist["iteration"]["objective"] == [1]
    np.testing.assert_allclose(hist["iteration"]["grad_norm"][0], np.sqrt(sq_norm(theta)),
                               rtol=1e-5)


@pytest.mark.parametrize("objective", ["loss", "grad_norm"])
def test_mirrored_two_replicas_equal_one_device(objective):
    assert len(tf.config.list_logical_devices("CPU")) == 2, "conftest must split the CPU"
    x, y = _toy(2)
    st = _settings(epochs=2, batch_size=16, objective=objective, learning_rate=0.05,
                   shuffle=True)
    single = training.build_instrumented(_net, C, st)
    h1 = training.train(single, (x, y), st)
    strategy = distribute.make_strategy("mirrored")  # one per process (see distribute)
    mirrored = training.build_instrumented(_net, C, st, strategy=strategy)
    h2 = training.train(mirrored, (x, y), st)
    assert len(h2["iteration"]["loss"]) == len(h1["iteration"]["loss"]) == 6
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(h2["iteration"][key], h1["iteration"][key], rtol=1e-5)
    np.testing.assert_allclose(h2["epoch"]["train_loss"], h1["epoch"]["train_loss"], rtol=1e-5)
    for a, b in zip(_weights(mirrored), _weights(single)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _digits_net(shape):
    return lambda: keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                                     keras.layers.Dense(16, activation="relu"),
                                     keras.layers.Dense(10)])


@pytest.mark.parametrize("fused", [True, False])
def test_history_exact_with_steps_per_execution_and_xla(fused):
    s = data.load("digits", train_size=1000)  # 1000 / 16 = 62.5 steps: partial executions
    st = training.TrainSettings(epochs=3, batch_size=16, steps_per_execution=32, jit_compile=True,
                                fused_steps=fused, verbose=0, shuffle=True)
    model = training.build_instrumented(_digits_net(s.input_shape), 10, st)
    assert model.jit_compile
    assert (model.chunk_size, model.steps_per_execution) == ((32, 1) if fused else (1, 32))
    hist = training.train(model, (s.x_train, s.y_train), st, test_xy=(s.x_test, s.y_test))
    assert len(hist["iteration"]["loss"]) == 3 * 63
    assert hist["epoch_end_iteration"] == [63, 126, 189]
    # The plain path (1 step per call, no XLA) gives the same per-iteration record and metrics.
    slow = training.TrainSettings(**{**st.__dict__, "steps_per_execution": 1,
                                     "jit_compile": False})
    model2 = training.build_instrumented(_digits_net(s.input_shape), 10, slow)
    hist2 = training.train(model2, (s.x_train, s.y_train), slow, test_xy=(s.x_test, s.y_test))
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(hist["iteration"][key], hist2["iteration"][key], rtol=1e-4)
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        np.testing.assert_allclose(hist["epoch"][key], hist2["epoch"][key], rtol=1e-4)


def test_fused_steps_shuffled_are_seeded_and_exact():
    s = data.load("digits", train_size=500)
    st = training.TrainSettings(epochs=2, batch_size=32, steps_per_execution=8, verbose=0)
    runs = [training.train(training.build_instrumented(_digits_net(s.input_shape), 10, st),
                           (s.x_train, s.y_train), st) for _ in range(2)]
    assert len(runs[0]["iteration"]["loss"]) == 2 * 16
    assert runs[0]["iteration"] == runs[1]["iteration"]


def test_objective_switch_fires_and_grad_norm_then_decreases():
    s = data.function_splits("sinc", 64, 16, seed=0)
    st = training.TrainSettings(epochs=60, batch_size=64, learning_rate=1e-2, verbose=0,
                                switch_after_epochs=30, steps_per_execution=8)
    model = training.build_instrumented(
        lambda: keras.Sequential([keras.Input((1,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(1)]), 0, st)
    hist = training.train(model, (s.x_train, s.y_train), st)
    objective = np.array(hist["iteration"]["objective"])
    assert hist["switched_at_iteration"] == 30
    assert (objective[:30] == 0).all() and (objective[30:] == 1).all()
    norms = np.array(hist["iteration"]["grad_norm"])[30:]
    assert norms[-5:].mean() < 0.5 * norms[:5].mean()


def test_stop_below_threshold_stops_training():
    s = data.function_splits("sinc", 64, 16, seed=0)
    st = training.TrainSettings(epochs=200, batch_size=64, learning_rate=1e-2, verbose=0,
                                objective="grad_norm", stop_grad_norm_below=1e9,
                                steps_per_execution=1, jit_compile=False)
    model = training.build_instrumented(
        lambda: keras.Sequential([keras.Input((1,)), keras.layers.Dense(4, activation="tanh"),
                                  keras.layers.Dense(1)]), 0, st)
    hist = training.train(model, (s.x_train, s.y_train), st)
    assert hist["stopped_at_iteration"] == 1 and len(hist["iteration"]["loss"]) == 1


def test_nan_loss_is_one_clear_error():
    x, y = _toy()
    x[20, 0] = np.nan  # second batch
    st = _settings()
    model = training.build_instrumented(_net, C, st)
    with pytest.raises(TrainingDivergedError, match="iteration"):
        training.train(model, (x, y), st)


def test_same_seed_same_numbers():
    x, y = _toy()
    st = _settings(shuffle=True, optimizer="adam", learning_rate=1e-2)
    runs = [training.train(training.build_instrumented(_net, C, st), (x, y), st)
            for _ in range(2)]
    assert runs[0]["iteration"] == runs[1]["iteration"]
