"""HW1-2 optimisation studies: weight snapshots of a population, PCA, filter-normalised
orthogonal directions, batched loss surfaces checked against Keras models point by point, and
the three experiments end to end on tiny data."""

import numpy as np
import pytest

from hw1_tf import data, framework, landscape, models, population, store
from hw1_tf.experiments import error_surface, grad_norm, trajectory

DIGITS = data.load("digits", train_size=300, test_size=100)
SPEC = models.ModelSpec("tiny", hidden=(7, 5), activation="tanh")
FN = data.function_splits("sinc", 64, 20, seed=0)


def _weights(spec, input_shape, outputs, seed=0):
    return population.initial_weights(spec, input_shape, outputs, seed)


def _keras_losses(spec, splits, weights_list):
    """The loss of each weight set through an ordinary Keras model and numpy (independent of
    the batched path)."""
    outputs = splits.num_classes or 1
    net = models.build(spec, splits.input_shape, outputs)
    out = []
    for ws in weights_list:
        net.set_weights(ws)
        logits = net.predict(splits.x_train, verbose=0)[None]
        out.append(landscape.mean_losses(logits, splits.y_train, splits.num_classes)[0][0])
    return np.array(out)


# ------------------------------------------------------------------------------ directions


@pytest.mark.parametrize("input_dim", [1, 6])
def test_directions_orthogonal_and_filter_normalised(input_dim):
    """d1 . d2 = 0 exactly (to round-off) while every group of each direction has the norm of
    the weights' group: columns of multi-input kernels, the whole kernel of a 1-input layer;
    biases do not move."""
    weights = [w.astype(np.float64) for w in _weights(SPEC, (input_dim,), 3)]
    dirs = landscape.filter_normalized_directions(weights, 2, seed=3)
    assert dirs.shape == (2, landscape.flatten(weights).size)
    cos = dirs[0] @ dirs[1] / np.linalg.norm(dirs, axis=1).prod()
    assert abs(cos) < 1e-12
    for k in range(2):
        parts = landscape.unflatten(dirs[k], [w.shape for w in weights])
        for w, d in zip(weights, parts):
            if w.ndim == 1:
                assert not d.any()
            elif w.shape[0] == 1:
                np.testing.assert_allclose(np.linalg.norm(d), np.linalg.norm(w), rtol=1e-10)
            else:
                np.testing.assert_allclose(np.linalg.norm(d, axis=0), np.linalg.norm(w, axis=0),
                                           rtol=1e-10)
    # a different seed gives different directions (the test would pass for a constant)
    other = landscape.filter_normalized_directions(weights, 2, seed=4)
    assert not np.allclose(other, dirs)


def test_naive_normalise_then_nothing_is_not_orthogonal():
    """The property above is not automatic: plain filter-normalised Gaussians (Li et al.)
    are only nearly orthogonal."""
    weights = _weights(SPEC, (6,), 3)
    rng = np.random.default_rng(0)
    raw = []
    for _ in range(2):
        parts = []
        for w in weights:
            d = rng.standard_normal(w.shape) if w.ndim > 1 else np.zeros(w.shape)
            if w.ndim > 1:
                d *= np.linalg.norm(w, axis=0) / np.linalg.norm(d, axis=0)
            parts.append(d)
        raw.append(landscape.flatten(parts))
    assert abs(raw[0] @ raw[1]) / np.linalg.norm(raw[0]) / np.linalg.norm(raw[1]) > 1e-3


# ------------------------------------------------------------------------------- surfaces


