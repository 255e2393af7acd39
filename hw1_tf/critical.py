"""Critical points of many small dense nets at once: per-member losses, gradients and exact
Hessians of stacked parameter vectors (float64), and second-order steps that drive ||grad L||
to zero, vectorised over members with per-member masks.

`MemberLosses` evaluates M parameter vectors theta (M, P) of one dense architecture on one
shared dataset (the exact full-batch mean loss of each row, through `population.stacked_logits`,
so a row is a population member). Row i's loss depends on row i only, so the rows of the
stacked gradient are the members' gradients and `batch_jacobian` of it gives every member's
Hessian (M, P, P) in one computation. The same function evaluates many perturbations of one
member (`hessian.perturbation_ratio`'s batched loss).

`find_critical_points` runs, from given points, one of
  * "newton": the minimum-norm Newton step -H^+ g (eigenvalues below `rcond * max|lambda|`
    dropped), scaled by a batched backtracking search on ||g||;
  * "lm": Levenberg-Marquardt on the residual g(theta) = 0 (its Jacobian is H, symmetric):
    step -(H^2 + mu I)^{-1} H g, the damping mu chosen per member and iteration from a ladder
    of trial values as the one that lowers ||g|| most. It is Gauss-Newton on ||g||^2 / 2, which
    is far better behaved than Newton where H is nearly singular: directions of tiny |lambda|
    are damped rather than inverted.
Both use one eigendecomposition of H per iteration; the trial steps then cost one batched
gradient evaluation each. A step is taken only where it lowers ||g||, so ||g|| never rises;
a member stops once ||g|| <= `stop_grad_norm` or when no trial lowers it (stalled).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hw1_tf import models, population, training
from hw1_tf.errors import Hw1Error

METHODS = ("grad_norm", "newton", "lm")  # grad_norm: the population's switch to ||grad L||^2


class MemberLosses:
    """Full-batch mean losses of stacked parameter vectors (M, P) of one dense `spec` on (x, y),
    in `dtype` (float64 by default), with gradients and exact Hessians per row.

    The loss is the training core's per-example loss (`training.loss_and_metrics`: MSE for
    real-valued y, cross-entropy from logits for integer labels), averaged over all examples.
    """

    def __init__(self, spec: models.ModelSpec, x: np.ndarray, y: np.ndarray,
                 dtype: str = "float64", jit_compile: bool = True):
        if spec.kind != "dense":
            raise Hw1Error(f"model {spec.name}: critical points need a dense model, "
                           f"got {spec.kind!r}")
        self.spec = spec
        self.input_shape = tuple(x.shape[1:])
        integer_labels = np.issubdtype(np.asarray(y).dtype, np.integer)
        outputs = int(np.max(y)) + 1 if integer_labels else int(np.prod(y.shape[1:]) or 1)
        self.shapes = population.dense_shapes(spec, self.input_shape, outputs)
        self.sizes = [math.prod(s) for s in self.shapes]
        self.num_params = int(sum(self.sizes))
        self.dtype = tf.as_dtype(dtype)
        self.loss_object = training.loss_and_metrics(outputs if integer_labels else 0)[0]
        self.activation = keras.activations.get(spec.activation)
        self.x = tf.constant(np.asarray(x, self.dtype.as_numpy_dtype))
        self.y = tf.constant(y if integer_labels else np.asarray(y, self.dtype.as_numpy_dtype))
        self.jit_compile = jit_compile
        signature = [tf.TensorSpec([None, self.num_params], self.dtype)]
        self._losses = tf.function(self._losses_of, input_signature=signature,
                                   jit_compile=jit_compile)
        self._grads = tf.function(self._grads_of, input_signature=signature,
                                  jit_compile=jit_compile)
        # batch_jacobian is a pfor loop over P rows: XLA compiles it too, but the compile time
        # grows with P; it runs once per iteration, so plain graph mode is measured below
        self._hessians = tf.function(self._hessians_of, input_signature=signature)

    def flatten(self, weights: Sequence[np.ndarray]) -> np.ndarray:
        """Stacked per-layer weights [(M, *shape), ...] -> (M, P)."""
        m = weights[0].shape[0]
        return np.concatenate([np.reshape(w, (m, -1)) for w in weights], axis=1).astype(
            self.dtype.as_numpy_dtype)

    def unflatten(self, theta):
        m = tf.shape(theta)[0]
        parts = tf.split(theta, self.sizes, axis=1)
        return [tf.reshape(p, tf.concat([[m], s], 0)) for p, s in zip(parts, self.shapes)]

    def _losses_of(self, theta):
        out = population.stacked_logits(self.unflatten(theta), self.x, self.activation,
                                        self.input_shape)
        # the labels once per row: Keras' loss squeezes or expands mismatched ranks otherwise
        y = tf.broadcast_to(self.y[None], tf.concat([tf.shape(theta)[:1], tf.shape(self.y)], 0))
        per_example = self.loss_object.call(y, out)  # (M, B)
        return tf.reduce_mean(tf.cast(per_example, self.dtype), axis=-1)

    def _grads_of(self, theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            total = tf.reduce_sum(self._losses_of(theta))
        return tape.gradient(total, theta)  # row i: the gradient of member i's own loss

    def _hessians_of(self, theta):
        with tf.GradientTape() as outer:
            outer.watch(theta)
            g = self._grads_of(theta)
        return outer.batch_jacobian(g, theta)

    def _run(self, fn, theta, chunk: int | None = None) -> np.ndarray:
        theta = np.asarray(theta, self.dtype.as_numpy_dtype)
        if chunk is not None and len(theta) > chunk:
            return np.concatenate([self._run(fn, theta[i:i + chunk])
                                   for i in range(0, len(theta), chunk)])
        # rows padded to a power of two: XLA compiles once per shape, and the number of rows
        # changes from call to call (members stop, trial steps, perturbation chunks)
        rows = len(theta)
        padded = 1 << max(0, rows - 1).bit_length()
        if padded > rows:
            theta = np.concatenate([theta, np.repeat(theta[-1:], padded - rows, axis=0)])
        return fn(tf.constant(theta)).numpy()[:rows]

    def losses(self, theta, chunk: int | None = 4096) -> np.ndarray:
        """(M,) losses of the rows of theta (M, P)."""
        return self._run(self._losses, theta, chunk)

    def gradients(self, theta, chunk: int | None = 4096) -> np.ndarray:
        """(M, P) gradients, row i of member i's loss."""
        return self._run(self._grads, theta, chunk)

    def hessians(self, theta, chunk: int | None = 32) -> np.ndarray:
        """(M, P, P) exact Hessians, symmetrised (the two AD orders agree only to rounding)."""
        h = self._run(self._hessians, theta, chunk)
        return (h + np.swapaxes(h, 1, 2)) / 2


