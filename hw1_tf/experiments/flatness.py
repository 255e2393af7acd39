"""HW1-3 flatness vs generalization, part 1: train one model per training approach (batch size,
learning rate), export each as a SavedModel, then load the SavedModels back and evaluate the
line θ(α) = (1 − α)θ₁ + αθ₂ between every two approaches that differ in one knob, on the
training and test sets.

A SavedModel already at its place (saved_models/flatness/<run>, the run name encoding
everything that shapes the model) is reused unless --retrain; --saved_models_dir reads and
writes them elsewhere. The interpolation itself is hw1_tf.landscape.

`--saved_models=A,B` interpolates two SavedModels the user brings instead (nothing is trained):
any with a one-input `serve` taking the dataset's images (a Keras export, CNNs included, or a
tf.Module). Their variables must match in shapes. The dense path (many α per pass, BatchNorm
statistics recomputed) runs when the variables read as a dense net that reproduces `serve`;
otherwise the serve path evaluates one α at a time through A's `serve` with θ(α) assigned, the
BatchNorm moving means interpolated linearly and the variances geometrically (they cannot be
recomputed through `serve`). Each line records which path ran and what happened to the
BatchNorm statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from hw1_tf import framework, hessian, landscape, markdown, models, store, trainer
from hw1_tf.config import ConfigError, ImageTrainConfig, StopOptions, option
from hw1_tf.figures import FigureSet, plt

EXPERIMENT = "flatness"
POSITION = 330  # its place in the slides' order (the registry sorts by it)


@dataclasses.dataclass
class Config(StopOptions, ImageTrainConfig):
    batch_sizes: tuple[int, ...] = option((64, 1024), "Batch sizes, one model each (the slides: "
                                          "64 vs 1024).", lower=1)
    learning_rates: tuple[float, ...] = option(
        (1e-3,), "Learning rates, one model each with every batch size (the slides: 1e-3 vs "
        "1e-2).", lower=0.0)
    learning_rate: float = option(1e-3, "Not used here: each model's learning rate comes from "
                                  "--learning_rates.", lower=0.0)
    hidden: tuple[int, ...] = option((256, 256, 256), "Hidden widths of the dense net.",
                                     lower=1)
    activation: str = option("relu", "Hidden activation (a TensorFlow op name in tf.nn).")
    batch_norm: bool = option(False, "BatchNormalization after every hidden Dense layer.")
    alpha_min: float = option(-1.0, "First interpolation ratio alpha.")
    alpha_max: float = option(2.0, "Last interpolation ratio alpha.")
    num_alphas: int = option(31, "Evenly spaced alphas from --alpha_min to --alpha_max.",
                             lower=2)
    alphas_per_pass: int = option(32, "Alphas evaluated together in one pass over a batch "
                                  "(stacked weights; memory grows with it).", lower=1)
    eval_batch_size: int = option(1024, "Examples per evaluation batch (split across "
                                  "replicas).", lower=1)
    recompute_batch_norm: bool = option(True, "Recompute BatchNorm statistics at every "
                                        "interpolated point (else interpolate the moving "
                                        "means linearly, the variances geometrically; the "
                                        "serve path always does that).")
    batch_norm_examples: int = option(10000, "Training examples the recomputed BatchNorm "
                                      "statistics are taken over.", lower=1)
    retrain: bool = option(False, "Train even when a SavedModel of a run is already there.")
    train_missing: bool = option(True, "Train the runs whose SavedModel is absent (false: "
                                 "a missing SavedModel is an error).")
    epochs: int = option(10, "Training epochs per run.", lower=1)
    tensorboard: bool = option(False, "Write TensorBoard logs under results/.")
    saved_models: tuple[str, ...] = option(
        (), "Two SavedModels A,B to interpolate instead of training (any with a serve function "
        "taking the dataset's images: a Keras export, CNNs included, or a tf.Module; their "
        "variables must match in shapes). Dense path when their variables read as a dense net "
        "reproducing serve, else through serve one alpha at a time.")
    outputs: str = option("auto", "With --saved_models: what serve returns (auto: "
                                  "probabilities when every row is non-negative and sums to 1 "
                                  "on the data, else logits).", choices=hessian.OUTPUT_KINDS)

    def __post_init__(self):
        super().__post_init__()
        if self.alpha_max <= self.alpha_min:
            raise ConfigError(f"--alpha_max={self.alpha_max} must be above --alpha_min="
                              f"{self.alpha_min}")
        if self.saved_models:  # nothing to train; their count is checked by plan()
            return
        if len(approaches(self)) < 2:
            raise ConfigError("flatness needs two training approaches: give two "
                              "--batch_sizes or two --learning_rates")
        if len(set(approaches(self))) != len(approaches(self)):
            raise ConfigError("--batch_sizes and --learning_rates must not repeat a value")


def approaches(config: Config) -> list[tuple[int, float]]:
    """(batch size, learning rate) of every model to train."""
    return [(int(b), float(r)) for b in config.batch_sizes for r in config.learning_rates]


def line_pairs(config: Config) -> list[tuple[tuple[int, float], tuple[int, float]]]:
    """Pairs of approaches that differ in exactly one knob (one figure each)."""
    items = approaches(config)
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1:]
            if (a[0] == b[0]) != (a[1] == b[1])]


def alphas_of(config: Config) -> np.ndarray:
    alphas = np.linspace(config.alpha_min, config.alpha_max, config.num_alphas)
    for exact in (0.0, 1.0):  # the endpoints themselves, not 1e-16 away
        alphas[np.isclose(alphas, exact, rtol=0, atol=1e-9)] = exact
    return alphas


def model_spec(config: Config) -> models.ModelSpec:
    return models.ModelSpec("flatness", "dense", hidden=tuple(config.hidden),
                            activation=config.activation, batch_norm=config.batch_norm)


def run_name(config: Config, batch_size: int, learning_rate: float) -> str:
    """Readable approach + a hash of everything else that shapes the trained model, so a
    SavedModel is reused only for the same training."""
    key = {k: getattr(config, k) for k in ("dataset", "train_size", "hidden", "activation",
                                           "batch_norm", "epochs", "optimizer", "seed")}
    key.update({k: getattr(config, k) for k in ("stop_loss_below", "stop_accuracy_above",
                                                "learning_rate_decay")
                if getattr(config, k) is not None})  # only when set: older hashes still hold
    digest = hashlib.sha1(json.dumps(store.to_jsonable(key), sort_keys=True).encode())
    rate = f"{learning_rate:g}".replace(".", "p")  # no dots: <run>.keras / <run>.json beside it
    return f"{config.dataset}_bs{batch_size}_lr{rate}_{digest.hexdigest()[:8]}"


def _expected_shapes(config: Config, splits) -> list[tuple[int, ...]]:
    net = models.build(model_spec(config), splits.input_shape, splits.num_classes)
    return [tuple(v.shape) for v in [*net.trainable_variables, *net.non_trainable_variables]]


def _check_existing(path, expected: list[tuple[int, ...]]) -> None:
    """A SavedModel about to be reused must have this config's shapes: one error naming it."""
    shapes = [a.shape for a in landscape.load_endpoint(path).arrays]
    if shapes != expected:
        raise landscape.IncompatibleModelsError(
            f"{path}: variable shapes {shapes} differ from the configured model's {expected}; "
            "use --retrain or another --saved_models_dir")


