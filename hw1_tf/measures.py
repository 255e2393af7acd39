"""Generalization measures of a trained classifier: input sensitivities, three sharpness
definitions, norm- and margin-based measures, PAC-Bayes flatness, and Kendall's tau ranking.

Every Hessian quantity goes through `hw1_tf.hessian` (a `FlatLoss`: the loss of a flat parameter
vector over a fixed example set). The measures:

  * `input_sensitivities`: per example, ||d loss / d x||_F (the slides' sensitivity) and
    ||d softmax / d x||_F (Novak et al. 2018), from one batched tape (`batch_jacobian`).
  * `slides_sharpness`: ||H||_2 eps^2 / (2 (1 + L)), the second-order value of the slides'
    ball sharpness max_{||d|| <= eps} (L(theta + d) - L(theta)) / (1 + L), with ||H||_2 either
    the block-diagonal estimate (`FlatLoss.block_diagonal_hessian`, what `tf.hessians` gives)
    or the whole-model norm (`hessian_norm`: eigsh on Hessian-vector products).
  * `keskar_sharpness`: Keskar et al. 2017's definition, the largest loss in the box
    |d_i| <= eps (|theta_i| + 1) relative to 1 + L, maximised with L-BFGS-B (a reference
    implementation: the paper's code was never released; see its docstring).
  * norms (`parameter_norms`, `spectral_norms`, `path_norm`), margins (`margins`,
    `margin_measures`), `pac_bayes_sigma` (largest Gaussian weight noise keeping the loss
    within a bound, by bisection), and `kendall_tau`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import keras
import numpy as np
import scipy.optimize
import scipy.stats
import tensorflow as tf
from absl import logging

from hw1_tf import hessian
from hw1_tf.errors import Hw1Error

SLIDES_EPSILON = 1e-4  # the slides' radius
KESKAR_EPSILON = 1e-3  # Keskar et al. 2017 report eps = 1e-3 and 5e-4


# ------------------------------------------------------------------------ evaluation


def logits_of(network: keras.Model, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """The network's outputs on `x` (inference mode), float64 numpy."""
    out = [np.asarray(network(x[i:i + batch_size], training=False), np.float64)
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of integer labels from logits (stable log-softmax)."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def evaluate(network: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Exact mean loss, accuracy and error of the final weights (Keras' epoch metrics average
    over batches while the weights still move)."""
    logits = logits_of(network, x)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    return {"loss": float(np.mean(cross_entropy(logits, y))), "accuracy": accuracy,
            "error": 1.0 - accuracy}


# ---------------------------------------------------------------------- sensitivities


def _sensitivity_function(network: keras.Model) -> Callable:
    loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    @tf.function(reduce_retracing=True)
    def batch(xb, yb):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xb)
            logits = network(xb, training=False)
            probs = tf.nn.softmax(logits)
            # the sum of per-example losses: its input gradient is each example's own gradient
            loss = tf.reduce_sum(loss_object(yb, logits))
        grad = tape.gradient(loss, xb)
        jac = tape.batch_jacobian(probs, xb)  # (batch, classes, *input)
        del tape
        grad_norm = tf.sqrt(tf.reduce_sum(tf.reshape(grad, [tf.shape(xb)[0], -1]) ** 2, 1))
        jac_norm = tf.sqrt(tf.reduce_sum(tf.reshape(jac, [tf.shape(xb)[0], -1]) ** 2, 1))
        return grad_norm, jac_norm

    return batch


def input_sensitivities(network: keras.Model, x: np.ndarray, y: np.ndarray,
                        batch_size: int = 500, strategy=None) -> tuple[np.ndarray, np.ndarray]:
    """Per example: (||d loss_i / d x_i||_F, ||d softmax(f(x_i)) / d x_i||_F); each batch of
    `batch_size` examples split evenly across the replicas of `strategy` (default: the
    current one; `network` must have been built in its scope)."""
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    fn = _sensitivity_function(network)
    run = tf.function(lambda xs, ys: strategy.run(fn, args=(xs, ys)), reduce_retracing=True)
    grads, jacs = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        # contiguous equal shards, zero-padded at the end: replica k holds rows
        # [k*share, (k+1)*share), so gathering the replicas' rows in order restores the batch
        share = -(-len(xb) // replicas)
        pad = share * replicas - len(xb)
        shards = [np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
                  for a in (xb, yb)]
        args = [strategy.experimental_distribute_values_from_function(
            lambda ctx, a=a: tf.constant(a[ctx.replica_id_in_sync_group * share:][:share]))
            for a in shards]
        g, j = (strategy.gather(v, axis=0).numpy()[:len(xb)] for v in run(*args))
        grads.append(g)
        jacs.append(j)
    return np.concatenate(grads).astype(np.float64), np.concatenate(jacs).astype(np.float64)


# ------------------------------------------------------------------------- sharpness


def slides_sharpness(hessian_norm_value: float, loss: float,
                     epsilon: float = SLIDES_EPSILON) -> float:
    """||H||_2 eps^2 / (2 (1 + L)): the slides' sharpness near a critical point."""
    return float(hessian_norm_value) * epsilon ** 2 / (2.0 * (1.0 + float(loss)))


