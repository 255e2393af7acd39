"""HW1-3 bonus after Jiang et al. 2019 ("Fantastic generalization measures and where to find
them"): every measure of hw1_tf.measures on every model that the sensitivity and sharpness
experiments trained (and the capacity / flatness models where their SavedModels exist), each
ranked by Kendall's tau against the generalization gap (test minus training loss, and test
minus training error) of the final weights."""

from __future__ import annotations

import dataclasses
import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from hw1_tf import data, fetch, framework, hessian, markdown, measures, store
from hw1_tf.config import DistributeOptions, RunConfig, option
from hw1_tf.errors import Hw1Error, ModelNotFoundError
from hw1_tf.experiments import approaches
from hw1_tf.figures import FigureSet, finish_axes, plt

EXPERIMENT = "measures"
POSITION = 370  # its place in the slides' order (the registry sorts by it)

# name -> (label, meaning); each oriented so that larger predicts a larger gap
MEASURES = {
    "num_params": "number of parameters",
    "param_norm": "||theta||_2",
    "frobenius_product": "prod ||W||_F",
    "distance_from_init": "||theta - theta_0||_2",
    "spectral_product": "prod ||W||_2",
    "path_norm": "path norm",
    "inverse_margin": "1 / margin^2",
    "spectral_margin_bound": "spectral margin bound",
    "inverse_normalized_margin": "1 / normalized margin",
    "pac_bayes_flatness": "PAC-Bayes 1 / sigma^2",
    "sharpness_slides": "sharpness (slides, block)",
    "sharpness_whole": "sharpness (whole ||H||)",
    "sharpness_keskar": "sharpness (Keskar box)",
    "hessian_trace": "Hessian trace",
    "hessian_top_eigenvalue": "Hessian top eigenvalue",
    "sensitivity_loss_grad": "sensitivity ||dL/dx||",
    "sensitivity_jacobian": "sensitivity ||dp/dx||",
}
GAPS = {"loss_gap": "test - training loss", "error_gap": "test - training error"}


@dataclasses.dataclass
class Config(approaches.SharpnessOptions, RunConfig, DistributeOptions):
    sources: tuple[str, ...] = option(("sensitivity", "sharpness", "capacity", "flatness"),
                                      "Experiments whose SavedModels are measured (those "
                                      "without results are skipped).")
    data_dir: str | None = option(None, "Folder with <dataset>/ IDX files (default "
                                  "$HW1_DATA_DIR or <project>/data).")
    analysis_examples: int = option(500, "Training examples of the sharpness, Hessian, "
                                    "margin and PAC-Bayes measures (the same for every "
                                    "model).", lower=1)
    sensitivity_examples: int = option(1000, "Test examples the sensitivities average over.",
                                       lower=1)
    margin_percentile: float = option(10.0, "Percentile of the training margins taken as "
                                      "the margin gamma.", lower=0.0, upper=100.0)
    pac_bayes_increase: float = option(0.1, "Loss increase that defines the PAC-Bayes "
                                       "sigma.", lower=0.0)
    pac_bayes_samples: int = option(16, "Gaussian weight draws per sigma.", lower=1)
    trace_probes: int = option(20, "Rademacher probes of the Hessian trace.", lower=2)
    max_models: int | None = option(None, "Measure at most this many models per source.",
                                    lower=1)


def _models(config: Config, paths: store.Paths):
    """(source, run name, record, source config, SavedModel path) of every model found."""
    for source in config.sources:
        path = paths.results_json(source)
        if not path.is_file():
            logging.info("measures: no results of %s (%s); skipped", source, path)
            continue
        results = store.read_results(path)
        found = 0
        for name, record in results.get("runs", {}).items():
            saved = record.get("saved_model") if isinstance(record, dict) else None
            if not saved or not (Path(saved) / "saved_model.pb").is_file():
                continue
            if config.max_models and found >= config.max_models:
                break
            found += 1
            yield source, name, record, results.get("config", {}), Path(saved)


# the settings of `measures.sharpness_measures` besides the model; with the same analysis
# examples (count and seed) they decide its values
SHARPNESS_SETTINGS = ("epsilon", "keskar_epsilon", "keskar_maxiter", "keskar_restarts",
                      "max_block_mb", "analysis_examples", "seed")