def _activation(name: str):
    import tensorflow as tf

    fn = getattr(tf.nn, name, None)
    if fn is None:
        raise ConfigError(f"--activation={name}: not an op of tf.nn")
    return fn


def plan(ctx: framework.ExperimentContext) -> list[framework.Run]:
    """One run per approach, each kept as its SavedModel (reused when already there). Every
    SavedModel to reuse is checked against the configured model before anything is trained."""
    config = ctx.config
    _activation(config.activation)
    if config.saved_models:  # the user's SavedModels: nothing to train
        if len(config.saved_models) != 2:
            raise ConfigError(f"--saved_models takes two paths A,B; got "
                              f"{len(config.saved_models)}")
        return []
    expected = _expected_shapes(config, ctx.splits())
    runs = []
    for batch_size, learning_rate in approaches(config):
        name = run_name(config, batch_size, learning_rate)
        if not ctx.ledger.model_to_train(name):
            _check_existing(ctx.paths.saved_model(EXPERIMENT, name), expected)
        runs.append(framework.Run(name, train, {"batch_size": batch_size,
                                                "learning_rate": learning_rate},
                                  saved_model=True))
    return runs


def train(ctx: framework.ExperimentContext, batch_size: int, learning_rate: float) -> dict:
    """Trains and exports the model of one approach: its training record."""
    config = ctx.config
    settings = trainer.settings_from(config, batch_size=batch_size, learning_rate=learning_rate)
    _, record = ctx.train_model(run_name(config, batch_size, learning_rate), model_spec(config),
                                ctx.splits(), settings, save_model=True,
                                tensorboard=config.tensorboard)
    return record