@dataclasses.dataclass
class HessianNorm:
    top: float  # largest algebraic eigenvalue
    bottom: float  # smallest algebraic eigenvalue
    matvecs: int

    @property
    def norm(self) -> float:
        return abs(self.top) if math.isnan(self.bottom) else max(abs(self.top),
                                                                   abs(self.bottom))


def hessian_norm(op, tol: float = 1e-4, seed: int = 0, bottom_tol: float = 0.1,
                 maxiter: int = 100) -> HessianNorm:
    """||H||_2 of a symmetric operator (a `FlatLoss.operator()`): both algebraic ends by
    ARPACK Lanczos (hessian.top_eigenvalues), the norm being the larger magnitude.

    The negative end of a trained net's Hessian is a cluster of small eigenvalues on which
    Lanczos converges slowly (measured: 201 products at tol 1e-4 against 21 at 0.1 for an
    error of 2%), and it only matters when its magnitude rivals the top; so it is found to
    `bottom_tol` first and refined to `tol` only when |bottom| > top / 2. `maxiter` caps
    ARPACK's restarts (an ill-conditioned rescaled net otherwise ran for minutes)."""
    top, n_top = hessian.top_eigenvalues(op, 1, "LA", tol=tol, seed=seed, maxiter=maxiter)
    bottom, n_bottom = hessian.top_eigenvalues(op, 1, "SA", tol=max(tol, bottom_tol),
                                               seed=seed, maxiter=maxiter)
    if len(top) == 0:
        raise Hw1Error(f"eigsh did not converge in {maxiter} restarts; raise the tolerance")
    if len(bottom) == 0:
        # ARPACK's test is |residual| <= tol |lambda|: an end it cannot resolve within
        # `maxiter` restarts is tiny against the top (seen on rescaled nets, ||H|| ~ 5e6)
        logging.warning("eigsh: the negative end did not converge; ||H||_2 taken as the top")
        return HessianNorm(float(top[0]), math.nan, n_top + n_bottom)
    if abs(bottom[0]) > 0.5 * abs(top[0]) and bottom_tol > tol:
        refined, more = hessian.top_eigenvalues(op, 1, "SA", tol=tol, seed=seed,
                                                maxiter=maxiter)
        n_bottom += more
        bottom = refined if len(refined) else bottom  # unconverged: keep the loose value
    return HessianNorm(float(top[0]), float(bottom[0]), n_top + n_bottom)


@dataclasses.dataclass
class KeskarResult:
    sharpness: float  # (max L - L) / (1 + L), without Keskar's factor 100
    loss: float  # L(theta)
    max_loss: float  # the largest loss found in the box
    perturbation: np.ndarray  # the maximiser d (theta + d)
    bound: np.ndarray  # the box half-widths eps (|theta_i| + 1)
    evaluations: int


def keskar_box(theta: np.ndarray, epsilon: float) -> np.ndarray:
    """Half-widths of Keskar et al.'s box C_eps: eps (|theta_i| + 1) (A = identity)."""
    return epsilon * (np.abs(np.asarray(theta, np.float64)) + 1.0)