@pytest.mark.parametrize("splits", [DIGITS, FN], ids=["digits", "function"])
def test_surface_vectorised_equals_loop_and_centre(splits):
    outputs = splits.num_classes or 1
    weights = _weights(SPEC, splits.input_shape, outputs, seed=1)
    theta = landscape.flatten(weights)
    dirs = landscape.filter_normalized_directions(weights, 2, seed=0)
    coeffs = np.array([[0.0, 0.0], [0.3, -0.2], [-0.7, 0.5], [1.0, 1.0], [0.05, 0.9]])
    evaluator = landscape.SurfaceEvaluator(weights, splits.x_train, splits.y_train,
                                           splits.num_classes, SPEC.activation, chunk=2)
    batched = evaluator(dirs, coeffs)  # 3 chunks of 2 points, the last one padded
    shapes = [w.shape for w in weights]
    loop = _keras_losses(SPEC, splits, [landscape.unflatten(theta + c @ dirs, shapes)
                                        for c in coeffs])
    np.testing.assert_allclose(batched, loop, rtol=2e-5, atol=1e-6)
    # the centre is the model itself; moving changes the loss (not a constant)
    np.testing.assert_allclose(batched[0], _keras_losses(SPEC, splits, [weights])[0], rtol=1e-5)
    assert np.ptp(batched) > 1e-3
    # a 1-D call through the same compiled function (padded direction)
    line = evaluator(dirs[:1], coeffs[:, :1])
    np.testing.assert_allclose(line, _keras_losses(
        SPEC, splits, [landscape.unflatten(theta + c[0] * dirs[0], shapes) for c in coeffs]),
        rtol=2e-5, atol=1e-6)


def test_zero_direction_is_flat():
    weights = _weights(SPEC, DIGITS.input_shape, 10)
    evaluator = landscape.SurfaceEvaluator(weights, DIGITS.x_train, DIGITS.y_train, 10,
                                           SPEC.activation)
    zero = np.zeros((1, landscape.flatten(weights).size))
    losses = evaluator(zero, np.linspace(-5, 5, 11)[:, None])
    np.testing.assert_allclose(losses, losses[5], rtol=0, atol=0)


# ---------------------------------------------------------------------- snapshots, PCA


def test_snapshots_of_a_population():
    seeds = [0, 1, 2]
    settings = population.PopulationSettings(epochs=3, batch_size=32, learning_rate=0.01,
                                             verbose=0, jit_compile=False,
                                             steps_per_execution=4)
    snaps = landscape.Snapshots(2, 3, -1, FN.x_train, FN.y_train, 0)
    snaps.initial(population.Population(SPEC, FN.input_shape, 1, seeds))
    pop, _ = population.train_population(SPEC, FN, settings, seeds, callbacks=[snaps])
    arrays = snaps.arrays()
    assert arrays["epochs"].tolist() == [0, 2, 3]
    assert arrays["whole"].shape == (3, 3, models.param_count(1, SPEC.hidden, 1))
    assert arrays["layer"].shape == (3, 3, 5 * 1 + 1)  # last layer: kernel (5, 1) and bias
    for i, seed in enumerate(seeds):
        np.testing.assert_array_equal(arrays["whole"][i, 0], landscape.flatten(
            population.initial_weights(SPEC, FN.input_shape, 1, seed)))
        final = pop.member_weights(i)
        np.testing.assert_array_equal(arrays["whole"][i, -1], landscape.flatten(final))
        np.testing.assert_array_equal(arrays["layer"][i, -1], landscape.flatten(final[-2:]))
        # the loss recorded with a snapshot is the loss at those weights
        np.testing.assert_allclose(arrays["loss"][i, -1],
                                   _keras_losses(SPEC, FN, [final])[0], rtol=1e-5)
    assert not np.allclose(arrays["whole"][:, 0], arrays["whole"][:, -1])


def test_pca_2d_matches_svd():
    rng = np.random.default_rng(0)
    snaps = rng.standard_normal((4, 5, 30)) * np.linspace(3, 0.1, 30)
    coords, ev = landscape.pca_2d(snaps)
    flat = snaps.reshape(20, 30)
    centred = flat - flat.mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(ev, s[:2] ** 2 / np.sum(s ** 2), rtol=1e-8)
    # coordinates up to the sign of each axis
    ref = centred @ vt[:2].T
    for k in range(2):
        sign = np.sign(ref[0, k] * coords.reshape(20, 2)[0, k])
        np.testing.assert_allclose(coords.reshape(20, 2)[:, k] * sign, ref[:, k], atol=1e-8)


def test_trajectory_plane_holds_a_three_point_trajectory():
    """Three snapshots, one of them the end point: their offsets span at most a plane, which
    the two PCA directions must be (projection exact)."""
    rng = np.random.default_rng(1)
    traj = rng.standard_normal((3, 12))
    dirs, coords, _ = landscape.trajectory_directions(traj, traj[-1])
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(coords @ dirs, traj - traj[-1], atol=1e-10)
    assert np.allclose(landscape.off_plane_fraction(traj - traj[-1], dirs), 0, atol=1e-6)


