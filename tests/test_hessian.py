"""Curvature toolkit: every route against closed forms, finite differences, a nested tape, numpy's
eigensolver and probability theory. Tiny models, seconds each."""

import math

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from hw1_tf import distribute, framework, hessian, store


def _tiny_net(seed=0, inputs=4, hidden=6, outputs=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(hidden, activation="tanh"),
                             keras.layers.Dense(outputs)])


def _classification_data(n=40, inputs=4, classes=3, seed=1):
    rng = np.random.RandomState(seed)
    return rng.randn(n, inputs).astype(np.float32), rng.randint(0, classes, n).astype(np.int32)


def _blocks_of(matrix, sizes):
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return [matrix[a:b, a:b] for a, b in zip(offsets[:-1], offsets[1:])]


# --------------------------------------------------------------------------- quadratic loss


@pytest.fixture(scope="module")
def linear_regression():
    """MSE of a linear map: a quadratic in the weights with Hessian
    H[(a,k),(c,l)] = 2/(N K) delta_kl sum_i z_ia z_ic, z = [x, 1] (kernel row-major, then bias)."""
    rng = np.random.RandomState(3)
    n, d, k = 30, 4, 2
    x, y = rng.randn(n, d), rng.randn(n, k)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
    flat = hessian.FlatLoss(model, x, y, batch_size=8,
                            dtype="float64", hvp_mode="double_backprop", jit_compile=False)
    z = np.hstack([x, np.ones((n, 1))])
    gram = 2.0 / (n * k) * z.T @ z  # (d+1, d+1)
    exact = np.zeros((flat.num_params, flat.num_params))
    for out in range(k):
        idx = np.concatenate([np.arange(d) * k + out, [d * k + out]])
        exact[np.ix_(idx, idx)] = gram
    return flat, exact


def test_quadratic_every_route_returns_the_known_hessian(linear_regression):
    flat, exact = linear_regression
    np.testing.assert_allclose(flat.full_hessian(), exact, atol=1e-12)
    blocks = flat.block_diagonal_hessian()
    assert blocks.routes == ["tf.hessians", "tf.hessians"]
    for got, want in zip(blocks.blocks, _blocks_of(exact, flat.sizes)):
        np.testing.assert_allclose(got, want, atol=1e-12)
    # HVP route of the blocks: their spectral norms
    by_hvp = flat.block_diagonal_hessian(max_block_mb=0.0)
    assert by_hvp.routes == ["hvp", "hvp"] and by_hvp.blocks == [None, None]
    want_norms = [np.linalg.norm(b, 2) for b in _blocks_of(exact, flat.sizes)]
    np.testing.assert_allclose(by_hvp.norms, want_norms, rtol=1e-8)
    assert by_hvp.spectral_norm == pytest.approx(max(want_norms), rel=1e-8)
    theta, eye = flat._tensor(flat.theta0), np.eye(flat.num_params)
    for mode in ("forward_over_reverse", "double_backprop"):
        for jit in (False, True):
            fn = flat._function(mode, jit)
            columns = np.column_stack([fn(theta, flat._tensor(e)).numpy() for e in eye])
            np.testing.assert_allclose(columns, exact, atol=1e-12, err_msg=f"{mode} xla={jit}")
    # a quadratic's Hessian does not depend on where it is taken
    elsewhere = flat.theta0 + 1.0
    np.testing.assert_allclose(flat.full_hessian(elsewhere), exact, atol=1e-12)


def test_full_hessian_over_the_limit_names_size_and_limit(linear_regression):
    flat, _ = linear_regression
    with pytest.raises(hessian.HessianTooLargeError, match=r"10 parameters needs .* MB, above "
                                                           r"the limit of 1e-05 MB"):
        flat.full_hessian(max_mb=1e-5)


# ------------------------------------------------------------------------------- tiny net


@pytest.fixture(scope="module")
def tiny():
    x, y = _classification_data()
    model = _tiny_net()
    flat = hessian.FlatLoss(model, x, y, batch_size=16, dtype="float64",
                            hvp_mode="forward_over_reverse", jit_compile=False)
    return flat, flat.full_hessian(), model, x, y