@dataclasses.dataclass
class CriticalSettings:
    method: str = "lm"  # "newton" or "lm"
    max_iterations: int = 100
    stop_grad_norm: float = 1e-9  # a member stops at or below this ||g||
    rcond: float = 1e-10  # newton: eigenvalues below rcond * max|lambda| are dropped
    trials: int = 8  # trial step scales (newton) / damping values (lm) per iteration
    initial_damping: float = 1e-3  # lm: mu / max(lambda^2) at the start


def _newton_coefficients(lam, gt, scales, rcond):
    """Eigenbasis coefficients (M, K, P) of the min-norm Newton step -H^+ g times each scale."""
    cut = rcond * np.max(np.abs(lam), axis=1, keepdims=True)
    inv = np.where(np.abs(lam) > cut, 1.0 / np.where(lam == 0, 1.0, lam), 0.0)
    return -scales[None, :, None] * (inv * gt)[:, None, :]


def _lm_coefficients(lam, gt, mus):
    """Eigenbasis coefficients (M, K, P) of -(H^2 + mu I)^{-1} H g for each member's K mus."""
    return -(lam * gt)[:, None, :] / (lam[:, None, :] ** 2 + mus[:, :, None])


def find_critical_points(losses, theta0: np.ndarray,
                         settings: CriticalSettings) -> tuple[np.ndarray, dict]:
    """Drives ||grad L|| of every row of theta0 (M, P) towards zero. `losses`: a MemberLosses, or
    anything with gradients(theta (M, P)) -> (M, P) and hessians(theta) -> (M, P, P), row by
    row. Returns the end points and a record: per-iteration ||g|| (iterations+1, M), elapsed
    seconds per iteration, the
    iteration each member stopped at (-1: still moving at the end) and why."""
    if settings.method not in ("newton", "lm"):
        raise Hw1Error(f"unknown second-order method {settings.method!r}; choose newton or lm")
    theta = np.array(theta0, np.float64)
    m, p = theta.shape
    k = settings.trials
    g = losses.gradients(theta)
    norms = np.linalg.norm(g, axis=1)
    history, seconds = [norms.copy()], [0.0]
    active = norms > settings.stop_grad_norm
    stopped_at = np.where(active, -1, 0)
    stalled = np.zeros(m, bool)
    mu = None
    start = time.perf_counter()
    for it in range(1, settings.max_iterations + 1):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        lam, vec = eigh(losses.hessians(theta[idx]))
        gt = np.einsum("mpq,mp->mq", vec, g[idx])
        if settings.method == "newton":
            coeff = _newton_coefficients(lam, gt, 0.5 ** np.arange(k), settings.rcond)
        else:
            scale = np.max(lam ** 2, axis=1)
            if mu is None:
                mu = np.full(m, np.nan)
            fresh = np.isnan(mu[idx])
            mu[idx[fresh]] = settings.initial_damping * scale[fresh]
            # the ladder spans mu * 10^-3 .. mu * 10^(k-4): both faster and safer than mu
            ladder = mu[idx, None] * 10.0 ** (np.arange(k) - 3.0)
            ladder = np.clip(ladder, 1e-30 * scale[:, None], None)
            coeff = _lm_coefficients(lam, gt, ladder)
        steps = np.einsum("mpq,mkq->mkp", vec, coeff)  # back from the eigenbasis
        trial = theta[idx, None, :] + steps  # (A, K, P)
        g_trial = losses.gradients(trial.reshape(-1, p)).reshape(len(idx), k, p)
        n_trial = np.linalg.norm(g_trial, axis=2)
        n_trial = np.where(np.isfinite(n_trial), n_trial, np.inf)
        best = np.argmin(n_trial, axis=1)
        best_norm = n_trial[np.arange(len(idx)), best]
        better = best_norm < norms[idx]
        take = idx[better]
        theta[take] = trial[better, best[better]]
        g[take] = g_trial[better, best[better]]
        norms[take] = best_norm[better]
        if settings.method == "lm":
            mu[take] = ladder[better, best[better]]
            mu[idx[~better]] = ladder[~better, -1]  # no trial helped: damp harder next time
        newly_stalled = idx[~better] if settings.method == "newton" else \
            idx[~better & (ladder[:, -1] >= 1e6 * scale)]
        stalled[newly_stalled] = True
        done = active & ((norms <= settings.stop_grad_norm) | stalled)
        stopped_at[done & (stopped_at < 0)] = it
        active &= ~done
        history.append(norms.copy())
        seconds.append(time.perf_counter() - start)
        if it % 10 == 0 or not active.any():
            logging.info("%s iteration %d: %d/%d members moving, ||grad L|| median %.3g, "
                         "max %.3g, %.1f s", settings.method, it, int(active.sum()), m,
                         float(np.median(norms)), float(np.max(norms)), seconds[-1])
    record = {"grad_norm": np.array(history), "seconds": np.array(seconds),
              "stopped_at_iteration": stopped_at, "stalled": stalled}
    return theta, record


def eigh(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched symmetric eigendecomposition (ascending) through TensorFlow: numpy's OpenBLAS
    threads measured 20x slower than TF's kernel on 100 141x141 matrices on a busy 2-core
    machine (5.5 s vs 0.28 s)."""
    lam, vec = tf.linalg.eigh(tf.constant(matrices))
    return lam.numpy(), vec.numpy()


def eigvalsh(matrices: np.ndarray) -> np.ndarray:
    """Batched symmetric eigenvalues (ascending), through TensorFlow (see `eigh`)."""
    return tf.linalg.eigvalsh(tf.constant(matrices)).numpy()


def norm_table(grad_norms, thresholds: Sequence[float]) -> list[tuple[float, int]]:
    """(threshold, how many of `grad_norms` are at or below it) for each threshold."""
    g = np.asarray(grad_norms, np.float64)
    return [(float(t), int(np.sum(g <= t))) for t in thresholds]