def _splits_data(splits) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": (splits.x_train, splits.y_train), "test": (splits.x_test, splits.y_test)}


def _own(endpoint: landscape.Endpoint, splits, kind: str = "logits") -> dict[str, float]:
    """The loss and accuracy of a SavedModel through its own serve on both splits."""
    out = {}
    for split, (x, y) in _splits_data(splits).items():
        out[f"{split}_loss"], out[f"{split}_accuracy"] = landscape.evaluate_serve(
            endpoint, x, y, kind=kind)
    logging.info("%s: own train loss %.4g acc %.4f, test loss %.4g acc %.4f", endpoint.path,
                 out["train_loss"], out["train_accuracy"], out["test_loss"],
                 out["test_accuracy"])
    return out


def dense_reading(endpoints, probe, activation, kind: str) -> str | None:
    """None when the dense path applies to every endpoint (its variables read as a dense net
    reproduce serve's logits on `probe`), else why not."""
    if kind != "logits":
        return f"serve returns {kind}, the dense reading gives logits"
    for endpoint in endpoints:
        try:
            landscape.check_reading(endpoint, probe, activation)
        except landscape.IncompatibleModelsError as e:
            return str(e)
    return None


def _line(ctx, first: landscape.Endpoint, second: landscape.Endpoint, alphas, splits,
          activation, path: str, kind: str = "logits") -> dict:
    """The curves of one line on both splits by `path` ("dense": many α per pass; "serve":
    one α at a time through serve), with which path ran and what happened to BatchNorm."""
    config = ctx.config
    start = time.perf_counter()
    if path == "dense":
        curves = landscape.evaluate_line(
            first, second, alphas, _splits_data(splits), strategy=ctx.strategy,
            batch_size=config.eval_batch_size, alphas_per_pass=config.alphas_per_pass,
            recompute_batch_norm=config.recompute_batch_norm,
            batch_norm_x=splits.x_train[:config.batch_norm_examples], activation=activation,
            jit_compile=config.jit_compile)
        recomputed = bool(config.recompute_batch_norm and first.has_batch_norm)
        examples = min(config.batch_norm_examples, len(splits.x_train))
        batch_norm = (f"recomputed on {examples} training examples at each α" if recomputed
                      else landscape.BATCH_NORM_INTERPOLATED if first.has_batch_norm
                      else "none (no BatchNorm layers)")
    else:
        if ctx.strategy.num_replicas_in_sync > 1:
            logging.info("the serve path runs on one device (--strategy is not used there)")
        progress = framework.Progress(f"{EXPERIMENT} serve path")
        curves = landscape.evaluate_line_serve(
            first, second, alphas, _splits_data(splits), kind=kind,
            batch_size=config.eval_batch_size,
            progress=lambda done, total: progress.step(done, total, "alphas"))
        recomputed = False
        batch_norm = (f"{landscape.BATCH_NORM_INTERPOLATED} ({len(first.state)} non-trainable "
                      "float variables); serve runs in inference mode, so they cannot be "
                      "recomputed there" if first.has_batch_norm
                      else f"none (no BatchNorm statistics; {len(first.state)} non-trainable "
                      "float variables interpolated)" if first.state
                      else "none (no non-trainable variables)")
    seconds = time.perf_counter() - start
    logging.info("line %s -> %s (%s path; BatchNorm: %s): %d alphas in %.1f s", first.path,
                 second.path, path, batch_norm, len(alphas), seconds)
    return {"alphas": alphas, "seconds": seconds, "path": path, "batch_norm": batch_norm,
            "recomputed_batch_norm": recomputed,
            **{f"{split}_{metric}": curves[split][metric] for split in curves
               for metric in ("loss", "accuracy")}}


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """Loads every SavedModel back, evaluates it on both splits, and evaluates the line
    between every two approaches that differ in one knob (with --saved_models: the line
    between the user's two SavedModels)."""
    if ctx.config.saved_models:
        return analyse_saved_models(ctx)
    config, splits = ctx.config, ctx.splits()
    activation = _activation(config.activation)
    names = {a: run_name(config, *a) for a in approaches(config)}
    endpoints, runs = {}, {}
    probe = splits.x_train[:256]
    for (batch_size, learning_rate), name in names.items():
        endpoint = landscape.load_endpoint(ctx.paths.saved_model(EXPERIMENT, name))
        landscape.check_reading(endpoint, probe, activation)
        endpoints[name] = endpoint
        # the training record (model, num_params, history, reused) kept beside the SavedModel
        runs[name] = {**records[name], "batch_size": batch_size, "learning_rate": learning_rate,
                      "saved_model": str(endpoint.path), "own": _own(endpoint, splits)}

    alphas = alphas_of(config)
    lines = {}
    for a, b in line_pairs(config):
        first, second = names[a], names[b]
        knob = "batch_size" if a[0] != b[0] else "learning_rate"
        lines[f"{first}__{second}"] = {
            "first": first, "second": second, "knob": knob,
            "first_value": a[0] if knob == "batch_size" else a[1],
            "second_value": b[0] if knob == "batch_size" else b[1],
            **_line(ctx, endpoints[first], endpoints[second], alphas, splits, activation,
                    "dense")}
    return framework.Outcome(runs, dict(lines=lines, dataset=splits.name,
                                        model=model_spec(config).describe(),
                                        train_examples=len(splits.x_train),
                                        test_examples=len(splits.x_test)))