def test_full_hessian_equals_finite_differences_and_nested_tape(tiny):
    flat, full, model, x, y = tiny
    assert full.shape == (flat.num_params, flat.num_params) == (51, 51)
    # central differences of the gradient (float64)
    h = 1e-5
    fd = np.column_stack([(flat.gradient(flat.theta0 + h * e) - flat.gradient(flat.theta0 - h * e))
                          / (2 * h) for e in np.eye(flat.num_params)])
    np.testing.assert_allclose(full, fd, atol=1e-8)
    # nested tapes through the model's own call on float64 copies of its variables (no
    # stateless_call, no flat vector, no batching)
    model64 = hessian.as_float64_model(model)
    variables = model64.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            logits = model64(tf.constant(x, tf.float64))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], 0)
    rows = [tf.reshape(j, [flat.num_params, -1]) for j in outer.jacobian(grads, variables)]
    np.testing.assert_allclose(full, tf.concat(rows, 1).numpy(), atol=1e-12)
    assert flat.loss() == pytest.approx(float(loss), rel=1e-12)


def test_hessians_blocks_equal_full_diagonal_blocks(tiny):
    flat, full, *_ = tiny
    blocks = flat.block_diagonal_hessian()
    assert blocks.routes == ["tf.hessians"] * 4
    for got, want in zip(blocks.blocks, _blocks_of(full, flat.sizes)):
        np.testing.assert_allclose(got, want, atol=1e-12)
    norms = [np.linalg.norm(b, 2) for b in _blocks_of(full, flat.sizes)]
    np.testing.assert_allclose(blocks.norms, norms, rtol=1e-10)
    assert blocks.spectral_norm <= np.linalg.norm(full, 2) + 1e-12  # a lower bound of ||H||
    # mixed: the first kernel (24 parameters) over the limit goes through HVPs
    limit = hessian._mb(2 * hessian.hessian_bytes(20, 8))
    mixed = flat.block_diagonal_hessian(max_block_mb=limit)
    assert mixed.routes == ["hvp", "tf.hessians", "tf.hessians", "tf.hessians"]
    np.testing.assert_allclose(mixed.norms, norms, rtol=1e-8)


def test_hvp_choice_by_rule_and_measured_choice_cached(tiny, tmp_path, monkeypatch):
    flat, full, model, x, y = tiny
    v = np.random.RandomState(5).randn(flat.num_params)
    auto = hessian.FlatLoss(model, x, y, batch_size=16, dtype="float64")
    np.testing.assert_allclose(auto.hvp(v), full @ v, atol=1e-12)
    # the rule: no measurement, the same choice every run (a dense chain: linearised)
    assert auto._hvp_choice == ("linearised", False) and auto.hvp_timings == {}
    assert auto.hvp_choice_from == "rule"
    cache = tmp_path / "hvp_choices.json"
    monkeypatch.setenv("HW1_HVP_CACHE", str(cache))
    measured = hessian.FlatLoss(model, x, y, batch_size=16, dtype="float64",
                                hvp_mode="measure")
    np.testing.assert_allclose(measured.hvp(v), full @ v, atol=1e-12)
    assert set(measured.hvp_timings) == {"forward_over_reverse", "double_backprop",
                                         "forward_over_reverse xla", "double_backprop xla",
                                         "linearised"}
    assert measured.hvp_choice_from == "measured" and cache.is_file()
    # a second FlatLoss of the same signature reads the choice instead of measuring
    again = hessian.FlatLoss(model, x, y, batch_size=16, dtype="float64", hvp_mode="measure")
    np.testing.assert_allclose(again.hvp(v), full @ v, atol=1e-12)
    assert again._hvp_choice == measured._hvp_choice
    assert again.hvp_choice_from.startswith("cache")
    # only the chosen variant was built
    assert list(again._functions) == ([] if again._hvp_choice[0] == "linearised" else
                                      [again._hvp_choice])
    # another signature (batch size) measures again
    other = hessian.FlatLoss(model, x, y, batch_size=8, dtype="float64", hvp_mode="measure")
    other.hvp(v)
    assert other.hvp_choice_from == "measured"