def stored_sharpness(record: dict, source_config: dict, config: Config) -> dict | None:
    """The three sharpness definitions (`measures.SHARPNESS_KEYS`) that `record` already holds
    when its source computed them with this config's settings on the same examples (the
    sharpness experiment does, on the same seeded subset: `approaches.analysis_subset`), else
    None: measuring them again would give the same numbers for ~10 s per model."""
    default_tolerance = inspect.signature(measures.sharpness_measures).parameters[
        "eigen_tolerance"].default
    same = all(source_config.get(k) == getattr(config, k) for k in SHARPNESS_SETTINGS) and \
        source_config.get("eigen_tolerance", default_tolerance) == default_tolerance
    if not same or any(record.get(k) is None for k in measures.SHARPNESS_KEYS):
        return None
    return {k: record[k] for k in measures.SHARPNESS_KEYS}


def measure_model(network, splits: data.Splits, record: dict, config: Config,
                  strategy=None, stored: dict | None = None) -> dict:
    """Every measure of one classifier, and its exact generalization gaps; the sharpness
    definitions are `stored`'s when given (`stored_sharpness`)."""
    final = {"train": measures.evaluate(network, splits.x_train, splits.y_train),
             "test": measures.evaluate(network, splits.x_test, splits.y_test)}
    x, y = approaches.analysis_subset(splits, config.analysis_examples, config.seed)
    out = {"num_params": int(network.count_params()),
           "train_loss": final["train"]["loss"], "test_loss": final["test"]["loss"],
           "train_accuracy": final["train"]["accuracy"],
           "test_accuracy": final["test"]["accuracy"],
           "loss_gap": final["test"]["loss"] - final["train"]["loss"],
           "error_gap": final["test"]["error"] - final["train"]["error"]}
    initial = record.get("initial_theta")
    out.update(measures.parameter_norms(network, initial))
    out["path_norm"] = measures.path_norm(network)
    out.update(measures.margin_measures(network, x, y, config.margin_percentile))
    fl = hessian.FlatLoss(network, x, y, jit_compile=False, strategy=strategy)
    out["sharpness_reused"] = stored is not None
    out.update(stored if stored is not None else measures.sharpness_measures(
        network, x, y, epsilon=config.epsilon, keskar_epsilon=config.keskar_epsilon,
        keskar_maxiter=config.keskar_maxiter, keskar_restarts=config.keskar_restarts,
        max_block_mb=config.max_block_mb, seed=config.seed, flat_loss=fl))
    trace = hessian.hutchinson_trace(fl.operator(), config.trace_probes, config.seed)
    out["hessian_trace"], out["hessian_trace_se"] = trace.trace, trace.standard_error
    sigma = measures.pac_bayes_sigma(fl.batched_loss, fl.theta0, out["analysis_loss"],
                                     increase=config.pac_bayes_increase,
                                     samples=config.pac_bayes_samples, seed=config.seed)
    out["pac_bayes_sigma"], out["pac_bayes_flatness"] = sigma, 1.0 / sigma ** 2
    n = min(config.sensitivity_examples, len(splits.x_test))
    grad, jac = measures.input_sensitivities(network, splits.x_test[:n], splits.y_test[:n],
                                             strategy=strategy)
    out["sensitivity_loss_grad"], out["sensitivity_jacobian"] = float(grad.mean()), float(
        jac.mean())
    return out


