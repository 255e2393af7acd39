"""HW1-3 bonus after Dinh et al. 2017 ("Sharp minima can generalize for deep nets"): for a ReLU
net, multiplying layer i (kernel and bias) by alpha > 0 and layer i+1's kernel by 1/alpha
leaves the function unchanged, since relu(alpha z) = alpha relu(z). Over alpha from 1e-3 to 1e3
the outputs and the loss are checked equal to float64 precision while every sharpness
definition of hw1_tf.measures is recomputed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import logging

from hw1_tf import framework, hessian, markdown, measures, models, store
from hw1_tf.config import ImageTrainConfig, StopOptions, option
from hw1_tf.errors import Hw1Error
from hw1_tf.experiments import approaches
from hw1_tf.experiments.sharpness import SHARPNESS_LABELS, SHORT_LABELS
from hw1_tf.figures import FigureSet, finish_axes, plt
from hw1_tf.records import RunRecord, typed_runs

EXPERIMENT = "reparametrization"
POSITION = 360  # its place in the slides' order (the registry sorts by it)


class FunctionChangedError(Hw1Error):
    """A rescaling changed the network's outputs (not a positively homogeneous activation)."""


def rescaled(network: keras.Model, layer: int, alpha: float) -> keras.Model:
    """A copy of `network` with Dense layer `layer` (kernel and bias) times alpha and Dense
    layer `layer + 1`'s kernel times 1/alpha; the original is untouched."""
    if alpha <= 0:
        raise Hw1Error(f"alpha must be positive, got {alpha}")
    dense = [i for i, l in enumerate(network.layers) if isinstance(l, keras.layers.Dense)]
    if not 0 <= layer < len(dense) - 1:
        raise Hw1Error(f"layer {layer}: need a Dense layer followed by another "
                       f"({len(dense)} Dense layers)")
    if network.layers[dense[layer]].get_config()["activation"] != "relu":
        raise Hw1Error(f"layer {layer}: rescaling keeps the function only through ReLU")
    copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    first, second = copy.layers[dense[layer]], copy.layers[dense[layer + 1]]
    first.kernel.assign(first.kernel.numpy() * alpha)
    if first.use_bias:
        first.bias.assign(first.bias.numpy() * alpha)
    second.kernel.assign(second.kernel.numpy() / alpha)
    return copy


@dataclasses.dataclass
class Config(approaches.SharpnessOptions, StopOptions,
             ImageTrainConfig):
    hidden: tuple[int, ...] = option((32, 32), "Hidden widths of the dense ReLU model.",
                                     lower=1)
    layer: int = option(0, "Dense layer scaled by alpha (the next one by 1/alpha).", lower=0)
    alphas: tuple[float, ...] = option(tuple(float(a) for a in np.logspace(-3, 3, 13)),
                                       "Scale factors alpha.", lower=0.0)
    analysis_examples: int = option(500, "Training examples of the loss and sharpness.",
                                    lower=1)
    tolerance: float = option(1e-10, "Largest relative change of outputs and loss accepted "
                              "as 'unchanged' (float64).", lower=0.0)
    epochs: int = option(5, "Training epochs of the model.", lower=1)


def plan(ctx: framework.ExperimentContext) -> list[framework.Run]:
    """One model: kept at once, and a rerun of the same config skips it (--force redoes it)."""
    return [framework.Run("model", train)]