def test_block_products_equal_stacked_products_and_exact_hessian(tiny):
    flat, full, *_ = tiny
    vs = np.random.RandomState(6).randn(flat.num_params, 5)
    block = flat.hvp_block(vs)
    stacked = np.column_stack([flat.hvp(vs[:, j]) for j in range(5)])
    np.testing.assert_allclose(block, stacked, atol=1e-12)
    np.testing.assert_allclose(block, full @ vs, atol=1e-12)
    # the operator splits a wide block into passes of block_size columns
    op = flat.operator()
    flat.block_size = 2
    np.testing.assert_allclose(op.matmat(vs), full @ vs, atol=1e-12)
    assert op.num_matvecs == 5
    flat.block_size = hessian.BLOCK_SIZE
    with pytest.raises(hessian.Hw1Error, match="block"):
        flat.hvp_block(vs[:-1])


def test_eigsh_top_k_equal_eigvalsh(tiny):
    flat, full, *_ = tiny
    exact = np.linalg.eigvalsh(full)
    op = flat.operator()
    top, used = hessian.top_eigenvalues(op, 4, "LA", tol=1e-10)
    np.testing.assert_allclose(top, exact[::-1][:4], rtol=1e-7, atol=1e-10)
    assert 0 < used == op.num_matvecs < 500
    bottom, _ = hessian.top_eigenvalues(op, 3, "SA", tol=1e-10)
    np.testing.assert_allclose(bottom, exact[:3], atol=1e-8)


def test_hutchinson_and_hutchpp_trace(tiny):
    flat, full, *_ = tiny
    exact = np.trace(full)
    est = hessian.hutchinson_trace(flat.operator(), probes=60, seed=0)
    assert est.num_matvecs == 60 and est.standard_error > 0
    assert abs(est.trace - exact) <= 3 * est.standard_error
    pp = hessian.hutchpp_trace(flat.operator(), matvecs=60, seed=0)
    assert pp.num_matvecs == 60
    assert abs(pp.trace - exact) <= 3 * pp.standard_error + 1e-12
    # Hutch++ is exact on a matrix whose rank its sketch covers; Hutchinson is not
    rng = np.random.RandomState(2)
    u = rng.randn(80, 5)
    low_rank = u @ np.diag([5.0, 3.0, -2.0, 1.0, 0.5]) @ u.T
    op = hessian.matrix_operator(low_rank)
    assert hessian.hutchpp_trace(op, matvecs=18).trace == pytest.approx(np.trace(low_rank),
                                                                         rel=1e-10)
    assert hessian.hutchinson_trace(op, probes=18).trace != pytest.approx(np.trace(low_rank),
                                                                          rel=1e-3)


