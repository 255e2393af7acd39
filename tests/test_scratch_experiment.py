"""The scratch experiment end to end on sklearn digits (seconds), its CIFAR-10 fallback, its
figures from results.json alone, its config checks and bin/run_scratch's flags."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from hw1_tf import data, framework, store
from hw1_tf.errors import DataError, Hw1Error
from hw1_tf.experiments import scratch

TINY = dict(dataset="cifar10", fallback_dataset="digits", val_size=200, overfit_samples=50,
            overfit_hidden_dims=(50, 50), overfit_weight_scale=0.2, overfit_epochs=20,
            search_hidden_dims=(30, 30, 30),
            search_weight_scales=(1e-3, 1e-1), search_learning_rates=(1e-2, 1e-1),
            update_rules=("sgd", "adam"), rule_learning_rates=(1e-2, 1e-3),
            rules_train_size=400, rules_hidden_dims=(30, 30), rules_epochs=2,
            rules_batch_size=50, hidden_dims=(64,), epochs=3, batch_size=64, print_every=10,
            jit_compile=False)  # XLA: tests/test_scratch.py and the binary below


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run with CIFAR-10 unavailable: the experiment must fall back to digits."""
    out = tmp_path_factory.mktemp("scratch")
    real_load = data.load

    def load_without_cifar(name, *args, **kwargs):
        if name == "cifar10":
            raise DataError("cifar10: not available (test)")
        return real_load(name, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(data, "load", load_without_cifar)
    try:
        results = framework.run(scratch, scratch.Config(output_dir=str(out), **TINY))
    finally:
        mp.undo()
    return out, results


def test_results_json_has_every_part(tiny_run):
    out, results = tiny_run
    saved = json.loads((out / "results" / "scratch" / "results.json").read_text())
    assert saved["dataset_requested"] == "cifar10"
    assert saved["dataset_used"] == "digits"
    assert "not available" in saved["fallback_reason"]
    assert saved["overfit_train_accuracy"] == 1.0
    assert saved["runs"]["overfit"]["num_train"] == 50
    assert saved["update_rules"] == {"sgd": "rule/sgd", "adam": "rule/adam"}
    for rule in (saved["runs"][name] for name in saved["update_rules"].values()):
        assert len(rule["loss_history"]) == 2 * (400 // 50)
        assert len(rule["train_acc_history"]) == len(rule["val_acc_history"]) == 3
    assert np.shape(saved["search"]["train_acc"]) == (2, 2)
    assert saved["search"]["best"]["weight_scale"] in (1e-3, 1e-1)
    assert 0.8 < saved["test_accuracy"] <= 1.0  # digits: a one-hidden-layer net gets ~95%
    assert saved["final"]["test_accuracy"] == saved["test_accuracy"]
    assert saved["config"]["hidden_dims"] == [64]


def test_final_checkpoint_reproduces_test_accuracy(tiny_run):
    from hw1_tf.scratch import FullyConnectedNet, Solver, load_checkpoint
    from hw1_tf.scratch.solver import checkpoint_weights

    out, results = tiny_run
    ckpt = Path(results["final"]["checkpoint"])
    assert ckpt.is_file() and ckpt.parent == out / "results" / "scratch" / "checkpoints"
    splits = data.load("digits", standardize=True)
    arrays = scratch.split_train_val(splits, 200, 0)
    model = FullyConnectedNet((64,), 64, 10, normalization="batchnorm", dropout=0.1)
    model.set_weights(checkpoint_weights(load_checkpoint(ckpt), "best"))
    solver = Solver(model, arrays, compile="eager", verbose=False)
    # (results.json keeps a float32 accuracy to its shortest float32 decimal)
    assert solver.check_accuracy(arrays["X_test"], arrays["y_test"]) == pytest.approx(
        results["test_accuracy"], abs=1e-6)


def test_figures_are_redrawn_from_results_json_alone(tiny_run, tmp_path):
    out, results = tiny_run
    names = {Path(p).name for p in results["figures"].values()}
    assert names == {"overfit.png", "search.png", "update_rules.png", "final.png"}
    for p in results["figures"].values():
        assert Path(p).stat().st_size > 10_000
    redrawn = framework.draw_figures(
        scratch, store.read_json(out / "results" / "scratch" / "results.json"), tmp_path)
    assert sorted(p.name for p in redrawn.values()) == sorted(names)


def test_config_rejects_bad_values():
    with pytest.raises(Hw1Error, match="rule_learning_rates"):
        scratch.Config(update_rules=("sgd", "adam"), rule_learning_rates=(0.1,))
    with pytest.raises(Hw1Error, match="--optimizer: 'lbfgs' is not one of sgd"):
        scratch.Config(optimizer="lbfgs")
    with pytest.raises(Hw1Error, match="--update_rules: 'x' is not one of"):
        scratch.Config(update_rules=("x",), rule_learning_rates=(0.1,))
    with pytest.raises(Hw1Error, match="dropout"):
        scratch.Config(dropout=1.0)
    assert scratch.Config(normalization="none").normalization is None
    # flags give strings: the binary's parser turns them into the field's type, or says why
    from absl import app, flags

    from hw1_tf import cli

    values = flags.FlagValues()
    cli.define_flags(scratch.Config, values)
    values(["prog", "--hidden_dims=8,4", "--normalization=none"])
    parsed = cli.config_from_flags(scratch.Config, values)
    assert parsed.hidden_dims == (8, 4) and parsed.normalization is None
    values(["prog", "--search_weight_scales=x"])
    with pytest.raises(app.UsageError, match="comma-separated list of floats"):
        cli.config_from_flags(scratch.Config, values)


def test_best_cell_prefers_accuracy_then_loss_and_skips_divergence():
    acc = np.array([[0.5, 1.0], [1.0, np.nan]])
    loss = np.array([[1.0, 0.2], [0.1, np.nan]])
    assert scratch._best_cell(acc, loss) == (1, 0)


def test_bin_run_scratch_end_to_end_and_one_line_errors(tmp_path, monkeypatch, capsys):
    # bin/run_scratch's flags and work in this process, from another folder (hw1_tf.cli.invoke;
    # test_resume_population_scratch kills and restarts the real binary)
    from hw1_tf import cli

    monkeypatch.chdir(tmp_path)
    code = cli.invoke_experiment("scratch", [
        "--dataset=digits", "--val_size=200", "--overfit_hidden_dims=40,40",
        "--search_weight_scales=0.1", "--search_learning_rates=0.1", "--update_rules=adam",
        "--rule_learning_rates=0.001", "--rules_train_size=300", "--rules_epochs=1",
        "--hidden_dims=32", "--epochs=1", "--normalization=none", "--dropout=0",
        f"--output_dir={tmp_path}"])
    assert code == 0, capsys.readouterr().err[-2000:]
    results = json.loads((tmp_path / "results" / "scratch" / "results.json").read_text())
    assert results["dataset_used"] == "digits" and results["fallback_reason"] is None
    assert results["config"]["normalization"] is None
    assert (tmp_path / "figures" / "scratch" / "update_rules.png").is_file()

    # inconsistent flags: a usage error (the binary's flags, config and exit code, in this
    # process: hw1_tf.cli.invoke)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.invoke_experiment("scratch", ["--dataset=digits", "--update_rules=sgd,adam",
                                                 "--rule_learning_rates=0.1",
                                                 f"--output_dir={tmp_path}"])
    assert code == 2
    assert err.getvalue().strip().splitlines()[-1].startswith("usage error: 2 update_rules but 1")
