"""The loss landscape: weight trajectories and their PCA, loss surfaces around a trained model,
and the loss along lines between two SavedModels.

Trajectories and surfaces (HW1-2):
* `Snapshots`: a `population.train_population` callback that keeps every member's weights
  (the whole model, flattened, and one layer) every n epochs, with the training loss and
  accuracy AT those weights (evaluated, not the epoch's running mean).
* `pca_2d`: scikit-learn PCA fitted on all runs' snapshots together.
* `filter_normalized_directions`: random directions scaled filter by filter to the weights'
  norms (Li et al. 2018) AND mutually orthogonal. Li et al. normalise random Gaussians (nearly
  orthogonal in high dimension, not exactly); the PyPI loss-landscapes package orthogonalises
  and then normalises, which skews the axes again. Here every normalisation group (a filter:
  one output unit's incoming weights; a 1-input layer's whole kernel, whose filters are single
  weights) of direction k is orthogonalised against directions 1..k-1 WITHIN the group and then
  rescaled to the weights' norm in that group. Orthogonal in every group means orthogonal as
  whole vectors, and the rescaling keeps each group's norm: both properties hold exactly.
  Biases get a zero direction (Li et al.'s `--xignore=biasbn`): they stay at their trained value.
* `trajectory_directions`: the top-2 PCA directions of a training trajectory around its end
  point, and the trajectory's coordinates along them.
* `SurfaceEvaluator`: the loss at many points theta + sum_k c_k d_k in one batched computation:
  each chunk of grid points is a stack of weight sets evaluated with `population.stacked_logits`
  (one batched matmul per layer), not one call per point.

Lines between two SavedModels (HW1-3, flatness vs generalization part 1):

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
order). With recomputation off, the moving means are interpolated like every other variable and
the moving variances geometrically (below).

Any two SavedModels (`load_endpoint(path, dense_only=False)`, `evaluate_line_serve`): when the
dense reading does not apply (a CNN, a tf.Module, a net ending in softmax), the line is evaluated
through the first model's own `serve`, one α at a time: θ(α) is assigned to its variables and
every split goes through `serve` batch by batch. `serve` runs in inference mode and shows no
layer's inputs, so BatchNorm statistics cannot be recomputed there: the non-trainable float
variables are interpolated like the weights, but for BatchNorm's moving variances, interpolated
geometrically (v₁^(1−α)·v₂^α), on both paths: linearly they turn negative beyond the endpoints
once the two models' variances differ enough (a CNN trained at batch 64 vs 1024 did, from
α = −0.1 on) and the loss with them is NaN. Integer state (Keras' dropout seed counters) stays
the first model's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from hw1_tf import hessian, population, store
from hw1_tf.errors import Hw1Error


# ------------------------------------------------------------------------- flat weights


def flatten(weights: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(w) for w in weights])


def unflatten(vector: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """`vector` (..., P) split into arrays of `shapes` (with the leading axes kept)."""
    out, start = [], 0
    lead = vector.shape[:-1]
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(vector[..., start:start + size].reshape(lead + tuple(shape)))
        start += size
    if start != vector.shape[-1]:
        raise Hw1Error(f"a weight vector of {vector.shape[-1]} values does not fit shapes "
                       f"totalling {start}")
    return out


def mean_losses(logits: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Per-member mean loss and accuracy (NaN for regression) of logits (N, B, outputs)."""
    logits = np.asarray(logits, np.float64)
    if not num_classes:
        return np.mean((logits - y[None]) ** 2, axis=(1, 2)), np.full(len(logits), np.nan)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    labels = np.asarray(y, int)
    picked = np.take_along_axis(log_p, np.broadcast_to(labels[None, :, None],
                                                       log_p.shape[:2] + (1,)), -1)[..., 0]
    return -picked.mean(1), (log_p.argmax(-1) == labels[None]).mean(1)


# ---------------------------------------------------------------------- snapshots, PCA