def test_slq_moments_match_exact_eigenvalues(tiny):
    flat, full, *_ = tiny
    n = flat.num_params
    eig = np.linalg.eigvalsh(full)
    result = hessian.slq(hessian.matrix_operator(full), steps=n, probes=40, seed=0)
    # per probe, Lanczos quadrature of x^k (k < 2 steps) is v^T H^k v / |v|^2 exactly
    probes = hessian.rademacher(n, 40, 0)
    for k in (1, 2, 3):
        per_probe = np.nansum(result.weights * result.nodes ** k, axis=1)
        quad = np.einsum("pi,ij,pj->p", probes, np.linalg.matrix_power(full, k), probes) / n
        np.testing.assert_allclose(per_probe, quad, rtol=1e-8, atol=1e-12)
        exact_moment = np.mean(eig ** k)
        se = per_probe.std(ddof=1) / math.sqrt(len(per_probe))
        assert abs(result.moment(k) - exact_moment) <= 3 * se
    # the broadened density integrates to 1 and keeps the first moment
    grid, density = hessian.slq_density(result, num_points=4000)
    dx = grid[1] - grid[0]
    assert np.sum(density) * dx == pytest.approx(1.0, rel=1e-3)
    assert np.sum(grid * density) * dx == pytest.approx(result.moment(1), rel=1e-3, abs=1e-6)
    # with the HVP operator, the same probes give the same quadrature
    via_hvp = hessian.slq(flat.operator(), steps=10, probes=2, seed=0)
    direct = hessian.slq(hessian.matrix_operator(full), steps=10, probes=2, seed=0)
    np.testing.assert_allclose(via_hvp.nodes, direct.nodes, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------ distributed


def test_hvp_under_mirrored_strategy_equals_one_device():
    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    x, y = _classification_data(n=37)  # odd: the shards are padded unevenly
    model = _tiny_net(seed=4)
    one = hessian.FlatLoss(model, x, y, batch_size=8, hvp_mode="forward_over_reverse")
    two = hessian.FlatLoss(model, x, y, batch_size=8, hvp_mode="forward_over_reverse",
                           strategy=strategy)
    assert two.replicas == 2 and two.jit_compile is False
    v = np.random.RandomState(0).randn(one.num_params)
    assert two.loss() == pytest.approx(one.loss(), rel=1e-6)
    np.testing.assert_allclose(two.gradient(), one.gradient(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(two.hvp(v), one.hvp(v), rtol=1e-5, atol=1e-6)
    double = two._function("double_backprop")(two._tensor(two.theta0), two._tensor(v)).numpy()
    np.testing.assert_allclose(double, one.hvp(v), rtol=1e-5, atol=1e-6)
    # the rule's linearised products are for one replica; several fall back to double backprop
    auto = hessian.FlatLoss(model, x, y, batch_size=8, strategy=strategy)
    assert not auto.linearisable() and auto.linearised_why_not == "2 replicas"
    np.testing.assert_allclose(auto.hvp(v), one.hvp(v), rtol=1e-5, atol=1e-6)
    assert auto._hvp_choice == ("double_backprop", False)
    lin = hessian.FlatLoss(model, x, y, batch_size=8)
    np.testing.assert_allclose(lin.hvp(v), one.hvp(v), rtol=1e-5, atol=1e-6)
    assert lin._hvp_choice == ("linearised", False)


# ---------------------------------------------------------------------------- minimal ratio


def _quadratic_batched(coefficients):
    c = np.asarray(coefficients)
    return lambda thetas: np.sum(c * np.asarray(thetas) ** 2, axis=1)


def test_perturbation_ratio_of_saddles_matches_theory():
    samples = 4000
    # f = a x^2 - b y^2 at its saddle: u = r (cos p, sin p) raises f iff |tan p| < sqrt(a/b),
    # so the share is (2/pi) arctan(sqrt(a/b)): 1/2 for x^2 - y^2, 2/3 for 3x^2 - y^2
    for a, b in ((1.0, 1.0), (3.0, 1.0)):
        want = 2 / math.pi * math.atan(math.sqrt(a / b))
        got = hessian.perturbation_ratio(_quadratic_batched([a, -b]), np.zeros(2), radius=0.1,
                                         samples=samples, seed=1)
        assert abs(got - want) <= 4 * math.sqrt(want * (1 - want) / samples)
    # p directions of curvature a, q of -b: raised iff a chi2_p > b chi2_q, an F-distribution
    p, q, a, b = 3, 5, 1.0, 2.0
    want = scipy.stats.f.sf(b * q / (a * p), p, q)
    got = hessian.perturbation_ratio(_quadratic_batched([a] * p + [-b] * q), np.zeros(p + q),
                                     radius=1.0, samples=samples, seed=2)
    assert abs(got - want) <= 4 * math.sqrt(want * (1 - want) / samples)


def test_perturbation_ratio_on_a_model_is_vectorised_and_one_at_a_minimum(linear_regression):
    flat, exact = linear_regression
    # the least-squares minimum: every direction raises a convex quadratic
    g = flat.gradient()
    minimum = flat.theta0 - np.linalg.solve(exact, g)
    np.testing.assert_allclose(flat.gradient(minimum), 0, atol=1e-10)
    thetas = minimum[None] + hessian.sphere_samples(flat.num_params, 5, 0.1, 0)
    np.testing.assert_allclose(flat.batched_loss(thetas), [flat.loss(t) for t in thetas],
                               rtol=1e-12)
    assert hessian.perturbation_ratio(flat.batched_loss, minimum, 0.1, samples=300) == 1.0
    # and the loss rises by exactly the quadratic form
    u = thetas - minimum
    np.testing.assert_allclose(flat.batched_loss(thetas) - flat.loss(minimum),
                               0.5 * np.einsum("si,ij,sj->s", u, exact, u), rtol=1e-9)


def test_eigenvalue_ratio():
    ratio = hessian.eigenvalue_ratio([2.0, 1e-9, -1e-9, -3.0, 0.5], tolerance=1e-6)
    assert ratio == {"minimal_ratio": 0.4, "near_zero_ratio": 0.4}


# ------------------------------------------------------------------------------ SavedModel


def test_saved_model_weights_are_the_ones_analysed(tmp_path):
    x, y = _classification_data()
    model = _tiny_net(seed=7)
    path = store.export_model(model, tmp_path / "net")
    loaded = hessian.keras_model_for_saved_model(path)
    a = hessian.FlatLoss(model, x, y, hvp_mode="double_backprop", jit_compile=False)
    b = hessian.FlatLoss(loaded, x, y, hvp_mode="double_backprop", jit_compile=False)
    np.testing.assert_array_equal(a.theta0, b.theta0)
    # the SavedModel's own serve() gives the same loss
    saved = store.load_saved_model(path)
    served = saved.serve(tf.constant(x))
    want = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, served)
    assert b.loss() == pytest.approx(float(want), rel=1e-6)
    # without the .keras file the spec is needed
    path.with_suffix(".keras").unlink()
    with pytest.raises(hessian.Hw1Error, match="no net.keras beside it.*--route=serve"):
        hessian.keras_model_for_saved_model(path)


# ------------------------------------------------------------------------------ experiment


def test_hessian_spectrum_end_to_end_on_a_saved_model(tmp_path):
    from hw1_tf.experiments import hessian_spectrum

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="relu"), keras.layers.Dense(10)])
    store.export_model(model, tmp_path / "saved_models" / "actual_task" / "digits_tiny")
    config = hessian_spectrum.Config(experiment="actual_task", run="digits_tiny",
                                     dataset="digits", num_examples=120, top_k=3, probes=12,
                                     lanczos_steps=15, perturbation_samples=64, verbose=0,
                                     hvp_mode="forward_over_reverse", jit_compile=False,
                                     dtype="float64", route="keras", output_dir=str(tmp_path))
    results = framework.run(hessian_spectrum, config)
    run = results["runs"]["digits_tiny"]
    exact = np.asarray(run["eigenvalues"])
    assert run["num_params"] == len(exact) == 64 * 4 + 4 + 4 * 10 + 10
    np.testing.assert_allclose(run["top_eigenvalues"], exact[::-1][:3], rtol=1e-4)
    np.testing.assert_allclose(run["bottom_eigenvalues"], exact[:3], rtol=1e-3, atol=1e-6)
    assert abs(run["trace"] - exact.sum()) <= 3 * run["trace_standard_error"]
    assert run["minimal_ratio"] == pytest.approx(np.mean(exact > 1e-6))
    assert run["blocks"]["spectral_norm"] <= np.abs(exact).max() * (1 + 1e-9)
    assert 0 <= run["perturbation_ratio"] <= 1
    assert run["num_hvps"] >= 2 * 12 + 15
    assert json_ok(tmp_path / "results/hessian_spectrum/results.json")
    assert (tmp_path / "figures/hessian_spectrum/density_digits_tiny.png").is_file()


def json_ok(path):
    import json

    return json.loads(path.read_text())["experiment"] == "hessian_spectrum"
