"""The convergence rule of the training core (--patience): a run stops once its monitor has not
improved for k epochs, at the epoch computed independently from the history of the same run
trained without the rule, and records where, why and its best epoch."""

import keras
import numpy as np
import pytest

from hw1_tf import callbacks, population, training
from hw1_tf.errors import Hw1Error

D, H, C = 5, 8, 3


def _toy(n, seed):
    rng = np.random.RandomState(seed)
    return (rng.randn(n, D).astype(np.float32),
            rng.randint(0, C, size=n).astype(np.int32))


def _net():
    return keras.Sequential([keras.Input((D,)), keras.layers.Dense(H, activation="tanh"),
                             keras.layers.Dense(C)])


def _settings(**kw):
    base = dict(epochs=30, batch_size=16, learning_rate=0.05, optimizer="sgd", shuffle=True,
                verbose=0, steps_per_execution=1, jit_compile=False)
    base.update(kw)
    return training.TrainSettings(**base)


def _train(settings, backup_dir=None):
    model = training.build_instrumented(_net, C, settings)
    return training.train(model, _toy(64, 0), settings, test_xy=_toy(40, 1),
                          backup_dir=backup_dir)


def _expected_stop(values, patience, sign, min_delta):
    """(stop epoch, best epoch), 1-based, of the rule on a per-epoch series, by a plain loop:
    an epoch is an improvement only when it beats the best so far by more than min_delta."""
    best, best_epoch = None, None
    for epoch, value in enumerate(values, start=1):
        if best is None or sign * (value - best) > min_delta:
            best, best_epoch = value, epoch
        if epoch - best_epoch >= patience:
            return epoch, best_epoch
    return None, best_epoch


@pytest.mark.parametrize("monitor,key,sign,min_delta", [
    ("test_accuracy", "test_accuracy", +1, 0.0),
    ("train_loss", "train_loss", -1, 2e-3),
])
def test_plateau_stops_at_the_epoch_computed_from_the_free_run(monitor, key, sign, min_delta):
    free = _train(_settings())
    patience = 3
    expected, best = _expected_stop(free["epoch"][key], patience, sign, min_delta)
    # the setting must plateau before the cap, or this test would prove nothing
    assert expected is not None and expected < 30, free["epoch"][key]
    assert free["stopped_at_epoch"] is None and free["stop_reason"] is None

    stopped = _train(_settings(patience=patience, patience_monitor=monitor,
                               patience_min_delta=min_delta))
    assert stopped["stopped_at_epoch"] == expected == len(stopped["epoch"][key])
    assert stopped["best_epoch"] == best and stopped["best_monitor"] == monitor
    assert stopped["best_value"] == pytest.approx(free["epoch"][key][best - 1], rel=1e-6)
    assert monitor in stopped["stop_reason"] and f"epoch {best}" in stopped["stop_reason"]
    # the same run cut at the stop: the same iterations up to there, none after
    n = free["epoch_end_iteration"][expected - 1]
    assert stopped["epoch_end_iteration"][-1] == n == len(stopped["iteration"]["loss"])
    np.testing.assert_allclose(stopped["iteration"]["loss"], free["iteration"]["loss"][:n],
                               rtol=1e-6)


def test_a_resumed_run_keeps_the_best_so_far():
    """The callback's state survives a backup: the rule run in two halves (the second one
    restored from the first one's backup_state) stops where the uninterrupted one does."""
    series = [0.50, 0.60, 0.61, 0.60, 0.62, 0.62, 0.61, 0.60, 0.63]
    sign, patience = +1, 3
    expected, best = _expected_stop(series, patience, sign, 0.0)
    assert (expected, best) == (8, 5)  # read off the series by hand as well

    class Model:
        stop_training = False

    def run(rule, epochs):
        rule.set_model(Model())
        for epoch in epochs:
            rule.on_epoch_end(epoch, {"val_accuracy": series[epoch]})
            if rule.model.stop_training:
                return epoch + 1
        return None

    log = callbacks.IterationLog("run")
    whole = callbacks.StopAtTarget(log, patience=patience, monitor="test_accuracy")
    first = callbacks.StopAtTarget(log, patience=patience, monitor="test_accuracy")
    assert run(first, range(6)) is None
    resumed = callbacks.StopAtTarget(log, patience=patience, monitor="test_accuracy")
    resumed.restore_state(first.backup_state())
    assert run(whole, range(len(series))) == run(resumed, range(6, len(series))) == expected
    assert whole.summary() == resumed.summary()
    assert resumed.summary()["best_epoch"] == best


def test_a_test_monitor_without_a_test_split_is_one_clear_error():
    settings = _settings(patience=2, patience_monitor="test_accuracy")
    model = training.build_instrumented(_net, C, settings)
    with pytest.raises(Hw1Error, match="test_accuracy needs the test split"):
        training.train(model, _toy(64, 0), settings, test_xy=None)


def test_populations_refuse_the_rule_by_name():
    assert population.unsupported(population.PopulationSettings(patience=3)) == ["patience"]
    # the monitor's default alone is no request
    assert population.unsupported(population.PopulationSettings()) == []
