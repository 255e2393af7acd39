"""REPORT.md: written from the results present (tiny real runs), sections whose numbers and
comments follow the results, the command named when results are missing or unreadable, links
only to figures that exist, and an atomic write."""

import copy
import re
from pathlib import Path

import numpy as np
import pytest

from hw1_tf import experiments, framework, markdown, records, report_writer, store
from hw1_tf.experiments import actual_task, capacity, scratch, simulate_function

from conftest import TINY_IMAGE

SCRATCH_TINY = dict(
    dataset="digits", fallback_dataset="digits", val_size=200, overfit_samples=50,
    overfit_hidden_dims=(50, 50), overfit_weight_scale=0.2, overfit_epochs=10,
    search_hidden_dims=(30, 30, 30), search_weight_scales=(1e-3, 1e-1),
    search_learning_rates=(1e-2, 1e-1), update_rules=("sgd", "adam"),
    rule_learning_rates=(1e-2, 1e-3), rules_train_size=400, rules_hidden_dims=(30, 30),
    rules_epochs=2, rules_batch_size=50, hidden_dims=(32,), epochs=2, batch_size=64,
    print_every=1000, jit_compile=False)


@pytest.fixture(scope="module")
def out(tmp_path_factory, shared_run):
    """Every experiment of the registry run once on tiny settings into one output root (no
    XLA: compiling costs more than these few steps); random_labels and flatness are the
    session's shared runs (conftest), which test_scorecard reads too."""
    root = tmp_path_factory.mktemp("report")
    framework.run(simulate_function, simulate_function.Config(
        functions=("sinc", "sign"), depths=(1, 3), target_params=120, n_train=64, n_test=50,
        epochs=4, batch_size=32, restarts=2, steps_per_execution=2, jit_compile=False,
        save_models=False, output_dir=str(root)))
    framework.run(actual_task, actual_task.Config(
        datasets=("digits",), models=("dnn_shallow", "dnn_deep", "cnn_shallow"),
        target_params=3000, epochs=3, batch_size=64, jit_compile=False, verbose=0,
        save_models=False, output_dir=str(root)))
    framework.run(scratch, scratch.Config(output_dir=str(root), **SCRATCH_TINY))
    framework.run(capacity, capacity.Config(widths=(2, 4, 8), output_dir=str(root),
                                            **TINY_IMAGE))
    shared_run("random_labels", root)
    shared_run("flatness", root)
    return root


# the experiments the `out` fixture runs (the others' sections are tested in their own files)
FIXTURE_EXPERIMENTS = ("simulate_function", "actual_task", "scratch", "random_labels",
                       "capacity", "flatness")


def results_of(root: Path, name: str) -> dict:
    return copy.deepcopy(store.load_results(store.Paths.create(root), name))


def section_of(name: str, results: dict, root: Path) -> str:
    """The section of `results` (dicts, as the store reads them), its training records typed
    as the report writer types them."""
    ctx = markdown.Context(store.Paths.create(root), name)
    return experiments.get(name).report_section(records.typed_runs(results), ctx)


def image_links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


# ------------------------------------------------------------------------------ whole report


def test_registry_order_and_unknown_name():
    order = experiments.names()
    assert order[:2] == ("simulate_function", "actual_task")  # the slides' order
    assert order.index("trajectory") < order.index("random_labels")
    assert [m.EXPERIMENT for m in experiments.modules()] == list(order)
    with pytest.raises(experiments.Hw1Error, match="unknown experiment 'nope'"):
        experiments.get("nope")


