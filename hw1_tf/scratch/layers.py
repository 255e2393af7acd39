"""Layers and losses with explicit forward and hand-written backward passes (no autodiff).

Every layer has `forward(x, params) -> (out, cache)` and `backward(dout, cache) -> grads`, where
`grads` holds `"x"` (the gradient w.r.t. the input) and one entry per learnable parameter of
`params`. The ops are TensorFlow ops, so one code path serves both uses:
  * float64, eagerly, for the centered-difference gradient checks (`gradcheck`);
  * float32 inside a `tf.function` (optionally XLA-compiled) for training (`Solver`).

Layers without hyper-parameters are stateless (`Linear.forward(x, params)` works on the class);
`Dropout(p)` and `BatchNorm(momentum, eps)` are configured once and take the mode (and the
dropout seed / batch-norm running statistics) as keyword arguments.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

Params = dict[str, Any]
Grads = dict[str, tf.Tensor]


def _flatten(x: tf.Tensor) -> tf.Tensor:
    """(N, d1, ..., dk) -> (N, d1 * ... * dk)."""
    return tf.reshape(x, [tf.shape(x)[0], -1])


class Linear:
    """Affine layer: out = x.reshape(N, D) @ w + b, with w (D, M) and b (M,)."""

    param_names = ("w", "b")

    @staticmethod
    def forward(x, params: Params):
        w, b = params["w"], params["b"]
        out = tf.matmul(_flatten(x), w) + b
        return out, (x, w)

    @staticmethod
    def backward(dout, cache) -> Grads:
        x, w = cache
        dx = tf.reshape(tf.matmul(dout, w, transpose_b=True), tf.shape(x))
        dw = tf.matmul(_flatten(x), dout, transpose_a=True)
        db = tf.reduce_sum(dout, axis=0)
        return {"x": dx, "w": dw, "b": db}


Affine = Linear


class ReLU:
    """out = max(0, x); the gradient passes where x > 0 (0 at x <= 0, as in the report)."""

    param_names = ()

    @staticmethod
    def forward(x, params: Params | None = None):
        return tf.maximum(x, tf.zeros_like(x)), x

    @staticmethod
    def backward(dout, cache) -> Grads:
        x = cache
        return {"x": tf.where(x > 0, dout, tf.zeros_like(dout))}


class LinearReLU:
    """The "sandwich" layer: Linear followed by ReLU."""

    param_names = Linear.param_names

    @staticmethod
    def forward(x, params: Params):
        a, fc_cache = Linear.forward(x, params)
        out, relu_cache = ReLU.forward(a)
        return out, (fc_cache, relu_cache)

    @staticmethod
    def backward(dout, cache) -> Grads:
        fc_cache, relu_cache = cache
        da = ReLU.backward(dout, relu_cache)["x"]
        return Linear.backward(da, fc_cache)


class Dropout:
    """Inverted dropout: in training each unit is zeroed with probability `p` and the survivors
    are scaled by 1 / (1 - p), so test mode is the identity. Masks come from
    `tf.random.stateless_uniform` (Philox) with the given seed: the same seed gives the same mask
    eagerly and in a `tf.function`; under XLA too, but XLA's lowering of the generator draws
    other numbers from a seed it receives as a tensor, so an XLA-trained net sees different
    (equally distributed, equally reproducible) masks than an eager one.
    """

    param_names = ()

    def __init__(self, p: float):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x, params: Params | None = None, *, training: bool = False, seed=(0, 0)):
        if not training or self.p == 0.0:
            return tf.identity(x), None
        keep = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=x.dtype,
                                           alg="philox") >= self.p
        mask = tf.cast(keep, x.dtype) / tf.cast(1.0 - self.p, x.dtype)
        return x * mask, mask

    @staticmethod
    def backward(dout, cache) -> Grads:
        mask = cache
        return {"x": dout if mask is None else dout * mask}


class BatchNorm:
    """Batch normalisation over the batch axis of (N, D) inputs, with learnable gamma, beta.

    Training normalises with the batch mean and (biased) variance and returns the updated
    running statistics in `cache["state"]` (running = momentum * running + (1 - momentum) *
    batch); test mode normalises with the running statistics passed as `state`.
    """

    param_names = ("gamma", "beta")

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5):
        self.momentum = float(momentum)
        self.eps = float(eps)

    def forward(self, x, params: Params, *, training: bool = False, state=None):
        gamma, beta = params["gamma"], params["beta"]
        if training:
            mean = tf.reduce_mean(x, axis=0)
            var = tf.reduce_mean(tf.square(x - mean), axis=0)
        else:
            if state is None:
                raise ValueError("BatchNorm in test mode needs state=(running_mean, running_var)")
            mean, var = state
        inv_std = tf.math.rsqrt(var + self.eps)
        x_hat = (x - mean) * inv_std
        out = gamma * x_hat + beta
        cache = {"x_hat": x_hat, "inv_std": inv_std, "gamma": gamma, "training": training}
        if training:
            m = tf.cast(self.momentum, x.dtype)
            if state is None:
                cache["state"] = (mean, var)
            else:
                cache["state"] = (m * state[0] + (1 - m) * mean, m * state[1] + (1 - m) * var)
        return out, cache

    @staticmethod
    def backward(dout, cache) -> Grads:
        x_hat, inv_std, gamma = cache["x_hat"], cache["inv_std"], cache["gamma"]
        dgamma = tf.reduce_sum(dout * x_hat, axis=0)
        dbeta = tf.reduce_sum(dout, axis=0)
        dx_hat = dout * gamma
        if not cache["training"]:  # the statistics are constants
            return {"x": dx_hat * inv_std, "gamma": dgamma, "beta": dbeta}
        n = tf.cast(tf.shape(dout)[0], dout.dtype)
        # The simplified form of the computational-graph derivation (mean and var depend on x).
        dx = inv_std / n * (n * dx_hat - tf.reduce_sum(dx_hat, axis=0)
                            - x_hat * tf.reduce_sum(dx_hat * x_hat, axis=0))
        return {"x": dx, "gamma": dgamma, "beta": dbeta}


# ------------------------------------------------------------------------------------ losses


class SoftmaxLoss:
    """Mean cross-entropy of softmax(scores) against integer labels y."""

    @staticmethod
    def forward(scores, y):
        y = tf.cast(y, tf.int32)
        shifted = scores - tf.reduce_max(scores, axis=1, keepdims=True)
        log_probs = shifted - tf.reduce_logsumexp(shifted, axis=1, keepdims=True)
        picked = tf.gather(log_probs, y, axis=1, batch_dims=1)
        loss = -tf.reduce_mean(picked)
        return loss, (log_probs, y)

    @staticmethod
    def backward(dloss, cache) -> Grads:
        log_probs, y = cache
        n = tf.cast(tf.shape(log_probs)[0], log_probs.dtype)
        onehot = tf.one_hot(y, tf.shape(log_probs)[1], dtype=log_probs.dtype)
        return {"x": tf.cast(dloss, log_probs.dtype) * (tf.exp(log_probs) - onehot) / n}


class SVMLoss:
    """Mean multiclass hinge loss: sum over j != y of max(0, s_j - s_y + 1)."""

    @staticmethod
    def forward(scores, y):
        y = tf.cast(y, tf.int32)
        correct = tf.gather(scores, y, axis=1, batch_dims=1)[:, None]
        onehot = tf.one_hot(y, tf.shape(scores)[1], dtype=scores.dtype)
        margins = tf.maximum(tf.zeros_like(scores), scores - correct + 1.0) * (1.0 - onehot)
        loss = tf.reduce_sum(margins) / tf.cast(tf.shape(scores)[0], scores.dtype)
        return loss, (margins, onehot)

    @staticmethod
    def backward(dloss, cache) -> Grads:
        margins, onehot = cache
        n = tf.cast(tf.shape(margins)[0], margins.dtype)
        positive = tf.cast(margins > 0, margins.dtype)
        dx = positive - onehot * tf.reduce_sum(positive, axis=1, keepdims=True)
        return {"x": tf.cast(dloss, margins.dtype) * dx / n}


LOSSES = {"softmax": SoftmaxLoss, "svm": SVMLoss}


def softmax_loss(scores, y):
    """(loss, dscores) in one call, as the report's helper."""
    loss, cache = SoftmaxLoss.forward(scores, y)
    return loss, SoftmaxLoss.backward(1.0, cache)["x"]


def svm_loss(scores, y):
    loss, cache = SVMLoss.forward(scores, y)
    return loss, SVMLoss.backward(1.0, cache)["x"]
