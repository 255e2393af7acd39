"""HW1-1 experiments end to end on tiny settings: results.json, SavedModels, figures. No XLA:
compiling costs more than these few steps (the XLA path: tests/test_training.py, the binaries
in tests/test_cli.py and tests/test_resume.py)."""

import json

import numpy as np
import tensorflow as tf

from hw1_tf import framework, markdown, records, store
from hw1_tf.experiments import actual_task, simulate_function


def test_simulate_function_end_to_end(tmp_path):
    config = simulate_function.Config(functions=("sinc", "sign"), depths=(1, 3), target_params=120,
                                      n_train=64, n_test=50, epochs=3, batch_size=32,
                                      restarts=2, steps_per_execution=4, jit_compile=False,
                                      output_dir=str(tmp_path))
    results = framework.run(simulate_function, config)
    on_disk = json.loads((tmp_path / "results/simulate_function/results.json").read_text())
    assert on_disk["config"]["depths"] == [1, 3] and set(on_disk["runs"]) == {
        f"{fn}_dnn_d{d}_r{r}" for fn in ("sinc", "sign") for d in (1, 3) for r in (0, 1)}
    for key, name in results["best_runs"].items():  # the best restart has the lowest loss
        fn, model = key.split("/")
        finals = {n: r["history"]["epoch"]["train_loss"][-1] for n, r in results["runs"].items()
                  if r["function"] == fn and r["model"]["name"] == model}
        assert len(finals) == 2 and finals[name] == min(finals.values())
    for name, run in results["runs"].items():
        assert abs(run["num_params"] - 120) <= 1.2
        it = run["history"]["iteration"]
        assert len(it["loss"]) == len(it["grad_norm"]) == len(it["objective"]) == 3 * 2
        assert run["restart"] in (0, 1)
        assert len(run["history"]["epoch"]["train_loss"]) == 3
        # the SavedModel reproduces the stored predictions
        loaded = store.load_saved_model(run["saved_model"])
        x = np.asarray(results["targets"][run["function"]]["x"], np.float32)[:, None]
        np.testing.assert_allclose(loaded.serve(tf.constant(x))[:, 0], run["prediction"],
                                   rtol=1e-4, atol=1e-5)
    figures = sorted(p.name for p in (tmp_path / "figures/simulate_function").iterdir())
    assert figures == ["loss_sign.png", "loss_sinc.png", "prediction_sign.png",
                       "prediction_sinc.png"]


def test_actual_task_digits_and_figures_redraw(tmp_path):
    config = actual_task.Config(datasets=("digits",), models=("dnn_shallow", "cnn_deep"),
                                target_params=3000, epochs=2, batch_size=64, jit_compile=False,
                                output_dir=str(tmp_path), verbose=0, save_models=False)
    results = framework.run(actual_task, config)
    assert set(results["runs"]) == {"digits_dnn_shallow", "digits_cnn_deep"}
    for run in results["runs"].values():
        ep = run["history"]["epoch"]
        assert len(ep["train_loss"]) == len(ep["test_accuracy"]) == 2
        assert 0 <= ep["test_accuracy"][-1] <= 1
    fig_dir = tmp_path / "figures/actual_task"
    for p in fig_dir.iterdir():
        p.unlink()
    redrawn = framework.draw_figures(
        actual_task, store.load_results(store.Paths.create(tmp_path), "actual_task"), fig_dir)
    assert sorted(redrawn) == ["digits_accuracy", "digits_loss"]
    assert sorted(p.name for p in redrawn.values()) == ["digits_accuracy.png", "digits_loss.png"]


def test_actual_task_convergence_rule_stops_each_run_where_its_history_says(tmp_path):
    config = actual_task.Config(datasets=("digits",), models=("dnn_shallow", "dnn_deep"),
                                target_params=3000, epochs=40, batch_size=64, patience=2,
                                jit_compile=False,
                                output_dir=str(tmp_path), verbose=0, save_models=False,
                                tensorboard=False)
    results = framework.run(actual_task, config)
    for run in results["runs"].values():
        history, test = run["history"], run["history"]["epoch"]["test_accuracy"]
        # the rule, applied to the recorded series: the first epoch two after its best
        best = [int(np.argmax(test[:e])) + 1 for e in range(1, len(test) + 1)]
        stops = [e for e in range(1, len(test) + 1) if e - best[e - 1] >= 2]
        assert stops and stops[0] == len(test) == history["stopped_at_epoch"] < 40
        assert history["best_epoch"] == best[-1]
        assert "test_accuracy not improved for 2 epochs" in history["stop_reason"]
    paths = store.Paths.create(tmp_path)
    text = actual_task.report_section(records.typed_runs(store.load_results(paths, "actual_task")),
                                      markdown.Context(paths, "actual_task"))
    assert "each run stopped once its test accuracy had not improved for 2 epochs" in text
    for name, run in results["runs"].items():
        assert (f"digits {run['model']['name']} after epoch "
                f"{run['history']['stopped_at_epoch']}") in text


def test_actual_task_skips_unavailable_and_runs_cifar10_from_tfds(tmp_path):
    import tensorflow_datasets as tfds

    config = actual_task.Config(datasets=("fashion_mnist", "cifar10"), models=("cnn_shallow",),
                                target_params=2000, epochs=1, batch_size=8, jit_compile=False,
                                data_dir=str(tmp_path / "empty"), output_dir=str(tmp_path),
                                verbose=0, save_models=False, allow_download=False,
                                optional_datasets=("fashion_mnist",))
    with tfds.testing.mock_data(num_examples=16):
        results = framework.run(actual_task, config)
    assert list(results["runs"]) == ["cifar10_cnn_shallow"]
    assert "fashion_mnist" in results["skipped_datasets"]