def model_labels(paths: list[Path]) -> list[str]:
    """Short distinct labels of the user's SavedModels: their folder names, with as many parent
    folders as it takes to tell them apart."""
    paths = [Path(p).resolve() for p in paths]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        # file-name safe: a label names the figure of the line
        labels = [re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(p.parts[-depth:])) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{p.name}_{i + 1}" for i, p in enumerate(paths)]  # one path given twice


def analyse_saved_models(ctx: framework.ExperimentContext) -> framework.Outcome:
    """The line between the user's two SavedModels (--saved_models=A,B): loaded, checked to fit
    each other and the dataset (one error line otherwise), then the dense path when it applies,
    else the serve path."""
    config, splits = ctx.config, ctx.splits()
    activation = _activation(config.activation)
    paths = [Path(p) for p in config.saved_models]
    first, second = (landscape.load_endpoint(p, dense_only=False) for p in paths)
    landscape.check_compatible(first, second)
    probe_x, classes = splits.x_train[:256], np.concatenate([splits.y_train, splits.y_test])
    kinds = [landscape.outputs_kind(e, probe_x, classes, config.outputs)
             for e in (first, second)]
    if kinds[0] != kinds[1]:
        raise landscape.IncompatibleModelsError(
            f"{second.path}: serve returns {kinds[1]}, {first.path}'s {kinds[0]}; give "
            "--outputs to say what both return")
    kind = kinds[0]
    why = dense_reading((first, second), probe_x, activation, kind)
    path = "dense" if why is None else "serve"
    logging.info("%s path%s", path, f" ({why})" if why else "")
    labels = model_labels(paths)
    runs = {label: {"saved_model": str(e.path), "outputs": kind,
                    "num_params": int(sum(a.size for a in e.arrays[:e.num_trainable])),
                    "own": _own(e, splits, kind)}
            for label, e in zip(labels, (first, second))}
    alphas = alphas_of(config)
    line = {"first": labels[0], "second": labels[1], "knob": "saved_model",
            "first_value": labels[0], "second_value": labels[1], "outputs": kind,
            "loss_used": hessian.LOSS_NAMES[kind], "why_not_dense": why,
            **_line(ctx, first, second, alphas, splits, activation, path, kind)}
    return framework.Outcome(runs, dict(
        lines={f"{labels[0]}__{labels[1]}": line}, dataset=splits.name, saved_models=True,
        model=f"the SavedModels {labels[0]} and {labels[1]}",
        train_examples=len(splits.x_train), test_examples=len(splits.x_test)))


# -------------------------------------------------------------------------------- figures