def test_report_from_results_links_existing_figures_only(out):
    path = report_writer.write_report(store.Paths.create(out), profile="quick")
    assert path == out / "REPORT.md"
    text = path.read_text()
    positions = [text.index(f"## {m.TITLE}") for m in experiments.modules()]
    assert positions == sorted(positions)  # the slides' order
    # the fixture's experiments are reported; the others name the command that produces them
    assert text.count("No results to report") == len(experiments.names()) - len(
        FIXTURE_EXPERIMENTS)
    for name in FIXTURE_EXPERIMENTS:  # the header names each results file's command and time
        saved = store.load_results(store.Paths.create(out), name)
        assert saved["command"] in text and saved["created"] in text
    links = image_links(text)
    drawn = {p.relative_to(out).as_posix() for p in (out / "figures").rglob("*.png")}
    assert set(links) == drawn  # every figure linked, and only figures that exist
    assert not list(out.glob(".REPORT.md.*"))  # no temporary file left behind


def test_missing_figure_is_not_linked_and_names_the_redraw_command(out, tmp_path):
    root = tmp_path / "copy"
    for sub in ("results/actual_task", "figures/actual_task"):
        (root / sub).mkdir(parents=True)
        for p in (out / sub).glob("*.*"):
            (root / sub / p.name).write_bytes(p.read_bytes())
    (root / "figures/actual_task/digits_loss.png").unlink()
    text = report_writer.write_report(store.Paths.create(root), names=("actual_task",)).read_text()
    assert image_links(text) == ["figures/actual_task/digits_accuracy.png"]
    assert f"bin/make_figures --experiments=actual_task --output_dir={root}" in text


def test_missing_and_corrupt_results_name_the_command(tmp_path):
    paths = store.Paths.create(tmp_path)
    paths.results_dir("actual_task").mkdir(parents=True)
    paths.results_json("actual_task").write_text("{not json")
    text = report_writer.write_report(paths, profile="quick").read_text()
    for name in experiments.names():
        command = f"bin/run_{name} --flagfile=flags/quick/{name}.flags --output_dir={tmp_path}"
        assert f"No results to report: `{command}` produces them" in text
    assert "| unreadable (results/actual_task/results.json) |" in text
    assert "| missing (results/scratch/results.json) |" in text
    assert image_links(text) == []


def test_results_of_another_shape_name_the_command(out, tmp_path):
    stale = results_of(out, "simulate_function")
    del stale["targets"]
    store.write_json(store.Paths.create(tmp_path).results_json("simulate_function"), stale)
    paths = store.Paths.create(tmp_path)
    with pytest.raises(KeyError, match="targets"):  # strict (tests): the section's error
        report_writer.render(paths, names=("simulate_function",))
    # for a user: the section is marked as failed (never "No results"), the report written
    with pytest.raises(report_writer.SectionFailed, match="simulate_function: KeyError"):
        report_writer.write_report(paths, names=("simulate_function",))
    text = (tmp_path / "REPORT.md").read_text()
    assert "**This section failed** (`KeyError: 'targets'`)" in text
    assert "No results to report" not in text
    assert "bin/run_simulate_function --flagfile=flags/full/simulate_function.flags" in text


def test_report_is_replaced_whole_or_not_at_all(out, monkeypatch):
    paths = store.Paths.create(out)
    before = report_writer.write_report(paths).read_text()

    def broken(results, ctx):
        raise RuntimeError("section writer failed")

    monkeypatch.setattr(scratch, "report_section", broken)
    with pytest.raises(RuntimeError):
        report_writer.write_report(paths, strict=True)
    assert (out / "REPORT.md").read_text() == before
    assert not list(out.glob(".REPORT.md.*"))


# ------------------------------------------------------------- sections follow their numbers


def _final_loss(results, fn, model):
    return results["runs"][results["best_runs"][f"{fn}/{model}"]]["history"]["epoch"]


