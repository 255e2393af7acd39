"""GGN and empirical Fisher beside the Hessian, and the numbers' error bars: every operator
against the exact matrix of a tiny net built independently (explicit Jacobians, closed-form
output Hessians, per-example gradients), Ritz residuals against true distances, trace intervals'
coverage over seeds, the SLQ positive share against the exact share, per-layer blocks against the
full Hessian's."""

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from hw1_tf import hessian


def _tiny_net(seed=0, inputs=4, hidden=6, outputs=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(hidden, activation="tanh"),
                             keras.layers.Dense(outputs)])


def _flat_variables_jacobian(model64, x, fn):
    """d fn(model64(x)) / d theta as (..., P): nested tape through the model's own call on its
    float64 variables (no stateless_call, no flat vector, no batching)."""
    variables = model64.trainable_variables
    with tf.GradientTape() as tape:
        value = fn(model64(tf.constant(x, tf.float64)))
    jac = tape.jacobian(value, variables)
    lead = value.shape
    return tf.concat([tf.reshape(j, list(lead) + [-1]) for j in jac], -1).numpy()


@pytest.fixture(scope="module")
def classifier():
    rng = np.random.RandomState(1)
    x = rng.randn(40, 4).astype(np.float32)
    y = rng.randint(0, 3, 40).astype(np.int32)
    model = _tiny_net()
    flat = hessian.FlatLoss(model, x, y, batch_size=16, dtype="float64",
                            hvp_mode="forward_over_reverse", jit_compile=False)
    model64 = hessian.as_float64_model(model)
    logits = model64(tf.constant(x, tf.float64)).numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    jac = _flat_variables_jacobian(model64, x, lambda out: out)  # (N, K, P)
    out_hessians = np.stack([np.diag(q) - np.outer(q, q) for q in p])  # softmax CE in logits
    ggn = np.einsum("nkp,nkl,nlq->pq", jac, out_hessians, jac) / len(x)
    per_example = _flat_variables_jacobian(
        model64, x, lambda out: tf.nn.sparse_softmax_cross_entropy_with_logits(y, out))  # (N, P)
    fisher = per_example.T @ per_example / len(x)
    return flat, flat.full_hessian(), ggn, fisher


def _dense(op):
    return np.column_stack([op.matvec(e) for e in np.eye(op.shape[0])])


def test_ggn_and_fisher_products_equal_the_exact_matrices(classifier):
    flat, full, ggn, fisher = classifier
    np.testing.assert_allclose(_dense(hessian.GGNOperator(flat)), ggn, atol=1e-12)
    np.testing.assert_allclose(_dense(hessian.FisherOperator(flat)), fisher, atol=1e-12)
    # the three are different matrices here (a net, not a linear model), and the exact ones
    # are PSD while the Hessian is not
    assert np.abs(ggn - full).max() > 1e-3 and np.abs(fisher - ggn).max() > 1e-3
    assert np.linalg.eigvalsh(ggn).min() > -1e-12 and np.linalg.eigvalsh(fisher).min() > -1e-12
    # the Fisher's mean gradient is the loss gradient (same per-example gradients)
    per_example_mean = np.sqrt(np.trace(fisher))  # ||g_i|| rms >= ||mean g_i||
    assert np.linalg.norm(flat.gradient()) <= per_example_mean + 1e-12


def test_ggn_of_mse_on_a_linear_model_is_the_hessian():
    # a linear model's outputs have no curvature: G = H = 2/(NK) Z^T Z exactly
    rng = np.random.RandomState(3)
    x, y = rng.randn(30, 4), rng.randn(30, 2)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    flat = hessian.FlatLoss(model, x, y, batch_size=8, dtype="float64",
                            hvp_mode="double_backprop", jit_compile=False)
    np.testing.assert_allclose(_dense(hessian.GGNOperator(flat)), flat.full_hessian(),
                               atol=1e-12)


