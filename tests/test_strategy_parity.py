"""Every current experiment's heavy computation under MirroredStrategy (2 logical CPUs, see
conftest) equals the one-device run: training (per-iteration history) and, beyond it,
simulate_function's predictions on the grid, actual_task's per-epoch test evaluation and
sensitivity's input sensitivities."""

import keras
import numpy as np
import pytest

from hw1_tf import distribute, framework, measures
from hw1_tf.experiments import actual_task, sensitivity, simulate_function


def _close(a, b, what):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5,
                               atol=1e-6, err_msg=what)


@pytest.fixture(params=["simulate_function", "actual_task", "sensitivity"])
def both_strategies(request, tmp_path):
    def run(strategy):
        common = dict(output_dir=str(tmp_path / strategy), save_models=False, tensorboard=False,
                      verbose=0, strategy=strategy, epochs=2)
        if request.param == "simulate_function":
            return framework.run(simulate_function, simulate_function.Config(
                functions=("sinc",), depths=(2,), target_params=60, n_train=64, n_test=50,
                batch_size=16, **common))
        if request.param == "sensitivity":
            return framework.run(sensitivity, sensitivity.Config(
                dataset="digits", batch_sizes=(32,), hidden=(16,), train_size=256,
                test_size=101, **common))  # 101: the last batch splits unevenly
        return framework.run(actual_task, actual_task.Config(
            datasets=("digits",), models=("dnn_shallow",), target_params=800,
            train_size=256, test_size=128, batch_size=32, **common))

    return run("default"), run("mirrored")


def test_mirrored_equals_one_device(both_strategies):
    one, mirrored = both_strategies
    assert set(one["runs"]) == set(mirrored["runs"]) and one["runs"]
    for name, a in one["runs"].items():
        b = mirrored["runs"][name]
        for key in ("loss", "grad_norm"):
            _close(a["history"]["iteration"][key], b["history"]["iteration"][key], f"{name} {key}")
        for key, values in a["history"]["epoch"].items():  # test_* = the evaluation pass
            _close(values, b["history"]["epoch"][key], f"{name} epoch {key}")
        for key in ("sensitivity_loss_grad", "sensitivity_jacobian"):
            if key in a:
                _close(a[key], b[key], f"{name} {key}")
        if "prediction" in a:
            _close(a["prediction"], b["prediction"], f"{name} prediction")
            assert abs(a["test_mse"] - b["test_mse"]) <= 1e-6


def test_input_sensitivities_of_two_replicas_equal_one_device():
    """Per example, in order: each batch is split across the replicas (37 examples in batches
    of 8: the last batch of 5 is padded to 3 + 3)."""
    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2

    def net():
        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(9, activation="tanh"),
                                 keras.layers.Dense(4)])

    one = net()
    with strategy.scope():
        two = net()
    rng = np.random.RandomState(0)
    x, y = rng.randn(37, 6).astype(np.float32), rng.randint(0, 4, 37).astype(np.int32)
    grad_1, jac_1 = measures.input_sensitivities(one, x, y, batch_size=8)
    grad_2, jac_2 = measures.input_sensitivities(two, x, y, batch_size=8, strategy=strategy)
    assert grad_1.shape == (37,) and np.all(grad_1 > 0) and np.all(jac_1 > 0)
    assert len(set(np.round(grad_1, 6))) == 37  # distinct: a permuted order would show
    np.testing.assert_allclose(grad_2, grad_1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jac_2, jac_1, rtol=1e-5, atol=1e-7)
