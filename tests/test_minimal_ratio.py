"""Critical points and the minimal ratio: the second-order steps on closed-form functions, the
per-member Hessians against hessian.FlatLoss, and the experiment's `reached` flag."""

import numpy as np
import pytest

from hw1_tf import critical, data, framework, hessian, models
from hw1_tf.experiments import minimal_ratio


class Cubic:
    """f(x) = x0^3 - 3 x0 + sum_{i>0} c_i x_i^2, rows independent: a minimum at x0 = 1 and a
    saddle at x0 = -1 (Hessian diag(-6, 2 c_1, 2 c_2, ...)), x_i = 0."""

    def __init__(self, c):
        self.c = np.asarray(c, np.float64)

    def losses(self, theta):
        theta = np.atleast_2d(theta)
        return theta[:, 0] ** 3 - 3 * theta[:, 0] + np.sum(self.c * theta[:, 1:] ** 2, axis=1)

    def gradients(self, theta):
        g = np.empty_like(theta)
        g[:, 0] = 3 * theta[:, 0] ** 2 - 3
        g[:, 1:] = 2 * self.c * theta[:, 1:]
        return g

    def hessians(self, theta):
        h = np.zeros((len(theta),) + (theta.shape[1],) * 2)
        h[:, 0, 0] = 6 * theta[:, 0]
        for i, c in enumerate(self.c, 1):
            h[:, i, i] = 2 * c
        return h