def keskar_sharpness(loss_fn: Callable[[np.ndarray], float],
                     grad_fn: Callable[[np.ndarray], np.ndarray], theta: np.ndarray,
                     epsilon: float = KESKAR_EPSILON, *, maxiter: int = 10, restarts: int = 2,
                     seed: int = 0) -> KeskarResult:
    """Keskar et al. 2017 (ICLR, "On large-batch training ... sharp minima"), their eq. (3)
    with A = I (the full space):

        phi(theta, eps) = (max_{d in C_eps} L(theta + d) - L(theta)) / (1 + L(theta)),
        C_eps = {d : |d_i| <= eps (|theta_i| + 1)},

    maximised, as the paper says, by L-BFGS-B (scipy.optimize.minimize on -L with the box as
    `bounds`, gradients from `grad_fn`), `maxiter` iterations (the paper: 10). The paper
    multiplies by 100; this returns the plain ratio, the units of the slides' formula.

    The authors never published their code, so two choices are ours: the starting points
    (d = 0, where the loss gradient leads off a non-stationary point, then `restarts - 1`
    seeded uniform points in the box, which also leave an exact critical point) and keeping
    the best maximiser over starts. L-BFGS-B projects every iterate onto the bounds, so the
    maximiser is inside the box by construction (and checked).
    """
    theta = np.asarray(theta, np.float64)
    bound = keskar_box(theta, epsilon)
    loss0 = float(loss_fn(theta))
    count = [0]

    def negative(d):
        count[0] += 1
        point = theta + d
        return -float(loss_fn(point)), -np.asarray(grad_fn(point), np.float64)

    rng = np.random.RandomState(seed)
    starts = [np.zeros_like(theta)] + [rng.uniform(-bound, bound)
                                       for _ in range(max(restarts, 1) - 1)]
    best_loss, best_d = loss0, np.zeros_like(theta)
    bounds = list(zip(-bound, bound))
    for start in starts:
        result = scipy.optimize.minimize(negative, start, jac=True, method="L-BFGS-B",
                                         bounds=bounds, options={"maxiter": maxiter})
        d = np.clip(result.x, -bound, bound)  # already feasible; clip guards rounding only
        value = float(loss_fn(theta + d))
        if value > best_loss:
            best_loss, best_d = value, d
    if np.any(np.abs(best_d) > bound * (1 + 1e-12)):
        raise Hw1Error("L-BFGS-B left the sharpness box (a scipy bug)")
    return KeskarResult((best_loss - loss0) / (1.0 + loss0), loss0, best_loss, best_d, bound,
                        count[0])


# ----------------------------------------------------------------------------- norms


def _is_bias(variable) -> bool:
    return len(variable.shape) == 1


def weight_matrices(network: keras.Model) -> list[np.ndarray]:
    """The kernels as matrices (fan-in, fan-out); a conv kernel (k, k, c_in, c_out) is reshaped
    to (k k c_in, c_out), the usual proxy for its operator (Jiang et al. do the same)."""
    out = []
    for v in network.trainable_variables:
        if not _is_bias(v):
            w = np.asarray(v.numpy(), np.float64)
            out.append(w.reshape(-1, w.shape[-1]))
    return out


def spectral_norms(network: keras.Model) -> np.ndarray:
    """||W_i||_2 of each kernel: the largest singular value (tf.linalg.svd)."""
    return np.array([float(tf.linalg.svd(tf.constant(w), compute_uv=False)[0])
                     for w in weight_matrices(network)])


def flat_weights(network: keras.Model) -> np.ndarray:
    return np.concatenate([np.ravel(v.numpy()) for v in network.trainable_variables]).astype(
        np.float64)


def parameter_norms(network: keras.Model, initial: np.ndarray | None = None) -> dict[str, float]:
    """||theta||_2, the product of the kernels' Frobenius norms, the distance from the
    initial weights ||theta - theta_0||_2 (NaN without them), and the spectral-norm product."""
    theta = flat_weights(network)
    mats = weight_matrices(network)
    distance = (float(np.linalg.norm(theta - np.asarray(initial, np.float64)))
                if initial is not None else math.nan)
    return {"param_norm": float(np.linalg.norm(theta)),
            "frobenius_product": float(np.prod([np.linalg.norm(w) for w in mats])),
            "distance_from_init": distance,
            "spectral_product": float(np.prod(spectral_norms(network)))}