def _knob_text(knob: str, value) -> str:
    if knob == "saved_model":
        return str(value)
    return f"batch {int(value)}" if knob == "batch_size" else f"lr {float(value):g}"


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """As the slides: cross-entropy (log scale, left axis) and accuracy (right axis), training
    (solid) and test (dashed), against the interpolation ratio α; one figure per pair."""
    out = FigureSet(figures_dir)
    for key, line in results["lines"].items():
        alphas = np.asarray(line["alphas"], float)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        acc_ax = ax.twinx()
        for split, style in (("train", "-"), ("test", "--")):
            ax.plot(alphas, line[f"{split}_loss"], "C0" + style, label=f"{split} cross-entropy")
            acc_ax.plot(alphas, line[f"{split}_accuracy"], "C3" + style,
                        label=f"{split} accuracy")
        for x in (0.0, 1.0):
            ax.axvline(x, color="grey", linewidth=0.8, alpha=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("interpolation ratio α  (θ = (1-α)·θ₁ + α·θ₂)")
        ax.set_ylabel("cross-entropy (log scale)", color="C0")
        acc_ax.set_ylabel("accuracy", color="C3")
        acc_ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        first = _knob_text(line["knob"], line["first_value"])
        second = _knob_text(line["knob"], line["second_value"])
        bn = ", BN recomputed" if line.get("recomputed_batch_norm") else ""
        if results.get("saved_models"):  # the user's models: say which path ran
            bn += f", {line['path']} path"
        ax.set_title(f"HW1-3 flatness, {results.get('dataset', '')}: θ₁ = {first} (α=0), "
                     f"θ₂ = {second} (α=1){bn}", fontsize=10)
        handles = ax.get_legend_handles_labels()
        acc_handles = acc_ax.get_legend_handles_labels()
        ax.legend(handles[0] + acc_handles[0], handles[1] + acc_handles[1], fontsize=8,
                  loc="center left")
        out.save(fig, f"{key}")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Flatness vs generalization, part 1: interpolating between two models"
QUESTIONS = (
    "Describe the settings of the experiments (e.g. which task, what training approaches).",
    "Plot the figures of both training and testing, loss and accuracy to the number of "
    "interpolation ratio.",
    "Comment your result.",
)


def _knob_label(knob: str, value) -> str:
    if knob == "saved_model":
        return str(value)
    return f"batch {int(value)}" if knob == "batch_size" else f"learning rate {value:g}"


def _own_row(r) -> tuple:
    own = r.get("own")
    return (own["train_loss"], markdown.pct(own["train_accuracy"]), own["test_loss"],
            markdown.pct(own["test_accuracy"]))


def _saved_models_intro(results: dict) -> list[str]:
    config, runs = results["config"], results["runs"]
    (line,) = results["lines"].values()
    text = [f"{results['dataset']} ({results['train_examples']} training / "
            f"{results['test_examples']} test examples); two SavedModels given with "
            f"`--saved_models`, nothing trained; {config['num_alphas']} values of α from "
            f"{config['alpha_min']:g} to {config['alpha_max']:g}; loss: {line['loss_used']}.",
            "", markdown.table(("model", "SavedModel", "parameters", "train loss", "train acc",
                                "test loss", "test acc"),
                               [(name, f"`{r['saved_model']}`", r["num_params"], *_own_row(r))
                                for name, r in runs.items()]), ""]
    how = ("the dense path: the variables read as a dense net reproduce `serve`, so many α "
           "share one pass" if line["path"] == "dense" else
           f"the serve path, one α at a time through `serve` with θ(α) assigned (the dense "
           f"reading does not apply: {line['why_not_dense']})")
    text += [f"- Evaluated by {how}; BatchNorm statistics: {line['batch_norm']}.", ""]
    return text


def report_section(results: dict, ctx: markdown.Context) -> str:
    config, runs, lines = results["config"], results["runs"], results["lines"]
    if results.get("saved_models"):
        out = _saved_models_intro(results)
    else:
        out = [f"{results['dataset']} ({results['train_examples']} training / "
               f"{results['test_examples']} test examples), model {results['model']}, "
               f"{config['epochs']} epochs of {config['optimizer']} per approach; "
               f"{len(runs)} SavedModels, each loaded back with `tf.saved_model.load`; "
               f"{config['num_alphas']} values of α from {config['alpha_min']:g} to "
               f"{config['alpha_max']:g}."]
        out += ["", markdown.table(
            ("run", "batch", "learning rate", "train loss", "train acc", "test loss",
             "test acc", "reused"),
            [(name, r.batch_size, f"{r.learning_rate:g}", *_own_row(r),
              "yes" if r.reused else "no") for name, r in runs.items()]), ""]
    for key, line in lines.items():
        a = markdown.series(line["alphas"])
        label1 = _knob_label(line["knob"], line["first_value"])
        label2 = _knob_label(line["knob"], line["second_value"])
        out.append(ctx.figure(f"{key}", f"{label1} (α=0) to {label2} (α=1)"))
        rows = []
        for split in ("train", "test"):
            loss = markdown.series(line[f"{split}_loss"])
            acc = markdown.series(line[f"{split}_accuracy"])
            i0, i1 = int(np.argmin(abs(a))), int(np.argmin(abs(a - 1)))
            between = np.where((a > 0) & (a < 1))[0]
            top = between[np.argmax(loss[between])] if between.size else i0
            rows.append((split, loss[i0], markdown.pct(acc[i0]), loss[i1], markdown.pct(acc[i1]),
                         f"{markdown.fmt(loss[top])} at α={a[top]:.2f} ({markdown.pct(acc[top])})"))
        out += ["", markdown.table(("split", "loss α=0", "acc α=0", "loss α=1", "acc α=1",
                                  "highest loss between (acc)"), rows), ""]
        out.append("- " + _line_comment(line, runs, label1, label2))
        out.append("")
    return "\n".join(out)


def _line_comment(line: dict, runs: dict, label1: str, label2: str) -> str:
    a = markdown.series(line["alphas"])
    train = markdown.series(line["train_loss"])
    i0, i1 = int(np.argmin(abs(a))), int(np.argmin(abs(a - 1)))
    between = np.where((a > 0) & (a < 1))[0]
    text = []
    if between.size:
        top = between[np.argmax(train[between])]
        barrier = train[top] - max(train[i0], train[i1])
        text.append(f"between the two minima the training loss rises to {markdown.fmt(train[top])}"
                    f" at α={a[top]:.2f}, {markdown.fmt(barrier)} above the higher endpoint "
                    + ("(a barrier: they sit in different basins)" if barrier > 0.05 *
                       max(train[i0], train[i1]) + 1e-3 else "(no real barrier)"))
    # flatness: how fast the training loss grows when stepping 0.5 beyond each endpoint
    for idx, label, step in ((i0, label1, -0.5), (i1, label2, 0.5)):
        j = int(np.argmin(abs(a - (a[idx] + step))))
        if j != idx and train[idx] > 0:
            text.append(f"{label}: α {a[idx]:g}→{a[j]:g} multiplies the training loss by "
                        f"{markdown.times(train[j] / train[idx])}")
    own = [runs[line["first"]].get("own"), runs[line["second"]].get("own")]
    gap = [o["test_loss"] - o["train_loss"] for o in own]
    text.append(f"test minus training loss: {markdown.fmt(gap[0])} for {label1}, "
                f"{markdown.fmt(gap[1])} for {label2}; test accuracy "
                f"{markdown.pct(own[0]['test_accuracy'])} vs {markdown.pct(own[1]['test_accuracy'])}")
    if line.get("batch_norm"):
        text.append(f"{line.get('path', 'dense')} path; BatchNorm statistics: "
                    f"{line['batch_norm']}")
    elif line.get("recomputed_batch_norm"):  # results written before the path was recorded
        text.append("BatchNorm statistics recomputed at every α")
    return "; ".join(text) + f" (curve of {len(a)} α in {markdown.fmt(line['seconds'])} s)."


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"flatness.test_loss": "test loss of the two interpolated models"}


def scorecard(results: dict) -> dict[str, Measured]:
    config = results["config"]
    if results.get("saved_models"):
        (line,) = results["lines"].values()
        return {"flatness.test_loss": Measured(
            ", ".join(f"{name}: {markdown.fmt(r['own']['test_loss'])}"
                      for name, r in results["runs"].items()),
            f"{results['model']} ({line['path']} path), {results['test_examples']} test "
            "examples")}
    runs = sorted(results["runs"].values(), key=lambda r: (r.batch_size, r.learning_rate))
    first = runs[0]
    return {"flatness.test_loss": Measured(
        ", ".join(f"batch {r.batch_size}: {markdown.fmt(r.own['test_loss'])}"
                  for r in runs),
        f"{first.description}, {config['epochs']} epochs on {results['train_examples']} "
        "examples")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {1: ("*",)}
