"""The loss landscape along lines in weight space: θ(α) = (1 − α)·θ₁ + α·θ₂ between two trained
models read back from their SavedModels (flatness vs generalization, part 1).

The two endpoints are loaded with `tf.saved_model.load` (through `store.load_saved_model`), not
taken from memory, so any pair of SavedModels of one dense architecture can be compared. Their
variables are read as a dense net — Dense layers, optionally each followed by BatchNormalization,
the activation after every hidden layer — and that reading is checked against the SavedModel's
own `serve` before it is used.

Speed: the weights of K values of α are stacked on a leading axis and one traced call per batch
evaluates all K, so a curve costs one pass over the data per chunk of α, not one call per α per
batch. Batches are spread over the replicas of the strategy given, and the per-example sums
are all-reduced.

BatchNorm: the moving averages stored with each endpoint describe that endpoint's activations,
not those of a point in between, so by default the statistics are recomputed at every α from
training inputs (population mean and variance, two passes per BatchNorm layer, in the layers'
order). With recomputation off, the moving averages are interpolated like every other variable.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from hw1_tf import store
from hw1_tf.errors import Hw1Error

BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default (the reading is checked vs serve)
DENSE_ROLES = frozenset({"kernel", "bias"})
BN_ROLES = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})


class IncompatibleModelsError(Hw1Error):
    """Two SavedModels cannot be interpolated (other shapes, or not a dense net)."""


@dataclasses.dataclass(frozen=True)
class Layer:
    kind: str  # "dense" | "batch_norm"
    index: dict[str, int]  # variable role -> position in the endpoint's variable list


@dataclasses.dataclass
class Endpoint:
    """One trained model read back from its SavedModel."""

    path: Path
    names: list[str]  # variable names, trainable first then non-trainable (the SavedModel's order)
    arrays: list[np.ndarray]
    layers: list[Layer]
    loaded: Any  # the tf.saved_model.load object (its `serve` and variables)

    @property
    def variables(self) -> list[tf.Variable]:
        return list(self.loaded.trainable_variables) + list(self.loaded.non_trainable_variables)

    @property
    def has_batch_norm(self) -> bool:
        return any(layer.kind == "batch_norm" for layer in self.layers)


def _parse_layers(names: Sequence[str], path: Path) -> list[Layer]:
    """Groups variables by layer (the name's folder) in order of first appearance."""
    groups: dict[str, dict[str, int]] = {}
    for i, name in enumerate(names):
        prefix, _, role = name.rpartition("/")
        groups.setdefault(prefix, {})[role] = i
    layers = []
    for prefix, roles in groups.items():
        if set(roles) == DENSE_ROLES:
            layers.append(Layer("dense", roles))
        elif set(roles) == BN_ROLES:
            layers.append(Layer("batch_norm", roles))
        else:
            raise IncompatibleModelsError(
                f"{path}: layer {prefix or '?'} has variables {sorted(roles)}; only dense nets "
                "(Dense, optionally with BatchNormalization) can be interpolated")
    if not layers or layers[-1].kind != "dense":
        raise IncompatibleModelsError(f"{path}: not a dense net ending in a Dense layer")
    return layers


def load_endpoint(path: str | Path) -> Endpoint:
    """Loads a SavedModel (one-line error when missing or unreadable) and reads its variables."""
    path = Path(path)
    loaded = store.load_saved_model(path)
    variables = list(loaded.trainable_variables) + list(loaded.non_trainable_variables)
    names = [v.name.split(":")[0] for v in variables]
    return Endpoint(path, names, [v.numpy() for v in variables], _parse_layers(names, path),
                    loaded)


def check_compatible(first: Endpoint, second: Endpoint) -> None:
    """Same number of variables with the same shapes, position by position, else one error
    naming both paths."""
    if len(first.arrays) != len(second.arrays):
        raise IncompatibleModelsError(
            f"{second.path}: {len(second.arrays)} variables, but {first.path} has "
            f"{len(first.arrays)}; interpolation needs one architecture")
    for name, a, b in zip(second.names, first.arrays, second.arrays):
        if a.shape != b.shape:
            raise IncompatibleModelsError(
                f"{second.path}: variable {name} has shape {b.shape}, {a.shape} in "
                f"{first.path}; interpolation needs one architecture")


def forward(layers: Sequence[Layer], weights: Sequence[tf.Tensor], x: tf.Tensor,
            bn_stats: dict[int, tuple[tf.Tensor, tf.Tensor]] | None = None,
            activation=tf.nn.relu, stop_before: int | None = None) -> tf.Tensor:
    """Logits (K, B, classes) of K stacked weight sets (each weight (K, ...), K static) on inputs
    x (B, ...) shared by all K. BatchNorm layer j uses `bn_stats[j]` = (mean, variance) of shape
    (K, width) when given, else its (stacked) moving averages. `stop_before=j` returns layer j's
    input instead.

    The K sets are unrolled into K plain 2-D matmul chains in one graph: on CPU that ran 2.5x
    faster than batched (K, B, n) matmuls or one wide first-layer matmul (bench/interpolation.py
    and its notes in the README)."""
    h0 = tf.reshape(x, [tf.shape(x)[0], -1])
    count = weights[0].shape[0]
    last_dense = max(j for j, layer in enumerate(layers) if layer.kind == "dense")
    outputs = []
    for k in range(count):
        h = h0
        for j, layer in enumerate(layers):
            if j == stop_before:
                break
            w = {role: weights[i][k] for role, i in layer.index.items()}
            if layer.kind == "dense":
                h = tf.matmul(h, w["kernel"]) + w["bias"]
                followed_by_bn = j + 1 < len(layers) and layers[j + 1].kind == "batch_norm"
                if j != last_dense and not followed_by_bn:
                    h = activation(h)
            else:
                mean, var = (bn_stats[j] if bn_stats is not None and j in bn_stats
                             else (weights[layer.index["moving_mean"]],
                                   weights[layer.index["moving_variance"]]))
                h = (h - mean[k]) * tf.math.rsqrt(var[k] + BN_EPSILON)
                h = activation(h * w["gamma"] + w["beta"])
        outputs.append(h)
    return tf.stack(outputs)


def interpolate(first: Sequence[np.ndarray], second: Sequence[np.ndarray],
                alphas: Sequence[float]) -> list[tf.Tensor]:
    """θ(α) = (1 − α)θ₁ + αθ₂ for every α, stacked: one (K, ...) tensor per variable."""
    a = np.asarray(alphas, np.float32)
    out = []
    for t1, t2 in zip(first, second):
        shape = (-1,) + (1,) * t1.ndim
        out.append(tf.constant((1 - a.reshape(shape)) * t1[None] + a.reshape(shape) * t2[None]))
    return out


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), -1)