def test_operators_under_float32_and_xla_match_float64(classifier):
    flat64, _, ggn, fisher = classifier
    rng = np.random.RandomState(1)
    x = rng.randn(40, 4).astype(np.float32)
    y = rng.randint(0, 3, 40).astype(np.int32)
    flat = hessian.FlatLoss(_tiny_net(), x, y, batch_size=16, hvp_mode="double_backprop",
                            jit_compile=True)
    v = rng.randn(flat.num_params)
    np.testing.assert_allclose(hessian.GGNOperator(flat).matvec(v), ggn @ v, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(hessian.FisherOperator(flat).matvec(v), fisher @ v, rtol=1e-4,
                               atol=1e-5)


# ------------------------------------------------------ the serve route: reverse mode only


def _exported(model, path):
    """A float64 copy of `model` exported by plain Keras (serve only, no .keras beside it)."""
    hessian.as_float64_model(model).export(str(path), verbose=0)
    return path


def test_serve_route_ggn_and_fisher_by_double_vjp_equal_the_exact_matrices(classifier,
                                                                           tmp_path):
    flat, _, ggn, fisher = classifier
    rng = np.random.RandomState(1)
    x = rng.randn(40, 4).astype(np.float32)
    y = rng.randint(0, 3, 40).astype(np.int32)
    serve = hessian.FlatLoss.from_saved_model(_exported(_tiny_net(), tmp_path / "net"), x, y,
                                              batch_size=16)
    assert serve.route == "serve" and serve.outputs_kind == "logits" and serve.num_batches == 3
    for kind, exact in (("ggn", ggn), ("fisher", fisher)):
        op = hessian.curvature_operator(serve, kind)
        assert op.mode == "reverse"
        np.testing.assert_allclose(_dense(op), exact, atol=1e-12)
        # the same reverse-only products on the Keras route
        keras_reverse = hessian.curvature_operator(flat, kind, mode="reverse")
        np.testing.assert_allclose(_dense(keras_reverse), exact, atol=1e-12)
    with pytest.raises(hessian.Hw1Error, match="forward-mode products do not pass through"):
        hessian.GGNOperator(serve, mode="forward")


def test_serve_route_ggn_of_a_probabilities_model_equals_the_closed_form(tmp_path):
    """serve returns softmax probabilities: the loss is Keras' cross-entropy of probabilities,
    -log(p_y / sum_k p_k), whose Hessian in p is e_y e_y^T / p_y^2 - 1 1^T / (sum_k p_k)^2."""
    rng = np.random.RandomState(2)
    x = rng.randn(30, 4)
    y = rng.randint(0, 3, 30).astype(np.int32)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                              keras.layers.Dense(3, activation="softmax")])
    serve = hessian.FlatLoss.from_saved_model(_exported(model, tmp_path / "probs"), x, y,
                                              batch_size=7)
    assert serve.outputs_kind == "probabilities"
    model64 = hessian.as_float64_model(model)
    p = model64(tf.constant(x)).numpy()
    assert 1e-7 < p[np.arange(30), y].min() and p[np.arange(30), y].max() < 1 - 1e-7  # no clip
    s = p.sum(1)
    out_hessians = np.stack([np.diag(np.eye(3)[yi] / pi[yi] ** 2) - np.ones((3, 3)) / si ** 2
                             for pi, yi, si in zip(p, y, s)])
    jac = _flat_variables_jacobian(model64, x, lambda out: out)
    ggn = np.einsum("nkp,nkl,nlq->pq", jac, out_hessians, jac) / len(x)
    np.testing.assert_allclose(_dense(hessian.GGNOperator(serve)), ggn, atol=1e-12)
    per_example = _flat_variables_jacobian(model64, x, lambda out: -tf.math.log(
        tf.gather(out, y, batch_dims=1) / tf.reduce_sum(out, 1)))
    np.testing.assert_allclose(_dense(hessian.FisherOperator(serve)),
                               per_example.T @ per_example / len(x), atol=1e-12)


def test_serve_route_ggn_of_mse_on_a_linear_model_is_the_hessian(tmp_path):
    rng = np.random.RandomState(3)
    x, y = rng.randn(30, 4), rng.randn(30, 2)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    serve = hessian.FlatLoss.from_saved_model(_exported(model, tmp_path / "linear"), x, y,
                                              batch_size=8)
    assert serve.outputs_kind == "regression"
    # closed form: L = 1/(NK) sum (x W + b - y)^2, H = 2/(NK) Z^T Z kron I_K, Z = [x, 1]
    z = np.hstack([x, np.ones((30, 1))])
    h = np.zeros((10, 10))
    h[:8, :8] = np.kron(x.T @ x, np.eye(2))  # kernel (4, 2) row-major
    h[:8, 8:] = np.kron(x.sum(0)[:, None], np.eye(2))
    h[8:, :8] = h[:8, 8:].T
    h[8:, 8:] = 30 * np.eye(2)
    h *= 2 / (30 * 2)
    assert np.allclose(np.linalg.eigvalsh(h).sum(), 2 / 60 * 2 * np.trace(z.T @ z))
    np.testing.assert_allclose(_dense(hessian.GGNOperator(serve)), h, atol=1e-12)
    np.testing.assert_allclose(serve.full_hessian(), h, atol=1e-12)