def test_simulate_section_follows_the_losses(out):
    results = results_of(out, "simulate_function")
    # make dnn_d1 the best on sinc by exactly 4x, dnn_d3 the best on sign by exactly 2.5x
    _final_loss(results, "sinc", "dnn_d1")["train_loss"][-1] = 0.001
    _final_loss(results, "sinc", "dnn_d3")["train_loss"][-1] = 0.004
    _final_loss(results, "sign", "dnn_d1")["train_loss"][-1] = 0.5
    _final_loss(results, "sign", "dnn_d3")["train_loss"][-1] = 0.2
    text = section_of("simulate_function", results, out)
    assert ("**sinc**: dnn_d1 reached the lowest final training MSE, 0.00100: 4.0× lower than "
            "dnn_d3's 0.00400.") in text
    assert "**sign**: dnn_d3 reached the lowest final training MSE, 0.200: 2.5× lower" in text
    assert "dnn_d1 on 1 (sinc) and dnn_d3 on 1 (sign)" in text
    assert "| sinc | dnn_d1 | 0.00100 |" in text

    # the other way round on sinc: the comment and the table change with the numbers
    _final_loss(results, "sinc", "dnn_d1")["train_loss"][-1] = 0.006
    text = section_of("simulate_function", results, out)
    assert "**sinc**: dnn_d3 reached the lowest final training MSE, 0.00400: 1.5× lower" in text
    assert "dnn_d3 on 2 (sinc, sign); dnn_d1 never" in text
    assert "| sinc | dnn_d1 | 0.00600 |" in text


def test_simulate_section_convergence_from_the_tail_of_the_curve(out):
    results = results_of(out, "simulate_function")
    epochs = 20
    for run in results["runs"].values():  # flat curves: converged
        run["history"]["epoch"]["train_loss"] = [1.0] * epochs
    results["config"]["epochs"] = epochs
    assert "No model's loss fell by more than 5% in the last 2 of 20 epochs" in section_of(
        "simulate_function", results, out)
    # sinc/dnn_d3 still falling: from 1.0 to 0.7 in the last 2 epochs is a 30% improvement
    _final_loss(results, "sinc", "dnn_d3")["train_loss"][-2:] = [0.8, 0.7]
    text = section_of("simulate_function", results, out)
    assert "the loss still fell by 30.0% (dnn_d3): not converged" in text
    assert "| sinc | dnn_d3 | 0.700 |" in text


def _set_accuracy(results, run_name, test, train=None):
    epoch = results["runs"][run_name]["history"]["epoch"]
    epoch["test_accuracy"] = list(test)
    epoch["train_accuracy"] = list(train if train is not None else test)


def test_actual_task_section_follows_the_accuracies(out):
    results = results_of(out, "actual_task")
    _set_accuracy(results, "digits_dnn_shallow", [0.5, 0.6, 0.7])
    _set_accuracy(results, "digits_dnn_deep", [0.5, 0.8, 0.75], train=[0.5, 0.8, 0.85])
    _set_accuracy(results, "digits_cnn_shallow", [0.6, 0.7, 0.72])
    text = section_of("actual_task", results, out)
    assert ("**digits**: dnn_deep has the best final test accuracy, 75.0%, 3.0 points above "
            "cnn_shallow, 5.0 points above dnn_shallow.") in text
    assert "5.0 points above dnn_shallow for dnn_deep" in text
    assert "Test accuracy peaked before the last epoch for dnn_deep at epoch 2 (80.0%" in text
    assert "ranges from 0.0 points to 10.0 points." in text
    assert "| digits | dnn_deep |" in text and "| 85.0% | 75.0% | 80.0% (epoch 2) |" in text

    _set_accuracy(results, "digits_dnn_shallow", [0.5, 0.6, 0.9])
    text = section_of("actual_task", results, out)
    assert "dnn_shallow has the best final test accuracy, 90.0%, 15.0 points above dnn_deep" in text
    assert "15.0 points below dnn_shallow for dnn_deep" in text


