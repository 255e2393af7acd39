"""Generalization measures against finite differences, closed forms, enumeration and numpy.
Tiny nets, seconds each."""

import dataclasses
import itertools
import math

import keras
import numpy as np
import pytest

from hw1_tf import framework, hessian, measures
from hw1_tf.experiments import reparametrization


def _relu_net(seed=0, inputs=5, hidden=(7,), outputs=3, dtype="float64"):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((inputs,), dtype=dtype)]
    layers += [keras.layers.Dense(h, activation="relu", dtype=dtype) for h in hidden]
    layers.append(keras.layers.Dense(outputs, dtype=dtype))
    return keras.Sequential(layers)


def _data(n=12, inputs=5, classes=3, seed=1):
    rng = np.random.RandomState(seed)
    return rng.randn(n, inputs), rng.randint(0, classes, n).astype(np.int32)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_input_gradient_and_jacobian_match_finite_differences():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,), dtype="float64"),
                            keras.layers.Dense(6, activation="tanh", dtype="float64"),
                            keras.layers.Dense(3, dtype="float64")])
    x, y = _data(n=5, inputs=4)
    grad_norm, jac_norm = measures.input_sensitivities(net, x, y, batch_size=2)
    h = 1e-6
    for i in range(len(x)):
        fd_grad, fd_jac = [], []
        for k in range(x.shape[1]):
            e = np.zeros_like(x[i:i + 1])
            e[0, k] = h
            lp = measures.logits_of(net, x[i:i + 1] + e)
            lm = measures.logits_of(net, x[i:i + 1] - e)
            fd_grad.append((measures.cross_entropy(lp, y[i:i + 1])[0]
                            - measures.cross_entropy(lm, y[i:i + 1])[0]) / (2 * h))
            fd_jac.append((_softmax(lp) - _softmax(lm))[0] / (2 * h))
        np.testing.assert_allclose(grad_norm[i], np.linalg.norm(fd_grad), rtol=1e-6)
        np.testing.assert_allclose(jac_norm[i], np.linalg.norm(fd_jac), rtol=1e-6)


# --------------------------------------------------------------------- quadratic loss


@pytest.fixture(scope="module")
def quadratic():
    """MSE of a linear map y = x w + b with zero-mean inputs at its least-squares minimum:
    L(theta) = L* + 1/2 d^T H d exactly, H = blockdiag(2 X^T X / N, 2) (the kernel-bias block
    vanishes because the columns of X have zero mean)."""
    rng = np.random.RandomState(4)
    n, d = 40, 3
    x = rng.randn(n, d)
    x -= x.mean(axis=0)
    y = (x @ rng.randn(d) + 0.3 + 0.5 * rng.randn(n))[:, None]
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((d,), dtype="float64"), keras.layers.Dense(1,
                                                                                  dtype="float64")])
    z = np.hstack([x, np.ones((n, 1))])
    solution = np.linalg.lstsq(z, y[:, 0], rcond=None)[0]
    net.layers[0].kernel.assign(solution[:d, None])
    net.layers[0].bias.assign(solution[d:])
    h = np.zeros((d + 1, d + 1))
    h[:d, :d] = 2 * x.T @ x / n
    h[d, d] = 2.0
    loss_star = float(np.mean((z @ solution - y[:, 0]) ** 2))
    return net, x, y, h, solution, loss_star


def test_three_sharpness_definitions_give_the_closed_form(quadratic):
    net, x, y, h, theta, loss_star = quadratic
    eps = 1e-2
    result = measures.sharpness_measures(net, x, y, epsilon=eps, keskar_epsilon=eps,
                                         keskar_restarts=8, keskar_maxiter=50)
    norm = np.max(np.abs(np.linalg.eigvalsh(h)))
    np.testing.assert_allclose(result["analysis_loss"], loss_star, rtol=1e-10)
    np.testing.assert_allclose(result["hessian_norm"], norm, rtol=1e-6)
    np.testing.assert_allclose(result["block_hessian_norm"], norm, rtol=1e-10)
    closed = norm * eps ** 2 / (2 * (1 + loss_star))
    np.testing.assert_allclose(result["sharpness_slides"], closed, rtol=1e-10)
    np.testing.assert_allclose(result["sharpness_whole"], closed, rtol=1e-6)
    # Keskar: a convex quadratic's maximum over a box is at a vertex; enumerate all of them
    bound = eps * (np.abs(theta) + 1)
    best = max(0.5 * (s * bound) @ h @ (s * bound)
               for s in itertools.product((-1, 1), repeat=len(theta)))
    np.testing.assert_allclose(result["sharpness_keskar"], best / (1 + loss_star), rtol=1e-6)