def path_norm(network: keras.Model) -> float:
    """The l2 path norm (Neyshabur et al. 2015; Jiang et al.'s f_{w^2}(1)):
    sqrt(sum over input-output paths of the product of squared weights on the path),
    computed as the network with squared kernels and zero biases applied to an all-ones input
    (ReLU is the identity on the non-negative values that flow). Biases are not paths."""
    params = [tf.zeros_like(v.value) if _is_bias(v) else tf.square(v.value)
              for v in network.trainable_variables]
    non_trainable = [v.value for v in network.non_trainable_variables]
    ones = tf.ones((1,) + tuple(network.input_shape[1:]), network.trainable_variables[0].dtype)
    out, _ = network.stateless_call(params, non_trainable, ones, training=False)
    return float(np.sqrt(np.sum(np.asarray(out, np.float64))))


# ---------------------------------------------------------------------------- margins


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per example: the true class's logit minus the largest other logit."""
    true = logits[np.arange(len(labels)), labels]
    others = logits.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return true - others.max(axis=1)


def margin_measures(network: keras.Model, x: np.ndarray, y: np.ndarray,
                    percentile: float = 10.0) -> dict[str, float]:
    """Jiang et al.'s margin measures with gamma the `percentile`-th percentile of the training
    margins (robust to a few misclassified examples; NaN when gamma <= 0):
      inverse_margin             1 / gamma^2
      spectral_margin_bound      prod ||W||_2^2 sum ||W||_F^2 / ||W||_2^2 / gamma^2 (the
                                 spectrally-normalised margin bound, Bartlett et al. 2017)
      inverse_normalized_margin  prod ||W||_2 / gamma (1 / the normalised margin)."""
    gamma = float(np.percentile(margins(logits_of(network, x), y), percentile))
    spec = spectral_norms(network)
    fro = np.array([np.linalg.norm(w) for w in weight_matrices(network)])
    if gamma <= 0:
        nan = math.nan
        return {"margin": gamma, "inverse_margin": nan, "spectral_margin_bound": nan,
                "inverse_normalized_margin": nan}
    return {"margin": gamma, "inverse_margin": 1.0 / gamma ** 2,
            "spectral_margin_bound": float(np.prod(spec ** 2) * np.sum(fro ** 2 / spec ** 2)
                                           / gamma ** 2),
            "inverse_normalized_margin": float(np.prod(spec) / gamma)}


# ----------------------------------------------------------------------------- PAC-Bayes


def pac_bayes_sigma(batched_loss: Callable[[np.ndarray], np.ndarray], theta: np.ndarray,
                    loss: float, *, increase: float = 0.1, samples: int = 16,
                    lower: float = 1e-6, upper: float = 1.0, steps: int = 20,
                    seed: int = 0) -> float:
    """The largest sigma with mean_u L(theta + sigma u) - L(theta) <= `increase`, u ~ N(0, I)
    (Jiang et al.'s PAC-Bayes flatness; their measure is 1 / sigma^2), by bisection on
    log sigma. The same `samples` draws u serve every sigma (common random numbers), so the
    mean loss is a smooth function of sigma and the bisection is consistent.
    `batched_loss` maps (S, n) parameter vectors to S losses (FlatLoss.batched_loss)."""
    theta = np.asarray(theta)
    u = np.random.RandomState(seed).standard_normal((samples, theta.size)).astype(theta.dtype)

    def rise(sigma):
        return float(np.mean(batched_loss(theta[None] + sigma * u))) - loss

    if rise(upper) <= increase:
        return upper
    if rise(lower) > increase:
        return lower
    lo, hi = math.log(lower), math.log(upper)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if rise(math.exp(mid)) <= increase:
            lo = mid
        else:
            hi = mid
    return math.exp(lo)


# ---------------------------------------------------------------------------- ranking