def analyse(records: dict, ctx: framework.ExperimentContext) -> framework.Outcome:
    """No plan: the models are the SavedModels other experiments trained."""
    config = ctx.config
    splits_cache: dict[tuple, data.Splits] = {}
    runs = {}
    for source, name, record, source_config, saved in _models(config, ctx.paths):
        dataset = record.get("dataset") or source_config.get("dataset") or "mnist"
        if dataset not in data.IMAGE_DATASETS:
            logging.info("measures: %s/%s is not an image classifier; skipped", source, name)
            continue
        key = (dataset, source_config.get("train_size"), source_config.get("test_size"),
               source_config.get("seed", 0))
        if key not in splits_cache:
            splits_cache[key] = fetch.load_dataset(dataset, config.data_dir,
                                                   train_size=key[1], test_size=key[2],
                                                   seed=key[3])
        try:
            network = hessian.keras_model_for_saved_model(saved)
        except (ModelNotFoundError, Hw1Error) as e:
            logging.warning("measures: %s/%s skipped: %s", source, name, e)
            continue
        start = time.perf_counter()
        values = measure_model(network, splits_cache[key], record, config, ctx.strategy,
                               stored=stored_sharpness(record, source_config, config))
        values.update({"source": source, "run": name, "dataset": dataset,
                       "description": record.get("description", ""),
                       "loss_target": source_config.get("stop_loss_below"),
                       "seconds": time.perf_counter() - start})
        logging.info("measures: %s/%s in %.1fs", source, name, values["seconds"])
        runs[f"{source}:{name}"] = values
    if len(runs) < 3:
        raise ModelNotFoundError(
            f"measures: {len(runs)} trained models found under {ctx.paths.output_dir} (need 3); "
            "run bin/run_sensitivity and bin/run_sharpness first")
    taus = kendall_taus(list(runs.values()))
    # within one source the models share an architecture and a training recipe, as in Jiang
    # et al.'s controlled families; across sources the architecture itself varies
    by_source = {}
    for source in dict.fromkeys(r["source"] for r in runs.values()):
        members = [r for r in runs.values() if r["source"] == source]
        if len(members) >= 3:
            by_source[source] = kendall_taus(members)
    return framework.Outcome(runs, dict(kendall_tau=taus, kendall_tau_by_source=by_source))


def kendall_taus(records: list[dict]) -> dict[str, dict[str, float]]:
    """Kendall's tau of every measure against every gap over `records`."""
    return {m: {g: measures.kendall_tau([r[m] for r in records], [r[g] for r in records])
                for g in GAPS} for m in MEASURES}


# -------------------------------------------------------------------------------- figures