_FUNCTIONS: dict[tuple, Any] = {}


class _Summer:
    """Runs a per-batch function of (x, y, *args) returning sums, over the batches of a dataset
    spread across the strategy's replicas, and adds the all-reduced sums up in float64.

    The traced function is kept per (what, layers, activation, XLA), so later curves of the same
    architecture reuse it. XLA only with a GPU: on this CPU the XLA-compiled evaluation ran
    slower than TensorFlow's own kernels, and it fails across several logical devices (see
    distribute.execution_settings)."""

    def __init__(self, strategy, key: tuple, make_fn, jit_compile: bool):
        self.strategy = strategy
        jit = bool(jit_compile and strategy.num_replicas_in_sync == 1
                   and tf.config.list_logical_devices("GPU"))
        key = key + (jit, id(strategy))
        if key not in _FUNCTIONS:
            _FUNCTIONS[key] = tf.function(make_fn(), jit_compile=jit, autograph=False)
        self.fn = _FUNCTIONS[key]

    def __call__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *args) -> list[np.ndarray]:
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
        totals = None
        for xb, yb in self.strategy.experimental_distribute_dataset(ds):
            out = self.strategy.run(self.fn, args=(xb, yb, *args))
            out = [self.strategy.reduce(tf.distribute.ReduceOp.SUM, o, axis=None).numpy()
                   for o in out]
            totals = ([o.astype(np.float64) for o in out] if totals is None
                      else [t + o for t, o in zip(totals, out)])
        return totals


def _loss_and_correct(layers, activation):
    def sums(x, y, weights, bn_stats):
        logits = forward(layers, weights, x, bn_stats, activation)
        labels = tf.broadcast_to(tf.cast(y, tf.int32)[None], tf.shape(logits)[:2])
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                          tf.float32)
        return tf.reduce_sum(ce, 1), tf.reduce_sum(correct, 1)

    return sums


def _layer_sums(layers, activation, j):
    """Per-α sums of layer j's inputs (pass 1) and of their squared deviations (pass 2)."""

    def first(x, y, weights, bn_stats):
        return (tf.reduce_sum(forward(layers, weights, x, bn_stats, activation, j), 1),)

    def second(x, y, weights, bn_stats, mean):
        h = forward(layers, weights, x, bn_stats, activation, j)
        return (tf.reduce_sum(tf.square(h - mean[:, None, :]), 1),)

    return first, second


def _key(what: str, layers, activation) -> tuple:
    return (what, tuple((layer.kind, tuple(sorted(layer.index.items()))) for layer in layers),
            activation)


def batch_norm_statistics(layers, weights, x, *, strategy, batch_size: int,
                          activation=tf.nn.relu, jit_compile: bool = True):
    """{BatchNorm layer: (mean, variance)} of each stacked weight set on inputs x, computed
    layer after layer (a layer's inputs depend on the statistics before it)."""
    stats: dict[int, tuple[tf.Tensor, tf.Tensor]] = {}
    y = np.zeros(len(x), np.int32)
    for j, layer in enumerate(layers):
        if layer.kind != "batch_norm":
            continue
        first = _Summer(strategy, _key(f"mean{j}", layers, activation),
                        lambda: _layer_sums(layers, activation, j)[0], jit_compile)
        second = _Summer(strategy, _key(f"var{j}", layers, activation),
                         lambda: _layer_sums(layers, activation, j)[1], jit_compile)
        (total,) = first(x, y, batch_size, weights, dict(stats))
        mean = tf.constant((total / len(x)).astype(np.float32))
        (sq,) = second(x, y, batch_size, weights, dict(stats), mean)
        stats[j] = (mean, tf.constant((sq / len(x)).astype(np.float32)))
    return stats


