"""The typed run record: what the Keras core and a population member record, built by
RunRecord.of, written by the store and read back by RunRecord.from_dict, gives the same fields
and arrays; the stored layout is the engine's history key for key; experiment fields read as
attributes; typed_runs types training records only."""

import copy
import json

import numpy as np
import pytest

from hw1_tf import data, models, population, store, training
from hw1_tf.errors import Hw1Error
from hw1_tf.records import History, RunRecord, is_training_record, typed_runs

SPLITS = data.load("digits", train_size=320, test_size=48, seed=0)  # 40 batches of 8
SPEC = models.ModelSpec("dnn", "dense", hidden=(8,))
BASE = dict(epochs=3, batch_size=8, learning_rate=0.01, verbose=0, jit_compile=False)


@pytest.fixture(scope="module")
def engine_histories():
    """{engine: history} as each engine returns it: the Keras core (stopped at a grad-norm
    target never reached: None fields) and one member of a population of two."""
    settings = training.TrainSettings(**BASE, steps_per_execution=4, switch_after_epochs=2)
    model = training.build_instrumented(lambda: models.build(SPEC, SPLITS.input_shape, 10), 10,
                                        settings)
    keras_history = training.train(model, (SPLITS.x_train, SPLITS.y_train), settings,
                                   test_xy=(SPLITS.x_test, SPLITS.y_test))
    _, members = population.train_population(
        SPEC, SPLITS, population.PopulationSettings(**BASE, steps_per_execution=4), [0, 1])
    return {"keras": keras_history, "population": members[1]}


def _write_and_read(tmp_path, runs):
    paths = store.Paths.create(tmp_path)
    store.save_results(paths, "toy", {"seed": 0}, runs)
    return store.load_results(paths, "toy")


@pytest.mark.parametrize("engine", ["keras", "population"])
def test_round_trip_through_the_store_gives_the_same_fields_and_arrays(engine_histories,
                                                                       engine, tmp_path):
    engine_history = copy.deepcopy(engine_histories[engine])
    record = RunRecord.of(SPEC, copy.deepcopy(engine_history), task="image", width=8,
                          prediction=np.linspace(0, 1, 100, dtype=np.float32))
    stored = record.to_dict()
    # the stored layout is the engine's history, key for key and in its order, per-iteration
    # values as arrays (int8 objective ids, float32 values) and per-epoch values as lists
    assert list(stored["history"]) == [k for k in engine_history if k != "num_params"]
    assert stored["num_params"] == engine_history["num_params"] == 8 * 64 + 8 + 8 * 10 + 10
    for key, values in engine_history["iteration"].items():
        array = stored["history"]["iteration"][key]
        assert array.dtype == (np.int8 if key == "objective" else np.float32)
        np.testing.assert_array_equal(array, np.asarray(values, array.dtype))
    assert stored["history"]["epoch"] == engine_history["epoch"]
    for key in engine_history:
        if key not in ("iteration", "epoch", "num_params"):
            assert stored["history"][key] == engine_history[key], key

    back = RunRecord.from_dict(_write_and_read(tmp_path, {"run": stored})["runs"]["run"])
    assert (back.model, back.description, back.num_params) == (
        json.loads(json.dumps(store.to_jsonable(record.model))), record.description,
        record.num_params)
    assert back.task == "image" and back.width == 8
    np.testing.assert_array_equal(back.prediction, record.prediction)  # exact, via the .npz
    assert back.prediction.dtype == np.float32
    h, want = back.history, record.history
    assert set(h.iteration) == set(want.iteration) == {"loss", "grad_norm", "objective"}
    for key, values in want.iteration.items():  # more than 64 values: exact, via the .npz
        assert len(values) > 64
        np.testing.assert_array_equal(h.iteration[key], values)
        assert h.iteration[key].dtype == values.dtype
    assert set(h.epoch) == set(want.epoch)
    for key, values in want.epoch.items():  # results.json keeps 7 significant digits
        np.testing.assert_allclose(h.epoch[key], values, rtol=1e-6)
    for name in ("objective_names", "epoch_end_iteration", "switched_at_iteration",
                 "stopped_at_iteration", "stopped_at_epoch", "failed_at_iteration",
                 "population_size"):
        assert getattr(h, name) == getattr(want, name), name
    assert h.seconds == pytest.approx(want.seconds, rel=1e-6)
    assert h.extras == want.extras == {}
    # what the engines say about themselves: population keys only from a population
    if engine == "population":
        assert h.population_size == 2 and h.failed_at_iteration is None
        # the core's epoch-rule keys are there, unset: a population stops on no epoch rule
        assert h.stopped_at_epoch is None and stored["history"]["stopped_at_epoch"] is None
    else:
        assert h.switched_at_iteration == 2 * 40  # after the 2nd epoch's 40 batches
        assert h.population_size is None and "population_size" not in stored["history"]
    # the readers a figure needs, against the stored values
    epochs = engine_history["epoch"]
    assert h.epochs == 3 == len(epochs["train_loss"])
    assert h.iterations == len(engine_history["iteration"]["loss"]) == 3 * 40
    assert h.last("train_loss") == pytest.approx(epochs["train_loss"][-1], rel=1e-6)
    i = int(np.argmin(epochs["test_loss"]))
    assert h.best("test_loss", lower_is_better=True) == (i, pytest.approx(
        epochs["test_loss"][i], rel=1e-6))