class Snapshots:
    """Every member's weights every `every_epochs` epochs and after the last, plus its loss and
    accuracy on (x, y) at those weights. Call `initial(pop)` before training (a population
    built with the same seeds holds exactly the initial weights), pass the object as a
    `train_population` callback, then read `arrays()`."""

    def __init__(self, every_epochs: int, epochs: int, layer: int, x: np.ndarray, y: np.ndarray,
                 num_classes: int):
        if every_epochs < 1:
            raise Hw1Error(f"snapshot interval must be >= 1 epoch, got {every_epochs}")
        self.every_epochs, self.epochs, self.layer = every_epochs, epochs, layer
        self.x, self.y, self.num_classes = x, y, num_classes
        self.taken: list[int] = []
        self.whole: list[np.ndarray] = []   # each (N, P)
        self.layer_weights: list[np.ndarray] = []
        self.loss: list[np.ndarray] = []     # each (N,)
        self.accuracy: list[np.ndarray] = []

    def _take(self, epoch: int, pop: population.Population) -> None:
        layers = len(pop.params) // 2
        if not -layers <= self.layer < layers:
            raise Hw1Error(f"--layer={self.layer}: the model has {layers} dense layers")
        j = self.layer % layers
        stacked = [p.numpy() for p in pop.params]
        flat = lambda ws: np.concatenate([w.reshape(len(w), -1) for w in ws], 1)  # noqa: E731
        self.taken.append(epoch)
        self.whole.append(flat(stacked))
        self.layer_weights.append(flat(stacked[2 * j:2 * j + 2]))
        loss, accuracy = mean_losses(pop.predict(self.x), self.y, self.num_classes)
        self.loss.append(loss)
        self.accuracy.append(accuracy)

    def initial(self, pop: population.Population) -> None:
        self._take(0, pop)

    def __call__(self, epoch: int, pop: population.Population) -> None:
        done = epoch + 1
        if done % self.every_epochs == 0 or done == self.epochs:
            self._take(done, pop)

    def backup_state(self) -> dict[str, Any]:
        """The snapshots so far (a resumed run keeps those taken before its kill)."""
        return {"taken": list(self.taken), "whole": list(self.whole),
                "layer": list(self.layer_weights), "loss": list(self.loss),
                "accuracy": list(self.accuracy)}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.taken = [int(e) for e in state["taken"]]
        self.whole, self.layer_weights = list(state["whole"]), list(state["layer"])
        self.loss, self.accuracy = list(state["loss"]), list(state["accuracy"])

    def arrays(self) -> dict[str, np.ndarray]:
        """epochs (k,); whole (N, k, P); layer (N, k, P_layer); loss, accuracy (N, k)."""
        return {"epochs": np.asarray(self.taken),
                "whole": np.stack(self.whole, 1), "layer": np.stack(self.layer_weights, 1),
                "loss": np.stack(self.loss, 1), "accuracy": np.stack(self.accuracy, 1)}


