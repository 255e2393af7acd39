"""HW1-3 bonus (Keskar et al. 2017): one 20-30k-parameter MNIST model trained with every
(batch size, learning rate), and three sharpness definitions of each on the same training
examples: the slides' ||H||_2 eps^2 / (2 (1 + L)) with the block-diagonal Hessian of
`tf.hessians`, the same with the whole-model ||H||_2 (eigsh on Hessian-vector products), and
Keskar et al.'s own box maximisation by L-BFGS-B (hw1_tf.measures)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar


from hw1_tf import measures, models, report
from hw1_tf.config import option
from hw1_tf.experiments import approaches, common

EXPERIMENT = "sharpness"


@dataclasses.dataclass
class Config(approaches.SharpnessOptions, common.StopOptions, common.ImageTrainConfig):
    RUN_SELECTION: ClassVar[tuple[str, ...]] = ("batch_sizes", "learning_rates")

    batch_sizes: tuple[int, ...] = option((16, 64, 256, 1024, 4096), "Batch sizes (each "
                                          "with every learning rate).", lower=1)
    learning_rates: tuple[float, ...] = option((1e-3, 1e-2), "Learning rates (each with "
                                               "every batch size).", lower=0.0)
    hidden: tuple[int, ...] = option((32,), "Hidden widths of the dense ReLU model (32: "
                                     "25,450 parameters on MNIST).", lower=1)
    analysis_examples: int = option(500, "Training examples every sharpness is computed on "
                                    "(the same for every model).", lower=1)
    eigen_tolerance: float = option(1e-4, "Relative tolerance of eigsh.", lower=0.0)
    epochs: int = option(10, "Training epochs per run.", lower=1)


def run(config: Config) -> dict:
    paths = common.paths_from(config)
    strategy = common.strategy_from(config)
    splits = common.load_splits(config)
    spec = models.ModelSpec("dense_relu", "dense", hidden=tuple(config.hidden))
    x, y = approaches.analysis_subset(splits, config.analysis_examples, config.seed)

    def sharpness(network, record):
        return measures.sharpness_measures(
            network, x, y, epsilon=config.epsilon, keskar_epsilon=config.keskar_epsilon,
            keskar_maxiter=config.keskar_maxiter, keskar_restarts=config.keskar_restarts,
            max_block_mb=config.max_block_mb, eigen_tolerance=config.eigen_tolerance,
            seed=config.seed, strategy=strategy)

    pairs = [(b, lr) for lr in config.learning_rates for b in config.batch_sizes]
    runs = approaches.run_approaches(EXPERIMENT, config, splits, spec, pairs, sharpness,
                                     strategy=strategy, paths=paths)
    return common.finish(EXPERIMENT, config, runs, paths, analysis_examples=len(x))


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Flatness vs generalization, bonus: sharpness of ten training approaches"
QUESTIONS = (
    "Train on MNIST with at least ten different approaches to train the same model.",
    "Calculate the sharpness of trained models (20000-30000 parameters, 500 training "
    "examples, epsilon 1e-4, block-diagonal Hessian from tf.hessians).",
    "Use other metrics or methods to evaluate a model's ability to generalize (bonus).",
)

DEFINITIONS = (("sharpness_slides", "slides (block-diagonal ||H||)"),
               ("sharpness_whole", "whole-model ||H||"),
               ("sharpness_keskar", "Keskar box (L-BFGS-B)"))


def report_section(results: dict, ctx: report.Context) -> str:
    config, runs = results["config"], results["runs"]
    first = next(iter(runs.values()))
    out = [f"{len(runs)} approaches ({len(config['batch_sizes'])} batch sizes x "
           f"{len(config['learning_rates'])} learning rates of {config['optimizer']}, "
           f"{config['epochs']} epochs) of {first['description']} with {first['num_params']} "
           f"parameters on {first['dataset']}. Every sharpness is computed on the same "
           f"{results['analysis_examples']} training examples: the slides' eps = "
           f"{report.fmt(config['epsilon'])}, Keskar's box eps = "
           f"{report.fmt(config['keskar_epsilon'])} with {config['keskar_maxiter']} L-BFGS-B "
           f"iterations from {config['keskar_restarts']} starts.", "",
           ctx.figure("sharpness.png", "sharpness and loss against batch size"),
           ctx.figure("sharpness_vs_gap.png", "sharpness against the generalization gap"), "",
           report.table(("approach", "train loss", "test loss", "test acc", "block ‖H‖",
                         "whole ‖H‖", "block/whole", "slides", "Keskar", "seconds"),
                        [(name, r["train_loss"], r["test_loss"], report.pct(r["test_accuracy"]),
                          r["block_hessian_norm"], r["hessian_norm"], r["block_to_whole_ratio"],
                          r["sharpness_slides"], r["sharpness_keskar"], r["sharpness_seconds"])
                         for name, r in runs.items()]), "", "### Comment", ""]
    ratios = [r["block_to_whole_ratio"] for r in runs.values()]
    if "keskar_first_order" in first:
        shares = [r["keskar_first_order"] / r["sharpness_keskar"] for r in runs.values()
                  if r["sharpness_keskar"] > 0]
        out.append(f"- Keskar's box value is {report.fmt(min(shares), 2)} to "
                   f"{report.fmt(max(shares), 2)} times its first-order part "
                   "eps sum |g_i| (|theta_i| + 1) / (1 + L): near 1 the slope at theta, not the "
                   "curvature, decides it (the gradient norms on the analysis examples are "
                   f"{report.fmt(min(r['gradient_norm'] for r in runs.values()))} to "
                   f"{report.fmt(max(r['gradient_norm'] for r in runs.values()))}).")
    out.append(f"- The block-diagonal norm of `tf.hessians` is {report.fmt(min(ratios), 2)} to "
               f"{report.fmt(max(ratios), 2)} times the whole-model ||H||_2 (a block's norm "
               "can only be smaller: each block is a compression of H).")
    gaps = [r["loss_gap"] for r in runs.values()]
    batch = [r["batch_size"] for r in runs.values()]
    for key, label in DEFINITIONS:
        values = [r[key] for r in runs.values()]
        out.append(f"- {label}: from {report.fmt(min(values))} to {report.fmt(max(values))}; "
                   "Kendall's tau against the batch size "
                   f"{report.fmt(measures.kendall_tau(batch, values), 2)}"
                   f", against test minus training loss "
                   f"{report.fmt(measures.kendall_tau(values, gaps), 2)}.")
    for lr in config["learning_rates"]:
        rs = sorted((r for r in runs.values() if r["learning_rate"] == lr),
                    key=lambda r: r["batch_size"])
        out.append(f"- Learning rate {report.fmt(lr)}: batch {rs[0]['batch_size']} -> "
                   f"{rs[-1]['batch_size']} moves the test accuracy "
                   f"{report.pct(rs[0]['test_accuracy'])} -> {report.pct(rs[-1]['test_accuracy'])} "
                   f"and the slides' sharpness {report.fmt(rs[0]['sharpness_slides'])} -> "
                   f"{report.fmt(rs[-1]['sharpness_slides'])}.")
    return "\n".join(out)