def test_short_histories_stay_in_results_json_and_read_back_as_arrays(tmp_path):
    """Under 65 iterations the store keeps the values in results.json (7 digits), and NaN
    there is null: read back they are arrays again, NaN included."""
    history = {"num_params": 3, "iteration": {"loss": [0.5, float("nan")], "grad_norm": [1.0, 2.0],
                                              "objective": [0, 1]},
               "objective_names": ["loss", "grad_norm_squared"],
               "epoch": {"train_loss": [0.123456789, float("nan")]},
               "epoch_end_iteration": [1, 2], "switched_at_iteration": 1, "seconds": 0.25,
               "engine_note": "kept"}
    record = RunRecord.of(SPEC, history, dataset="digits")
    text = json.loads(store.write_json(tmp_path / "r.json", record.to_dict()).read_text())
    assert text["history"]["iteration"]["loss"] == [0.5, None]
    back = RunRecord.from_dict(text).history
    np.testing.assert_array_equal(back.iteration["loss"], [0.5, np.nan])
    assert back.iteration["objective"].dtype == np.int8
    np.testing.assert_allclose(back.epoch["train_loss"], [0.1234568, np.nan])
    assert back.extras == {"engine_note": "kept"}  # unknown keys kept, and written back
    assert list(back.to_dict()) == list(text["history"])
    assert back.best("train_loss", lower_is_better=True) == (0, pytest.approx(0.1234568))
    assert np.isnan(back.last("train_loss"))
    assert back.stopped_at_epoch is None and back.population_size is None  # not written


def test_fields_read_as_attributes_and_a_missing_one_is_named():
    record = RunRecord.from_dict({"model": {"name": "w8"}, "description": "784-8-10",
                                  "num_params": 6370, "history": {"epoch": {}, "iteration": {}},
                                  "task": "image", "final_test_loss": 0.25})
    assert record.task == "image" and record.final_test_loss == 0.25
    assert record.get("task") == "image" and record.get("width", 4) == 4
    assert record.get("num_params") == 6370 and "num_params" in record and "width" not in record
    with pytest.raises(TypeError):  # readers read fields, not the stored keys
        record["final_test_loss"]
    with pytest.raises(AttributeError, match="w8.*no field 'width'; its fields: task, "
                                             "final_test_loss"):
        record.width
    assert not hasattr(record, "width")
    assert copy.deepcopy(record) == record
    with pytest.raises(KeyError, match="no per-epoch 'test_accuracy'"):
        record.history.series("test_accuracy")
    with pytest.raises(Hw1Error, match="not a run record: no num_params"):
        RunRecord.from_dict({"model": {}, "description": "", "history": {}})
    with pytest.raises(Hw1Error, match="history has no 'iteration'"):
        History.from_dict({"epoch": {}})


def test_typed_runs_types_training_records_only_and_changes_nothing_stored():
    trained = {"model": {"name": "m"}, "description": "d", "num_params": 1,
               "history": {"epoch": {"train_loss": [1.0, 0.5]}, "iteration": {}}}
    analysis = {"num_params": 5, "loss": 0.1, "top_eigenvalues": [3.0, 2.0]}  # no history
    solver = {"loss_history": [2.0, 1.0], "val_acc_history": [0.5]}  # the scratch Solver's
    results = {"config": {}, "runs": {"a": trained, "b": analysis, "c": solver}, "extra": 1}
    before = copy.deepcopy(results)
    typed = typed_runs(results)
    assert isinstance(typed["runs"]["a"], RunRecord)
    assert typed["runs"]["b"] is analysis and typed["runs"]["c"] is solver
    assert typed["extra"] == 1 and results == before  # a new dict; the stored one unchanged
    assert typed_runs(typed)["runs"]["a"] is typed["runs"]["a"]  # typing twice: the same
    assert [is_training_record(r) for r in typed["runs"].values()] == [True, False, False]
    assert typed["runs"]["a"].history.last("train_loss") == 0.5