def test_ball_and_box_agree_when_one_direction_is_curved():
    """H = lambda e_1 e_1^T: the slides' ball value lambda eps^2 / 2 equals the box value when
    theta_1 = 0, so all three definitions give the same closed form."""
    lam, eps, n = 3.0, 1e-3, 6
    theta = np.zeros(n)
    theta[1:] = np.linspace(-2, 2, n - 1)

    def loss(t):
        return 0.5 * lam * (t[0] - theta[0]) ** 2

    def grad(t):
        g = np.zeros(n)
        g[0] = lam * (t[0] - theta[0])
        return g

    result = measures.keskar_sharpness(loss, grad, theta, eps, restarts=3, maxiter=20)
    closed = lam * eps ** 2 / 2
    np.testing.assert_allclose(result.sharpness, closed, rtol=1e-10)
    h = np.zeros((n, n))
    h[0, 0] = lam
    whole = measures.hessian_norm(hessian.matrix_operator(h))
    np.testing.assert_allclose(measures.slides_sharpness(whole.norm, 0.0, eps), closed,
                               rtol=1e-8)


def test_lbfgsb_maximiser_stays_inside_the_box():
    """A loss rising without bound in every direction (||theta||^2 plus a tilt): the maximiser
    must sit on the box, never beyond it, at the vertex the closed form names."""
    rng = np.random.RandomState(0)
    theta = rng.randn(20) * 3
    tilt = rng.randn(20)

    def loss(t):
        return float(t @ t + tilt @ t)

    def grad(t):
        return 2 * t + tilt

    result = measures.keskar_sharpness(loss, grad, theta, 0.05, restarts=1, maxiter=50)
    assert np.all(np.abs(result.perturbation) <= result.bound)
    # separable convex: each coordinate goes to the end of its interval farther uphill
    ends = np.where(2 * theta + tilt >= 0, result.bound, -result.bound)
    np.testing.assert_allclose(result.perturbation, ends, rtol=1e-12)
    np.testing.assert_allclose(result.max_loss, loss(theta + ends), rtol=1e-12)


# ------------------------------------------------------------------------ norms, margins


def test_path_norm_of_one_hidden_layer_by_enumeration():
    net = _relu_net(inputs=4, hidden=(5,), outputs=3)
    w1, _, w2, _ = [np.asarray(v.numpy()) for v in net.trainable_variables]
    total = sum(w1[i, j] ** 2 * w2[j, k] ** 2
                for i in range(4) for j in range(5) for k in range(3))
    np.testing.assert_allclose(measures.path_norm(net), math.sqrt(total), rtol=1e-12)


def test_spectral_norm_product_against_numpy():
    net = _relu_net(inputs=6, hidden=(8, 5), outputs=4)
    kernels = [np.asarray(v.numpy()) for v in net.trainable_variables if v.ndim == 2]
    expected = np.prod([np.linalg.norm(w, 2) for w in kernels])
    norms = measures.parameter_norms(net)
    np.testing.assert_allclose(norms["spectral_product"], expected, rtol=1e-10)
    np.testing.assert_allclose(norms["frobenius_product"],
                               np.prod([np.linalg.norm(w) for w in kernels]), rtol=1e-12)
    theta = measures.flat_weights(net)
    assert norms["distance_from_init"] != norms["distance_from_init"]  # NaN without theta_0
    moved = measures.parameter_norms(net, initial=theta - 0.5)
    np.testing.assert_allclose(moved["distance_from_init"], 0.5 * math.sqrt(theta.size))


def test_margins_and_margin_measures():
    logits = np.array([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.5, 0.2]])
    np.testing.assert_allclose(measures.margins(logits, np.array([0, 1, 0])), [1.0, 2.0, -0.5])
    net = _relu_net()
    x, y = _data(n=30)
    y = np.argmax(measures.logits_of(net, x), axis=1)  # all correct: positive margins
    m = measures.margin_measures(net, x, y, percentile=0.0)
    gamma = np.min(measures.margins(measures.logits_of(net, x), y))
    np.testing.assert_allclose(m["margin"], gamma)
    np.testing.assert_allclose(m["inverse_margin"], 1 / gamma ** 2)


def test_pac_bayes_sigma_matches_the_closed_form_of_a_quadratic():
    """L(theta + sigma u) - L(theta) = sigma^2 |u|^2 / 2 for L = |t|^2 / 2 at 0: the bisection
    must return sqrt(2 delta / mean |u|^2) for the same draws."""
    n, delta, samples = 50, 0.3, 8
    u = np.random.RandomState(5).standard_normal((samples, n))

    def batched(ts):
        return 0.5 * np.sum(ts ** 2, axis=1)

    sigma = measures.pac_bayes_sigma(batched, np.zeros(n), 0.0, increase=delta,
                                     samples=samples, seed=5, steps=60)
    np.testing.assert_allclose(sigma, math.sqrt(2 * delta / np.mean(np.sum(u ** 2, 1))),
                               rtol=1e-9)