def train(ctx: framework.ExperimentContext) -> dict:
    """The model trained, then rescaled by every alpha: the record holds, per alpha, the
    change of the outputs and of the loss and every sharpness."""
    config = ctx.config
    splits = ctx.splits()
    spec = models.ModelSpec("dense_relu", "dense", hidden=tuple(config.hidden))
    network, record = approaches.train_approach(ctx, splits, spec, config.batch_size,
                                                config.learning_rate)
    x, y = approaches.analysis_subset(splits, config.analysis_examples, config.seed)
    x = x.astype(np.float64)
    base = hessian.as_float64_model(network)  # float64: "unchanged" to 1e-10, not 1e-6
    logits = measures.logits_of(base, x)
    scale = float(np.max(np.abs(logits)))
    rows = {k: [] for k in ("output_change", "loss_change", "analysis_loss",
                            "block_hessian_norm", "hessian_norm", "sharpness_slides",
                            "sharpness_whole", "sharpness_keskar")}
    base_loss = None
    for alpha in config.alphas:
        model = rescaled(base, config.layer, alpha)
        change = float(np.max(np.abs(measures.logits_of(model, x) - logits))) / scale
        result = measures.sharpness_measures(
            model, x, y, epsilon=config.epsilon, keskar_epsilon=config.keskar_epsilon,
            keskar_maxiter=config.keskar_maxiter, keskar_restarts=config.keskar_restarts,
            max_block_mb=config.max_block_mb, seed=config.seed, strategy=ctx.strategy)
        base_loss = result["analysis_loss"] if base_loss is None else base_loss
        loss_change = abs(result["analysis_loss"] - base_loss) / base_loss
        if change > config.tolerance or loss_change > config.tolerance:
            raise FunctionChangedError(f"alpha={alpha:g} changed the outputs by "
                                       f"{change:.2e} and the loss by {loss_change:.2e} "
                                       "(relative)")
        rows["output_change"].append(change)
        rows["loss_change"].append(loss_change)
        for key in rows:
            if key in result:
                rows[key].append(result[key])
        logging.info("alpha %g: outputs change %.1e, loss %.1e; sharpness slides %.3g, "
                     "whole %.3g, Keskar %.3g", alpha, change, loss_change,
                     result["sharpness_slides"], result["sharpness_whole"],
                     result["sharpness_keskar"])
    record.update({"alphas": np.asarray(config.alphas), "layer": config.layer,
                   **{k: np.asarray(v) for k, v in rows.items()}})
    return record


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    x_count = min(ctx.config.analysis_examples, len(ctx.splits().x_train))
    return framework.Outcome(records, dict(analysis_examples=x_count))


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Dinh et al.'s rescaling: the function's change (float64 rounding) and each sharpness,
    against alpha."""
    r = results["runs"]["model"]
    alphas = np.asarray(r.alphas, float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    floor = 1e-17  # exact zeros drawn here, below float64's epsilon
    left.plot(alphas, np.maximum(r.output_change, floor), "-o",
              label="max |outputs change| / max |outputs|")
    left.plot(alphas, np.maximum(r.loss_change, floor), "-s",
              label="|loss change| / loss (0 drawn at 1e-17)")
    left.axhline(np.finfo(np.float64).eps, color="gray", linestyle=":", label="float64 epsilon")
    left.set_ylim(1e-18, 1e-6)
    left.set_xscale("log")
    finish_axes(left, "the function is unchanged", "alpha (log scale)", "relative change",
                log_y=True)
    for key, label in SHARPNESS_LABELS:
        right.plot(alphas, getattr(r, key), "-o", label=SHORT_LABELS[key])
    right.set_xscale("log")
    finish_axes(right, "while every sharpness changes", "alpha (log scale)", "sharpness",
                log_y=True)
    fig.suptitle(f"HW1-3 bonus: layer {r.layer} x alpha, layer {r.layer + 1} x 1/alpha "
                 "(ReLU)")
    out = FigureSet(figures_dir)
    out.save(fig, "reparametrization")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Flatness vs generalization, bonus: flat minima can be made sharp"
QUESTIONS = (
    "Several metrics (including sharpness) do not indicate generalization for ReLU models "
    "(Dinh et al. 2017): reparametrize relu(x (alpha theta_1)) theta_2 = "
    "relu(x theta_1) (alpha theta_2) and compare the sharpness.",
)


def report_section(results: dict, ctx: markdown.Context) -> str:
    r = results["runs"]["model"]
    alphas = markdown.series(r.alphas)
    out = [f"One model ({r.description}, {r.num_params} parameters, test accuracy "
           f"{markdown.pct(r.test_accuracy)}); Dense layer {r.layer} times alpha and the "
           f"next one's kernel times 1/alpha, alpha from {markdown.fmt(alphas.min())} to "
           f"{markdown.fmt(alphas.max())}; everything in float64 on "
           f"{results['analysis_examples']} training examples.", "",
           ctx.figure("reparametrization", "function unchanged, sharpness not"), "",
           markdown.table(("alpha", "output change", "loss change", "slides", "whole-model",
                         "Keskar"),
                        [(markdown.fmt(a), r.output_change[i], r.loss_change[i],
                          r.sharpness_slides[i], r.sharpness_whole[i],
                          r.sharpness_keskar[i]) for i, a in enumerate(alphas)]), "",
           "### Comment", ""]
    out.append(f"- The largest relative change of the outputs over all alphas is "
               f"{markdown.fmt(float(np.max(r.output_change)))}, of the loss "
               f"{markdown.fmt(float(np.max(r.loss_change)))}: the same function.")
    for key, label in (("sharpness_slides", "slides' (block-diagonal)"),
                       ("sharpness_whole", "whole-model"), ("sharpness_keskar", "Keskar")):
        v = markdown.series(getattr(r, key))
        out.append(f"- The {label} sharpness spans {markdown.fmt(v.min())} to "
                   f"{markdown.fmt(v.max())}, {markdown.fmt(np.log10(v.max() / v.min()), 2)} "
                   "orders of magnitude, for one and the same function.")
    out.append(_compare_with_sharpness(r, ctx))
    return "\n".join(out)


def _compare_with_sharpness(r: RunRecord, ctx: markdown.Context) -> str:
    """How the rescaling's span compares with the span across the sharpness section's
    training approaches (when its results are there)."""
    span = {k: float(np.log10(np.max(getattr(r, k)) / np.min(getattr(r, k))))
            for k in ("sharpness_slides", "sharpness_whole", "sharpness_keskar")}
    try:
        other = typed_runs(store.load_results(ctx.paths, "sharpness"))["runs"].values()
    except (Hw1Error, OSError, ValueError, KeyError):
        return (f"- Rescaling alone moves the slides' sharpness by "
                f"{markdown.fmt(span['sharpness_slides'], 2)} orders of magnitude; run "
                "bin/run_sharpness to compare with the spread across training approaches.")
    parts = []
    for key, label in (("sharpness_slides", "slides'"), ("sharpness_keskar", "Keskar")):
        values = [getattr(o, key) for o in other]
        across = float(np.log10(max(values) / min(values)))
        verdict = "more than" if span[key] > across else "less than"
        parts.append(f"the {label} sharpness by {markdown.fmt(span[key], 2)} orders of magnitude, "
                     f"{verdict} the {markdown.fmt(across, 2)} separating the "
                     f"{len(values)} training approaches of the sharpness section")
    return ("- For the sharpness section: rescaling one function moves " + markdown.join(parts)
            + "; so those sharpness differences say something only among nets of comparable "
            "layer scales, never as an absolute flat/sharp verdict.")


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"reparametrization.span": "sharpness of one function, rescaled"}


def scorecard(results: dict) -> dict[str, Measured]:
    run = results["runs"]["model"]
    s = markdown.series(run.sharpness_slides)
    alphas = markdown.series(run.alphas)
    return {"reparametrization.span": Measured(
        f"{markdown.fmt(s.min())} to {markdown.fmt(s.max())} "
        f"({np.log10(s.max() / s.min()):.1f} orders of magnitude); outputs change at most "
        f"{markdown.fmt(np.max(markdown.series(run.output_change)))}",
        f"alpha {markdown.fmt(alphas.min())} to {markdown.fmt(alphas.max())} (Dinh et al. "
        "2017), float64")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {0: ("*",)}
