"""Products from the cached linearisation (hw1_tf.linearised) against the exact Hessian and GGN
of small float64 nets, the exact diagonal and trace against the Hessian's own, and the rule
that picks it."""

import keras
import numpy as np
import pytest

from hw1_tf import hessian, linearised
from hw1_tf.errors import Hw1Error


def _net(act, head=None, seed=0):
    """Flatten, Dense + act, Dropout, Dense without bias, Activation layer, Dense (+ head)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((3, 4)), keras.layers.Flatten(), keras.layers.Dense(5, activation=act),
        keras.layers.Dropout(0.3), keras.layers.Dense(4, use_bias=False),
        keras.layers.Activation(act), keras.layers.Dense(3, activation=head)])


def _data(n=37, seed=0):
    """Features whose first row is zero in every example (as MNIST's border pixels): the
    linearisation drops them from the first layer (tests/test_hessian's data has none)."""
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, 3, 4))
    x[:, 0] = 0.0
    return x, rng.randint(0, 3, n).astype(np.int32)


def _ggn_matrix(flat):
    """The GGN column by column through the forward-mode JVP route (no linearisation)."""
    op = hessian.GGNOperator(flat, mode="forward")
    return np.stack([op.matvec(e) for e in np.eye(flat.num_params)], 1)


CASES = [("relu", None, "logits"), ("relu", "softmax", "probabilities"),
         ("tanh", None, "logits"), ("sigmoid", "softmax", "probabilities")]


@pytest.mark.parametrize("act,head,outputs", CASES)
def test_products_equal_the_exact_hessian_and_ggn(act, head, outputs):
    x, y = _data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=head is None)
    # three batches, the last one padded: the cache is per batch
    flat = hessian.FlatLoss(_net(act, head), x, y, dtype="float64", batch_size=16, loss=loss)
    assert flat.linearisable(), flat.linearised_why_not
    full = flat.full_hessian()
    rng = np.random.RandomState(1)
    vs = rng.standard_normal((flat.num_params, 3))
    np.testing.assert_allclose(flat.hvp(vs[:, 0]), full @ vs[:, 0], atol=1e-12)
    assert flat._hvp_choice == ("linearised", False)
    np.testing.assert_allclose(flat.hvp_block(vs), full @ vs, atol=1e-12)
    lin = flat.linearisation()
    assert lin.piecewise_linear == (act == "relu")
    assert lin._columns is not None and lin._columns[0].shape[0] == 8  # 4 of 12 dropped
    ggn = _ggn_matrix(flat)
    if head is None:  # the GGN splits at the model's outputs: the logits here
        assert lin.ggn_applies
        np.testing.assert_allclose(lin.block_product(vs, "ggn"), ggn @ vs, atol=1e-12)
        np.testing.assert_allclose(hessian.GGNOperator(flat).matvec(vs[:, 1]),
                                   ggn @ vs[:, 1], atol=1e-12)
        np.testing.assert_allclose(lin.ggn_diagonal(), np.diag(ggn), atol=1e-12)
    else:  # a softmax after the last Dense layer: the operator keeps its own route
        assert not lin.ggn_applies
        assert hessian.GGNOperator(flat)._linearisation is None
    # the empirical Fisher (any head: it needs only per-example gradients)
    fisher_op = hessian.FisherOperator(flat, mode="forward")
    fisher = np.stack([fisher_op.matvec(e) for e in np.eye(flat.num_params)], 1)
    assert hessian.FisherOperator(flat)._linearisation is lin
    np.testing.assert_allclose(hessian.FisherOperator(flat).matvec(vs[:, 2]), fisher @ vs[:, 2],
                               atol=1e-12)
    np.testing.assert_allclose(lin.block_product(vs, "fisher"), fisher @ vs, atol=1e-12)
    np.testing.assert_allclose(hessian.FisherOperator(flat).exact_diagonal(), np.diag(fisher),
                               atol=1e-12)
    if head is None:
        np.testing.assert_allclose(hessian.GGNOperator(flat).exact_diagonal(), np.diag(ggn),
                                   atol=1e-12)
    else:
        assert hessian.GGNOperator(flat).exact_diagonal() is None
    if act == "relu":  # piecewise linear: the Hessian's diagonal and trace exactly
        np.testing.assert_allclose(flat.exact_diagonal(), np.diag(full), atol=1e-12)
        trace = flat.trace()
        assert trace.exact and trace.num_matvecs == 0
        assert trace.trace == pytest.approx(np.trace(full), abs=1e-12)
        assert trace.interval() == (trace.trace, trace.trace)
    else:  # curved activations: the GGN diagonal is not the Hessian's; no exact trace
        assert np.abs(lin.ggn_diagonal() - np.diag(full)).max() > 1e-3
        assert flat.exact_diagonal() is None
        with pytest.raises(Hw1Error, match="no exact trace"):
            flat.trace(method="exact")
        assert not flat.trace(probes=4).exact