def test_scratch_section_follows_the_rules_and_the_grid(out):
    results = results_of(out, "scratch")
    rules = {rule: results["runs"][name] for rule, name in results["update_rules"].items()}
    rules["sgd"]["val_acc_history"][-1] = 0.9
    rules["adam"]["val_acc_history"][-1] = 0.8
    results["search"]["train_acc"] = [[1.0, None], [0.5, 1.0]]
    text = section_of("scratch", results, out)
    assert "sgd has the best validation accuracy, 90.0%, 10.0 points above adam." in text
    assert ("2 of 4 pairs reached 100%, 1 diverged, the other 1 ended between 50% and 50%."
            in text)
    assert "pairs that fit the set: (0.001, 0.01), (0.1, 0.1)." in text
    assert "| 0.001 | 100% | diverged |" in text

    rules["adam"]["val_acc_history"][-1] = 0.95
    results["search"]["train_acc"] = [[0.2, 0.3], [0.5, 1.0]]
    text = section_of("scratch", results, out)
    assert "adam has the best validation accuracy, 95.0%, 5.0 points above sgd." in text
    assert "1 of 4 pairs reached 100%, 0 diverged, the other 3 ended between 20% and 50%." in text


def test_scratch_section_overfit_and_final_numbers(out):
    results = results_of(out, "scratch")
    overfit = results["runs"]["overfit"]
    overfit["train_acc_history"] = [0.1, 0.6, 1.0] + [1.0] * (len(
        overfit["train_acc_history"]) - 3)
    overfit["val_acc_history"][-1] = 0.25
    final = results["runs"]["final"]
    final.update(test_accuracy=0.875, best_val_acc=0.9, best_epoch=1)
    text = section_of("scratch", results, out)
    assert "fit all 50 examples (100% training accuracy) at epoch 2 of 10" in text
    assert "validation accuracy ended at 25.0%: a gap of 75.0 points" in text
    assert "Test accuracy 87.5% with the parameters of epoch 1 of 2 (best validation accuracy " \
           "90.0%)" in text
    overfit["train_acc_history"] = [0.1] + [0.5] * (len(overfit["train_acc_history"]) - 1)
    assert "reached only 50.0% training accuracy on 50 examples in 10 epochs" in section_of(
        "scratch", results, out)


def _as_arrays(obj):
    """Every list of numbers (or of lists of numbers) as a numpy array, as the store may
    restore big arrays."""
    if isinstance(obj, dict):
        return {k: _as_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        flat = np.ravel(np.asarray(obj, dtype=object)) if obj else []
        if len(flat) and all(v is None or isinstance(v, (int, float)) for v in flat):
            return np.asarray(obj, dtype=float if None in list(flat) else None)
        return [_as_arrays(v) for v in obj]
    return obj


@pytest.mark.parametrize("name", FIXTURE_EXPERIMENTS)
def test_sections_read_arrays_as_lists(out, name):
    results = results_of(out, name)
    arrays = _as_arrays(results)
    first = next(iter(arrays["runs"].values()))
    if name == "scratch" or "history" in first:
        curve = first["loss_history"] if name == "scratch" else \
            first["history"]["epoch"]["train_loss"]
        assert isinstance(curve, np.ndarray)
    assert section_of(name, arrays, out) == section_of(name, results, out)


# ----------------------------------------------------------------------------- helpers


def test_number_formatting():
    assert markdown.fmt(0.1598626) == "0.160" and markdown.fmt(12.0) == "12.0"
    assert markdown.fmt(1.234e-5) == "1.23e-05" and markdown.fmt(2.5e6) == "2.50e+06"
    assert markdown.fmt(None) == markdown.fmt(float("nan")) == "n/a"
    assert markdown.fmt(50095) == "50095" and markdown.fmt(0.0) == "0"
    assert markdown.pct(0.9731) == "97.3%" and markdown.points(0.012) == "1.2 points"
    assert markdown.times(43.26) == "43.3×" and markdown.times(4.0) == "4.0×"
    assert markdown.table(("a", "b"), [("x|y", 0.5)]) == "| a | b |\n|---|---|\n| x\\|y | 0.500 |"
    assert markdown.ranked({"a": 2.0, "b": None, "c": 1.0}, lower_is_better=True) == [
        ("c", 1.0), ("a", 2.0), ("b", None)]
    assert markdown.peak([0.1, None, 0.7, 0.3]) == (2, 0.7) and markdown.peak([None]) == (None, None)
