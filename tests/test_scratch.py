"""hw1_tf.scratch: layers, losses and nets against centered differences (float64) and Keras;
update rules step for step against keras.optimizers; the Solver on tiny data.

Tolerances (relative error, the report's measure): 1e-7 for Linear, ReLU, LinearReLU,
Dropout and the losses; 1e-6 for batch normalisation; 1e-5 for whole nets (a chain of layers
and a larger sum); the report's tables show 1e-10 .. 2e-6. Update rules: 1e-6 (float32)
against Keras after several steps. Errors are printed in the report's format (pytest -s).
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from hw1_tf.scratch import (BatchNorm, Dropout, FullyConnectedNet, Linear, LinearReLU, ReLU,
                            SoftmaxLoss, Solver, SVMLoss, TwoLayerNet, load_checkpoint)
from hw1_tf.scratch import gradcheck as gc
from hw1_tf.scratch import optim
from hw1_tf.scratch.solver import checkpoint_weights

LAYER_TOL = 1e-7
BN_TOL = 1e-6
NET_TOL = 1e-5


def _report(title, errors, tol):
    print("\n" + gc.format_errors(title, errors))
    assert max(errors.values()) < tol, (title, errors)


# ------------------------------------------------------------------------------ gradcheck


def test_numeric_gradient_of_known_function():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    grad = gc.numeric_gradient(lambda v: np.sum(v ** 3), x.copy())
    assert gc.rel_error(grad, 3 * x ** 2) < 1e-8
    assert gc.rel_error(np.ones(3), np.ones(3) * 1.1) == pytest.approx(0.1 / 2.1)


# --------------------------------------------------------------------------------- layers


def test_linear_forward_matches_numpy_and_keras_dense():
    rng = np.random.RandomState(0)
    x, w, b = rng.randn(4, 2, 3), rng.randn(6, 5), rng.randn(5)
    out, _ = Linear.forward(x, {"w": w, "b": b})
    np.testing.assert_allclose(out, x.reshape(4, 6) @ w + b, rtol=1e-12)
    dense = tf.keras.layers.Dense(5, dtype="float64")
    dense.build((None, 6))
    dense.set_weights([w, b])
    np.testing.assert_allclose(out, dense(x.reshape(4, 6)), rtol=1e-12)


def test_linear_backward():
    rng = np.random.RandomState(1)
    x, w, b = rng.randn(10, 2, 3), rng.randn(6, 5), rng.randn(5)
    errors = gc.check_layer(lambda x, w, b: Linear.forward(x, {"w": w, "b": b}),
                            Linear.backward, {"x": x, "w": w, "b": b}, rng.randn(10, 5))
    _report("Testing Linear.backward function", errors, LAYER_TOL)
    assert Linear.backward(rng.randn(10, 5), Linear.forward(x, {"w": w, "b": b})[1])[
        "x"].shape == x.shape


def test_relu_forward_and_backward():
    x = np.linspace(-0.5, 0.5, num=12).reshape(3, 4)
    out, _ = ReLU.forward(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    rng = np.random.RandomState(2)
    x = rng.randn(10, 10)
    x[np.abs(x) < 1e-3] = 0.1  # keep away from the kink
    errors = gc.check_layer(lambda x: ReLU.forward(x), ReLU.backward, {"x": x},
                            rng.randn(10, 10))
    _report("Testing ReLU.backward function", errors, LAYER_TOL)


def test_linear_relu_sandwich():
    rng = np.random.RandomState(3)
    x, w, b = rng.randn(2, 3, 4), rng.randn(12, 10), rng.randn(10)
    errors = gc.check_layer(lambda x, w, b: LinearReLU.forward(x, {"w": w, "b": b}),
                            LinearReLU.backward, {"x": x, "w": w, "b": b}, rng.randn(2, 10))
    _report("Testing Linear_ReLU.forward and Linear_ReLU.backward", errors, LAYER_TOL)


def test_dropout_modes_masks_and_backward():
    x = tf.constant(np.random.RandomState(4).randn(500, 500) + 10.0)
    for p in (0.25, 0.4, 0.7):
        layer = Dropout(p)
        train, _ = layer.forward(x, training=True, seed=(1, 2))
        test, _ = layer.forward(x, training=False)
        np.testing.assert_array_equal(test, x)  # test mode: the identity
        assert np.mean(train.numpy() == 0) == pytest.approx(p, abs=0.01)
        assert np.mean(train) == pytest.approx(np.mean(x), rel=0.01)  # inverted scaling
        again, _ = layer.forward(x, training=True, seed=(1, 2))
        other, _ = layer.forward(x, training=True, seed=(1, 3))
        np.testing.assert_array_equal(again, train)  # seeded masks repeat ...
        assert not np.array_equal(other, train)  # ... and differ with the seed
        compiled = tf.function(lambda v: layer.forward(v, training=True, seed=(1, 2))[0])
        np.testing.assert_array_equal(compiled(x), train)  # same mask inside tf.function
    rng = np.random.RandomState(5)
    layer = Dropout(0.2)
    errors = gc.check_layer(lambda x: layer.forward(x, training=True, seed=(7, 7)),
                            Dropout.backward, {"x": rng.randn(10, 10) + 10}, rng.randn(10, 10))
    _report("Testing Dropout.backward (train)", errors, LAYER_TOL)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_batchnorm_forward_matches_keras():
    rng = np.random.RandomState(6)
    x = 5 * rng.randn(200, 3) + 12
    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([0.0, -1.0, 4.0])
    bn = BatchNorm(momentum=0.9, eps=1e-5)
    out, cache = bn.forward(x, {"gamma": np.ones(3), "beta": np.zeros(3)}, training=True,
                            state=(np.zeros(3), np.ones(3)))
    np.testing.assert_allclose(np.mean(out, 0), 0, atol=1e-10)
    np.testing.assert_allclose(np.std(out, 0), 1, atol=1e-5)
    out, cache = bn.forward(x, {"gamma": gamma, "beta": beta}, training=True,
                            state=(np.zeros(3), np.ones(3)))
    keras_bn = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float64")
    keras_bn.build((None, 3))
    keras_bn.gamma.assign(gamma)
    keras_bn.beta.assign(beta)
    np.testing.assert_allclose(out, keras_bn(x, training=True), rtol=1e-9, atol=1e-9)
    # Keras rounds the momentum 0.9 to float32 (relative 2e-7 here), hence 1e-6.
    np.testing.assert_allclose(cache["state"][0], keras_bn.moving_mean, rtol=1e-6)
    np.testing.assert_allclose(cache["state"][1], keras_bn.moving_variance, rtol=1e-6)
    test_out, _ = bn.forward(x, {"gamma": gamma, "beta": beta}, training=False,
                             state=cache["state"])
    np.testing.assert_allclose(test_out, keras_bn(x, training=False), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_backward(training):
    rng = np.random.RandomState(7)
    bn = BatchNorm()
    state = (rng.randn(5), rng.rand(5) + 0.5)
    errors = gc.check_layer(
        lambda x, gamma, beta: bn.forward(x, {"gamma": gamma, "beta": beta}, training=training,
                                          state=state),
        BatchNorm.backward, {"x": 4 * rng.randn(8, 5) + 3, "gamma": rng.randn(5),
                             "beta": rng.randn(5)}, rng.randn(8, 5))
    _report(f"Testing BatchNorm.backward ({'train' if training else 'test'})", errors, BN_TOL)


def test_gradient_check_catches_a_wrong_backward():
    """The check can fail: batch norm's backward without the batch-statistics terms is the
    test-mode gradient, which is wrong in training mode, and the error shows it."""
    rng = np.random.RandomState(8)
    bn = BatchNorm()

    def wrong_backward(dout, cache):
        return BatchNorm.backward(dout, {**cache, "training": False})

    errors = gc.check_layer(
        lambda x: bn.forward(x, {"gamma": np.ones(4), "beta": np.zeros(4)}, training=True),
        wrong_backward, {"x": rng.randn(6, 4)}, rng.randn(6, 4))
    print("\n" + gc.format_errors("A wrong BatchNorm.backward", errors))
    assert errors["x"] > 1e-2


# --------------------------------------------------------------------------------- losses


def test_softmax_loss_value_and_gradient():
    rng = np.random.RandomState(9)
    scores, y = 0.001 * rng.randn(50, 10), rng.randint(10, size=50)
    loss, _ = SoftmaxLoss.forward(scores, y)
    assert float(loss) == pytest.approx(np.log(10), rel=1e-3)  # small scores: ~ log C
    scores = 3 * rng.randn(20, 7)
    y = rng.randint(7, size=20)
    keras_loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, scores)
    assert float(SoftmaxLoss.forward(scores, y)[0]) == pytest.approx(float(keras_loss),
                                                                     rel=1e-6)
    # Small scores, as in the report: no class probability so small that the rounding of the
    # centered difference (~1e-10) dominates its gradient.
    errors = gc.check_layer(lambda x: SoftmaxLoss.forward(x, y), SoftmaxLoss.backward,
                            {"x": 0.01 * scores}, np.array(1.0))
    _report("Testing softmax_loss", errors, LAYER_TOL)


def test_svm_loss_value_and_gradient():
    rng = np.random.RandomState(10)
    scores, y = rng.randn(15, 6), rng.randint(6, size=15)
    expected = 0.0
    for i in range(15):  # the definition, one example and one class at a time
        for j in range(6):
            if j != y[i]:
                expected += max(0.0, scores[i, j] - scores[i, y[i]] + 1.0)
    assert float(SVMLoss.forward(scores, y)[0]) == pytest.approx(expected / 15, rel=1e-12)
    errors = gc.check_layer(lambda x: SVMLoss.forward(x, y), SVMLoss.backward,
                            {"x": scores}, np.array(1.0))
    _report("Testing svm_loss", errors, LAYER_TOL)


# ----------------------------------------------------------------------------------- nets


def _net_gradient_errors(model, X, y):
    _, grads = model.loss(X, y)  # the hand-written backward pass, eagerly
    # the differences' hundreds of forward passes: the same code traced once (eager, each
    # costs ~10 ms of per-op overhead)
    forward = tf.function(lambda: model.loss(X, y)[0])
    errors = {}
    for name, var in model.params.items():
        value = var.numpy()

        def f(v, var=var):
            var.assign(v)
            return float(forward())

        numeric = gc.numeric_gradient(f, value.copy())
        var.assign(value)
        if model.normalization and re.fullmatch(r"b\d+", name) and name != f"b{model.num_layers}":
            # Batch norm subtracts the batch mean: a bias before it has gradient exactly 0,
            # where a relative error only compares rounding noise.
            assert np.max(np.abs(grads[name])) < 1e-12 and np.max(np.abs(numeric)) < 1e-8
            continue
        errors[name] = gc.rel_error(numeric, grads[name])
    return errors


def test_two_layer_net_init_scores_and_gradients():
    model = TwoLayerNet(input_dim=15, hidden_dim=20, num_classes=5, weight_scale=1e-2,
                        dtype=tf.float64, seed=0)
    assert {k: tuple(v.shape) for k, v in model.params.items()} == {
        "W1": (15, 20), "b1": (20,), "W2": (20, 5), "b2": (5,)}
    assert 0.008 < np.std(model.params["W1"].numpy()) < 0.012
    assert not np.any(model.params["b1"].numpy())
    rng = np.random.RandomState(11)
    X, y = rng.randn(6, 15), rng.randint(5, size=6)
    w = {k: v.numpy() for k, v in model.params.items()}
    expected = np.maximum(X @ w["W1"] + w["b1"], 0) @ w["W2"] + w["b2"]
    np.testing.assert_allclose(model.loss(X), expected, rtol=1e-12)
    model = TwoLayerNet(input_dim=15, hidden_dim=10, num_classes=5, weight_scale=0.5,
                        dtype=tf.float64, seed=0)
    for reg in (0.0, 0.7):
        model.reg = reg
        _report(f"TwoLayerNet numeric gradient check with reg = {reg}",
                _net_gradient_errors(model, X, y), NET_TOL)


@pytest.mark.parametrize("kwargs", [
    dict(reg=0.0),
    dict(reg=3.14),
    dict(dropout=0.3, reg=0.1),
    dict(normalization="batchnorm", reg=0.1),
    dict(normalization="batchnorm", dropout=0.25),
    dict(loss="svm", reg=0.5),
], ids=["plain", "reg", "dropout", "batchnorm", "batchnorm+dropout", "svm"])
def test_fully_connected_net_gradients(kwargs):
    rng = np.random.RandomState(12)
    X, y = rng.randn(6, 7), rng.randint(4, size=6)
    model = FullyConnectedNet([8, 6], input_dim=7, num_classes=4, weight_scale=0.5,
                              dtype=tf.float64, seed=1, **kwargs)
    _report(f"FullyConnectedNet {kwargs}", _net_gradient_errors(model, X, y), NET_TOL)


def test_fully_connected_net_matches_autodiff_and_keras():
    """Hand-written gradients equal TensorFlow's autodiff of the same forward pass, and the net
    computes what the equivalent Keras Sequential computes."""
    rng = np.random.RandomState(13)
    X, y = rng.randn(16, 10), rng.randint(3, size=16)
    model = FullyConnectedNet([12, 9, 8], input_dim=10, num_classes=3, weight_scale=0.4,
                              reg=0.05, normalization="batchnorm", dropout=0.2,
                              dtype=tf.float64, seed=3)
    state = model.get_weights()
    with tf.GradientTape() as tape:
        loss, grads = model.loss(X, y, seed=(5, 9))
    auto = tape.gradient(loss, model.params)
    for name in model.params:
        np.testing.assert_allclose(grads[name], auto[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    model.set_weights(state)

    plain = FullyConnectedNet([12, 9], input_dim=10, num_classes=3, weight_scale=0.4,
                              reg=0.05, dtype=tf.float64, seed=3)
    keras_model = tf.keras.Sequential(
        [tf.keras.Input((10,), dtype="float64"),
         tf.keras.layers.Dense(12, activation="relu", dtype="float64"),
         tf.keras.layers.Dense(9, activation="relu", dtype="float64"),
         tf.keras.layers.Dense(3, dtype="float64")])
    keras_model.set_weights([plain.params[k].numpy() for k in ("W1", "b1", "W2", "b2", "W3",
                                                               "b3")])
    np.testing.assert_allclose(plain.loss(X), keras_model(X), rtol=1e-10)
    with tf.GradientTape() as tape:
        ce = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")(
            y, keras_model(X))
        total = ce + 0.05 * tf.add_n([tf.reduce_sum(tf.square(w))
                                      for w in keras_model.trainable_weights[::2]])
    keras_grads = tape.gradient(total, keras_model.trainable_weights)
    loss, grads = plain.loss(X, y)
    assert float(loss) == pytest.approx(float(total), rel=1e-10)
    for name, g in zip(("W1", "b1", "W2", "b2", "W3", "b3"), keras_grads):
        np.testing.assert_allclose(grads[name], g, rtol=1e-8, atol=1e-12, err_msg=name)


def test_batchnorm_net_updates_running_stats_only_in_training():
    model = FullyConnectedNet([5], input_dim=4, num_classes=3, normalization="batchnorm",
                              dtype=tf.float64)
    X = np.random.RandomState(14).randn(20, 4) + 3
    model.loss(X)
    np.testing.assert_array_equal(model.bn_state["running_mean1"], np.zeros(5))
    model.loss(X, np.zeros(20, np.int32))
    assert np.any(model.bn_state["running_mean1"].numpy() != 0)


# ---------------------------------------------------------------------------- update rules

@pytest.mark.parametrize("name,hyper,keras_factory,keras_slots", [
    ("sgd", {}, lambda lr: tf.keras.optimizers.SGD(lr), {}),
    ("sgd_momentum", {"momentum": 0.9},
     lambda lr: tf.keras.optimizers.SGD(lr, momentum=0.9), {"velocity": "momentum"}),
    ("nesterov", {"momentum": 0.8},
     lambda lr: tf.keras.optimizers.SGD(lr, momentum=0.8, nesterov=True),
     {"velocity": "momentum"}),
    ("rmsprop", {"rho": 0.95}, lambda lr: tf.keras.optimizers.RMSprop(lr, rho=0.95),
     {"velocity": "velocity"}),
    ("adagrad", {}, lambda lr: tf.keras.optimizers.Adagrad(lr),
     {"accumulator": "accumulator"}),
    ("adam", {"beta_1": 0.85}, lambda lr: tf.keras.optimizers.Adam(lr, beta_1=0.85),
     {"m": "momentum", "v": "velocity"}),
])
def test_update_rule_matches_keras_step_for_step(name, hyper, keras_factory, keras_slots):
    rng = np.random.RandomState(15)
    lr = 0.05
    w0 = rng.randn(4, 3).astype(np.float32)
    rule = optim.get(name, **hyper)
    w, slots = tf.constant(w0), rule.init_slots(tf.constant(w0))
    var = tf.Variable(w0, name="w")
    opt = keras_factory(lr)
    for step in range(6):
        g = rng.randn(4, 3).astype(np.float32) * (10.0 if step == 2 else 1.0)
        w, slots = rule.step(w, tf.constant(g), slots, lr, step)
        opt.apply_gradients([(tf.constant(g), var)])
        np.testing.assert_allclose(w, var, rtol=1e-6, atol=1e-6, err_msg=f"{name} step {step}")
        keras_state = {v.name.split("_")[-1]: v for v in opt.variables if v.name.startswith("w_")}
        assert set(slots) == set(keras_slots)
        for slot, value in slots.items():
            np.testing.assert_allclose(value, keras_state[keras_slots[slot]], rtol=1e-6,
                                       atol=1e-7, err_msg=f"{name} {slot} step {step}")
    assert not np.allclose(w, w0)


def test_update_rules_decrease_a_quadratic():
    target = np.array([1.0, -2.0, 3.0], np.float32)
    for name, lr in (("sgd", 0.1), ("sgd_momentum", 0.05), ("nesterov", 0.05),
                     ("rmsprop", 0.05), ("adagrad", 0.5), ("adam", 0.1)):
        rule = optim.get(name)
        w = tf.zeros(3)
        slots = rule.init_slots(w)
        for step in range(200):
            w, slots = rule.step(w, 2 * (w - target), slots, lr, step)
        assert np.sum((w.numpy() - target) ** 2) < 1e-2, name
    with pytest.raises(ValueError, match="unknown update rule"):
        optim.get("lbfgs")


# ---------------------------------------------------------------------------------- Solver


@pytest.fixture(scope="module")
def digits():
    from hw1_tf import data

    s = data.load("digits")
    x = s.x_train.reshape(len(s.x_train), -1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-7)
    return {"X_train": x[:300], "y_train": s.y_train[:300], "X_val": x[1000:1200],
            "y_val": s.y_train[1000:1200]}


@pytest.mark.parametrize("compile", ["eager", "xla"])
def test_solver_overfits_small_set(digits, compile, tmp_path):
    few = {**digits, "X_train": digits["X_train"][:50], "y_train": digits["y_train"][:50]}
    model = FullyConnectedNet([50, 50], input_dim=64, num_classes=10, weight_scale=0.1,
                              seed=0)
    ckpt = tmp_path / "ckpt.npz"
    solver = Solver(model, few, update_rule="sgd_momentum", optim_config={"learning_rate": 0.1},
                    lr_decay=0.95, batch_size=25, num_epochs=20, compile=compile, seed=0,
                    checkpoint_path=ckpt, print_every=10)
    solver.train()
    assert max(solver.train_acc_history) == 1.0
    assert solver.loss_history[-1] < 0.1 * solver.loss_history[0]
    assert len(solver.loss_history) == 20 * 2
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 21
    assert solver.learning_rate == pytest.approx(0.1 * 0.95 ** 20)
    # the best validation parameters are back in the model, and in the checkpoint
    assert solver.check_accuracy(few["X_val"], few["y_val"]) == solver.best_val_acc
    assert solver.best_val_acc == max(solver.val_acc_history)
    saved = checkpoint_weights(load_checkpoint(ckpt), "best")
    for k, v in model.get_weights().items():
        np.testing.assert_array_equal(saved[k], v)


def _short_run(data, compile, dropout, steps_per_execution=4):
    model = FullyConnectedNet([32, 32], input_dim=64, num_classes=10, weight_scale=0.1,
                              dropout=dropout, normalization="batchnorm", reg=1e-3, seed=4)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-3},
                    batch_size=50, num_epochs=2, compile=compile, seed=4,
                    steps_per_execution=steps_per_execution,
                    verbose=False)
    solver.train()
    return np.array(solver.loss_history), model.get_weights()


def _assert_same_weights(actual, expected):
    for k, v in actual.items():
        # Biases before batch norm are redundant: their gradient is rounding noise (~1e-17),
        # which Adam normalises into steps of +-lr, so they (and the running means they shift)
        # agree only to ~lr * steps.
        atol = 1e-4 if re.fullmatch(r"b[12]|running_mean[12]", k) else 1e-5
        np.testing.assert_allclose(v, expected[k], rtol=1e-4, atol=atol, err_msg=k)


def test_solver_compiled_step_equals_eager(digits):
    """Graph and XLA training follow the eager trajectory (batch-norm statistics, Adam state,
    executions of 4 steps and a remainder of 2) up to float32 rounding; dropout masks are the
    same in graph mode, and reproducible (not identical to eager's) under XLA."""
    eager = _short_run(digits, "eager", 0.2)
    graph = _short_run(digits, "graph", 0.2)
    np.testing.assert_allclose(graph[0], eager[0], rtol=1e-5)
    _assert_same_weights(graph[1], eager[1])
    # (XLA: 2 executions of 3 steps per epoch, so one compilation per run.)
    eager, xla = _short_run(digits, "eager", 0.0), _short_run(digits, "xla", 0.0, 3)
    np.testing.assert_allclose(xla[0], eager[0], rtol=1e-5)
    _assert_same_weights(xla[1], eager[1])
    xla_dropout = _short_run(digits, "xla", 0.2, 3)
    np.testing.assert_array_equal(_short_run(digits, "xla", 0.2, 3)[0], xla_dropout[0])
    assert not np.allclose(xla_dropout[0], xla[0])


def test_solver_stops_when_the_loss_diverges(digits):
    model = FullyConnectedNet([20], input_dim=64, num_classes=10, weight_scale=10.0, seed=0)
    before = model.get_weights()
    solver = Solver(model, digits, update_rule="sgd", optim_config={"learning_rate": 1e6},
                    batch_size=50, num_epochs=3, compile="eager", verbose=False)
    solver.train()
    assert solver.diverged
    assert solver.epoch == 1 and len(solver.loss_history) <= 6
    for k, v in model.get_weights().items():  # the kept parameters are the finite initial ones
        np.testing.assert_array_equal(v, before[k])
