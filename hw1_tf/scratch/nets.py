"""Fully-connected classifiers built from the scratch layers, with hand-written gradients.

{Linear - [BatchNorm] - ReLU - [Dropout]} x (L - 1) - Linear - softmax (or SVM) loss.

`model.loss(X)` returns class scores (test mode); `model.loss(X, y)` returns `(loss, grads)`
(training mode: dropout on, batch statistics, running statistics updated), with `grads` keyed
like `model.params`. Parameters are `tf.Variable`s so a compiled training step can update them
in place; the gradient checks build the model in float64.

L2 regularisation follows the report: loss += reg * sum(W ** 2) over the weight matrices (not
biases nor batch-norm parameters), so dW += 2 * reg * W (the same as `keras.regularizers.L2`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from hw1_tf.scratch.layers import LOSSES, BatchNorm, Dropout, Linear, ReLU

NORMALIZATIONS = (None, "batchnorm")


class FullyConnectedNet:
    """A fully-connected net of any depth.

    Args:
      hidden_dims: sizes of the hidden layers (empty: a linear classifier).
      input_dim: flattened input size; inputs of any (N, ...) shape are flattened.
      num_classes: output size.
      dropout: probability of zeroing a hidden unit in training (0: no dropout layers).
      normalization: None or "batchnorm" (after every hidden Linear, before ReLU).
      reg: L2 strength.
      weight_scale: std of the normal initial weights (biases start at 0, gamma 1, beta 0).
      dtype: tf.float32 for training, tf.float64 for gradient checks.
      seed: seeds the initial weights and, with the step, the dropout masks.
      loss: "softmax" | "svm".
    """

    def __init__(self, hidden_dims: Sequence[int], input_dim: int = 3 * 32 * 32,
                 num_classes: int = 10, *, dropout: float = 0.0, normalization: str | None = None,
                 reg: float = 0.0, weight_scale: float = 1e-2, dtype=tf.float32, seed: int = 0,
                 loss: str = "softmax"):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, "
                             f"got {normalization!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.num_layers = len(self.hidden_dims) + 1
        self.normalization = normalization
        self.reg = float(reg)
        self.dtype = tf.as_dtype(dtype)
        self.seed = int(seed)
        self.loss_layer = LOSSES[loss]
        self.dropout = Dropout(dropout) if dropout > 0 else None
        self.batchnorm = BatchNorm() if normalization == "batchnorm" else None

        rng = np.random.RandomState(seed)
        dims = (int(input_dim),) + self.hidden_dims + (int(num_classes),)
        np_dtype = self.dtype.as_numpy_dtype
        params = {}
        state = {}
        for i in range(1, self.num_layers + 1):
            fan_in, fan_out = dims[i - 1], dims[i]
            params[f"W{i}"] = weight_scale * rng.randn(fan_in, fan_out)
            params[f"b{i}"] = np.zeros(fan_out)
            if self.batchnorm is not None and i < self.num_layers:
                params[f"gamma{i}"] = np.ones(fan_out)
                params[f"beta{i}"] = np.zeros(fan_out)
                state[f"running_mean{i}"] = np.zeros(fan_out)
                state[f"running_var{i}"] = np.ones(fan_out)
        self.params = {k: tf.Variable(v.astype(np_dtype), name=k) for k, v in params.items()}
        self.bn_state = {k: tf.Variable(v.astype(np_dtype), name=k, trainable=False)
                         for k, v in state.items()}

    # ---------------------------------------------------------------------------- forward

    def loss(self, X, y=None, *, seed=None):
        """Scores (y is None, test mode) or (loss, grads) (training mode).

        `seed` (a pair of ints or an int32 tensor of shape [2]) picks the dropout masks; the
        default is (model seed, 0), so repeated calls see the same masks.
        """
        training = y is not None
        X = tf.cast(X, self.dtype)
        if seed is None:
            seed = tf.constant([self.seed, 0], tf.int32)
        seed = tf.cast(seed, tf.int32)
        caches = []
        h = X
        for i in range(1, self.num_layers):
            h, cache_fc = Linear.forward(h, {"w": self.params[f"W{i}"], "b": self.params[f"b{i}"]})
            cache_bn = None
            if self.batchnorm is not None:
                state = (self.bn_state[f"running_mean{i}"], self.bn_state[f"running_var{i}"])
                h, cache_bn = self.batchnorm.forward(
                    h, {"gamma": self.params[f"gamma{i}"], "beta": self.params[f"beta{i}"]},
                    training=training, state=state)
                if training:
                    self.bn_state[f"running_mean{i}"].assign(cache_bn["state"][0])
                    self.bn_state[f"running_var{i}"].assign(cache_bn["state"][1])
            h, cache_relu = ReLU.forward(h)
            cache_drop = None
            if self.dropout is not None:
                # One stream per (step, layer): seed[1] is the step, i < num_layers.
                layer_seed = tf.stack([seed[0], seed[1] * self.num_layers + i])
                h, cache_drop = self.dropout.forward(h, training=training, seed=layer_seed)
            caches.append((cache_fc, cache_bn, cache_relu, cache_drop))
        L = self.num_layers
        scores, cache_out = Linear.forward(h, {"w": self.params[f"W{L}"],
                                               "b": self.params[f"b{L}"]})
        if not training:
            return scores

        data_loss, cache_loss = self.loss_layer.forward(scores, y)
        weights = [self.params[f"W{i}"] for i in range(1, L + 1)]
        reg_loss = self.reg * tf.add_n([tf.reduce_sum(tf.square(w)) for w in weights])
        loss = data_loss + tf.cast(reg_loss, self.dtype)

        # ------------------------------------------------------------------------ backward
        grads = {}
        dscores = self.loss_layer.backward(1.0, cache_loss)["x"]
        g = Linear.backward(dscores, cache_out)
        grads[f"W{L}"], grads[f"b{L}"] = g["w"], g["b"]
        dh = g["x"]
        for i in range(L - 1, 0, -1):
            cache_fc, cache_bn, cache_relu, cache_drop = caches[i - 1]
            if self.dropout is not None:
                dh = Dropout.backward(dh, cache_drop)["x"]
            dh = ReLU.backward(dh, cache_relu)["x"]
            if self.batchnorm is not None:
                g = BatchNorm.backward(dh, cache_bn)
                grads[f"gamma{i}"], grads[f"beta{i}"] = g["gamma"], g["beta"]
                dh = g["x"]
            g = Linear.backward(dh, cache_fc)
            grads[f"W{i}"], grads[f"b{i}"] = g["w"], g["b"]
            dh = g["x"]
        for i in range(1, L + 1):
            grads[f"W{i}"] += 2.0 * self.reg * self.params[f"W{i}"]
        return loss, grads

    def scores(self, X):
        return self.loss(X)

    # ---------------------------------------------------------------------------- params

    def get_weights(self) -> dict[str, np.ndarray]:
        """Parameters and batch-norm running statistics as numpy arrays (for checkpoints)."""
        out = {k: v.numpy() for k, v in self.params.items()}
        out.update({k: v.numpy() for k, v in self.bn_state.items()})
        return out

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        for k, v in {**self.params, **self.bn_state}.items():
            v.assign(np.asarray(weights[k], v.dtype.as_numpy_dtype))

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.params.values()))


class TwoLayerNet(FullyConnectedNet):
    """Linear - ReLU - Linear - softmax, parameters W1, b1, W2, b2 (the report's TwoLayerNet)."""

    def __init__(self, input_dim: int = 3 * 32 * 32, hidden_dim: int = 100,
                 num_classes: int = 10, *, weight_scale: float = 1e-3, reg: float = 0.0,
                 dtype=tf.float32, seed: int = 0):
        super().__init__((hidden_dim,), input_dim, num_classes, reg=reg,
                         weight_scale=weight_scale, dtype=dtype, seed=seed)