def test_kendall_tau():
    assert measures.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert measures.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(measures.kendall_tau([1, 2], [1, 2]))


# --------------------------------------------------------------------- reparametrisation


def test_reparametrization_leaves_the_function_unchanged_and_changes_sharpness():
    net = _relu_net(inputs=5, hidden=(6, 4), outputs=3)
    x, y = _data(n=20)
    before = measures.logits_of(net, x)
    base = measures.sharpness_measures(net, x, y, keskar_restarts=1)
    scaled = reparametrization.rescaled(net, layer=0, alpha=100.0)
    np.testing.assert_allclose(measures.logits_of(scaled, x), before, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(measures.logits_of(net, x), before)  # the original is untouched
    after = measures.sharpness_measures(scaled, x, y, keskar_restarts=1)
    np.testing.assert_allclose(after["analysis_loss"], base["analysis_loss"], rtol=1e-12)
    # the next layer's kernel is divided by 100: its Hessian block grows by 100^2
    assert after["hessian_norm"] > 100 * base["hessian_norm"]
    w0 = [np.asarray(v.numpy()) for v in net.trainable_variables]
    w1 = [np.asarray(v.numpy()) for v in scaled.trainable_variables]
    np.testing.assert_allclose(w1[0], 100 * w0[0])
    np.testing.assert_allclose(w1[1], 100 * w0[1])
    np.testing.assert_allclose(w1[2], w0[2] / 100)
    np.testing.assert_allclose(w1[4], w0[4])


def test_hessian_norm_takes_the_negative_end_when_it_dominates():
    rng = np.random.RandomState(2)
    q, _ = np.linalg.qr(rng.randn(30, 30))
    values = np.linspace(-0.5, 2.0, 30)
    values[0] = -7.0
    h = q @ np.diag(values) @ q.T
    result = measures.hessian_norm(hessian.matrix_operator(h))
    np.testing.assert_allclose([result.top, result.bottom, result.norm], [2.0, -7.0, 7.0],
                               rtol=1e-6)


def test_measures_end_to_end_ranks_the_sensitivity_models(tmp_path, shared_run):
    """sensitivity trains three models to one loss target (or its epoch limit; the session's
    shared run, conftest), sharpness three for a fixed number of epochs; measures reads their
    SavedModels: every measure per model, tau overall and within each source, and the report
    section; tau is recomputed here from the stored values."""
    from hw1_tf import markdown
    from hw1_tf.experiments import measures as measures_exp, sharpness

    tiny = dict(dataset="digits", epochs=3, verbose=0, steps_per_execution=8,
                tensorboard=False, jit_compile=False, output_dir=str(tmp_path))
    trained = shared_run("sensitivity", tmp_path)
    assert trained["config"]["stop_loss_below"] == 0.5 and trained["config"]["epochs"] == 3
    for run in trained["runs"].values():
        epochs = run["history"]["epoch"]["train_loss"]
        assert epochs[-1] <= 0.5 or len(epochs) == 3  # stopped at the target, or ran out
    sharp = framework.run(sharpness, sharpness.Config(**tiny, hidden=(8,), batch_sizes=(16, 64, 256),
                                           learning_rates=(3e-3,), analysis_examples=40,
                                           keskar_maxiter=2, keskar_restarts=1))
    for run in sharp["runs"].values():  # the slides' formula from its own parts
        assert run["sharpness_slides"] == pytest.approx(
            run["block_hessian_norm"] * 1e-8 / (2 * (1 + run["analysis_loss"])), rel=1e-5)
        assert run["sharpness_seconds"] > 0
    config = measures_exp.Config(output_dir=str(tmp_path), sources=("sensitivity", "sharpness"),
                                 analysis_examples=40, sensitivity_examples=40, trace_probes=2,
                                 pac_bayes_samples=2, keskar_maxiter=2, keskar_restarts=1)
    results = framework.run(measures_exp, config)
    runs = list(results["runs"].values())
    assert len(runs) == 6 and {r["source"] for r in runs} == {"sensitivity", "sharpness"}
    assert [r["loss_target"] for r in runs] == [0.5] * 3 + [None] * 3
    for m in measures_exp.MEASURES:
        for g in measures_exp.GAPS:
            expected = measures.kendall_tau([r[m] for r in runs], [r[g] for r in runs])
            got = results["kendall_tau"][m][g]
            assert (got is None and math.isnan(expected)) or got == pytest.approx(expected, 1e-6)
    for source in ("sensitivity", "sharpness"):  # tau within each source, from its 3 models
        members = [r for r in runs if r["source"] == source]
        tau = results["kendall_tau_by_source"][source]["path_norm"]["loss_gap"]
        assert tau == pytest.approx(measures.kendall_tau([r["path_norm"] for r in members],
                                                         [r["loss_gap"] for r in members]))
    from hw1_tf import store
    # the stored test losses are the SavedModels' own: equal to each source's final numbers
    by_run = {(r["source"], r["run"]): r for r in runs}
    for source, done in (("sensitivity", trained), ("sharpness", sharp)):
        for name, run in done["runs"].items():
            np.testing.assert_allclose(by_run[source, name]["test_loss"], run["test_loss"],
                                       rtol=1e-5)
    # the sharpness models' three definitions are the sharpness run's own (same settings and
    # examples): read, not measured again; the sensitivity models' are measured
    for name, run in sharp["runs"].items():
        row = by_run["sharpness", name]
        assert row["sharpness_reused"]
        for key in measures.SHARPNESS_KEYS:
            assert row[key] == run[key]
    assert not any(r["sharpness_reused"] for r in runs if r["source"] == "sensitivity")
    # ... and equal to measuring them afresh on the SavedModel (float32 products: rtol 1e-3)
    from hw1_tf import fetch
    from hw1_tf.experiments import approaches
    name, run = next(iter(sharp["runs"].items()))
    splits = fetch.load_dataset("digits", None, seed=0)
    x, y = approaches.analysis_subset(splits, 40, 0)
    fresh = measures.sharpness_measures(hessian.keras_model_for_saved_model(run["saved_model"]),
                                        x, y, keskar_maxiter=2, keskar_restarts=1)
    assert set(fresh) == set(measures.SHARPNESS_KEYS)
    for key in ("analysis_loss", "sharpness_slides", "sharpness_whole", "sharpness_keskar"):
        assert fresh[key] == pytest.approx(run[key], rel=1e-3), key
    # any differing setting, or a record without them, and they are measured again
    source_config = store.read_results(store.Paths.create(tmp_path).results_json(
        "sharpness"))["config"]
    assert measures_exp.stored_sharpness(run, source_config, config) is not None
    for change in (dict(keskar_maxiter=3), dict(epsilon=1e-3), dict(analysis_examples=41),
                   dict(seed=1)):
        other = dataclasses.replace(config, **change)
        assert measures_exp.stored_sharpness(run, source_config, other) is None, change
    assert measures_exp.stored_sharpness({**run, "sharpness_keskar": None}, source_config,
                                         config) is None
    assert measures_exp.stored_sharpness(run, {**source_config, "eigen_tolerance": 1e-6},
                                         config) is None
    text = measures_exp.report_section(results, markdown.Context(store.Paths.create(tmp_path),
                                                               "measures"))
    assert "Within each source" in text and "trained to training loss 0.5" in text
    assert "3 sharpness models are the sharpness run's own" in text


def test_sharpness_measures_under_mirrored_strategy_equal_one_device(monkeypatch):
    """The examples sharded over 2 logical CPUs and the sums all-reduced: the same Hessian
    norms and sharpness values as one device (float64, so only the reduction order differs)."""
    from hw1_tf import distribute

    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    net = _relu_net(seed=2, hidden=(6, 5))
    x, y = _data(n=37, seed=4)  # odd: the replicas get uneven shards
    kw = dict(keskar_maxiter=3, keskar_restarts=2, seed=1)
    built = []
    original = hessian.FlatLoss

    def recording(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(hessian, "FlatLoss", recording)
    one = measures.sharpness_measures(net, x, y, **kw)
    two = measures.sharpness_measures(net, x, y, strategy=strategy, **kw)
    assert [fl.replicas for fl in built] == [1, 2]  # the second really ran on two replicas
    for key in ("analysis_loss", "block_hessian_norm", "hessian_norm", "sharpness_slides",
                "sharpness_whole", "sharpness_keskar", "gradient_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


def test_reparametrization_experiment_end_to_end_and_rerun_skips(tmp_path, monkeypatch):
    from hw1_tf.experiments import approaches

    config = reparametrization.Config(
        dataset="digits", epochs=1, hidden=(8, 8), alphas=(0.1, 1.0, 10.0),
        analysis_examples=40, keskar_maxiter=2, keskar_restarts=1, verbose=0,
        steps_per_execution=8, tensorboard=False, jit_compile=False, output_dir=str(tmp_path))
    results = framework.run(reparametrization, config)
    model = results["runs"]["model"]
    assert max(model["output_change"]) < 1e-10 and max(model["loss_change"]) < 1e-10
    slides = np.asarray(model["sharpness_slides"])
    assert slides[0] > 10 * slides[1] and slides[2] > 10 * slides[1]  # sharper both ways

    def no_training(*args, **kwargs):
        raise AssertionError("the finished model was trained again")

    monkeypatch.setattr(approaches, "train_approach", no_training)
    again = framework.run(reparametrization, config)
    np.testing.assert_allclose(again["runs"]["model"]["sharpness_slides"], slides, rtol=1e-6)
