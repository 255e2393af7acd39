"""Fully-connected nets from scratch (the HW7 report): overfit, search, update rules, final net.

Four parts, all with `hw1_tf.scratch` (hand-written backward passes, scratch update rules,
Solver), on one dataset: CIFAR-10 when tensorflow-datasets has it or can download it, else the
fallback (MNIST by default; which one was used is recorded in the results).
  1. overfit: a 3-layer net on `overfit_samples` training examples must reach 100% training
     accuracy (the report's sanity check).
  2. search: a deeper net on the same examples over a weight_scale x learning_rate grid; the
     final training accuracy of each pair (a deep net trains only in a narrow band).
  3. update rules: the same 6-layer net and data trained with SGD, SGD+momentum, RMSProp and
     Adam; loss and accuracy histories side by side.
  4. final: the best net (batch norm, dropout, L2, Adam, lr decay) on the full training set,
     best validation parameters kept (and checkpointed), accuracy on the test set.

Results go to results/scratch/results.json (`runs`: every trained net's histories, "overfit",
"search/ws=..,lr=..", "rule/<rule>", "final"; `overfit_train_accuracy`, `search`, `update_rules`
naming each rule's run, `final` with `test_accuracy`, `dataset_used`), the final net's best
parameters to results/scratch/checkpoints/final.npz, figures to figures/scratch/. Each run is
done once (the plan, through the ledger: a rerun skips the finished ones) and its Solver backs up at epoch
ends, so a killed run started again resumes where it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from hw1_tf import data, fetch, framework, markdown
from hw1_tf.config import ConfigError, RunConfig, option
from hw1_tf.errors import DataError, Hw1Error, TrainingDivergedError
from hw1_tf.scratch.optim import UPDATE_RULES
from hw1_tf.figures import FigureSet, plt, spans_decades

EXPERIMENT = "scratch"
POSITION = 400  # its place in the slides' order (the registry sorts by it)


@dataclasses.dataclass
class Config(RunConfig):
    # data
    dataset: str = option("cifar10", "Dataset (CIFAR-10 as in the report; downloaded by "
                          "tensorflow-datasets when it can be).", choices=data.IMAGE_DATASETS)
    fallback_dataset: str = option("mnist", "Dataset used when --dataset cannot be loaded nor "
                                   "downloaded.", choices=data.IMAGE_DATASETS)
    data_dir: str | None = option(None, "Folder with <dataset>/ IDX files and tfds/ (default "
                                  "$HW1_DATA_DIR or <project>/data).")
    train_size: int | None = option(None, "Seeded subset of the training split (validation "
                                    "included); default all.", lower=2)
    val_size: int = option(1000, "Training examples held out for validation accuracy.", lower=1)
    test_size: int | None = option(None, "Seeded subset of the test split; default all.",
                                   lower=1)
    standardize: bool = option(True, "Standardise inputs with the training mean and std.")
    jit_compile: bool = option(True, "XLA-compile the Solver's step (parts 3 and 4).")
    print_every: int = option(100, "Log the loss every this many iterations.", lower=1)
    force: bool = option(False, "Rerun the runs already finished for the same config (they "
                         "are recorded in results/; without --force they are skipped).")
    # 1. overfit a few examples
    overfit_samples: int = option(50, "Part 1: training examples the 3-layer net must fit "
                                  "perfectly.", lower=1)
    overfit_hidden_dims: tuple[int, ...] = option((100, 100), "Part 1: hidden layer sizes.",
                                                  lower=1)
    overfit_weight_scale: float = option(1e-1, "Part 1: std of the initial weights.", lower=0.0)
    overfit_learning_rate: float = option(1e-1, "Part 1: SGD learning rate.", lower=0.0)
    overfit_epochs: int = option(20, "Parts 1 and 2: epochs on the small set.", lower=1)
    overfit_batch_size: int = option(25, "Parts 1 and 2: batch size on the small set.", lower=1)
    # 2. weight_scale x learning_rate search for a deep net on the same examples
    search_hidden_dims: tuple[int, ...] = option((100, 100, 100, 100), "Part 2: hidden layer "
                                                 "sizes of the deep net searched.", lower=1)
    search_weight_scales: tuple[float, ...] = option((1e-3, 1e-2, 3e-2, 1e-1, 3e-1),
                                                     "Part 2: weight scales of the grid.",
                                                     lower=0.0)
    search_learning_rates: tuple[float, ...] = option((1e-3, 1e-2, 1e-1, 3e-1), "Part 2: SGD "
                                                      "learning rates of the grid.", lower=0.0)
    # 3. update rules
    update_rules: tuple[str, ...] = option(("sgd", "sgd_momentum", "rmsprop", "adam"),
                                           "Part 3: update rules compared.",
                                           choices=tuple(UPDATE_RULES))
    rule_learning_rates: tuple[float, ...] = option((1e-2, 1e-2, 1e-4, 1e-3), "Part 3: one "
                                                    "learning rate per update rule.", lower=0.0)
    rules_train_size: int = option(4000, "Part 3: training examples.", lower=1)
    rules_hidden_dims: tuple[int, ...] = option((100, 100, 100, 100, 100), "Part 3: hidden "
                                                "layer sizes.", lower=1)
    rules_weight_scale: float = option(1e-1, "Part 3: std of the initial weights (inside the "
                                       "band the search finds trainable).", lower=0.0)
    rules_epochs: int = option(5, "Part 3: epochs.", lower=1)
    rules_batch_size: int = option(100, "Part 3: batch size.", lower=1)
    # 4. final net
    hidden_dims: tuple[int, ...] = option((512, 256), "Part 4 (final net): hidden layer sizes.",
                                          lower=1)
    weight_scale: float = option(5e-2, "Part 4: std of the initial weights.", lower=0.0)
    dropout: float = option(0.1, "Part 4: dropout probability (0: none).", lower=0.0)
    normalization: str | None = option("batchnorm", "Part 4: batchnorm or none.",
                                       choices=("batchnorm",))
    reg: float = option(1e-4, "Part 4: L2 strength (loss += reg * sum W^2).", lower=0.0)
    optimizer: str = option("adam", "Part 4: update rule.", choices=tuple(UPDATE_RULES))
    learning_rate: float = option(1e-3, "Part 4: learning rate.", lower=0.0)
    lr_decay: float = option(0.95, "Part 4: learning rate factor per epoch.", lower=0.0)
    batch_size: int = option(128, "Part 4: batch size.", lower=1)
    epochs: int = option(20, "Part 4: epochs.", lower=1)

    def __post_init__(self):
        if self.normalization in ("", "none", "None"):
            self.normalization = None
        super().__post_init__()
        if len(self.rule_learning_rates) != len(self.update_rules):
            raise ConfigError(f"{len(self.update_rules)} update_rules but "
                              f"{len(self.rule_learning_rates)} rule_learning_rates; give one "
                              "each")
        if not self.dropout < 1.0:
            raise ConfigError(f"--dropout={self.dropout} is not in [0, 1)")


# ------------------------------------------------------------------------------------- data


def load_data(config: Config) -> tuple[data.Splits, str | None]:
    """`config.dataset` (downloads allowed), else `config.fallback_dataset`; returns the splits
    and why the fallback was taken (None when it was not)."""
    kwargs = dict(train_size=config.train_size, test_size=config.test_size, seed=config.seed,
                  standardize=config.standardize)
    try:
        return fetch.load_dataset(config.dataset, config.data_dir, allow_download=True,
                                   **kwargs), None
    except DataError as e:
        if config.fallback_dataset == config.dataset:
            raise
        logging.warning("%s; using %s instead", e, config.fallback_dataset)
        return fetch.load_dataset(config.fallback_dataset, config.data_dir, **kwargs), str(e)


def split_train_val(splits: data.Splits, val_size: int, seed: int) -> dict[str, np.ndarray]:
    """Flattened arrays: a seeded permutation of the training split, its last `val_size`
    examples held out for validation, and the test split."""
    n = len(splits.x_train)
    if not 0 < val_size < n:
        raise Hw1Error(f"val_size={val_size} must be between 1 and the {n} training examples - 1")
    order = np.random.RandomState(seed).permutation(n)
    x = splits.x_train.reshape(n, -1)[order]
    y = splits.y_train[order]
    return {"X_train": x[:-val_size], "y_train": y[:-val_size], "X_val": x[-val_size:],
            "y_val": y[-val_size:], "X_test": splits.x_test.reshape(len(splits.x_test), -1),
            "y_test": splits.y_test}


def _subset(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {**arrays, "X_train": arrays["X_train"][:n], "y_train": arrays["y_train"][:n]}


# ------------------------------------------------------------------------------------ parts


def _train(arrays, hidden_dims, *, num_classes, weight_scale, update_rule, learning_rate,
           epochs, batch_size, config: Config, compile: str, name: str, lr_decay=1.0,
           dropout=0.0, normalization=None, reg=0.0, checkpoint_path=None, verbose=None,
           backup_path=None):
    from hw1_tf.scratch import FullyConnectedNet, Solver

    model = FullyConnectedNet(hidden_dims, arrays["X_train"].shape[1], num_classes,
                              dropout=dropout, normalization=normalization, reg=reg,
                              weight_scale=weight_scale, seed=config.seed)
    solver = Solver(model, arrays, update_rule=update_rule,
                    optim_config={"learning_rate": learning_rate}, lr_decay=lr_decay,
                    batch_size=batch_size, num_epochs=epochs, seed=config.seed,
                    compile=compile, print_every=config.print_every,
                    checkpoint_path=checkpoint_path, name=name, backup_path=backup_path,
                    verbose=config.verbose > 0 if verbose is None else verbose)
    solver.train()
    history = solver.history()
    history.update(hidden_dims=list(hidden_dims), weight_scale=weight_scale,
                   num_params=model.num_params, dropout=dropout, normalization=normalization,
                   reg=reg)
    return solver, history


def _data(ctx: framework.ExperimentContext) -> dict[str, Any]:
    """The dataset (or its fallback) split into train/val/test arrays, loaded once."""
    def load():
        config = ctx.config
        splits, fallback_reason = load_data(config)
        arrays = split_train_val(splits, config.val_size, config.seed)
        logging.info("scratch: %s, %d train / %d val / %d test examples of dimension %d",
                     splits.name, len(arrays["X_train"]), len(arrays["X_val"]),
                     len(arrays["X_test"]), arrays["X_train"].shape[1])
        return {"splits": splits, "fallback_reason": fallback_reason, "arrays": arrays}

    return ctx.shared("data", load)


def _search_name(weight_scale: float, learning_rate: float) -> str:
    return f"search/ws={weight_scale:g},lr={learning_rate:g}"


def plan(ctx: framework.ExperimentContext) -> list[framework.Run]:
    """The four parts' runs, each kept once it finishes and resumed from its Solver backup:
    overfit, the weight-scale x learning-rate grid, one run per update rule, the final net."""
    config = ctx.config
    runs = [framework.Run("overfit", train_overfit)]
    runs += [framework.Run(_search_name(ws, lr), train_search,
                           {"weight_scale": ws, "learning_rate": lr})
             for ws in config.search_weight_scales for lr in config.search_learning_rates]
    runs += [framework.Run(f"rule/{rule}", train_rule, {"rule": rule, "learning_rate": lr})
             for rule, lr in zip(config.update_rules, config.rule_learning_rates)]
    return runs + [framework.Run("final", train_final)]


def _solve(ctx: framework.ExperimentContext, name: str, arrays, hidden_dims,
           **kwargs) -> tuple[Any, dict[str, Any]]:
    """`_train` of run `name`, its Solver backed up under the run's backup folder so that a
    killed run started again resumes."""
    return _train(arrays, hidden_dims, config=ctx.config, name=name,
                  num_classes=_data(ctx)["splits"].num_classes,
                  backup_path=ctx.ledger.backup_folder(name) / "solver.npz", **kwargs)


def _small(config: Config) -> dict[str, Any]:
    # A few dozen steps on 50 examples: eager beats tracing and compiling a tf.function.
    return dict(epochs=config.overfit_epochs, batch_size=config.overfit_batch_size,
                compile="eager", update_rule="sgd")


def train_overfit(ctx: framework.ExperimentContext) -> dict[str, Any]:
    """1. Overfit a few examples."""
    config = ctx.config
    few = _subset(_data(ctx)["arrays"], config.overfit_samples)
    history = _solve(ctx, "overfit", few, config.overfit_hidden_dims,
                     weight_scale=config.overfit_weight_scale,
                     learning_rate=config.overfit_learning_rate, **_small(config))[1]
    logging.info("scratch: overfit %d examples -> train accuracy %.3f", len(few["X_train"]),
                 max(history["train_acc_history"]))
    return history


def train_search(ctx: framework.ExperimentContext, weight_scale: float,
                 learning_rate: float) -> dict[str, Any]:
    """2. One cell of the weight-scale x learning-rate search for a deep net."""
    config = ctx.config
    name = _search_name(weight_scale, learning_rate)
    history = _solve(ctx, name, _subset(_data(ctx)["arrays"], config.overfit_samples),
                     config.search_hidden_dims, weight_scale=weight_scale,
                     learning_rate=learning_rate, verbose=False, **_small(config))[1]
    logging.info("scratch: %s -> train acc %s%s", name, history["final_train_acc"],
                 " (diverged)" if history["diverged"] else "")
    return history


def _compiled(config: Config) -> str:
    return "xla" if config.jit_compile else "graph"


def train_rule(ctx: framework.ExperimentContext, rule: str, learning_rate: float
               ) -> dict[str, Any]:
    """3. One update rule on a subset."""
    config = ctx.config
    return _solve(ctx, f"rule/{rule}", _subset(_data(ctx)["arrays"], config.rules_train_size),
                  config.rules_hidden_dims, weight_scale=config.rules_weight_scale,
                  update_rule=rule, learning_rate=learning_rate, epochs=config.rules_epochs,
                  batch_size=config.rules_batch_size, compile=_compiled(config))[1]


def _checkpoint(ctx: framework.ExperimentContext) -> Path:
    return ctx.paths.results_dir(EXPERIMENT) / "checkpoints" / "final.npz"


def train_final(ctx: framework.ExperimentContext) -> dict[str, Any]:
    """4. The final net on the whole training set, then its test accuracy (best-val params)."""
    config = ctx.config
    arrays = _data(ctx)["arrays"]
    solver, history = _solve(
        ctx, "final", arrays, config.hidden_dims, weight_scale=config.weight_scale,
        update_rule=config.optimizer, learning_rate=config.learning_rate,
        lr_decay=config.lr_decay, epochs=config.epochs, batch_size=config.batch_size,
        dropout=config.dropout, normalization=config.normalization, reg=config.reg,
        compile=_compiled(config), checkpoint_path=_checkpoint(ctx))
    if solver.diverged:
        raise TrainingDivergedError(f"the final net diverged at iteration {solver.iteration}; "
                                    f"lower --learning_rate (now {config.learning_rate:g})")
    history.update(test_accuracy=solver.check_accuracy(arrays["X_test"], arrays["y_test"]),
                   checkpoint=str(_checkpoint(ctx)))
    return history


def analyse(records: dict[str, dict], ctx: framework.ExperimentContext) -> framework.Outcome:
    """The search grid and its best cell, the update rules' runs, the final net's numbers."""
    config = ctx.config
    grid_acc = np.full((len(config.search_weight_scales), len(config.search_learning_rates)),
                       np.nan)
    grid_loss = grid_acc.copy()
    for i, ws in enumerate(config.search_weight_scales):
        for j, lr in enumerate(config.search_learning_rates):
            hist = records[_search_name(ws, lr)]
            grid_acc[i, j] = np.nan if hist["diverged"] else hist["final_train_acc"]
            losses = [x for x in hist["loss_history"] if x is not None]
            grid_loss[i, j] = np.nan if hist["diverged"] else losses[-1]
    best_i, best_j = _best_cell(grid_acc, grid_loss)
    search = {
        "hidden_dims": list(config.search_hidden_dims),
        "weight_scales": list(config.search_weight_scales),
        "learning_rates": list(config.search_learning_rates),
        "train_acc": grid_acc, "final_loss": grid_loss,
        "best": {"weight_scale": config.search_weight_scales[best_i],
                 "learning_rate": config.search_learning_rates[best_j],
                 "train_acc": grid_acc[best_i, best_j]},
    }
    logging.info("scratch: search best weight_scale=%g learning_rate=%g (train acc %.3f)",
                 search["best"]["weight_scale"], search["best"]["learning_rate"],
                 search["best"]["train_acc"])
    final = records["final"]
    logging.info("scratch: final net test accuracy %.4f (best val %.4f at epoch %d)",
                 final["test_accuracy"], final["best_val_acc"], final["best_epoch"])
    loaded = _data(ctx)
    return framework.Outcome(records, {
        "dataset_requested": config.dataset,
        "dataset_used": loaded["splits"].name,
        "fallback_reason": loaded["fallback_reason"],
        "overfit_train_accuracy": max(records["overfit"]["train_acc_history"]),
        "search": search,
        "update_rules": {rule: f"rule/{rule}" for rule, _ in zip(config.update_rules,
                                                                 config.rule_learning_rates)},
        "final": {k: final[k] for k in ("test_accuracy", "best_val_acc", "best_epoch",
                                        "num_params", "hidden_dims", "checkpoint")},
        "test_accuracy": final["test_accuracy"],
        "seconds": ctx.training_seconds,
    })


def _best_cell(acc: np.ndarray, loss: np.ndarray) -> tuple[int, int]:
    """Highest training accuracy, ties broken by the lower final loss (NaN: diverged)."""
    cells = [(acc[i, j], -loss[i, j], -i, -j) for i in range(acc.shape[0])
             for j in range(acc.shape[1]) if np.isfinite(acc[i, j]) and np.isfinite(loss[i, j])]
    if not cells:
        return 0, 0
    _, _, i, j = max(cells)
    return -i, -j


# -------------------------------------------------------------------------------- figures


def _scratch_curves(ax_loss, ax_acc, run: dict[str, Any], label: str | None = None,
                    color=None) -> None:
    """Per-iteration loss on ax_loss, per-epoch train (solid) / val (dashed) accuracy on ax_acc."""
    loss = [np.nan if v is None else v for v in run["loss_history"]]
    per_epoch = max(run.get("iterations_per_epoch", 1), 1)
    it_epochs = np.arange(1, len(loss) + 1) / per_epoch
    ax_loss.plot(it_epochs, loss, color=color, lw=0.8, label=label)
    epochs = np.arange(len(run["train_acc_history"]))
    ax_acc.plot(epochs, run["train_acc_history"], color=color, marker=".",
                label=f"{label}: train" if label else "train")
    ax_acc.plot(epochs, run["val_acc_history"], color=color, ls="--", marker=".",
                label=f"{label}: validation" if label else "validation")


def _scratch_loss_axis(ax, values, title: str) -> None:
    ax.set(title=title, xlabel="epoch", ylabel="training loss (per iteration)")
    if spans_decades(values):
        ax.set_yscale("log")


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Overfitting 50 examples, the weight-scale/learning-rate grid, the four update rules and the
    final net, from results/scratch/results.json."""
    out = FigureSet(figures_dir)
    dataset = results.get("dataset_used", "?")
    runs = results["runs"]

    overfit = runs["overfit"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    _scratch_curves(ax_loss, ax_acc, overfit)
    _scratch_loss_axis(ax_loss, overfit["loss_history"], "Training loss")
    ax_acc.set(title=f"Accuracy (train reaches {results['overfit_train_accuracy']:.0%})",
               xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax_acc.axhline(1.0, color="gray", lw=0.5)
    ax_acc.legend()
    fig.suptitle(f"Overfitting {overfit['num_train']} training examples: "
                 f"{len(overfit['hidden_dims']) + 1}-layer net, {dataset}")
    out.save(fig, "overfit")

    search = results["search"]
    acc = np.array([[np.nan if v is None else v for v in row] for row in search["train_acc"]],
                   dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    image = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, "div." if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                color="black" if np.isnan(v) or v >= 0.6 else "white", fontsize=8)
    ax.set_xticks(range(len(search["learning_rates"])),
                  [f"{v:g}" for v in search["learning_rates"]])
    ax.set_yticks(range(len(search["weight_scales"])),
                  [f"{v:g}" for v in search["weight_scales"]])
    ax.set(xlabel="learning rate (log grid)", ylabel="weight scale (log grid)",
           title=f"{len(search['hidden_dims']) + 1}-layer net on a small set: final train "
                 f"accuracy\n(best: weight_scale={search['best']['weight_scale']:g}, "
                 f"lr={search['best']['learning_rate']:g})")
    fig.colorbar(image, ax=ax, label="training accuracy")
    out.save(fig, "search")

    rules = {rule: runs[name] for rule, name in results["update_rules"].items()}
    fig, (ax_loss, ax_train, ax_val) = plt.subplots(1, 3, figsize=(15, 4.2))
    all_losses = []
    for k, (name, run) in enumerate(rules.items()):
        color = f"C{k}"
        label = f"{name} (lr={run['learning_rate']:g})"
        loss = [np.nan if v is None else v for v in run["loss_history"]]
        all_losses += loss
        per_epoch = max(run.get("iterations_per_epoch", 1), 1)
        ax_loss.plot(np.arange(1, len(loss) + 1) / per_epoch, loss, color=color, lw=0.7,
                     alpha=0.85, label=label)
        epochs = np.arange(len(run["train_acc_history"]))
        ax_train.plot(epochs, run["train_acc_history"], color=color, marker="o", label=label)
        ax_val.plot(epochs, run["val_acc_history"], color=color, marker="o", label=label)
    _scratch_loss_axis(ax_loss, all_losses, "Training loss")
    ax_train.set(title="Training accuracy", xlabel="epoch", ylabel="accuracy")
    ax_val.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_train, ax_val):
        ax.legend(fontsize=8)
    first = next(iter(rules.values()), {})
    fig.suptitle(f"Update rules on a {len(first.get('hidden_dims', [])) + 1}-layer net, "
                 f"{dataset}")
    out.save(fig, "update_rules")

    final = runs["final"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    _scratch_curves(ax_loss, ax_acc, final)
    _scratch_loss_axis(ax_loss, final["loss_history"], "Training loss")
    ax_acc.axhline(final["test_accuracy"], color="k", lw=0.8, ls=":",
                   label=f"test (best-val params): {final['test_accuracy']:.4f}")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    ax_acc.legend()
    fig.suptitle(f"Final net {final['hidden_dims']} ({final['update_rule']}, "
                 f"{final['normalization'] or 'no norm'}, dropout {final['dropout']:g}) on "
                 f"{dataset}: test accuracy {final['test_accuracy']:.2%}")
    out.save(fig, "final")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "From scratch: fully-connected nets with hand-written backward passes"
QUESTIONS = (
    "Multilayer network: overfit 50 training examples with a three-layer net (100% training "
    "accuracy).",
    "Multilayer network: find the weight scale and learning rate with which a deeper net "
    "overfits the same examples.",
    "Update rules: compare SGD, SGD+momentum, RMSProp and Adam on the same deep net (loss, "
    "training and validation accuracy).",
    "Train the best fully-connected net you can on the full training set; report its test "
    "accuracy.",
)


def _widths(run: dict) -> str:
    """Hidden layer widths as "100, 100" (stored as a list or an array)."""
    return ", ".join(str(int(w)) for w in run["hidden_dims"])


def _last_epoch_loss(run: dict) -> float:
    """Mean training loss over the last epoch's iterations (NaN once diverged)."""
    loss = markdown.series(run["loss_history"])
    tail = loss[-max(1, int(run.get("iterations_per_epoch", 1))):]
    return float(np.mean(tail)) if tail.size and np.isfinite(tail).all() else float("nan")


def report_section(results: dict, ctx: markdown.Context) -> str:
    """The four parts: overfitting 50 examples, the weight-scale/learning-rate grid, the update
    rules, the final net; each with its figure, numbers and a comment computed from them."""
    runs, config = results["runs"], results["config"]
    used = results["dataset_used"]
    out = [f"Dataset: {used}"
           + (f" (requested {results['dataset_requested']}, which could not be loaded: "
              f"{results['fallback_reason']})" if results.get("fallback_reason") else "")
           + f"; {runs['final']['num_train']} training examples, {config['val_size']} held out "
           "for validation."]
    out += ["", "### 1. Overfitting a small set", "", ctx.figure("overfit", "overfit")]
    out += ["", _overfit_part(runs["overfit"])]
    out += ["", "### 2. Weight scale and learning rate of a deeper net", "",
            ctx.figure("search", "search grid"), "", _search_part(results["search"])]
    out += ["", "### 3. Update rules", "", ctx.figure("update_rules", "update rules"), "",
            _rules_part({rule: runs[name] for rule, name in results["update_rules"].items()})]
    out += ["", "### 4. Final net", "", ctx.figure("final", "final net"), "",
            _final_part(runs["final"])]
    return "\n".join(out)


def _overfit_part(run: dict) -> str:
    train, val = markdown.series(run["train_acc_history"]), markdown.series(run["val_acc_history"])
    layers = len(run["hidden_dims"]) + 1
    reached = np.flatnonzero(train >= 1.0)
    rows = [(f"{layers} layers ({_widths(run)})", run["num_params"], run["num_train"],
             run["num_epochs"], f"{run['weight_scale']:g}", f"{run['learning_rate']:g}",
             markdown.pct(np.nanmax(train)), markdown.pct(val[-1]))]
    text = markdown.table(("net", "parameters", "training examples", "epochs", "weight scale",
                         "learning rate", "best training accuracy", "final validation accuracy"),
                        rows)
    if reached.size:
        comment = (f"The {layers}-layer net fit all {run['num_train']} examples (100% training "
                   f"accuracy) at epoch {int(reached[0])} of {run['num_epochs']}")
    else:
        comment = (f"The {layers}-layer net reached only {markdown.pct(np.nanmax(train))} "
                   f"training accuracy on {run['num_train']} examples in {run['num_epochs']} "
                   "epochs: the sanity check failed")
    comment += (f", while validation accuracy ended at {markdown.pct(val[-1])}: a gap of "
                f"{markdown.points(train[-1] - val[-1])} between the examples it saw and those it "
                "did not.")
    return text + "\n\n" + comment


def _search_part(search: dict) -> str:
    acc = markdown.series(search["train_acc"]).reshape(len(search["weight_scales"]),
                                                     len(search["learning_rates"]))
    rows = [[f"{ws:g}"] + ["diverged" if np.isnan(v) else markdown.pct(v, 0) for v in acc[i]]
            for i, ws in enumerate(search["weight_scales"])]
    text = markdown.table(["weight scale \\ learning rate"]
                        + [f"{lr:g}" for lr in search["learning_rates"]], rows)
    layers = len(search["hidden_dims"]) + 1
    n, diverged = acc.size, int(np.isnan(acc).sum())
    full = np.argwhere(acc >= 1.0)
    comment = (f"Final training accuracy of the {layers}-layer net: {len(full)} of {n} pairs "
               f"reached 100%, {diverged} diverged")
    rest = acc[np.isfinite(acc) & (acc < 1.0)]
    if rest.size:
        comment += (f", the other {rest.size} ended between {markdown.pct(rest.min(), 0)} and "
                    f"{markdown.pct(rest.max(), 0)}")
    comment += "."
    if len(full):
        pairs = [f"({search['weight_scales'][i]:g}, {search['learning_rates'][j]:g})"
                 for i, j in full]
        comment += f" The (weight scale, learning rate) pairs that fit the set: {', '.join(pairs)}."
    best = search["best"]
    comment += (f" Kept: weight scale {best['weight_scale']:g}, learning rate "
                f"{best['learning_rate']:g} ({markdown.pct(best['train_acc'])}, the lowest final "
                "loss among the most accurate).")
    return text + "\n\n" + comment


def _rules_part(rules: dict) -> str:
    if not rules:
        return "No update rules were compared (--update_rules is empty)."
    stats = {name: {"loss": _last_epoch_loss(r),
                    "train": markdown.series(r["train_acc_history"])[-1],
                    "val": markdown.series(r["val_acc_history"])[-1]} for name, r in rules.items()}
    first = next(iter(rules.values()))
    text = markdown.table(
        ("update rule", "learning rate", "last-epoch training loss", "training accuracy",
         "validation accuracy", "diverged"),
        [(name, f"{r['learning_rate']:g}", stats[name]["loss"], markdown.pct(stats[name]["train"]),
          markdown.pct(stats[name]["val"]), "yes" if r["diverged"] else "no")
         for name, r in rules.items()])
    val = markdown.ranked({n: s["val"] for n, s in stats.items()}, lower_is_better=False)
    (winner, top), others = val[0], val[1:]
    comment = (f"After {first['num_epochs']} epochs on {first['num_train']} examples "
               f"({len(first['hidden_dims']) + 1}-layer net), {winner} has the best validation "
               f"accuracy, {markdown.pct(top)}")
    if others:
        comment += ", " + ", ".join(f"{markdown.points(top - v)} above {n}" for n, v in others)
    comment += "."
    loss = markdown.ranked({n: s["loss"] for n, s in stats.items()}, lower_is_better=True)
    (low_n, low), (high_n, high) = loss[0], loss[-1]
    if low_n != high_n and np.isfinite(high) and low > 0:
        comment += (f" Lowest last-epoch training loss: {low_n} ({markdown.fmt(low)}), "
                    f"{markdown.times(high / low)} below {high_n} ({markdown.fmt(high)}).")
    diverged = [n for n, r in rules.items() if r["diverged"]]
    if diverged:
        comment += f" Diverged: {markdown.join(diverged)}."
    return text + "\n\n" + comment


def _final_part(run: dict) -> str:
    train, val = markdown.series(run["train_acc_history"]), markdown.series(run["val_acc_history"])
    text = markdown.table(
        ("hidden widths", "parameters", "normalization", "dropout", "L2", "update rule",
         "learning rate (decay/epoch)", "epochs", "best validation accuracy (epoch)",
         "test accuracy"),
        [(_widths(run), run["num_params"], run["normalization"] or "none",
          f"{run['dropout']:g}", f"{run['reg']:g}", run["update_rule"],
          f"{run['learning_rate']:g} (×{run['lr_decay']:g})", run["num_epochs"],
          f"{markdown.pct(run['best_val_acc'])} ({run['best_epoch']})",
          markdown.pct(run["test_accuracy"]))])
    comment = (f"Test accuracy {markdown.pct(run['test_accuracy'])} with the parameters of epoch "
               f"{run['best_epoch']} of {run['num_epochs']} (best validation accuracy "
               f"{markdown.pct(run['best_val_acc'])}). At the last epoch training accuracy is "
               f"{markdown.pct(train[-1])}, {markdown.points(train[-1] - val[-1])} above validation "
               f"({markdown.pct(val[-1])}).")
    return text + "\n\n" + comment


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {0: ("overfit",), 1: ("search",), 2: ("update_rules",), 3: ("final",)}