def test_serve_and_keras_routes_agree_on_ggn_and_fisher(tmp_path):
    from hw1_tf import store

    rng = np.random.RandomState(5)
    x = rng.randn(50, 8, 8, 1).astype(np.float32)
    y = rng.randint(0, 4, 50).astype(np.int32)
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, activation="tanh"),
                              keras.layers.Flatten(), keras.layers.Dense(4)])
    path = store.export_model(model, tmp_path / "net")  # SavedModel + net.keras
    serve = hessian.FlatLoss.from_saved_model(path, x, y, batch_size=20)
    keras_route = hessian.FlatLoss.from_saved_model(path, x, y, route="keras", batch_size=20)
    vs = rng.randn(serve.num_params, 3)
    for kind in ("ggn", "fisher"):
        a = hessian.curvature_operator(serve, kind).matmat(vs)
        b = hessian.curvature_operator(keras_route, kind).matmat(vs)
        assert hessian.curvature_operator(keras_route, kind).mode == "forward"
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


# ------------------------------------------------------------------ top-k with residuals


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher"])
def test_eigenpairs_of_each_operator_equal_eigh_with_residuals(classifier, kind):
    flat, full, ggn, fisher = classifier
    exact = {"hessian": full, "ggn": ggn, "fisher": fisher}[kind]
    values, vectors = np.linalg.eigh(exact)
    op = hessian.curvature_operator(flat, kind)
    top = hessian.eigenpairs(op, 3, "LA", tol=1e-10)
    np.testing.assert_allclose(top.values, values[::-1][:3], rtol=1e-8, atol=1e-12)
    assert top.residuals.max() < 1e-7
    # each Ritz vector spans the same line as the exact one (gaps are wide here)
    cosines = np.abs(np.sum(top.vectors * vectors[:, ::-1][:, :3], axis=0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)
    assert top.num_matvecs == op.num_matvecs


def test_ritz_residuals_bound_the_true_error_on_loose_runs(classifier):
    _, full, *_ = classifier
    exact = np.linalg.eigvalsh(full)
    op = hessian.matrix_operator(full)
    bounded = 0
    for steps in (4, 6, 8, 12):
        for seed in range(5):
            # a few Lanczos steps leave Ritz values with real errors
            result = hessian.eigenpairs(op, 2, "LA", tol=1e-1, ncv=steps, maxiter=1, seed=seed)
            for value, vector, residual in zip(result.values, result.vectors.T,
                                               result.residuals):
                np.testing.assert_allclose(residual, np.linalg.norm(full @ vector - value *
                                                                    vector), rtol=1e-10)
                distance = np.abs(exact - value).min()
                assert distance <= residual * (1 + 1e-9) + 1e-14
                bounded += distance > 1e-8  # a real error, bounded
    assert bounded >= 10


def test_principal_angles_between_operators_equal_exact_eigenspaces(classifier):
    flat, full, ggn, fisher = classifier
    k = 3
    exact_vectors = {name: np.linalg.eigh(m)[1][:, ::-1][:, :k]
                     for name, m in (("hessian", full), ("ggn", ggn), ("fisher", fisher))}
    found = {name: hessian.eigenpairs(hessian.curvature_operator(flat, name), k, "LA",
                                      tol=1e-10).vectors for name in exact_vectors}
    for a, b in (("hessian", "ggn"), ("hessian", "fisher"), ("ggn", "fisher")):
        # independent: cosines are the singular values of Qa^T Qb
        s = np.linalg.svd(exact_vectors[a].T @ exact_vectors[b], compute_uv=False)
        want = np.sort(np.degrees(np.arccos(np.clip(s, -1, 1))))
        np.testing.assert_allclose(hessian.principal_angles(found[a], found[b]), want,
                                   atol=1e-4)
    same = hessian.principal_angles(found["ggn"], found["ggn"] @ np.linalg.qr(
        np.random.RandomState(0).randn(k, k))[0])
    np.testing.assert_allclose(same, 0, atol=1e-5)
    orthogonal = hessian.principal_angles(np.eye(6)[:, :2], np.eye(6)[:, 2:4])
    np.testing.assert_allclose(orthogonal, 90.0)


# ------------------------------------------------------------------------ trace intervals


@pytest.mark.parametrize("estimator", ["hutchinson", "hutchpp"])
def test_trace_interval_covers_the_exact_trace_at_its_rate(classifier, estimator):
    _, full, *_ = classifier
    op = hessian.matrix_operator(full)
    exact = np.trace(full)
    covered = 0
    seeds = 50
    for seed in range(seeds):
        est = (hessian.hutchinson_trace(op, 30, seed=seed) if estimator == "hutchinson"
               else hessian.hutchpp_trace(op, 30, seed=seed))
        lo, hi = est.interval(0.9)
        assert lo < est.trace < hi
        covered += lo <= exact <= hi
    # a 90% interval: >= 80% of 50 seeds (binomial(50, 0.9) falls below 40 with p = 0.02)
    assert covered >= 40, covered
    # and a narrow interval (10%) covers far less often: the width means something
    narrow = sum(lo <= exact <= hi for lo, hi in
                 (hessian.hutchinson_trace(op, 30, seed=s).interval(0.1) for s in range(seeds)))
    assert narrow <= 15, narrow


def test_diagonal_estimate_is_exact_on_a_diagonal_and_unbiased_elsewhere(classifier):
    _, full, *_ = classifier
    d = np.random.RandomState(0).randn(20)
    exact_diag = hessian.hutchinson_diagonal(hessian.matrix_operator(np.diag(d)), 3, seed=0)
    np.testing.assert_allclose(exact_diag.diagonal, d, atol=1e-14)
    m = 2000
    est = hessian.hutchinson_diagonal(hessian.matrix_operator(full), m, seed=1,
                                      groups=[24, 6, 18, 3])
    # entry j's estimator is H_jj + sum_{k != j} H_jk v_j v_k: variance sum_{k != j} H_jk^2
    off = np.sqrt((full ** 2).sum(1) - np.diag(full) ** 2)
    sd = off / math.sqrt(m)
    assert np.all(np.abs(est.diagonal - np.diag(full)) <= 5 * sd + 1e-12)
    np.testing.assert_allclose(est.standard_error, sd, rtol=0.2, atol=1e-12)
    # the groups' per-probe sums are Hutchinson's trace samples with the same probes
    same = hessian.hutchinson_trace(hessian.matrix_operator(full), m, seed=1)
    np.testing.assert_allclose(est.trace_estimate().samples, same.samples, rtol=1e-10)
    with pytest.raises(hessian.Hw1Error, match="groups of 50 entries"):
        hessian.hutchinson_diagonal(hessian.matrix_operator(full), 2, groups=[50])


def test_block_curvature_equals_the_full_hessian_blocks(classifier):
    flat, full, *_ = classifier
    op = flat.operator()
    diagonal = hessian.hutchinson_diagonal(op, 400, seed=0, groups=flat.sizes)
    layers = hessian.block_curvature(op, flat.sizes, diagonal, tol=1e-10)
    bounds = np.concatenate([[0], np.cumsum(flat.sizes)])
    within = 0
    for layer, lo, hi in zip(layers, bounds[:-1], bounds[1:]):
        block = full[lo:hi, lo:hi]
        assert layer["route"] == "hutchinson"
        assert layer["top_eigenvalue"] == pytest.approx(np.linalg.eigvalsh(block).max(),
                                                        rel=1e-8, abs=1e-12)
        assert layer["residual"] < 1e-7
        lo_ci, hi_ci = layer["interval"]
        within += lo_ci <= np.trace(block) <= hi_ci
        assert abs(layer["trace"] - np.trace(block)) <= 5 * layer["standard_error"] + 1e-12
    assert within >= 3
    # blocks up to 6 entries built whole: exact, at one product per entry
    mixed = hessian.block_curvature(op, flat.sizes, diagonal, tol=1e-10, exact_below=6)
    assert [layer["route"] for layer in mixed] == ["hutchinson", "dense", "hutchinson", "dense"]
    for layer, lo, hi in zip(mixed, bounds[:-1], bounds[1:]):
        if layer["route"] == "dense":
            block = full[lo:hi, lo:hi]
            assert layer["trace"] == pytest.approx(np.trace(block), rel=1e-10)
            assert layer["top_eigenvalue"] == pytest.approx(np.linalg.eigvalsh(block).max(),
                                                            rel=1e-10)
            assert layer["hvps"] == hi - lo
    assert sum(layer["trace"] for layer in layers) == pytest.approx(
        diagonal.trace_estimate().trace, rel=1e-10)


# ------------------------------------------------------------------------- positive share


def test_slq_positive_share_against_the_exact_share(classifier):
    flat, full, ggn, _ = classifier
    n = flat.num_params
    values, vectors = np.linalg.eigh(full)
    tol = 1e-6
    exact = np.mean(values > tol)
    assert 0.2 < exact < 0.8  # a saddle-like spectrum: the test can tell estimates apart
    op = hessian.matrix_operator(full)
    # complete Lanczos runs: an unbiased estimate, within 3 s.e. of the exact share
    full_runs = hessian.slq(op, steps=n, probes=40, seed=0)
    share = hessian.slq_share_above(full_runs, tol)
    assert abs(share["share"] - exact) <= 3 * share["standard_error"]
    # short runs: each probe's own measure has its mass above tol inside the bracket
    probes = hessian.rademacher(n, 40, 3)
    short = hessian.slq(op, steps=8, probes=40, seed=3)
    for p in range(40):
        weights = (vectors.T @ probes[p]) ** 2 / n
        mass = weights[values > tol].sum()
        one = hessian.SLQResult(short.nodes[p:p + 1], short.weights[p:p + 1], 8)
        bracket = hessian.slq_share_above(one, tol)
        assert bracket["lower"] - 1e-10 <= mass <= bracket["upper"] + 1e-10
    averaged = hessian.slq_share_above(short, tol)
    assert averaged["lower"] <= averaged["share"] <= averaged["upper"]
    assert averaged["lower"] - 3 * averaged["standard_error"] <= exact <= \
        averaged["upper"] + 3 * averaged["standard_error"]
    # a PSD operator has (nearly) every eigenvalue above -tol: the share above -1e-9 is ~1
    psd = hessian.slq_share_above(hessian.slq(hessian.matrix_operator(ggn + 1e-3 * np.eye(n)),
                                              steps=n, probes=4, seed=0), 0.0)
    assert psd["share"] == pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------------------------ experiment


def test_hessian_spectrum_reports_every_number_with_its_error_bar(tmp_path):
    """hessian_spectrum end to end on a net small enough to diagonalise: residuals bound the
    distance to the exact eigenvalues, the interval covers the exact trace, the SLQ share is
    checked against the exact share, per-layer blocks against the full Hessian's, GGN/Fisher
    top-k against their exact matrices; the subsample study, four figures, and a report
    section that refers to each by key."""
    import re

    from hw1_tf import framework, markdown, store
    from hw1_tf.experiments import hessian_spectrum

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="relu"), keras.layers.Dense(10)])
    store.export_model(model, tmp_path / "saved_models" / "actual_task" / "digits_tiny")
    config = hessian_spectrum.Config(
        experiment="actual_task", run="digits_tiny", dataset="digits", num_examples=150,
        top_k=3, probes=12, lanczos_steps=15, slq_probes=4, perturbation_samples=32, verbose=0,
        hvp_mode="forward_over_reverse", jit_compile=False, dtype="float64", route="keras",
        subsample_min=32, subsample_seeds=2, output_dir=str(tmp_path))
    results = framework.run(hessian_spectrum, config)
    run = results["runs"]["digits_tiny"]
    exact = np.asarray(run["eigenvalues"])
    n = len(exact)
    for values, residuals in (("top_eigenvalues", "top_residuals"),
                              ("bottom_eigenvalues", "bottom_residuals")):
        for value, residual in zip(run[values], run[residuals]):
            # results.json keeps 7 significant digits: the stored values are that close
            assert np.abs(exact - value).min() <= residual + 1e-6 * abs(value)
    lo, hi = run["trace_interval"]
    assert lo <= exact.sum() <= hi
    # a relu net: the exact trace from the exact diagonal (no probes) is the spectrum's sum
    assert run["trace_exact"] == pytest.approx(exact.sum(), rel=1e-6)
    # the exact spectrum fits: the ratio shown is exact, the SLQ share checked against it
    assert run["minimal_ratio_from"] == "exact eigenvalues"
    share = run["slq_positive_share"]
    assert share["probes"] == 4 and share["lower"] <= share["share"] <= share["upper"]
    assert share["lower"] - 3 * share["standard_error"] <= run["minimal_ratio"] <= \
        share["upper"] + 3 * share["standard_error"]
    # independent exact matrices of the same loss
    x, y = hessian_spectrum._examples(config, "digits")
    loaded = hessian.keras_model_for_saved_model(
        tmp_path / "saved_models" / "actual_task" / "digits_tiny")
    flat = hessian.FlatLoss(loaded, x, y, dtype="float64", hvp_mode="double_backprop",
                            jit_compile=False)
    full = flat.full_hessian()
    np.testing.assert_allclose(np.linalg.eigvalsh(full), exact, atol=1e-10)
    model64 = hessian.as_float64_model(loaded)
    per_example = _flat_variables_jacobian(
        model64, x, lambda out: tf.nn.sparse_softmax_cross_entropy_with_logits(y, out))
    fisher = per_example.T @ per_example / len(x)
    np.testing.assert_allclose(run["operators"]["fisher"]["top"]["eigenvalues"],
                               np.linalg.eigvalsh(fisher)[::-1][:3], rtol=1e-6)
    # a dense chain: the Fisher's and GGN's exact traces
    assert run["operators"]["fisher"]["trace_exact"] == pytest.approx(np.trace(fisher),
                                                                       rel=1e-6)
    ggn_top = run["operators"]["ggn"]["top"]
    assert np.all(np.asarray(ggn_top["eigenvalues"]) > 0)
    assert np.all(np.asarray(ggn_top["residuals"]) < 1e-6)
    angles = run["operators"]["principal_angles"]
    assert set(angles) == {"hessian-ggn", "hessian-fisher", "ggn-fisher"}
    assert all(0 <= a <= 90 for v in angles.values() for a in v)
    # per layer: top eigenvalue of each block; the layers' traces sum to the whole trace
    bounds = np.concatenate([[0], np.cumsum(flat.sizes)])
    for block, a, b in zip(run["layers"]["blocks"], bounds[:-1], bounds[1:]):
        want = np.linalg.eigvalsh(full[a:b, a:b]).max()
        assert abs(block["top_eigenvalue"] - want) <= block["residual"] + 1e-6 * abs(want)
        if block["route"] == "dense":
            assert block["trace"] == pytest.approx(np.trace(full[a:b, a:b]), rel=1e-6)
        assert block["trace_exact"] == pytest.approx(np.trace(full[a:b, a:b]), rel=1e-6)
    assert [b["route"] for b in run["layers"]["blocks"]] == ["hutchinson", "dense", "dense",
                                                            "dense"]
    assert len(run["layers"]["diagonal"]) == n
    np.testing.assert_allclose(run["layers"]["diagonal_exact"], np.diag(full), rtol=1e-6,
                               atol=1e-12)
    # subsample study: sizes 32, 64, 128 and the whole 150; the answer names one of them
    study = run["subsample"]
    assert study["sizes"] == [32, 64, 128, 150]
    assert np.asarray(study["lambda_max"]).shape == (3, 2)
    assert study["enough_examples"] in study["sizes"]
    assert str(study["enough_examples"]) in study["answer"]
    # figures by key, and the section refers to each
    figures = tmp_path / "figures" / "hessian_spectrum"
    keys = [f"{k}_digits_tiny" for k in ("density", "operators", "subsample", "layers")]
    for key in keys:
        assert (figures / f"{key}.png").is_file()
    stored = store.load_results(store.Paths.create(tmp_path), "hessian_spectrum")
    text = hessian_spectrum.report_section(stored, markdown.Context(
        store.Paths.create(tmp_path), "hessian_spectrum"))
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert [Path(link).stem for link in links] == keys
    assert "Ritz residual" in text and "how many examples are enough?" in text
    assert "from the exact eigenvalues" in text and "SLQ estimate of the share" in text
    assert "Exact trace " in text and "no probes" in text


def test_unknown_operator_kind_names_the_choices(classifier):
    flat, *_ = classifier
    with pytest.raises(hessian.Hw1Error, match="unknown curvature operator 'kfac'; choose from "
                                               "hessian, ggn, fisher"):
        hessian.curvature_operator(flat, "kfac")
