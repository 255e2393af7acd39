"""Model builders (dense, cnn) and the equal-parameter width solver.

Architectures are described by a `ModelSpec` (JSON-able, stored in results) and built by
`build(spec, input_shape, outputs)`. `solve_dense_widths` finds hidden widths for a given depth
whose parameter count is as close as possible to a target, so the deep-vs-shallow comparison
compares networks of (nearly) the same size; `param_count` is the closed form it uses, checked
against Keras' own count in the tests.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from hw1_tf.errors import Hw1Error


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A network: `kind` dense (hidden widths) or cnn (conv filters, then dense widths)."""

    name: str
    kind: str = "dense"
    hidden: tuple[int, ...] = ()
    filters: tuple[int, ...] = ()
    activation: str = "relu"
    kernel_size: int = 3
    pool_every: int = 1  # cnn: max-pool after every `pool_every` conv layers (a pool never
    #                      takes the map below 2x2)
    batch_norm: bool = False  # BatchNormalization between each hidden Dense and its activation

    def describe(self) -> str:
        if self.kind == "dense":
            bn = ", BatchNorm" if self.batch_norm else ""
            return f"dense {list(self.hidden)} ({self.activation}{bn})"
        return (f"cnn conv{list(self.filters)} k{self.kernel_size} pool/{self.pool_every} "
                f"dense{list(self.hidden)} ({self.activation})")


def build(spec: ModelSpec, input_shape: tuple[int, ...], outputs: int) -> keras.Model:
    layers = [keras.Input(tuple(input_shape))]
    if spec.kind == "cnn":
        if len(input_shape) != 3:
            raise Hw1Error(f"model {spec.name}: a cnn needs image input, got shape {input_shape}")
        side = min(input_shape[:2])  # "same" convolutions keep it, each pool halves it
        for i, f in enumerate(spec.filters):
            layers.append(keras.layers.Conv2D(f, spec.kernel_size, padding="same",
                                              activation=spec.activation))
            if (i + 1) % spec.pool_every == 0 and side // 2 >= 2:
                layers.append(keras.layers.MaxPooling2D())
                side //= 2
    elif spec.kind != "dense":
        raise Hw1Error(f"model {spec.name}: unknown kind {spec.kind!r} (dense or cnn)")
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten())
    for w in spec.hidden:
        if spec.batch_norm:
            layers += [keras.layers.Dense(w), keras.layers.BatchNormalization(),
                       keras.layers.Activation(spec.activation)]
        else:
            layers.append(keras.layers.Dense(w, activation=spec.activation))
    layers.append(keras.layers.Dense(outputs))
    return keras.Sequential(layers, name=spec.name)


def param_count(in_dim: int, hidden: tuple[int, ...] | list[int], out_dim: int) -> int:
    """Weights + biases of a dense net in_dim -> hidden... -> out_dim."""
    sizes = [in_dim, *hidden, out_dim]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def solve_dense_widths(depth: int, target: int, in_dim: int, out_dim: int,
                       tolerance: float = 0.01) -> tuple[int, ...]:
    """Hidden widths (depth layers; all equal but the last) whose parameter count is within
    `tolerance` of `target` (else as close as possible), the most uniform such widths. Equal
    widths alone jump by ~2w per step; freeing the last width closes the gap."""
    if depth < 1:
        raise Hw1Error(f"depth must be >= 1, got {depth}")
    best: tuple[int, tuple[int, ...]] | None = None
    if depth == 1:
        w = max(1, round((target - out_dim) / (in_dim + 1 + out_dim)))
        candidates = [(w + d,) for d in (-1, 0, 1) if w + d >= 1]
    else:
        candidates = []
        w_max = int(math.sqrt(target)) + 2
        for w in range(1, w_max + 1):
            base = param_count(in_dim, [w] * (depth - 1), 0)  # layers before the last hidden one
            # remaining: last hidden layer of width v: w*v + v + v*out + out
            v = round((target - base - out_dim) / (w + 1 + out_dim))
            candidates += [tuple([w] * (depth - 1) + [v + d]) for d in (-1, 0, 1) if v + d >= 1]
    for hidden in candidates:
        err = abs(param_count(in_dim, hidden, out_dim) - target)
        key = (err > tolerance * target, abs(hidden[-1] - hidden[0]), err)
        if best is None or key < best[0]:
            best = (key, hidden)
    return best[1]


def count_params(model: keras.Model) -> int:
    return int(model.count_params())


FAMILIES = ("dnn_shallow", "dnn_deep", "cnn_shallow", "cnn_deep")


def _cnn_spec(family: str, width: int) -> ModelSpec:
    if family == "cnn_shallow":
        return ModelSpec(family, "cnn", filters=(width,), pool_every=1)
    # a pool after every conv: at the same size and depth, conv(c)-conv(c)-pool-conv(2c)-
    # conv(2c)-pool ran two convolutions at full resolution and cost 3x the CPU time per
    # epoch (bench/cnn_cost.py, docs/speed.md)
    return ModelSpec(family, "cnn", filters=(width, width, 2 * width, 2 * width), pool_every=1)


def family_spec(family: str, target: int, input_shape: tuple[int, ...],
                outputs: int) -> ModelSpec:
    """The member of `family` whose parameter count is closest to `target`.

    dnn_shallow: 1 hidden layer; dnn_deep: 4 hidden layers; cnn_shallow: conv(c)-pool-dense;
    cnn_deep: conv(c)-pool-conv(c)-pool-conv(2c)-pool-conv(2c)-pool-dense, a pool that would
    take the map below 2x2 left out (MNIST: 28, 14, 7, 3; the last conv's 3x3 maps feed the
    dense layer). Dense widths come from
    `solve_dense_widths`; the conv width c from a search over integers.
    """
    if family in ("dnn_shallow", "dnn_deep"):
        in_dim = math.prod(input_shape)
        hidden = solve_dense_widths(1 if family == "dnn_shallow" else 4, target, in_dim, outputs)
        return ModelSpec(family, "dense", hidden=hidden)
    if family not in FAMILIES:
        raise Hw1Error(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")
    best = None
    for width in range(1, 257):
        n = count_params(build(_cnn_spec(family, width), input_shape, outputs))
        if best is None or abs(n - target) < best[0]:
            best = (abs(n - target), width)
        if n > target:
            break
    return _cnn_spec(family, best[1])