def test_a_new_theta_gets_its_own_linearisation():
    x, y = _data()
    flat = hessian.FlatLoss(_net("tanh"), x, y, dtype="float64", batch_size=64)
    other = flat.theta0 + 0.1 * np.random.RandomState(2).standard_normal(flat.num_params)
    v = np.random.RandomState(3).standard_normal(flat.num_params)
    reference = hessian.FlatLoss(_net("tanh"), x, y, dtype="float64", batch_size=64,
                                 hvp_mode="double_backprop", jit_compile=False)
    np.testing.assert_allclose(flat.hvp(v, other), reference.hvp(v, other), atol=1e-12)
    np.testing.assert_allclose(flat.hvp(v), reference.hvp(v), atol=1e-12)


def test_mse_loss_and_float32():
    x, _ = _data()
    y = np.random.RandomState(4).standard_normal((len(x), 3))
    model = _net("relu")
    exact = hessian.FlatLoss(model, x, y, dtype="float64", batch_size=64)
    np.testing.assert_allclose(exact.exact_diagonal(), np.diag(exact.full_hessian()),
                               atol=1e-12)
    single = hessian.FlatLoss(model, x.astype(np.float32), y.astype(np.float32), batch_size=64)
    v = np.random.RandomState(5).standard_normal(single.num_params)
    want = exact.full_hessian() @ v
    got = single.hvp(v)
    assert got.dtype == np.float32
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def _conv():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3),
                             keras.layers.Flatten(), keras.layers.Dense(3)])


def _functional():
    inputs = keras.Input((3, 4))
    flat = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(5)(flat)))


def _batch_norm():
    return keras.Sequential([keras.Input((3, 4)), keras.layers.Flatten(),
                             keras.layers.Dense(5), keras.layers.BatchNormalization(),
                             keras.layers.Dense(3)])


def _softmax_hidden():
    return keras.Sequential([keras.Input((3, 4)), keras.layers.Flatten(),
                             keras.layers.Dense(5, activation="softmax"), keras.layers.Dense(3)])


@pytest.mark.parametrize("build,why", [
    (_conv, "Conv2D"), (_functional, "not a keras.Sequential"),
    (_batch_norm, "BatchNormalization"), (_softmax_hidden, "not elementwise")])
def test_other_models_fall_back_to_double_backprop(build, why):
    model = build()
    x, y = _data()
    if model.input_shape[1:] == (4, 4, 1):
        x = np.random.RandomState(0).standard_normal((37, 4, 4, 1))
    flat = hessian.FlatLoss(model, x, y, dtype="float64", batch_size=64)
    assert not flat.linearisable() and why in flat.linearised_why_not
    v = np.random.RandomState(6).standard_normal(flat.num_params)
    np.testing.assert_allclose(flat.hvp(v), flat.full_hessian() @ v, atol=1e-12)
    assert flat._hvp_choice == ("double_backprop", False)
    assert flat.exact_diagonal() is None
    with pytest.raises(Hw1Error, match="hvp_mode=linearised does not apply"):
        hessian.FlatLoss(model, x, y, dtype="float64", hvp_mode="linearised").hvp(v)


def test_the_cache_budget_and_several_replicas_fall_back(monkeypatch):
    x, y = _data()
    monkeypatch.setattr(linearised, "MAX_CACHE_MB", 1e-6)
    flat = hessian.FlatLoss(_net("relu"), x, y, dtype="float64", batch_size=64)
    assert not flat.linearisable() and "above" in flat.linearised_why_not