def figures(results: dict[str, Any], figures_dir: Path) -> FigureSet:
    """Kendall's tau of every measure against both generalization gaps, best first."""
    # an undefined tau (a measure constant over the models) is stored as null
    taus = {m: {g: np.nan if v is None else float(v) for g, v in t.items()}
            for m, t in results["kendall_tau"].items()}
    names = sorted(taus, key=lambda m: -np.nan_to_num(taus[m]["loss_gap"], nan=-2))
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    for i, (gap, label) in enumerate(GAPS.items()):
        values = [np.nan_to_num(taus[m][gap], nan=0.0) for m in names]
        ax.barh(y + (i - 0.5) * 0.4, values, height=0.4, color=f"C{i}", label=f"vs {label}")
    ax.set_yticks(y)
    ax.set_yticklabels([MEASURES[m] for m in names], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(-1, 1)
    finish_axes(ax, f"Kendall's tau over {len(results['runs'])} models (best first)",
                "Kendall's tau", "measure", log_y=False)
    out = FigureSet(figures_dir)
    out.save(fig, "kendall_tau")
    return out


# -------------------------------------------------------------------------- REPORT.md section

TITLE = "HW1-3 Flatness vs generalization, bonus: other generalization measures, ranked"
QUESTIONS = (
    "Use other metrics or methods to evaluate a model's ability to generalize and concretely "
    "describe it and comment your results. (bonus)",
)


def ranking(taus: dict, gap: str) -> list[tuple[str, float]]:
    return markdown.ranked({m: taus[m][gap] for m in taus}, lower_is_better=False)


def report_section(results: dict, ctx: markdown.Context) -> str:
    runs, taus, config = results["runs"], results["kendall_tau"], results["config"]
    sources = sorted({r["source"] for r in runs.values()})
    out = [f"{len(runs)} models from {markdown.join(sources)}; every measure on the same "
           f"{config['analysis_examples']} training examples (sensitivities on "
           f"{config['sensitivity_examples']} test examples), each oriented so that larger "
           "should mean a larger generalization gap, then Kendall's tau over the models "
           "(+1: the measure orders the models exactly as the gap does).", "",
           ctx.figure("kendall_tau", "measures ranked by Kendall's tau"), "",
           markdown.table(("measure", *[f"tau vs {g}" for g in GAPS.values()]),
                        [(MEASURES[m], taus[m]["loss_gap"], taus[m]["error_gap"])
                         for m, _ in ranking(taus, "loss_gap")]), "",
           "### Every measure per model", ""]
    shown = ("loss_gap", "error_gap", "spectral_product", "path_norm", "inverse_margin",
             "pac_bayes_flatness", "sharpness_slides", "sharpness_keskar", "hessian_trace",
             "sensitivity_loss_grad")
    out += [markdown.table(("model", *shown), [(name, *[r[k] for k in shown])
                                              for name, r in runs.items()]), "",
            "### Comment", ""]
    for gap, label in GAPS.items():
        order = ranking(taus, gap)
        top = [f"{MEASURES[m]} ({markdown.fmt(t, 2)})" for m, t in order[:3]]
        bottom = [f"{MEASURES[m]} ({markdown.fmt(t, 2)})" for m, t in order[-3:]
                  if t == t]
        out.append(f"- Against {label}: best {markdown.join(top)}; worst "
                   f"{markdown.join(bottom)}.")
    reused = [r for r in runs.values() if r.get("sharpness_reused")]
    if reused:
        out.append(f"- The three sharpness definitions of the {len(reused)} "
                   f"{markdown.join(sorted({r['source'] for r in reused}))} models are the "
                   f"{markdown.join(sorted({r['source'] for r in reused}))} run's own (computed "
                   "there with the same settings on the same examples), not measured again.")
    n = len(runs)
    out.append(f"- With {n} models a single swapped pair moves tau by "
               f"{markdown.fmt(2 / (n * (n - 1) / 2), 2)}, so differences below that are noise.")
    targets = {r["source"]: r.get("loss_target") for r in runs.values()}
    out.append("- Training: " + "; ".join(
        f"{s} models " + (f"trained to training loss {t:g}" if t else
                          "trained for a fixed number of epochs")
        for s, t in targets.items()) + ". Jiang et al. train every model to one cross-entropy "
        "(0.01) so that no measure can win by tracking how far training went.")
    by_source = results.get("kendall_tau_by_source") or {}
    if by_source:
        out += ["", "### Within each source (one architecture, one recipe)", ""]
        names = list(by_source)
        out.append(markdown.table(("measure", *[f"tau vs loss gap, {s}" for s in names]),
                                [(MEASURES[m], *[by_source[s][m]["loss_gap"] for s in names])
                                 for m, _ in ranking(taus, "loss_gap")]))
        out.append("")
        for s in names:
            order = ranking(by_source[s], "loss_gap")
            k = sum(1 for r in runs.values() if r["source"] == s)
            best = [f"{MEASURES[m]} ({markdown.fmt(t, 2)})" for m, t in order[:3]]
            out.append(f"- {s} ({k} models): best {markdown.join(best)}.")
    out.append("- Jiang et al. (2019) found, over thousands of CNNs, that sharpness-based "
               "measures (PAC-Bayes flatness and its magnitude-aware variant) correlate best "
               "with the gap and that spectral-norm products and the parameter count correlate "
               "negatively; compare with the ranking above, keeping the number of models in "
               "mind.")
    return "\n".join(out)


# ------------------------------------------------------------------- scorecard (REPORT.md top)

from hw1_tf.scorecard import Measured  # noqa: E402

SCORECARD = {"measures.best": "generalization measure ranking the gap best"}


def scorecard(results: dict) -> dict[str, Measured]:
    taus = {m: t["loss_gap"] for m, t in results["kendall_tau"].items()}
    (best, tau), *_ = markdown.ranked(taus, lower_is_better=False)
    return {"measures.best": Measured(
        f"{best}: Kendall τ {markdown.fmt(tau, 2)} against test minus training loss",
        f"{len(taus)} measures over {len(results['runs'])} trained models")}


# Which figures (keys, fnmatch patterns) answer which of QUESTIONS (by index): REPORT.md
# names them beside the question.
QUESTION_FIGURES = {0: ("*",)}