def kendall_tau(measure: Sequence[float], gap: Sequence[float]) -> float:
    """Kendall's tau-b of a measure against a generalization gap over models (NaN entries
    dropped; NaN when fewer than 3 models remain or a side is constant)."""
    m, g = np.asarray(measure, np.float64), np.asarray(gap, np.float64)
    keep = np.isfinite(m) & np.isfinite(g)
    if keep.sum() < 3 or np.ptp(m[keep]) == 0 or np.ptp(g[keep]) == 0:
        return math.nan
    return float(scipy.stats.kendalltau(m[keep], g[keep]).statistic)


# ------------------------------------------------------------------- everything at once


# what `sharpness_measures` returns (a record holding them all was measured by it)
SHARPNESS_KEYS = ("analysis_loss", "block_hessian_norm", "hessian_norm", "hessian_top_eigenvalue",
                  "hessian_bottom_eigenvalue", "block_to_whole_ratio", "sharpness_slides",
                  "sharpness_whole", "sharpness_keskar", "keskar_first_order", "gradient_norm",
                  "keskar_evaluations", "block_seconds", "whole_seconds", "whole_matvecs",
                  "keskar_seconds")


def sharpness_measures(network: keras.Model, x: np.ndarray, y: np.ndarray, *,
                       epsilon: float = SLIDES_EPSILON,
                       keskar_epsilon: float = KESKAR_EPSILON, keskar_maxiter: int = 10,
                       keskar_restarts: int = 2, max_block_mb: float = 256.0,
                       eigen_tolerance: float = 1e-4, dtype: str | None = None,
                       seed: int = 0, flat_loss: hessian.FlatLoss | None = None,
                       strategy=None) -> dict[str, float]:
    """The three sharpness definitions on the examples (x, y), with the Hessian norms they
    rest on and how far the block-diagonal norm is from the whole-model one; the examples are
    sharded over `strategy`'s replicas (default: the current strategy)."""
    fl = flat_loss or hessian.FlatLoss(network, x, y, dtype=dtype, jit_compile=False,
                                       strategy=strategy)
    loss = fl.loss()
    blocks = fl.block_diagonal_hessian(max_block_mb=max_block_mb)
    start = time.perf_counter()
    whole = hessian_norm(fl.operator(), tol=eigen_tolerance, seed=seed)
    whole_seconds = time.perf_counter() - start
    logging.info("whole-model ||H||: %d products in %.1fs", whole.matvecs, whole_seconds)
    start = time.perf_counter()
    keskar = keskar_sharpness(fl.loss, fl.gradient, fl.theta0, keskar_epsilon,
                              maxiter=keskar_maxiter, restarts=keskar_restarts, seed=seed)
    keskar_seconds = time.perf_counter() - start
    # the box maximum's first-order part: at a non-stationary theta the slope, not the
    # curvature, can dominate Keskar's value (the slides' formula assumes a critical point)
    gradient = np.asarray(fl.gradient(), np.float64)
    first_order = float(np.sum(np.abs(gradient) * keskar.bound)) / (1.0 + loss)
    logging.info("sharpness: L %.4g, block ||H|| %.4g (%s), whole ||H|| %.4g, Keskar %.4g",
                 loss, blocks.spectral_norm, "/".join(sorted(set(blocks.routes))), whole.norm,
                 keskar.sharpness)
    return {"analysis_loss": loss,
            "block_hessian_norm": blocks.spectral_norm,
            "hessian_norm": whole.norm,
            "hessian_top_eigenvalue": whole.top,
            "hessian_bottom_eigenvalue": whole.bottom,
            "block_to_whole_ratio": blocks.spectral_norm / whole.norm if whole.norm else math.nan,
            "sharpness_slides": slides_sharpness(blocks.spectral_norm, loss, epsilon),
            "sharpness_whole": slides_sharpness(whole.norm, loss, epsilon),
            "sharpness_keskar": keskar.sharpness,
            "keskar_first_order": first_order,
            "gradient_norm": float(np.linalg.norm(gradient)),
            "keskar_evaluations": keskar.evaluations,
            "block_seconds": blocks.seconds, "whole_seconds": whole_seconds,
            "whole_matvecs": whole.matvecs, "keskar_seconds": keskar_seconds}