# ---------------------------------------------------------------------- experiments


def _common(tmp_path):
    return dict(output_dir=str(tmp_path), verbose=0, jit_compile=False, tensorboard=False,
                dataset="digits", train_size=200, test_size=50, hidden=(6,), batch_size=50,
                steps_per_execution=4, learning_rate=0.01)


def test_grad_norm_experiment(tmp_path):
    results = framework.run(grad_norm, grad_norm.Config(**_common(tmp_path), function_epochs=2, epochs=2,
                                             n_train=100, function_params=60))
    runs = results["runs"]
    assert set(runs) == {"function_sinc", "digits"}
    assert len(runs["digits"]["history"]["iteration"]["grad_norm"]) == 2 * 4
    assert len(runs["function_sinc"]["history"]["iteration"]["loss"]) == 2 * 2
    assert {p.rsplit("/", 1)[1] for p in results["figures"].values()} == {"function_sinc.png",
                                                                  "digits.png"}
    # a rerun of the same config skips both finished runs (nothing trains) and keeps them
    from hw1_tf import trainer

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    original, trainer.train_model = trainer.train_model, no_training
    try:
        again = framework.run(grad_norm, grad_norm.Config(**_common(tmp_path), function_epochs=2,
                                               epochs=2, n_train=100, function_params=60))
    finally:
        trainer.train_model = original
    np.testing.assert_array_equal(again["runs"]["digits"]["history"]["iteration"]["loss"],
                                  runs["digits"]["history"]["iteration"]["loss"])


def test_trajectory_experiment(tmp_path):
    results = framework.run(trajectory, trajectory.Config(**_common(tmp_path), runs=3, epochs=4,
                                               snapshot_every=2, eval_size=100))
    assert np.asarray(results["snapshot_epochs"]).tolist() == [0, 2, 4]
    assert np.shape(results["pca"]["whole"]["coords"]) == (3, 3, 2)
    assert np.shape(results["runs"]["run2"]["snapshots"]["whole"]) == (3, 64 * 6 + 6 + 6 * 10 + 10)
    again = store.load_results(store.Paths.create(tmp_path), "trajectory")
    np.testing.assert_array_equal(again["pca"]["layer"]["coords"],
                                  results["pca"]["layer"]["coords"])
    assert (tmp_path / "figures" / "trajectory" / "trajectory.png").is_file()
    # a rerun of the same config skips the finished population and redoes the same PCA
    from hw1_tf import population

    def no_training(*args, **kwargs):
        raise AssertionError("a finished population was trained again")

    original, population.train_population = population.train_population, no_training
    try:
        rerun = framework.run(trajectory, trajectory.Config(**_common(tmp_path), runs=3, epochs=4,
                                                 snapshot_every=2, eval_size=100))
    finally:
        population.train_population = original
    np.testing.assert_allclose(rerun["pca"]["whole"]["coords"], results["pca"]["whole"]["coords"],
                               rtol=1e-6, atol=1e-6)


def test_error_surface_experiment(tmp_path):
    results = framework.run(error_surface, error_surface.Config(
        **_common(tmp_path), epochs=3, eval_size=100, grid_points=5, line_points=5))
    assert np.shape(results["random"]["losses"]) == (5, 5)
    assert np.shape(results["pca"]["losses"]) == (5, 5)
    np.testing.assert_allclose(results["centre_loss"], results["trained_loss"], rtol=1e-5)
    assert abs(results["random"]["cosine"]) < 1e-6
    assert len(results["figures"]) == 5
    # a rerun of the same config skips the trained net and redraws the same surfaces from it
    from hw1_tf import population

    def no_training(*args, **kwargs):
        raise AssertionError("the finished net was trained again")

    original, population.train_population = population.train_population, no_training
    try:
        rerun = framework.run(error_surface, error_surface.Config(
            **_common(tmp_path), epochs=3, eval_size=100, grid_points=5, line_points=5))
    finally:
        population.train_population = original
    for part in ("random", "pca"):
        np.testing.assert_allclose(rerun[part]["losses"], results[part]["losses"], rtol=1e-6)
    np.testing.assert_allclose(rerun["interpolation"]["losses"],
                               results["interpolation"]["losses"], rtol=1e-6)
