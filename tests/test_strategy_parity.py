"""Every current experiment's heavy computation under MirroredStrategy (2 logical CPUs, see
conftest) equals the one-device run: training (per-iteration history) and, beyond it,
simulate_function's predictions on the grid and actual_task's per-epoch test evaluation."""

import numpy as np
import pytest

from hw1_tf.experiments import actual_task, simulate_function


def _close(a, b, what):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5,
                               atol=1e-6, err_msg=what)


@pytest.fixture(params=["simulate_function", "actual_task"])
def both_strategies(request, tmp_path):
    def run(strategy):
        common = dict(output_dir=str(tmp_path / strategy), save_models=False, tensorboard=False,
                      verbose=0, strategy=strategy, epochs=2)
        if request.param == "simulate_function":
            return simulate_function.run(simulate_function.Config(
                functions=("sinc",), depths=(2,), target_params=60, n_train=64, n_test=50,
                batch_size=16, **common))
        return actual_task.run(actual_task.Config(
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
        if "prediction" in a:
            _close(a["prediction"], b["prediction"], f"{name} prediction")
            assert abs(a["test_mse"] - b["test_mse"]) <= 1e-6