def pca_2d(snapshots: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn PCA fitted on all runs' snapshots together (N runs, k snapshots, P):
    returns the coordinates (N, k, 2) and the explained variance ratio of the 2 axes."""
    from sklearn.decomposition import PCA

    n, k, p = snapshots.shape
    pca = PCA(n_components=2, random_state=seed)
    coords = pca.fit_transform(snapshots.reshape(n * k, p).astype(np.float64))
    return coords.reshape(n, k, 2), pca.explained_variance_ratio_


# --------------------------------------------------------------------------- directions


def normalization_groups(shapes: Sequence[tuple[int, ...]]) -> list[list[np.ndarray]]:
    """Per weight array, the flat index sets normalised together: each column (output unit)
    of a kernel with more than one input; the whole kernel of a 1-input layer; none for
    biases (their direction is zero)."""
    groups = []
    for shape in shapes:
        size = int(np.prod(shape))
        index = np.arange(size).reshape(shape)
        if len(shape) < 2:
            groups.append([])
        elif int(np.prod(shape[:-1])) == 1:
            groups.append([index.ravel()])
        else:
            groups.append([index[..., j].ravel() for j in range(shape[-1])])
    return groups


def filter_normalized_directions(weights: Sequence[np.ndarray], count: int = 2,
                                 seed: int = 0) -> np.ndarray:
    """`count` random directions (count, P) with, in every normalisation group, the norm of
    the weights in that group, orthogonal to each other group by group (see the module doc).
    A group of g weights allows at most g orthogonal directions; a group with fewer weights
    than `count` keeps the first g directions there and zeros after, still orthogonal."""
    rng = np.random.default_rng(seed)
    shapes = [w.shape for w in weights]
    flat_w = [np.ravel(w).astype(np.float64) for w in weights]
    parts = [[np.zeros(w.size) for w in flat_w] for _ in range(count)]
    for a, (w, groups) in enumerate(zip(flat_w, normalization_groups(shapes))):
        for idx in groups:
            target = np.linalg.norm(w[idx])
            basis = []
            for k in range(count):
                d = rng.standard_normal(idx.size)
                for b in basis:  # Gram-Schmidt inside the group (twice: round-off)
                    d -= (d @ b) * b
                for b in basis:
                    d -= (d @ b) * b
                norm = np.linalg.norm(d)
                if len(basis) >= idx.size or norm < 1e-12:
                    continue  # no room left in this group
                d /= norm
                basis.append(d)
                parts[k][a][idx] = target * d
    return np.stack([np.concatenate(p) for p in parts]).astype(np.float64)


def trajectory_directions(trajectory: np.ndarray, end: np.ndarray, seed: int = 0
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the trajectory's offsets from its end point (k, P) - (P,) (Li et al.'s choice:
    the end point is the origin of the surface). Returns the two unit directions (2, P), the
    trajectory's coordinates (k, 2) along them and their explained variance ratios."""
    from sklearn.decomposition import PCA

    offsets = np.asarray(trajectory, np.float64) - np.asarray(end, np.float64)[None]
    if len(offsets) < 3:
        raise Hw1Error(f"a trajectory of {len(offsets)} snapshots is too short for 2 PCA "
                       "directions; train more epochs or snapshot more often")
    pca = PCA(n_components=2, random_state=seed).fit(offsets)
    directions = pca.components_
    return directions, offsets @ directions.T, pca.explained_variance_ratio_


# ------------------------------------------------------------------------------ surfaces


def _chunk_size(num_params: int, examples: int, widest: int, budget: float = 2 ** 26) -> int:
    """Grid points per call: weights (chunk, P) and activations (chunk, examples, widest)
    within `budget` floats."""
    return int(max(1, min(128, budget // max(num_params + examples * widest, 1))))


class SurfaceEvaluator:
    """The mean loss on (x, y) of the dense net with weights `weights` moved to
    theta + coefficients[g] @ directions, for many grid points g at once: each chunk of grid
    points is a stack of weight sets run through `population.stacked_logits` (one batched
    matmul per layer). One compiled function serves every call (directions are padded to
    `max_directions` rows and chunks to one size), so there is one trace and one compilation."""

    def __init__(self, weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray,
                 num_classes: int, activation: str = "relu", chunk: int | None = None,
                 max_directions: int = 2):
        self.shapes = [tuple(w.shape) for w in weights]
        self.theta = flatten(weights).astype(np.float32)
        self.max_directions = max_directions
        self.chunk = chunk or _chunk_size(self.theta.size, len(x),
                                          max(s[-1] for s in self.shapes))
        act = keras.activations.get(activation)
        input_shape = tuple(x.shape[1:])
        theta, shapes = tf.constant(self.theta), self.shapes
        x_t, y_t = tf.constant(x, tf.float32), tf.constant(y)

        def losses(coeffs, directions):
            flat = theta[None] + tf.matmul(coeffs, directions)  # (chunk, P)
            logits = population.stacked_logits(unflatten_tf(flat, shapes), x_t, act,
                                               input_shape)  # (chunk, B, outputs)
            if num_classes:
                labels = tf.broadcast_to(tf.cast(y_t, tf.int32), tf.shape(logits)[:2])
                per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            else:
                per_example = tf.reduce_mean(tf.square(tf.cast(y_t, tf.float32) - logits), -1)
            return tf.reduce_mean(per_example, axis=1)

        self._losses = tf.function(losses, jit_compile=True, autograph=False)

    def __call__(self, directions: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """Losses (G,) at theta + coefficients (G, D) @ directions (D, P), D <= max_directions."""
        directions = np.asarray(directions, np.float32).reshape(-1, self.theta.size)
        d = len(directions)
        if d > self.max_directions:
            raise Hw1Error(f"{d} directions; this evaluator takes at most {self.max_directions}")
        coefficients = np.asarray(coefficients, np.float32).reshape(-1, d)
        padded_dirs = np.zeros((self.max_directions, self.theta.size), np.float32)
        padded_dirs[:d] = directions
        padded_dirs = tf.constant(padded_dirs)
        out = []
        for start in range(0, len(coefficients), self.chunk):
            block = coefficients[start:start + self.chunk]
            padded = np.zeros((self.chunk, self.max_directions), np.float32)
            padded[:len(block), :d] = block
            out.append(self._losses(tf.constant(padded), padded_dirs).numpy()[:len(block)])
        return np.concatenate(out).astype(np.float64)


def unflatten_tf(flat, shapes: Sequence[tuple[int, ...]]) -> list:
    """`unflatten` for a (G, P) tensor inside a compiled function."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(tf.reshape(flat[:, start:start + size], [-1, *shape]))
        start += size
    return out


def mesh(*axes: np.ndarray) -> np.ndarray:
    """The coefficients (prod of lengths, len(axes)) of the grid over `axes`, first axis
    slowest (so losses.reshape(len(a0), len(a1)) is indexed [i0, i1])."""
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grids], 1)


# ------------------------------------------------- lines between two SavedModels (HW1-3)
BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default (the reading is checked vs serve)
DENSE_ROLES = frozenset({"kernel", "bias"})
BN_ROLES = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})


def off_plane_fraction(offsets: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Per row of `offsets`, the fraction of its length that is NOT in the plane of
    `directions` (orthonormal rows): 0 when the projection onto the plane is exact."""
    norms = np.linalg.norm(offsets, axis=1)
    inside = np.linalg.norm(offsets @ directions.T, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, np.sqrt(np.maximum(norms ** 2 - inside ** 2, 0)) / norms, 0.)


def random_plane_surface(losses: SurfaceEvaluator, weights: Sequence[np.ndarray], span: float,
                         line_points: int, grid_points: int, seed: int = 0) -> dict:
    """The loss around trained `weights` along two filter-normalised random directions (Li et
    al. 2018): 1-D along each (`line`, `line_losses`) and on their plane (`axis`, `losses`
    [i, j] at a = axis[i], b = axis[j]), steps in units of the filter norms, up to `span`."""
    directions = filter_normalized_directions(weights, 2, seed=seed)
    line = np.linspace(-span, span, line_points)
    axis = np.linspace(-span, span, grid_points)
    norms = np.linalg.norm(directions, axis=1)
    return {
        "line": line,
        "line_losses": np.stack([losses(directions[k:k + 1], line[:, None]) for k in (0, 1)]),
        "axis": axis,
        "losses": losses(directions, mesh(axis, axis)).reshape(len(axis), len(axis)),
        "direction_norms": norms,
        "cosine": float(directions[0] @ directions[1] / np.prod(norms)),
        "points": 2 * len(line) + len(axis) ** 2,
    }


def trajectory_plane_surface(losses: SurfaceEvaluator, trajectory: np.ndarray,
                             theta: np.ndarray, margin: float, line_points: int,
                             grid_points: int, seed: int = 0) -> dict:
    """The loss on the plane of the training trajectory's first two principal directions
    around the trained `theta`, `margin` times as wide as the projected trajectory, with the
    trajectory's coordinates on it and the share of each snapshot's offset off the plane."""
    directions, coords, explained = trajectory_directions(trajectory, theta, seed=seed)
    extent = margin * np.maximum(np.abs(coords).max(0), 1e-6)
    axis_x = np.linspace(-extent[0], extent[0], grid_points)
    axis_y = np.linspace(-extent[1], extent[1], grid_points)
    line = np.linspace(-extent[0], extent[0], line_points)
    return {
        "axis_x": axis_x, "axis_y": axis_y,
        "losses": losses(directions, mesh(axis_x, axis_y)).reshape(len(axis_x), len(axis_y)),
        "line": line,
        "trajectory": coords,
        "off_plane_fraction": off_plane_fraction(trajectory - theta, directions),
        "explained_variance_ratio": explained,
        "line_losses": losses(directions[:1], line[:, None]),
        "points": len(axis_x) * len(axis_y) + line_points,
    }


def straight_line(losses: SurfaceEvaluator, start: np.ndarray, theta: np.ndarray,
                  alphas: np.ndarray) -> dict:
    """The loss on (1 - alpha) start + alpha theta: theta + (1 - alpha) (start - theta)."""
    return {"alpha": alphas, "losses": losses((start - theta)[None], (1 - alphas)[:, None]),
            "points": len(alphas)}


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
    layers: list[Layer] | None  # the dense reading; None when it does not apply (`why_not_dense`)
    loaded: Any  # the tf.saved_model.load object (its `serve` and variables)
    variables: list[tf.Variable]  # as `names`
    num_trainable: int
    serve: Callable  # its serve function (or serving_default signature): one tensor in
    input_spec: tf.TensorSpec
    why_not_dense: str | None = None  # why its variables do not read as a dense net

    @property
    def has_batch_norm(self) -> bool:
        if self.layers is not None:
            return any(layer.kind == "batch_norm" for layer in self.layers)
        return any(name.endswith(("moving_mean", "moving_variance")) for name in self.names)

    @property
    def state(self) -> list[int]:
        """Positions of the non-trainable float variables (BatchNorm moving statistics, and
        whatever other float state a model keeps)."""
        return [i for i in range(self.num_trainable, len(self.variables))
                if self.variables[i].dtype.is_floating]


def _parse_layers(names: Sequence[str], path: Path,
                  shapes: Sequence[tuple[int, ...]] | None = None) -> list[Layer]:
    """Groups variables by layer (the name's folder) in order of first appearance; with their
    `shapes`, checks that they chain as a dense net's."""
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
    if shapes is not None:  # kernels 2-D and chained (a convolution has kernel and bias too)
        width = None
        for prefix, layer in zip(groups, layers):
            kernel = shapes[layer.index["kernel" if layer.kind == "dense" else "gamma"]]
            rows = kernel[0] if layer.kind == "dense" else kernel[-1]
            if layer.kind == "dense" and len(kernel) != 2:
                raise IncompatibleModelsError(
                    f"{path}: layer {prefix or '?'} has a kernel of shape {tuple(kernel)}: not "
                    "a Dense layer, so not a dense net")
            if width not in (None, rows):
                raise IncompatibleModelsError(
                    f"{path}: layer {prefix or '?'} takes {rows} inputs after a layer of "
                    f"{width} outputs: not a dense net")
            width = kernel[-1]
    return layers


def load_endpoint(path: str | Path, dense_only: bool = True) -> Endpoint:
    """Loads a SavedModel (one-line error when missing or unreadable) and reads its variables:
    as a dense net (an error when they are not one), or with `dense_only=False` any SavedModel
    with one-input `serve` (a Keras export, CNNs included; a tf.Module), `layers` None when the
    dense reading does not apply."""
    path = Path(path)
    loaded = store.load_saved_model(path)
    serve, spec = hessian.serving_function(loaded, path)
    trainable, non_trainable = hessian.saved_variables(loaded)
    variables = trainable + non_trainable
    if not trainable:
        raise IncompatibleModelsError(f"{path}: the SavedModel has no trainable variables")
    names = [v.name.split(":")[0] for v in variables]
    try:
        layers, why = _parse_layers(names, path, [tuple(v.shape) for v in variables]), None
    except IncompatibleModelsError as e:
        if dense_only:
            raise
        layers, why = None, str(e)
    return Endpoint(path, names, [v.numpy() for v in variables], layers, loaded, variables,
                    len(trainable), serve, spec, why)


def check_compatible(first: Endpoint, second: Endpoint) -> None:
    """Same number of variables with the same shapes and dtypes, position by position, and
    serve taking the same input, else one error naming both paths."""
    if (len(first.arrays), first.num_trainable) != (len(second.arrays), second.num_trainable):
        raise IncompatibleModelsError(
            f"{second.path}: {len(second.arrays)} variables ({second.num_trainable} trainable), "
            f"but {first.path} has {len(first.arrays)} ({first.num_trainable}); interpolation "
            "needs one architecture")
    for name, a, b in zip(second.names, first.arrays, second.arrays):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise IncompatibleModelsError(
                f"{second.path}: variable {name} is {b.dtype} {b.shape}, {a.dtype} {a.shape} in "
                f"{first.path}; interpolation needs one architecture")
    ins = [(tuple(e.input_spec.shape), e.input_spec.dtype.name) for e in (first, second)]
    if ins[0] != ins[1]:  # the spec's name is the exporter's tensor name: not compared
        raise IncompatibleModelsError(
            f"{second.path}: serve takes {ins[1][1]} inputs of shape {ins[1][0]}, "
            f"{ins[0][1]} {ins[0][0]} in {first.path}; interpolation needs one architecture")


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
                alphas: Sequence[float], geometric: Sequence[int] = ()) -> list[tf.Tensor]:
    """θ(α) = (1 − α)θ₁ + αθ₂ for every α, stacked: one (K, ...) tensor per variable; the
    variables at positions `geometric` (BatchNorm moving variances, see `variance_positions`)
    as θ₁^(1−α)·θ₂^α instead."""
    a = np.asarray(alphas, np.float32)
    out = []
    for i, (t1, t2) in enumerate(zip(first, second)):
        shape = (-1,) + (1,) * t1.ndim
        if i in geometric:
            logs = [np.log(np.maximum(t, np.finfo(np.float32).tiny)) for t in (t1, t2)]
            out.append(tf.constant(np.exp((1 - a.reshape(shape)) * logs[0][None]
                                          + a.reshape(shape) * logs[1][None]).astype(t1.dtype)))
        else:
            out.append(tf.constant((1 - a.reshape(shape)) * t1[None]
                                   + a.reshape(shape) * t2[None]))
    return out


def variance_positions(endpoint: Endpoint) -> list[int]:
    """Positions of BatchNorm moving variances among the endpoint's variables: interpolated
    geometrically, so they equal each model's own at α = 0 and 1 and stay positive at every α
    (linearly they turn negative beyond the endpoints when the two differ enough, and the loss
    with them is NaN)."""
    return [i for i in endpoint.state if endpoint.names[i].endswith("moving_variance")]


BATCH_NORM_INTERPOLATED = ("moving means interpolated linearly, moving variances geometrically "
                           "(v₁^(1−α)·v₂^α: each model's own at α = 0 and 1, positive at every α)")


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
        weights = interpolate(first.arrays, second.arrays, chunk, variance_positions(first))
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
    """Outputs of the loaded SavedModel's own `serve`, batch by batch (x shaped as serve takes
    it), at its weights or with `weights` assigned to its variables for the call (restored
    afterwards)."""
    variables = endpoint.variables
    x, _ = hessian._inputs_for(np.asarray(x), endpoint.input_spec, endpoint.path)
    try:
        if weights is not None:
            for v, w in zip(variables, weights):
                v.assign(np.asarray(w, v.dtype.as_numpy_dtype))
        return np.concatenate([
            np.asarray(hessian._single_output(endpoint.serve(tf.constant(x[i:i + batch_size]))))
            for i in range(0, len(x), batch_size)])
    finally:
        if weights is not None:
            for v, w in zip(variables, endpoint.arrays):
                v.assign(w)


def mean_loss_and_accuracy(outputs: np.ndarray, y: np.ndarray,
                           kind: str = "logits") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of serve's `outputs` ("logits" or "probabilities", see
    hessian.loss_for_outputs) for the labels y."""
    y = np.asarray(y, np.int32)
    if kind == "logits":
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=outputs).numpy()
    else:
        ce = np.asarray(hessian.loss_for_outputs(kind)(y, outputs))
    return float(ce.mean()), float((np.asarray(outputs).argmax(-1) == y).mean())


def evaluate_serve(endpoint: Endpoint, x: np.ndarray, y: np.ndarray,
                   weights: Sequence[np.ndarray] | None = None,
                   batch_size: int = 1024, kind: str = "logits") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) through the SavedModel's own `serve` (see
    `serve_predictions`): one α at a time, the reference the vectorised curve is checked
    against."""
    return mean_loss_and_accuracy(serve_predictions(endpoint, x, weights, batch_size), y, kind)


def outputs_kind(endpoint: Endpoint, x: np.ndarray, y: np.ndarray, outputs: str = "auto") -> str:
    """"logits" or "probabilities": what serve returns on x (detected when `outputs` is
    "auto"); one error naming the SavedModel when its input or outputs do not fit (x, y)."""
    kind = hessian.outputs_kind(serve_predictions(endpoint, x), np.asarray(y), outputs,
                                endpoint.path)
    if kind == "regression":
        raise IncompatibleModelsError(f"{endpoint.path}: the labels are not class indices")
    return kind


def interpolated_state(first: Endpoint, second: Endpoint, alpha: float) -> list[np.ndarray]:
    """Every variable of θ(α) for the serve path: the trainable ones and the non-trainable float
    ones (BatchNorm moving statistics) as `interpolate` has them; other state (integer seed
    counters) stays the first model's."""
    mixed = set(range(first.num_trainable)) | set(first.state)
    between = interpolate(first.arrays, second.arrays, [alpha], variance_positions(first))
    return [w[0].numpy().astype(a.dtype) if i in mixed else a
            for i, (a, w) in enumerate(zip(first.arrays, between))]


def evaluate_line_serve(first: Endpoint, second: Endpoint, alphas: Sequence[float],
                        data: dict[str, tuple[np.ndarray, np.ndarray]], *, kind: str = "logits",
                        batch_size: int = 1024,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """`evaluate_line` for any two compatible SavedModels, through `serve`: for each α the
    variables of `interpolated_state` are assigned to the first model's variables and every
    split is evaluated batch by batch (restored afterwards). One α at a time, one device."""
    check_compatible(first, second)
    out = {name: {"loss": [], "accuracy": []} for name in data}
    try:
        for i, alpha in enumerate(np.asarray(alphas, np.float64)):
            for v, w in zip(first.variables, interpolated_state(first, second, alpha)):
                v.assign(w)
            for name, (x, y) in data.items():
                outputs = serve_predictions(first, x, batch_size=batch_size)
                loss, accuracy = mean_loss_and_accuracy(outputs, y, kind)
                out[name]["loss"].append(loss)
                out[name]["accuracy"].append(accuracy)
            if progress is not None:
                progress(i + 1, len(alphas))
    finally:
        for v, w in zip(first.variables, first.arrays):
            v.assign(w)
    return {name: {k: np.asarray(v, np.float32) for k, v in d.items()} for name, d in out.items()}


def check_reading(endpoint: Endpoint, x: np.ndarray, activation=tf.nn.relu,
                  tolerance: float = 1e-3) -> None:
    """Raises when reading the variables as a dense net does not reproduce `serve` on x (e.g. an
    activation other than the one assumed): the interpolation would measure another model."""
    if endpoint.layers is None:
        raise IncompatibleModelsError(endpoint.why_not_dense)
    ours = forward(endpoint.layers, [tf.constant(a[None]) for a in endpoint.arrays],
                   tf.constant(_flat(x)), activation=activation)[0].numpy()
    theirs = serve_predictions(endpoint, np.asarray(x, np.float32))
    diff = float(np.abs(ours - theirs).max())
    if diff > tolerance * max(1.0, float(np.abs(theirs).max())):
        raise IncompatibleModelsError(
            f"{endpoint.path}: reading its variables as a dense net does not reproduce its own "
            f"predictions (max difference {diff:.3g}); is its activation the one configured?")