class Quadratic:
    """f(x) = x^T A x / 2 - b^T x per row: one Newton step lands on A^-1 b."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def gradients(self, theta):
        return theta @ self.a - self.b

    def hessians(self, theta):
        return np.broadcast_to(self.a, (len(theta),) + self.a.shape).copy()


@pytest.mark.parametrize("method", ["newton", "lm"])
def test_quadratic_solved(method):
    rng = np.random.RandomState(0)
    q = rng.standard_normal((6, 6))
    a = q @ np.diag([5.0, 2.0, 1.0, 0.5, -1.0, -3.0]) @ q.T  # indefinite: a saddle
    b = rng.standard_normal(6)
    solution = np.linalg.solve(a, b)
    theta0 = solution + rng.standard_normal((3, 6))
    settings = critical.CriticalSettings(method=method, max_iterations=30, stop_grad_norm=1e-11)
    theta, record = critical.find_critical_points(Quadratic(a, b), theta0, settings)
    np.testing.assert_allclose(theta, np.broadcast_to(solution, theta.shape), atol=1e-9)
    if method == "newton":  # the full step is exact: one iteration
        assert np.all(record["stopped_at_iteration"] == 1)
    assert np.all(np.diff(record["grad_norm"], axis=0) <= 0)  # never rises


def test_newton_quadratic_convergence_to_saddle():
    f = Cubic([1.0, 0.5])
    theta0 = np.array([[-1.3, 0.4, -0.2], [-0.8, -0.3, 0.1]])
    settings = critical.CriticalSettings(method="newton", max_iterations=20, stop_grad_norm=1e-14)
    theta, record = critical.find_critical_points(f, theta0, settings)
    np.testing.assert_allclose(theta, [[-1, 0, 0], [-1, 0, 0]], atol=1e-10)  # the saddle
    for m in range(2):
        # quadratic convergence: e_{k+1} <= C e_k^2 with C of the order of f'''/f'' (here the
        # x0 error obeys e_{k+1} = e_k^2 / (2 |x_k|) exactly), while e_k is still resolvable
        e = np.asarray(record["grad_norm"][:, m])
        e = e[(e > 1e-12) & np.isfinite(e)]
        ratios = e[1:] / e[:-1] ** 2
        assert len(ratios) >= 2
        assert np.all(ratios < 1.0), ratios
        assert e[-1] < 1e-6 * e[0]


def test_lm_finds_saddle_and_minimal_ratio_matches_theory():
    f = Cubic([1.0])
    theta0 = np.array([[-1.2, 0.3]])
    settings = critical.CriticalSettings(method="lm", max_iterations=60, stop_grad_norm=1e-12)
    theta, record = critical.find_critical_points(f, theta0, settings)
    np.testing.assert_allclose(theta[0], [-1, 0], atol=1e-10)
    eigenvalues = np.linalg.eigvalsh(f.hessians(theta)[0])  # -6, 2
    assert hessian.eigenvalue_ratio(eigenvalues, 1e-8)["minimal_ratio"] == 0.5
    # -3 u^2 + v^2 > 0 on the circle where |tan| > sqrt(3): a third of the directions
    share = hessian.perturbation_ratio(f.losses, theta[0], 1e-4, samples=6000, seed=1)
    assert share == pytest.approx(1 / 3, abs=4 * np.sqrt(2 / 9 / 6000))


def test_stalled_member_is_stopped_not_moved():
    f = Quadratic(np.zeros((2, 2)), np.ones(2))  # no critical point: nothing can help
    theta, record = critical.find_critical_points(
        f, np.zeros((1, 2)), critical.CriticalSettings(method="newton", max_iterations=5))
    assert record["stalled"][0] and record["stopped_at_iteration"][0] == 1
    np.testing.assert_array_equal(theta, np.zeros((1, 2)))


def test_member_hessians_match_flat_loss():
    spec = models.ModelSpec("t", "dense", hidden=(3, 2), activation="tanh")
    splits = data.function_splits("sinc", 40, 2, seed=0)
    x, y = splits.x_train.astype(np.float64), splits.y_train.astype(np.float64)
    losses = critical.MemberLosses(spec, x, y)
    rng = np.random.RandomState(0)
    theta = rng.standard_normal((3, losses.num_params))
    h = losses.hessians(theta)
    g = losses.gradients(theta)
    for i in range(3):
        # FlatLoss flattens the Keras model's variables in the same order; theta is passed
        # as float64 (the float32 model's own weights would round it)
        flat = hessian.FlatLoss(models.build(spec, (1,), 1), x, y, dtype="float64")
        np.testing.assert_allclose(losses.losses(theta[i:i + 1])[0], flat.loss(theta[i]),
                                   rtol=1e-12)
        np.testing.assert_allclose(g[i], flat.gradient(theta[i]), rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(h[i], flat.full_hessian(theta[i]), rtol=1e-8, atol=1e-11)
    # and the gradient against central differences
    e = np.zeros(losses.num_params)
    e[4] = 1e-6
    fd = (losses.losses(theta + e) - losses.losses(theta - e)) / 2e-6
    np.testing.assert_allclose(fd, g[:, 4], rtol=1e-5, atol=1e-9)


def test_norm_table():
    assert critical.norm_table([1e-3, 5e-5, 2e-6], [1e-3, 1e-4, 1e-5, 1e-6]) == [
        (1e-3, 3), (1e-4, 2), (1e-5, 1), (1e-6, 0)]


def test_measure_flags_points_that_are_not_critical():
    spec = models.ModelSpec("t", "dense", hidden=(3,), activation="tanh")
    splits = data.function_splits("sinc", 24, 2, seed=0)
    x, y = splits.x_train.astype(np.float64), splits.y_train.astype(np.float64)
    losses = critical.MemberLosses(spec, x, y)
    rng = np.random.RandomState(1)
    start = rng.standard_normal((3, losses.num_params))
    theta, _ = critical.find_critical_points(
        losses, start, critical.CriticalSettings(method="lm", max_iterations=200,
                                                 stop_grad_norm=1e-10))
    theta = np.concatenate([theta[:2], start[2:]])  # the last one is a random point
    config = minimal_ratio.Config(critical_grad_norm=1e-6, perturbation_samples=50)
    end = minimal_ratio.measure(losses, theta, config)
    flat = hessian.FlatLoss(models.build(spec, (1,), 1), x, y, dtype="float64")
    norms = np.array([np.linalg.norm(flat.gradient(t)) for t in theta])
    np.testing.assert_allclose(end["grad_norm"], norms, rtol=1e-8, atol=1e-14)
    np.testing.assert_array_equal(end["reached"], norms <= 1e-6)
    assert not end["reached"][2]  # a random point is not a critical point, and says so
    for i in range(3):
        np.testing.assert_allclose(end["loss"][i], flat.loss(theta[i]), rtol=1e-12)
        eig = np.linalg.eigvalsh(flat.full_hessian(theta[i]))
        np.testing.assert_allclose(end["eigenvalues"][i], eig, atol=1e-10)
        tol = config.eigen_tolerances[0] * np.max(np.abs(eig))
        assert end["eigenvalue_ratio"][i, 0] == np.mean(eig > tol)
        assert end["near_zero_ratio"][i, 0] == np.mean(np.abs(eig) <= tol)


def test_experiment_end_to_end(tmp_path):
    config = minimal_ratio.Config(
        runs=4, hidden=(3,), n_train=24, epochs=2, batch_size=24, critical_iterations=2,
        critical_grad_norm=1e-4, perturbation_samples=50, output_dir=str(tmp_path),
        verbose=0, jit_compile=False, steps_per_execution=1)
    results = framework.run(minimal_ratio, config)
    end = results["runs"]["endpoints"]
    spec = minimal_ratio.model_spec(config)
    splits = data.function_splits("sinc", 24, 2, seed=0)
    flat = hessian.FlatLoss(models.build(spec, (1,), 1), splits.x_train.astype(np.float64),
                            splits.y_train.astype(np.float64), dtype="float64")
    # small arrays are kept in results.json at 7 digits: the stored weights are the end points
    norms = [np.linalg.norm(flat.gradient(np.asarray(t, np.float64))) for t in end["weights"]]
    np.testing.assert_allclose(end["grad_norm"], norms, rtol=1e-3)
    # 2 epochs and 2 steps from random starts: not critical points, and flagged as such
    assert not any(end["reached"])
    assert results["norm_table"][2] == {"threshold": 1e-4, "runs": 0}
    assert np.shape(end["eigenvalue_ratio"]) == (4, 3)
    assert {p.name for p in tmp_path.glob("figures/minimal_ratio/*.png")} == {
        "minimal_ratio.png", "tolerances.png", "critical_phase.png"}
    # a rerun of the same config skips the kept population: nothing trains, same numbers
    from hw1_tf import population

    def no_training(*args, **kwargs):
        raise AssertionError("the finished population was trained again")

    original, population.train_population = population.train_population, no_training
    try:
        again = framework.run(minimal_ratio, config)
    finally:
        population.train_population = original
    np.testing.assert_array_equal(np.asarray(again["runs"]["endpoints"]["grad_norm"]),
                                  np.asarray(end["grad_norm"]))
    assert again["norm_table"] == results["norm_table"]
    assert again["model"]["num_params"] == results["model"]["num_params"] == flat.num_params
