"""The optimisation landscape of dense nets: weight trajectories, their PCA, and loss surfaces.

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
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from hw1_tf import population
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
