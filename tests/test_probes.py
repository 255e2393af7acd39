"""The probe table: every binary in bin/ given bad input as a user would give it (out-of-range
and contradictory flags, missing or corrupt inputs, models that do not fit the analysis, NaN/inf
mid-run in a single run and in a population). Each probe is one `error:` / `usage error:` line,
a non-zero exit, and the output folder as it was (an earlier results.json untouched, no results, figures or
half-written files added; only the ledger's record of a run that trained to its end before the
error, in results/<exp>/finished/, may be new).

The binaries run in this process (tests/probing.py, through `hw1_tf.cli.invoke`: their own
flags, config, work and exit code), so the table costs no TensorFlow start-up per row.

    PYTHONPATH=. HW1_DATA_DIR=<data> .venv/bin/python tests/test_probes.py

prints the table of docs/reliability.md (input, exit code, what it printed) from this list.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

if __name__ == "__main__":  # the table: TensorFlow's devices as the test suite has them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import conftest  # noqa: F401

from probing import check_probe, idx_bytes, mnist_folder, one_line, run_probe

TINY_SIM = ["--functions=sinc", "--depths=1", "--target_params=40", "--n_train=32",
            "--n_test=20", "--epochs=2", "--batch_size=16", "--nosave_models",
            "--notensorboard", "--verbose=0"]
TINY_TASK = ["--datasets=digits", "--models=dnn_shallow", "--target_params=500", "--epochs=1",
             "--batch_size=64", "--nosave_models", "--notensorboard", "--verbose=0"]


def truncated_mnist(d: Path) -> str:
    return mnist_folder(d / "data", train_images=idx_bytes(np.zeros((3, 28, 28)))[:-50])


def saved_model(d: Path, inputs: int, outputs: int) -> str:
    """A SavedModel (store.export_model) of a dense net on `inputs` features, `outputs` wide."""
    import keras

    from hw1_tf import store

    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(outputs)])
    return str(store.export_model(model, d / "models" / f"m{inputs}x{outputs}"))


def corrupt_saved_model(d: Path) -> str:
    folder = d / "models" / "corrupt"
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"not a protobuf")
    return str(folder)


def corrupt_results(d: Path, experiment: str) -> None:
    path = d / "results" / experiment / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"experiment": "' + experiment.encode() + b'", "runs": {')


# (binary, what the probe is, args of the probe's folder, exit code, part of its one line)
PROBES = [
    ("run_actual_task", "zero epochs", lambda d: ["--epochs=0"], 2, "--epochs"),
    ("run_actual_task", "IDX file truncated (corrupt data file)",
     lambda d: ["--datasets=mnist", f"--data_dir={truncated_mnist(d)}", *TINY_TASK[1:]],
     1, "but its header announces"),
    ("run_actual_task", "NaN/inf mid-run, a single run",
     lambda d: [*TINY_TASK, "--optimizer=sgd", "--learning_rate=1e30"], 1, "the loss became"),
    ("run_capacity", "a width given twice", lambda d: ["--widths=4,4"], 2,
     "--widths must not repeat a width"),
    ("run_error_surface", "an interpolation range given backwards",
     lambda d: ["--interpolation_range=2,-1"], 2, "interpolation_range"),
    ("run_flatness", "an alpha range given backwards",
     lambda d: ["--alpha_min=2", "--alpha_max=-1"], 2, "--alpha_max=-1.0 must be above"),
    ("run_flatness", "a single batch size where two are needed",
     lambda d: ["--batch_sizes=64", "--learning_rates=0.001"], 2,
     "flatness needs two training approaches"),
    ("run_flatness", "missing SavedModels, training them not allowed",
     lambda d: ["--dataset=digits", "--notrain_missing", f"--saved_models_dir={d}/none"], 1,
     "SavedModel"),
    ("run_flatness", "two SavedModels whose variables do not match in shapes",
     lambda d: [f"--saved_models={saved_model(d, 64, 10)},{saved_model(d, 64, 5)}",
                "--dataset=digits"], 1, "interpolation needs one architecture"),
    ("run_grad_norm", "an unknown task", lambda d: ["--tasks=nope"], 2, "nope"),
    ("run_hessian_spectrum", "a missing SavedModel",
     lambda d: [f"--saved_model={d}/nothing", "--dataset=digits"], 1, "no SavedModel here"),
    ("run_hessian_spectrum", "a corrupt SavedModel",
     lambda d: [f"--saved_model={corrupt_saved_model(d)}", "--dataset=digits"], 1,
     "SavedModel could not be loaded"),
    ("run_measures", "a margin percentile above 100", lambda d: ["--margin_percentile=150"], 2,
     "--margin_percentile"),
    ("run_measures", "a source's results.json corrupt",
     lambda d: (corrupt_results(d, "sensitivity"), ["--sources=sensitivity"])[1], 1,
     "not valid JSON"),
    ("run_minimal_ratio", "zero runs", lambda d: ["--runs=0"], 2, "--runs"),
    ("run_random_labels", "a corruption fraction outside [0, 1]", lambda d: ["--ratios=1.5"], 2,
     "--ratios: 1.5 is above the maximum 1.0"),
    ("run_reparametrization", "a negative alpha", lambda d: ["--alphas=-1"], 2,
     "--alphas: -1.0 is below the minimum 0.0"),
    ("run_scratch", "an unknown update rule", lambda d: ["--update_rules=x"], 2,
     "--update_rules: 'x' is not one of"),
    ("run_sensitivity", "a zero batch size", lambda d: ["--batch_sizes=64,0"], 2,
     "--batch_sizes: 0 is below the minimum 1"),
    ("run_sharpness", "a negative epsilon", lambda d: ["--epsilon=-0.1"], 2, "--epsilon"),
    ("run_simulate_function", "NaN/inf mid-run, a population",
     lambda d: [*TINY_SIM, "--optimizer=sgd", "--learning_rate=1e30"], 1,
     "every run diverged"),
    ("run_trajectory", "a single run where a population is needed", lambda d: ["--runs=1"], 2,
     "--runs"),
    ("fetch_data", "an unknown dataset", lambda d: ["--datasets=svhn"], 2,
     "--datasets: 'svhn' is not one of"),
    ("make_figures", "a corrupt results.json",
     lambda d: (corrupt_results(d, "actual_task"), ["--experiments=actual_task"])[1], 1,
     "not valid JSON"),
    ("make_report", "an unknown profile", lambda d: ["--profile=nope"], 2, "nope"),
    ("run_all", "an unknown experiment", lambda d: ["--experiments=nope"], 1, "nope"),
    ("compare_results", "folders without results",
     lambda d: [f"--first={d}/a", f"--second={d}/b", "--experiments=actual_task"], 1,
     "no such folder"),
    ("make_binaries", "an unexpected argument", lambda d: ["extra"], 2,
     "unexpected arguments: extra"),
]
IDS = [f"{binary}: {what}" for binary, what, *_ in PROBES]


@pytest.mark.parametrize("probe", PROBES, ids=IDS)
def test_probe_is_one_line_nonzero_exit_nothing_written_or_lost(probe, tmp_path, monkeypatch):
    check_probe(probe, tmp_path, monkeypatch)


def markdown_table() -> str:
    import os
    import tempfile

    rows = ["| binary | input | exit | what it printed |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PATH"] = tmp
        for i, probe in enumerate(PROBES):
            folder = Path(tmp) / f"p{i}"
            code, stderr, shown, _, _ = run_probe(probe, folder)
            line = " / ".join(one_line(stderr)).replace(str(folder), "<dir>").replace("|", "\\|")
            rows.append(f"| `bin/{probe[0]}` | {probe[1]}: `{shown}` | {code} | `{line}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    print(markdown_table())