def evaluate_line(first: Endpoint, second: Endpoint, alphas: Sequence[float],
                  data: dict[str, tuple[np.ndarray, np.ndarray]], *, strategy=None,
                  batch_size: int = 1024, alphas_per_pass: int = 32,
                  recompute_batch_norm: bool = True, batch_norm_x: np.ndarray | None = None,
                  activation=tf.nn.relu, jit_compile: bool = True) -> dict[str, dict]:
    """Mean cross-entropy and accuracy of θ(α) on every split of `data` ({name: (x, y)}):
    {name: {"loss": (K,), "accuracy": (K,)}}. `alphas_per_pass` α share one pass over a batch;
    BatchNorm statistics are recomputed on `batch_norm_x` when asked and the models have any."""
    check_compatible(first, second)
    strategy = strategy or tf.distribute.get_strategy()
    alphas = np.asarray(alphas, np.float64)
    recompute = recompute_batch_norm and first.has_batch_norm
    if recompute and batch_norm_x is None:
        raise Hw1Error("recomputing BatchNorm statistics needs training inputs (batch_norm_x)")
    flat = {name: (_flat(x), np.asarray(y, np.int32)) for name, (x, y) in data.items()}
    summer = _Summer(strategy, _key("loss", first.layers, activation),
                     lambda: _loss_and_correct(first.layers, activation), jit_compile)
    out = {name: {"loss": [], "accuracy": []} for name in data}
    for start in range(0, len(alphas), alphas_per_pass):
        chunk = alphas[start:start + alphas_per_pass]
        weights = interpolate(first.arrays, second.arrays, chunk)
        stats = (batch_norm_statistics(first.layers, weights, _flat(batch_norm_x),
                                       strategy=strategy, batch_size=batch_size,
                                       activation=activation, jit_compile=jit_compile)
                 if recompute else {})
        for name, (x, y) in flat.items():
            ce, correct = summer(x, y, batch_size, weights, stats)
            out[name]["loss"].append(ce / len(x))
            out[name]["accuracy"].append(correct / len(x))
    return {name: {k: np.concatenate(v).astype(np.float32) for k, v in d.items()}
            for name, d in out.items()}


# ------------------------------------------------------------ the SavedModel's own predictions


def serve_predictions(endpoint: Endpoint, x: np.ndarray,
                      weights: Sequence[np.ndarray] | None = None,
                      batch_size: int = 1024) -> np.ndarray:
    """Logits of the loaded SavedModel's own `serve` signature, batch by batch, at its weights
    or with `weights` assigned to its variables for the call (restored afterwards)."""
    variables = endpoint.variables
    x = np.asarray(x, np.float32)
    try:
        if weights is not None:
            for v, w in zip(variables, weights):
                v.assign(np.asarray(w, v.dtype.as_numpy_dtype))
        return np.concatenate([endpoint.loaded.serve(tf.constant(x[i:i + batch_size])).numpy()
                               for i in range(0, len(x), batch_size)])
    finally:
        if weights is not None:
            for v, w in zip(variables, endpoint.arrays):
                v.assign(w)


def evaluate_serve(endpoint: Endpoint, x: np.ndarray, y: np.ndarray,
                   weights: Sequence[np.ndarray] | None = None,
                   batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) through the SavedModel's own `serve` (see
    `serve_predictions`): one α at a time, the reference the vectorised curve is checked
    against."""
    logits = serve_predictions(endpoint, x, weights, batch_size)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=np.asarray(y, np.int32),
                                                        logits=logits).numpy()
    return float(ce.mean()), float((logits.argmax(-1) == y).mean())


def check_reading(endpoint: Endpoint, x: np.ndarray, activation=tf.nn.relu,
                  tolerance: float = 1e-3) -> None:
    """Raises when reading the variables as a dense net does not reproduce `serve` on x (e.g. an
    activation other than the one assumed): the interpolation would measure another model."""
    ours = forward(endpoint.layers, [tf.constant(a[None]) for a in endpoint.arrays],
                   tf.constant(_flat(x)), activation=activation)[0].numpy()
    theirs = serve_predictions(endpoint, np.asarray(x, np.float32))
    diff = float(np.abs(ours - theirs).max())
    if diff > tolerance * max(1.0, float(np.abs(theirs).max())):
        raise IncompatibleModelsError(
            f"{endpoint.path}: reading its variables as a dense net does not reproduce its own "
            f"predictions (max difference {diff:.3g}); is its activation the one configured?")
