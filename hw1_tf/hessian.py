"""Curvature of a Keras model's loss: exact and block-diagonal Hessians, Hessian-vector products,
top eigenvalues, trace, spectral density, and both minimal ratios of the slides.

Everything starts from `FlatLoss`: the loss as a function of one flat parameter vector `theta`,
evaluated with Keras 3 `model.stateless_call` (the model's own variables are never touched), as
the exact mean over a whole dataset (or a fixed subset) accumulated over fixed-size batches.
The last batch is padded with zero-weight examples, so every batch has the same shape (one
trace, XLA-friendly) and the mean is exact.

Routes (each checked against the others and against closed forms in tests/test_hessian.py):
  * `FlatLoss.full_hessian`: the whole matrix (small nets), a Jacobian of the gradient;
    refuses with `HessianTooLargeError` above a memory limit.
  * `FlatLoss.block_diagonal_hessian`: one block per weight tensor, via `tf.hessians` (graph
    mode, w.r.t. tensors); a block above the memory limit comes from HVPs restricted to it.
  * `FlatLoss.hvp`: Hessian-vector products over the whole dataset. By rule: for a dense
    keras.Sequential net on one replica, from its cached linearisation (hw1_tf.linearised:
    the forward and backward passes once per theta, each product only their derivative, at
    the matmul floor); otherwise double backprop without XLA (the fastest of the four
    autodiff variants measured here). `hvp_mode="measure"` measures them per model signature
    and caches the choice; under a tf.distribute strategy the products are sharded and
    all-reduced.
  * `FlatLoss.exact_diagonal` / `FlatLoss.trace()`: for a dense net with piecewise-linear
    activations (relu) the Hessian's diagonal is the Gauss-Newton's, exact in one pass; the
    trace is then its sum, with no probes. `FlatLoss.hvp_block` takes a block of vectors (H V, V of shape
    n x b) in one pass over the data, vectorised over the block; the trace and density
    estimators hand their probes over as blocks.
  * spectrum tools on any symmetric operator (`HessianOperator`, a scipy LinearOperator):
    `top_eigenvalues` (ARPACK Lanczos via `eigsh`), `hutchinson_trace`, `hutchpp_trace`,
    `slq` + `slq_density` (stochastic Lanczos quadrature).
  * `eigenvalue_ratio` and `perturbation_ratio`: the two minimal-ratio definitions.

SavedModels: `FlatLoss.from_saved_model(path, x, y)` takes any SavedModel with a `serve`
function (plain `keras.Model.export`, `tf.saved_model.save` of a `tf.Module`, the store's own
exports): the loss goes through `serve` itself, its trainable variables are the parameters
(`ServeFlatLoss`), non-trainable ones (BatchNorm statistics) stay fixed, and whether `serve`
returns logits or probabilities is detected on the data (or given). Everything through serve is
reverse mode (forward mode does not pass through a restored function): the GGN's and Fisher's
JVPs are double VJPs. `route="keras"` keeps the older route: a Keras model from the `.keras`
file that `store.export_model` writes beside the SavedModel (or a `models.ModelSpec`), carrying
the SavedModel's trainable variables.
"""

from __future__ import annotations

import dataclasses
import json
import logging as pylogging
import os
import math
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import scipy.stats
import tensorflow as tf
import threadpoolctl
from absl import logging

from hw1_tf import linearised, models, store, training
from hw1_tf.errors import Hw1Error, ModelNotFoundError


class _PerModelFunctions(pylogging.Filter):
    """Drops TensorFlow's "N out of the last M calls ... triggered tf.function retracing"
    warning for the functions this package builds once per model on purpose (a FlatLoss's,
    the input sensitivities'): traced once each, they only look like a function re-created
    in a loop by mistake when a study measures many models. Any other retracing still warns."""

    OWN = ("FlatLoss.", "_sensitivity_function.", "Linearisation.")

    def filter(self, record: pylogging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and any(name in message for name in self.OWN))


pylogging.getLogger("tensorflow").addFilter(_PerModelFunctions())

HVP_MODES = ("auto", "measure", "forward_over_reverse", "double_backprop", "linearised")
OUTPUT_KINDS = ("auto", "logits", "probabilities")
ROUTES = ("serve", "keras")
# H V for V with this many columns per pass over the data: measured on the MNIST
# 784-256-256-256-10 MLP, 5,000 examples, 2 cores: 48 / 43 / 43.5 / 45 ms per vector at
# b = 2 / 4 / 8 / 16 against 50 ms for one product alone
BLOCK_SIZE = 8


class HessianTooLargeError(Hw1Error):
    """A Hessian (or block) would not fit in the memory limit."""


def hessian_bytes(num_params: int, itemsize: int = 8) -> int:
    """Bytes of a dense num_params x num_params Hessian."""
    return num_params * num_params * itemsize


def _mb(num_bytes: float) -> float:
    return num_bytes / 2**20


def as_float64_model(model: keras.Model) -> keras.Model:
    """A float64 copy of `model` (stateless_call casts values to each variable's dtype, so a
    float32 model cannot be evaluated in float64 as it is)."""
    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float64"})

    # float64 inputs too: a float32 Input layer would round the data before the first layer
    inputs = [keras.Input(tuple(t.shape[1:]), dtype="float64") for t in model.inputs]
    copy = keras.models.clone_model(model, input_tensors=inputs[0] if len(inputs) == 1 else
                                    inputs, clone_function=clone)
    for target, source in zip(copy.variables, model.variables):
        target.assign(np.asarray(source.numpy(), np.float64))
    return copy


@dataclasses.dataclass
class BlockHessian:
    """Block-diagonal Hessian: one block per weight tensor.

    `blocks[i]` is the dense (size_i, size_i) block, or None when it came from HVPs
    (`routes[i] == "hvp"`): then only its extreme eigenvalues are known. `norms[i]` is the
    block's spectral norm either way.
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    blocks: list[np.ndarray | None]
    routes: list[str]
    norms: list[float]
    seconds: float

    @property
    def spectral_norm(self) -> float:
        # ||H||_2 estimated as the largest block norm: every diagonal block H_ii = P_i^T H P_i
        # is a compression of H, so ||H_ii||_2 <= ||H||_2, and the block-diagonal matrix's
        # norm is exactly max_i ||H_ii||_2. The estimate is thus a lower bound of ||H||_2,
        # tight when the cross-layer blocks are weak, and needs no off-diagonal block.
        return float(max(self.norms))


class FlatLoss:
    """The mean loss of a Keras model over a dataset, as a function of a flat parameter vector.

    Args:
      model: a built Keras model.
      x, y: the examples (numpy); the loss is the exact mean over all of them.
      loss: a Keras loss object whose `.call` gives per-example losses; default: the training
        core's (cross-entropy from logits for integer labels, MSE otherwise).
      batch_size: examples per batch (memory, not the result).
      dtype: None (the model's) or "float64" (a float64 copy of the model).
      strategy: a tf.distribute strategy; with several replicas the data is sharded across
        them and the sums all-reduced.
      hvp_mode: "auto" measures both HVP modes (and XLA on/off) on first use and keeps the
        faster; or "forward_over_reverse" / "double_backprop".
      jit_compile: None decides by measurement (never under several replicas, nor for
        convolutions on CPU); True / False forces it.
    """

    route = "keras"
    dense_block_route = "tf.hessians"

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, *, loss=None,
                 batch_size: int = 4096, dtype: str | None = None, strategy=None,
                 hvp_mode: str = "auto", jit_compile: bool | None = None):
        _check_examples(x, y, hvp_mode)
        self.model = as_float64_model(model) if dtype == "float64" else model
        self._non_trainable = [tf.convert_to_tensor(v.value)
                               for v in self.model.non_trainable_variables]
        if training._xla_slow_here(self.model):
            jit_compile = False
        self._setup(self.model.trainable_variables, [v.path for v in
                                                      self.model.trainable_variables],
                    x, y, loss=loss, batch_size=batch_size, strategy=strategy,
                    hvp_mode=hvp_mode, jit_compile=jit_compile)

    def _setup(self, variables, names, x, y, *, loss, batch_size, strategy, hvp_mode,
               jit_compile):
        """What both routes share: parameters, loss, batches and the HVP choice's state."""
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.names = list(names)
        self.shapes = [tuple(v.shape) for v in variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.num_params = int(sum(self.sizes))
        self.dtype = tf.as_dtype(variables[0].dtype)
        self.np_dtype = self.dtype.as_numpy_dtype
        self.theta0 = np.concatenate([np.ravel(v.numpy()) for v in variables]).astype(
            self.np_dtype)
        if loss is None:
            integer_labels = np.issubdtype(np.asarray(y).dtype, np.integer)
            loss = training.loss_and_metrics(1 if integer_labels else 0)[0]
        self.loss_object = loss
        self.num_examples = len(x)
        self._examples = (x, y)  # for `subset` (references, no copy)
        self.requested_batch_size = batch_size
        self.batch_size = int(min(batch_size, -(-len(x) // self.replicas)))
        self._data = self._shard(np.asarray(x), np.asarray(y))
        self.hvp_mode = hvp_mode
        if self.replicas > 1:
            jit_compile = False
        self.jit_compile = jit_compile
        self.block_size = BLOCK_SIZE
        self._functions: dict[tuple, Callable] = {}
        self.hvp_timings: dict[str, float] = {}
        self.hvp_choice_from = ""
        self.num_hvps = 0
        self._linearisation: linearised.Linearisation | None = None

    @classmethod
    def from_saved_model(cls, path: str | Path, x: np.ndarray, y: np.ndarray, *,
                         outputs: str = "auto", route: str = "serve",
                         spec: models.ModelSpec | None = None, **kwargs) -> "FlatLoss":
        """The mean loss of the SavedModel at `path` over (x, y); see `saved_model_flat_loss`."""
        return saved_model_flat_loss(path, x, y, outputs=outputs, route=route, spec=spec,
                                     **kwargs)

    def subset(self, indices, *, hvp_mode: str | None = None) -> "FlatLoss":
        """The same loss at the same theta0 over the examples `indices` only (a FlatLoss of the
        same route, model, loss, batch size and strategy; XLA off)."""
        x, y = (np.asarray(a)[np.asarray(indices)] for a in self._examples)
        sub = FlatLoss(self.model, x, y, loss=self.loss_object,
                       batch_size=self.requested_batch_size, strategy=self.strategy,
                       hvp_mode=hvp_mode or self.hvp_mode, jit_compile=False)
        sub.theta0 = self.theta0.copy()
        return sub

    # ------------------------------------------------------------------------------ data

    def _shard(self, x: np.ndarray, y: np.ndarray):
        """(x, y, w) stacked as (batches, batch_size, ...) per replica; w = 1/N for real
        examples and 0 for padding, so sum_i w_i loss_i is the exact mean."""
        n, b, r = len(x), self.batch_size, self.replicas
        per_replica = -(-n // r)
        batches = -(-per_replica // b)
        total = r * batches * b
        pad = total - n
        w = np.concatenate([np.full(n, 1.0 / n), np.zeros(pad)]).astype(self.np_dtype)
        xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        yp = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
        if np.issubdtype(xp.dtype, np.floating):
            xp = xp.astype(self.np_dtype)
        if np.issubdtype(yp.dtype, np.floating):
            yp = yp.astype(self.np_dtype)
        # contiguous shards: replica k holds examples [k*per, (k+1)*per) (+ padding at the end)
        shape = lambda a: a.reshape((r, batches, b) + a.shape[1:])  # noqa: E731
        arrays = (shape(xp), shape(yp), shape(w))
        self.num_batches = batches
        if r == 1:
            return tuple(tf.constant(a[0]) for a in arrays)
        return tuple(self.strategy.experimental_distribute_values_from_function(
            lambda ctx, a=a: tf.constant(a[ctx.replica_id_in_sync_group])) for a in arrays)

    # ------------------------------------------------------------------------- functions

    def unflatten(self, theta):
        parts = tf.split(theta, self.sizes)
        return [tf.reshape(p, s) for p, s in zip(parts, self.shapes)]

    def _outputs(self, params, xb):
        """The model's raw outputs on one batch (logits, probabilities or values)."""
        out, _ = self.model.stateless_call(params, self._non_trainable, xb, training=False)
        return out

    def _loss_from_outputs(self, outputs, yb, wb):
        """The batch's weighted loss sum from the model's outputs."""
        per_example = self.loss_object.call(yb, outputs)
        return tf.reduce_sum(tf.cast(per_example, self.dtype) * wb)

    def _batch_loss(self, params, xb, yb, wb):
        return self._loss_from_outputs(self._outputs(params, xb), yb, wb)

    def _loss_of_theta(self, theta, xb, yb, wb):
        return self._batch_loss(self.unflatten(theta), xb, yb, wb)

    def _grad(self, theta, xb, yb, wb):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = self._loss_of_theta(theta, xb, yb, wb)
        return tape.gradient(loss, theta)

    def _taped(self, theta, xb, head: Callable | None = None):
        """(target, vjp): target = head(the model's outputs on one batch at theta) (the outputs
        themselves without a head), and vjp(u) = J^T u as a flat vector, J = d target / d theta
        (a persistent tape, so vjp can be called more than once)."""
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(theta)
            outputs = self._outputs(self.unflatten(theta), xb)
            target = outputs if head is None else head(outputs)
        return target, lambda u: tape.gradient(
            target, theta, output_gradients=u,
            unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _hvp_forward_over_reverse(self, theta, v, xb, yb, wb):
        with tf.autodiff.ForwardAccumulator(theta, v) as acc:
            g = self._grad(theta, xb, yb, wb)
        return acc.jvp(g)

    def _hvp_double_backprop(self, theta, v, xb, yb, wb):
        with tf.GradientTape() as outer:
            outer.watch(theta)
            gv = tf.reduce_sum(self._grad(theta, xb, yb, wb) * tf.stop_gradient(v))
        return outer.gradient(gv, theta)

    def _hvp_block(self, theta, vs, xb, yb, wb):
        """H vs^T for a block vs of shape (b, n): double backprop of the b projections g . v_j,
        vectorised over the block by pfor (the forward and first backward are shared)."""
        with tf.GradientTape() as outer:
            outer.watch(theta)
            gv = tf.linalg.matvec(tf.stop_gradient(vs), self._grad(theta, xb, yb, wb))
        return outer.jacobian(gv, theta, experimental_use_pfor=True)

    def _batched_losses(self, thetas, xb, yb, wb):
        return tf.vectorized_map(lambda t: self._loss_of_theta(t, xb, yb, wb), thetas)

    def _summed(self, per_batch: Callable, jit: bool, signature=None) -> Callable:
        """tf.function summing `per_batch(*args, xb, yb, wb)` over the batches (and replicas);
        `signature`: the arguments' TensorSpecs (one trace for every shape they allow)."""

        def over_batches(args, xs, ys, ws):
            def body(i, acc):
                return i + 1, acc + per_batch(*args, xs[i], ys[i], ws[i])

            first = per_batch(*args, xs[0], ys[0], ws[0])
            if self.num_batches == 1:
                return first
            return tf.while_loop(lambda i, acc: i < self.num_batches, body,
                                 (tf.constant(1), first))[1]

        if self.replicas == 1:
            return tf.function(lambda *args: over_batches(args, *self._data),
                               jit_compile=bool(jit), reduce_retracing=True,
                               input_signature=signature)

        def distributed(*args):
            per_replica = self.strategy.run(over_batches, args=(args,) + tuple(self._data))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return tf.function(distributed, reduce_retracing=True, input_signature=signature)

    def _function(self, name: str, jit: bool | None = None) -> Callable:
        jit = bool(self.jit_compile) if jit is None else jit
        key = (name, jit)
        if key not in self._functions:
            per_batch = {"loss": self._loss_of_theta, "grad": self._grad,
                         "forward_over_reverse": self._hvp_forward_over_reverse,
                         "double_backprop": self._hvp_double_backprop,
                         "hvp_block": self._hvp_block,
                         "batched_losses": self._batched_losses}[name]
            # a block's width varies (30 probes in blocks of 8 end with 6; a Lanczos block
            # shrinks as runs stop; perturbation samples come in chunks and a remainder): one
            # trace with the width unknown serves them all (a second trace cost 1.3 CPU
            # seconds on the MNIST MLP, a third of a 30-probe trace)
            signature = {"hvp_block": [tf.TensorSpec((self.num_params,), self.dtype),
                                       tf.TensorSpec((None, self.num_params), self.dtype)],
                         "batched_losses": [tf.TensorSpec((None, self.num_params),
                                                          self.dtype)]}.get(name)
            self._functions[key] = self._summed(per_batch, jit, signature)
        return self._functions[key]

    def _tensor(self, value) -> tf.Tensor:
        return tf.convert_to_tensor(np.asarray(value, self.np_dtype))

    def loss(self, theta=None) -> float:
        theta = self.theta0 if theta is None else theta
        return float(self._function("loss")(self._tensor(theta)))

    def gradient(self, theta=None) -> np.ndarray:
        theta = self.theta0 if theta is None else theta
        return self._function("grad")(self._tensor(theta)).numpy()

    def batched_loss(self, thetas) -> np.ndarray:
        """Losses at many parameter vectors (S, n) at once (vectorised over S)."""
        return self._function("batched_losses")(self._tensor(thetas)).numpy()

    # ------------------------------------------------------------------------------- HVP

    def _choose_hvp(self) -> tuple[str, bool]:
        """The (mode, XLA) of the products: by rule, or measured when hvp_mode == "measure".

        The rule: "linearised" (hw1_tf.linearised: the forward and backward passes computed
        once, each product only their derivative) wherever it applies (a Sequential dense net
        on one replica, its cache within budget); it did the MNIST 784-256-256-256-10 MLP's
        product (5,000 examples) in 123.5 ms of one core against 166 ms for double backprop
        and 149 ms for PyHessian's kept graph (one thread each, min of 5 rounds,
        2026-12-06), at TensorFlow's matmul speed on that core. Elsewhere double backprop
        without XLA, from measurements on this 2-core CPU (TF 2.21, the same MLP, min of 3
        interleaved rounds, three runs): double backprop without XLA 48 / 97 / 108 ms,
        forward-over-reverse 65 / 131 / 132 ms, double backprop with XLA 61 / 134 / 135 ms,
        forward-over-reverse with XLA 94 / 153 / 153 ms; measuring and compiling all four cost
        4.2-5.8 s before the first product. XLA only when asked for (`jit_compile=True`); a
        fixed mode is kept as given.
        """
        if self.hvp_mode == "measure":
            return self._measured_hvp_choice()
        if self.hvp_mode == "auto":
            mode = "linearised" if self.linearisable() else "double_backprop"
        else:
            mode = self.hvp_mode
        if mode == "linearised":
            if not self.linearisable():
                raise Hw1Error(f"hvp_mode=linearised does not apply here: "
                               f"{self.linearised_why_not}")
            self.hvp_choice_from = "rule" if self.hvp_mode == "auto" else "hvp_mode"
            return mode, False
        self.hvp_choice_from = "rule" if self.hvp_mode == "auto" else "hvp_mode"
        return mode, bool(self.jit_compile)

    def linearisable(self) -> bool:
        """Whether products can come from a cached linearisation (`linearised_why_not` says
        why not): a keras.Sequential dense net, one replica, the cache within budget."""
        if not hasattr(self, "_chain"):
            chain, why = (None, f"the {self.route} route") if self.route != "keras" else \
                linearised.dense_chain(self.model, self.model.trainable_variables)
            if chain is not None and self.replicas > 1:
                chain, why = None, f"{self.replicas} replicas"
            if chain is not None:
                need = _mb(linearised.cache_bytes(chain, self.num_batches * self.batch_size,
                                                  self.dtype.size))
                if need > linearised.MAX_CACHE_MB:
                    chain, why = None, (f"its cache would take {need:.0f} MB, above "
                                        f"{linearised.MAX_CACHE_MB:g} MB")
            self._chain, self.linearised_why_not = chain, why
        return self._chain is not None

    def linearisation(self, theta=None) -> "linearised.Linearisation":
        """The cached linearisation at theta (default theta0), built on first use and kept
        for the last theta asked for."""
        if not self.linearisable():
            raise Hw1Error(f"no linearisation: {self.linearised_why_not}")
        theta = np.asarray(self.theta0 if theta is None else theta, self.np_dtype)
        lin = self._linearisation
        if lin is None or not np.array_equal(lin.theta, theta):
            lin = self._linearisation = linearised.Linearisation(self, self._chain, theta)
        return lin

    def exact_diagonal(self, theta=None) -> np.ndarray | None:
        """The Hessian's exact diagonal when the net is a dense chain whose hidden activations
        are piecewise linear on the data (relu, linear): then it is the GGN's diagonal, one
        pass over the data (hw1_tf.linearised). None where that does not hold."""
        if not self.linearisable():
            return None
        lin = self.linearisation(theta)
        return lin.exact_hessian_diagonal() if lin.piecewise_linear else None

    def signature(self) -> str:
        """What the measured HVP choice depends on: route, parameter shapes, dtype, batches,
        replicas, the TensorFlow version and the CPU count."""
        return json.dumps([self.route, self.shapes, self.dtype.name, self.batch_size,
                           self.num_batches, self.replicas, tf.__version__, os.cpu_count(),
                           self.jit_compile])

    def _measured_hvp_choice(self) -> tuple[str, bool]:
        """Measures forward-over-reverse vs double backprop (and XLA on/off when undecided) at
        theta0 and keeps the fastest; logs the timings. The choice is cached per `signature()`
        in `hvp_cache_path()`, so a second FlatLoss of the same model does not measure."""
        cache = hvp_cache_path()
        key = self.signature()
        cached = _read_hvp_cache(cache).get(key)
        if cached:
            self.hvp_choice_from = f"cache {cache}"
            self.hvp_timings = dict(cached["timings"])
            return cached["mode"], bool(cached["jit"])
        modes = ("forward_over_reverse", "double_backprop") if self.route == "keras" else \
            ("double_backprop",)
        jits = (False, True) if self.jit_compile is None else (bool(self.jit_compile),)
        candidates = [(m, j) for m in modes for j in jits]
        if self.linearisable():
            candidates.append(("linearised", False))
        theta = self._tensor(self.theta0)
        v = self._tensor(np.random.RandomState(0).standard_normal(self.num_params))
        best = {}
        for candidate in candidates:
            self._product_function(candidate)(theta, v)  # trace / compile / linearise
        for _ in range(3):  # interleaved rounds, min of each: other processes share the CPU
            for candidate in candidates:
                fn = self._product_function(candidate)
                start = time.perf_counter()
                fn(theta, v)
                elapsed = time.perf_counter() - start
                best[candidate] = min(best.get(candidate, math.inf), elapsed)
        self.hvp_timings = {f"{m}{' xla' if j else ''}": t for (m, j), t in best.items()}
        choice = min(best, key=best.get)
        self.hvp_choice_from = "measured"
        logging.info("HVP timings (s): %s; using %s%s", {k: round(t, 5) for k, t in
                                                         self.hvp_timings.items()},
                     choice[0], " with XLA" if choice[1] else "")
        entries = _read_hvp_cache(cache)
        entries[key] = {"mode": choice[0], "jit": choice[1], "timings": self.hvp_timings}
        try:
            store.write_json(cache, entries)
        except OSError as e:  # a cache that cannot be written costs a measurement, nothing else
            logging.warning("HVP choice not cached (%s: %s)", cache, e)
        return choice

    def _product_function(self, choice: tuple[str, bool]) -> Callable:
        """(theta tensor, v tensor) -> H(theta) v as numpy, for a (mode, XLA) choice."""
        if choice[0] == "linearised":
            return lambda theta, v: self.linearisation(theta.numpy()).product(v)
        fn = self._function(*choice)
        return lambda theta, v: fn(theta, v).numpy()

    def _linearised(self) -> bool:
        """Whether the products are linearised (the choice made on first use)."""
        if not hasattr(self, "_hvp_choice"):
            self._hvp_choice = self._choose_hvp()
        return self._hvp_choice[0] == "linearised"

    def hvp_function(self) -> Callable:
        """The chosen product, (theta tensor, v tensor) -> H(theta) v as numpy."""
        self._linearised()
        return self._product_function(self._hvp_choice)

    def hvp(self, v, theta=None) -> np.ndarray:
        """H(theta) v over the whole dataset (numpy in, numpy out, the model's dtype)."""
        self.num_hvps += 1
        if self._linearised():  # numpy straight in: no tensor round trip
            return self.linearisation(theta).product(v)
        theta = self.theta0 if theta is None else theta
        return self.hvp_function()(self._tensor(theta), self._tensor(v))

    def hvp_block(self, vs, theta=None) -> np.ndarray:
        """H(theta) V for V of shape (n, b): b products in one pass over the data (numpy in
        and out, (n, b)); each column equals `hvp` of that column."""
        vs = np.asarray(vs)
        if vs.ndim != 2 or vs.shape[0] != self.num_params:
            raise Hw1Error(f"hvp_block takes an ({self.num_params}, b) block, got {vs.shape}")
        if vs.shape[1] == 1:
            return self.hvp(vs[:, 0], theta)[:, None]
        theta = self.theta0 if theta is None else theta
        self.num_hvps += vs.shape[1]
        if self._linearised():
            return self.linearisation(theta).block_product(vs)
        fn = self._function("hvp_block", False)
        return fn(self._tensor(theta), self._tensor(vs.T)).numpy().T

    def operator(self, theta=None) -> "HessianOperator":
        return HessianOperator(self, self.theta0 if theta is None else theta)

    # PyHessian-style shortcuts at theta0 (the spectrum tools below, on `operator()`)

    def eigenvalues(self, k: int = 1, which: str = "LA", *, tol: float = 1e-4,
                    seed: int = 0) -> np.ndarray:
        """The k largest ("LA") or smallest ("SA") eigenvalues (`top_eigenvalues`)."""
        return top_eigenvalues(self.operator(), k, which, tol=tol, seed=seed)[0]

    def trace(self, probes: int = 30, seed: int = 0, method: str = "auto") -> "TraceEstimate":
        """The trace: exact where `exact_diagonal` applies (method "auto" or "exact"), else
        Hutchinson's estimate with its standard error (`hutchinson_trace`; method
        "hutchinson" always)."""
        if method not in ("auto", "exact", "hutchinson"):
            raise Hw1Error(f"unknown trace method {method!r}; choose auto, exact or hutchinson")
        if method != "hutchinson":
            diagonal = self.exact_diagonal()
            if diagonal is not None:
                return exact_trace(diagonal)
            if method == "exact":
                raise Hw1Error("no exact trace here: it needs a dense Sequential net with "
                               "piecewise-linear hidden activations on one replica")
        return hutchinson_trace(self.operator(), probes, seed)

    def density(self, steps: int = 100, probes: int = 1, seed: int = 0,
                **kwargs) -> tuple[np.ndarray, np.ndarray]:
        """(grid, spectral density) by stochastic Lanczos quadrature (`slq`, `slq_density`)."""
        return slq_density(slq(self.operator(), steps, probes, seed), **kwargs)

    # ----------------------------------------------------------------------- full Hessian

    def full_hessian(self, theta=None, *, max_mb: float = 1024.0) -> np.ndarray:
        """The exact n x n Hessian (float64 numpy; computed in the model's dtype).

        Memory: the result plus one per-batch Jacobian of the gradient, 2 n^2 * itemsize
        bytes (the Jacobian's vectorised intermediates are chunked to stay below that);
        raises HessianTooLargeError above `max_mb`.
        """
        need = 2 * hessian_bytes(self.num_params, self.dtype.size)
        if _mb(need) > max_mb:
            raise HessianTooLargeError(
                f"full Hessian of {self.num_params} parameters needs {_mb(need):.1f} MB, "
                f"above the limit of {max_mb:g} MB; use the block-diagonal or HVP routes")
        theta = self._tensor(self.theta0 if theta is None else theta)
        return self._function_jacobian()(theta).numpy().astype(np.float64)

    def _function_jacobian(self) -> Callable:
        if "jacobian" not in self._functions:
            def per_batch(theta, xb, yb, wb):
                with tf.GradientTape() as tape:
                    tape.watch(theta)
                    g = self._grad(theta, xb, yb, wb)
                return tape.jacobian(g, theta, experimental_use_pfor=True)

            self._functions["jacobian"] = self._summed(per_batch, False)
        return self._functions["jacobian"]

    # -------------------------------------------------------------- block-diagonal Hessian

    def block_diagonal_hessian(self, theta=None, *, max_block_mb: float = 1024.0,
                               tol: float = 1e-6) -> BlockHessian:
        """One Hessian block per weight tensor, via `tf.hessians` inside a tf.function w.r.t.
        the parameter tensors (tf.hessians needs graph mode and tensors, not variables).

        A block whose `tf.hessians` computation would need more than `max_block_mb`
        (2 size^2 * itemsize: the block and its row accumulator) is not built: its spectral
        norm comes from `eigsh` on HVPs restricted to that block (route "hvp").
        """
        start = time.perf_counter()
        theta_np = np.asarray(self.theta0 if theta is None else theta, self.np_dtype)
        dense = [_mb(2 * hessian_bytes(s, self.dtype.size)) <= max_block_mb for s in self.sizes]
        blocks: list[np.ndarray | None] = [None] * len(self.sizes)
        if any(dense):
            wanted = [i for i, d in enumerate(dense) if d]
            fn = self._function_hessians(tuple(wanted))
            results = fn(self._tensor(theta_np))
            for i, block in zip(wanted, results):
                blocks[i] = block.numpy().reshape(self.sizes[i], self.sizes[i]).astype(
                    np.float64)
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        routes, norms = [], []
        for i, size in enumerate(self.sizes):
            if blocks[i] is not None:
                routes.append(self.dense_block_route)
                norms.append(float(np.max(np.abs(np.linalg.eigvalsh(blocks[i])))))
                continue
            routes.append("hvp")
            op = restricted_operator(self.operator(theta_np), offsets[i], offsets[i + 1])
            if size == 1:
                norms.append(abs(float(op.matvec(np.ones(1))[0])))
            else:
                top = scipy.sparse.linalg.eigsh(op, k=1, which="LM", tol=tol,
                                                return_eigenvectors=False)
                norms.append(float(abs(top[0])))
            logging.info("block %s (%d parameters): %.1f MB over the %g MB limit, norm %.4g "
                         "from HVPs", self.names[i], size,
                         _mb(2 * hessian_bytes(size, self.dtype.size)), max_block_mb,
                         norms[-1])
        return BlockHessian(self.names, self.shapes, blocks, routes, norms,
                            time.perf_counter() - start)

    def _function_hessians(self, wanted: tuple[int, ...]) -> Callable:
        key = ("hessians", wanted)
        if key not in self._functions:
            def per_batch(theta, xb, yb, wb):
                params = self.unflatten(theta)
                loss = self._batch_loss(params, xb, yb, wb)
                hessians = tf.hessians(loss, [params[i] for i in wanted])
                return tf.concat([tf.reshape(h, [-1]) for h in hessians], 0)

            summed = self._summed(per_batch, False)
            lengths = [self.sizes[i] ** 2 for i in wanted]

            def blocks(theta):
                flat = tf.reshape(summed(theta), [-1])
                return tf.split(flat, lengths)

            self._functions[key] = blocks
        return self._functions[key]


class HessianOperator(scipy.sparse.linalg.LinearOperator):
    """H(theta) of a FlatLoss as a float64 scipy LinearOperator that counts its products."""

    def __init__(self, flat_loss: FlatLoss, theta):
        super().__init__(np.float64, (flat_loss.num_params, flat_loss.num_params))
        self.flat_loss = flat_loss
        self.theta = np.asarray(theta, flat_loss.np_dtype)
        self.num_matvecs = 0

    def _matvec(self, v):
        self.num_matvecs += 1
        return self.flat_loss.hvp(np.ravel(v), self.theta).astype(np.float64)

    def _matmat(self, vs):
        """H V, `flat_loss.block_size` columns per pass over the data."""
        vs = np.asarray(vs)
        self.num_matvecs += vs.shape[1]
        b = max(1, self.flat_loss.block_size)
        chunks = [vs[:, i:i + b] for i in range(0, vs.shape[1], b)]
        return np.hstack([self.flat_loss.hvp_block(c, self.theta).astype(np.float64)
                          for c in chunks])

    def _rmatvec(self, v):
        return self._matvec(v)  # symmetric

def _per_example_losses(flat_loss: FlatLoss, outputs, yb):
    """Each example's loss, as the gradient of the weighted loss sum with respect to its
    weights (the sum is linear in them), so it follows `_loss_from_outputs` whatever it does."""
    ones = tf.ones(tf.shape(outputs)[:1], flat_loss.dtype)
    with tf.GradientTape() as tape:
        tape.watch(ones)
        total = flat_loss._loss_from_outputs(outputs, yb, ones)
    return tape.gradient(total, ones)


def _output_hessian_product(flat_loss: FlatLoss, outputs, u, yb, wb):
    """H_out u: the Hessian of the batch's weighted loss in the model's outputs (softmax
    cross-entropy, cross-entropy of probabilities, MSE: whatever `_loss_from_outputs` computes),
    times u, per example; forward over reverse on the loss alone (no model inside)."""
    fixed = tf.stop_gradient(outputs)
    with tf.autodiff.ForwardAccumulator(fixed, tf.stop_gradient(u)) as acc:
        with tf.GradientTape() as inner:
            inner.watch(fixed)
            loss = flat_loss._loss_from_outputs(fixed, yb, wb)
        g = inner.gradient(loss, fixed)
    return acc.jvp(g)


def _jvp_by_double_vjp(vjp: Callable, target, v):
    """J v for J = d target / d theta from reverse mode only: u -> J^T u is linear in u, so
    J v = d/du <J^T u, v> (a second tape over the VJP; u's value does not matter)."""
    u = tf.zeros_like(target)
    with tf.GradientTape() as dual:
        dual.watch(u)
        projected = tf.reduce_sum(vjp(u) * tf.stop_gradient(v))
    return dual.gradient(projected, u, unconnected_gradients=tf.UnconnectedGradients.ZERO)


PRODUCT_MODES = ("forward", "reverse")


class _SummedProductOperator(scipy.sparse.linalg.LinearOperator):
    """A symmetric curvature matrix of a FlatLoss whose product with v is a per-batch function
    summed over the data by the FlatLoss (float64 scipy operator that counts its products).

    mode "forward": JVPs by forward mode (the Keras route's default); "reverse": JVPs by the
    double-VJP trick (`_jvp_by_double_vjp`), reverse mode only, which is what passes through a
    restored `serve` function (the serve route's default)."""

    kind = ""

    def __init__(self, flat_loss: FlatLoss, theta=None, mode: str | None = None):
        super().__init__(np.float64, (flat_loss.num_params, flat_loss.num_params))
        explicit_mode = mode
        mode = mode or ("reverse" if flat_loss.route == "serve" else "forward")
        if mode not in PRODUCT_MODES:
            raise Hw1Error(f"unknown product mode {mode!r}; choose from "
                           f"{', '.join(PRODUCT_MODES)}")
        if mode == "forward" and flat_loss.route == "serve":
            raise Hw1Error("forward-mode products do not pass through a restored serve "
                           "function; use mode=reverse")
        self.mode = mode
        self.flat_loss = flat_loss
        self.theta = np.asarray(flat_loss.theta0 if theta is None else theta, flat_loss.np_dtype)
        self.num_matvecs = 0
        jit = bool(flat_loss.jit_compile)
        key = (self.kind, mode, jit)
        if key not in flat_loss._functions:
            per_batch = type(self)._product if mode == "forward" else type(self)._reverse_product
            flat_loss._functions[key] = flat_loss._summed(
                lambda theta, v, xb, yb, wb: per_batch(flat_loss, theta, v, xb, yb, wb), jit)
        self._function = flat_loss._functions[key]
        # a dense chain's Fisher, and its GGN when its outputs are its last Dense layer's:
        # from the cached linearisation (hw1_tf.linearised), unless a mode was asked for
        self._linearisation = None
        if explicit_mode is None and flat_loss.linearisable():
            lin = flat_loss.linearisation(self.theta)
            self._linearisation = lin if (self.kind == "fisher" or lin.ggn_applies) else None

    @staticmethod
    def _product(flat_loss: FlatLoss, theta, v, xb, yb, wb):
        raise NotImplementedError

    @staticmethod
    def _reverse_product(flat_loss: FlatLoss, theta, v, xb, yb, wb):
        raise NotImplementedError

    def _matvec(self, v):
        self.num_matvecs += 1
        fl = self.flat_loss
        if self._linearisation is not None:
            return self._linearisation.product(np.ravel(v), self.kind).astype(np.float64)
        return self._function(fl._tensor(self.theta), fl._tensor(np.ravel(v))).numpy().astype(
            np.float64)

    def _rmatvec(self, v):
        return self._matvec(v)  # symmetric

    def exact_diagonal(self) -> np.ndarray | None:
        """The operator's exact diagonal from the linearisation (a dense chain); else None."""
        lin = self._linearisation
        if lin is None:
            return None
        return lin.fisher_diagonal() if self.kind == "fisher" else lin.ggn_diagonal()


class GGNOperator(_SummedProductOperator):
    """The generalized Gauss-Newton matrix G = sum_i w_i J_i^T H_i J_i (J_i: the Jacobian of
    example i's outputs in theta, H_i: the Hessian of its loss in the outputs), the Hessian
    without the term of the outputs' own curvature; positive semi-definite for a convex loss.
    Products: a JVP of the outputs (forward mode, or a double VJP), an output-space HVP, a VJP
    back."""

    kind = "ggn"

    @staticmethod
    def _product(flat_loss, theta, v, xb, yb, wb):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            with tf.autodiff.ForwardAccumulator(theta, v) as acc:
                outputs = flat_loss._outputs(flat_loss.unflatten(theta), xb)
            jv = acc.jvp(outputs)
        hjv = _output_hessian_product(flat_loss, outputs, jv, yb, wb)
        return tape.gradient(outputs, theta, output_gradients=tf.stop_gradient(hjv))

    @staticmethod
    def _reverse_product(flat_loss, theta, v, xb, yb, wb):
        outputs, vjp = flat_loss._taped(theta, xb)
        jv = _jvp_by_double_vjp(vjp, outputs, v)
        return vjp(tf.stop_gradient(_output_hessian_product(flat_loss, outputs, jv, yb, wb)))


class FisherOperator(_SummedProductOperator):
    """The empirical Fisher F = sum_i w_i g_i g_i^T (g_i: example i's loss gradient, w_i = 1/N):
    the mean outer product of per-example gradients. Products: a JVP of the per-example losses
    (g_i . v; forward mode, or a double VJP) and a VJP with cotangents w_i (g_i . v)."""

    kind = "fisher"

    @staticmethod
    def _product(flat_loss, theta, v, xb, yb, wb):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            with tf.autodiff.ForwardAccumulator(theta, v) as acc:
                outputs = flat_loss._outputs(flat_loss.unflatten(theta), xb)
                losses = _per_example_losses(flat_loss, outputs, yb)
            gv = acc.jvp(losses)
        return tape.gradient(losses, theta, output_gradients=tf.stop_gradient(wb * gv))

    @staticmethod
    def _reverse_product(flat_loss, theta, v, xb, yb, wb):
        losses, vjp = flat_loss._taped(theta, xb, lambda out: _per_example_losses(
            flat_loss, out, yb))
        gv = _jvp_by_double_vjp(vjp, losses, v)
        return vjp(tf.stop_gradient(wb * gv))


CURVATURE_OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator,
                       "fisher": FisherOperator}


def curvature_operator(flat_loss: FlatLoss, kind: str, theta=None, mode: str | None = None):
    """The "hessian", "ggn" or "fisher" operator of `flat_loss` at theta (default: theta0);
    `mode`: the GGN's and Fisher's JVPs, "forward" or "reverse" (default: by route)."""
    if kind not in CURVATURE_OPERATORS:
        raise Hw1Error(f"unknown curvature operator {kind!r}; choose from "
                       f"{', '.join(CURVATURE_OPERATORS)}")
    theta = flat_loss.theta0 if theta is None else theta
    if kind == "hessian":
        return HessianOperator(flat_loss, theta)
    return CURVATURE_OPERATORS[kind](flat_loss, theta, mode)


def restricted_operator(op, lo: int, hi: int) -> scipy.sparse.linalg.LinearOperator:
    """The diagonal block op[lo:hi, lo:hi] as an operator (products of op with zero-padded
    vectors)."""
    n = op.shape[0]

    def matvec(u):
        v = np.zeros(n)
        v[lo:hi] = np.ravel(u)
        return op.matvec(v)[lo:hi]

    return scipy.sparse.linalg.LinearOperator((hi - lo, hi - lo), matvec=matvec,
                                              dtype=np.float64)


def block_curvature(op, sizes: list[int], diagonal: DiagonalEstimate, *, tol: float = 1e-4,
                    seed: int = 0, level: float = 0.9, exact_below: int = 0) -> list[dict]:
    """Per weight tensor (consecutive index blocks of `sizes`): the top eigenvalue of its
    diagonal block with its Ritz residual, and the block's trace with a t-interval. Works on
    any symmetric operator (Hessian, GGN, Fisher).

    A block of at most `exact_below` entries is built whole from that many products with unit
    vectors (route "dense": exact top eigenvalue and trace); a larger one gets eigsh on the
    restricted operator and its trace from `diagonal`'s group sums (the Hutchinson diagonal
    estimate over the same blocks; route "hutchinson")."""
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    traces = diagonal.group_traces(level)
    out = []
    for i, size in enumerate(sizes):
        block_op = restricted_operator(op, bounds[i], bounds[i + 1])
        if size <= exact_below:
            block = np.column_stack([block_op.matvec(e) for e in np.eye(size)])
            values, vectors = np.linalg.eigh((block + block.T) / 2)
            residual = float(np.linalg.norm(block @ vectors[:, -1] - values[-1] * vectors[:, -1]))
            trace = float(np.trace(block))
            out.append({"size": int(size), "route": "dense", "top_eigenvalue": float(values[-1]),
                        "residual": residual, "hvps": int(size), "trace": trace,
                        "standard_error": 0.0, "interval": (trace, trace)})
            continue
        top = eigenpairs(block_op, 1, "LA", tol=tol, seed=seed + i)
        out.append({"size": int(size), "route": "hutchinson",
                    "top_eigenvalue": float(top.values[0]), "residual": float(top.residuals[0]),
                    "hvps": top.num_matvecs, **traces[i]})
    return out


def _check_examples(x, y, hvp_mode: str) -> None:
    if hvp_mode not in HVP_MODES:
        raise Hw1Error(f"unknown hvp_mode {hvp_mode!r}; choose from {', '.join(HVP_MODES)}")
    if len(x) == 0 or len(x) != len(y):
        raise Hw1Error(f"need as many labels as examples, got {len(x)} and {len(y)}")


def hvp_cache_path() -> Path:
    """Where measured HVP choices are cached: $HW1_HVP_CACHE, else .cache/ in the project."""
    return Path(os.environ.get("HW1_HVP_CACHE") or
                store.project_root() / ".cache" / "hvp_choices.json")


def _read_hvp_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or unreadable: measure again
        return {}
    return entries if isinstance(entries, dict) else {}


def matrix_operator(matrix: np.ndarray) -> scipy.sparse.linalg.LinearOperator:
    """A symmetric matrix as an operator (for the spectrum tools' tests and small nets)."""
    matrix = np.asarray(matrix, np.float64)
    return scipy.sparse.linalg.aslinearoperator(matrix)


# ---------------------------------------------------------------------------- SavedModels


class ServeFlatLoss(FlatLoss):
    """The mean loss through a SavedModel's own serving function, as a function of its trainable
    variables (flattened in the SavedModel's order); non-trainable variables (BatchNorm's moving
    statistics) are held fixed. Built by `FlatLoss.from_saved_model`.

    A restored `serve` cannot be re-traced with new parameter tensors, so each product assigns
    theta to the variables first and differentiates with respect to the variables. Forward-mode
    does not pass through a restored function (its jvp is None), so the Hessian products are
    double backprop and the GGN's and Fisher's JVPs are double VJPs (`_jvp_by_double_vjp`);
    one device, no XLA. `batched_loss` loops over the parameter vectors.
    """

    route = "serve"
    dense_block_route = "hvp columns"

    def __init__(self, loaded, serve: Callable, variables, x, y, *, loss,
                 batch_size: int = 4096, hvp_mode: str = "auto", strategy=None,
                 non_trainable: int = 0):
        _check_examples(x, y, hvp_mode)
        strategy = strategy or tf.distribute.get_strategy()
        if strategy.num_replicas_in_sync > 1:
            raise Hw1Error("the serve route runs on one device; give --strategy=default or "
                           "--route=keras")
        if hvp_mode == "forward_over_reverse":
            raise Hw1Error("forward-mode products do not pass through a restored serve "
                           "function; use hvp_mode=double_backprop (or auto)")
        self.model = None
        self.loaded = loaded  # serve's variables live as long as the loaded object
        self._serve = serve
        self.variables = list(variables)
        self.num_non_trainable = non_trainable
        self._setup(self.variables, [v.name for v in self.variables], x, y, loss=loss,
                    batch_size=batch_size, strategy=strategy, hvp_mode=hvp_mode,
                    jit_compile=False)

    def subset(self, indices, *, hvp_mode: str | None = None) -> "ServeFlatLoss":
        """The same loss through the same serve and variables over the examples `indices`
        only, at this loss's theta0 (the variables are set back to it first: products leave
        the last theta they evaluated in them)."""
        for v, p in zip(self.variables, self.unflatten(tf.constant(self.theta0))):
            v.assign(p)
        x, y = (np.asarray(a)[np.asarray(indices)] for a in self._examples)
        sub = ServeFlatLoss(self.loaded, self._serve, self.variables, x, y,
                            loss=self.loss_object, batch_size=self.requested_batch_size,
                            hvp_mode=hvp_mode or self.hvp_mode, strategy=self.strategy,
                            non_trainable=self.num_non_trainable)
        for attribute in ("outputs_kind", "loss_name", "notes"):
            if hasattr(self, attribute):
                setattr(sub, attribute, getattr(self, attribute))
        return sub

    def _outputs(self, params, xb):
        # `params` are the variables themselves: serve reads them
        return _single_output(self._serve(xb))

    def _assign(self, theta):
        return [v.assign(p) for v, p in zip(self.variables, self.unflatten(theta))]

    def _flat(self, parts):
        return tf.concat([tf.reshape(p, [-1]) for p in parts], 0)

    def _loss_of_theta(self, theta, xb, yb, wb):
        with tf.control_dependencies(self._assign(theta)):
            return self._batch_loss(self.variables, xb, yb, wb)

    def _grad(self, theta, xb, yb, wb):
        with tf.control_dependencies(self._assign(theta)):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(self.variables)
                loss = self._batch_loss(self.variables, xb, yb, wb)
            return self._flat(tape.gradient(loss, self.variables,
                                            unconnected_gradients=tf.UnconnectedGradients.ZERO))

    def _taped(self, theta, xb, head: Callable | None = None):
        """As FlatLoss._taped, through serve: theta is assigned to the variables first and the
        tape watches the variables (what serve reads)."""
        with tf.control_dependencies(self._assign(theta)):
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                tape.watch(self.variables)
                outputs = self._outputs(self.variables, xb)
                target = outputs if head is None else head(outputs)
        return target, lambda u: self._flat(tape.gradient(
            target, self.variables, output_gradients=u,
            unconnected_gradients=tf.UnconnectedGradients.ZERO))

    def _outer_gradient(self, theta, project, xb, yb, wb, jacobian=False):
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(self.variables)
            projected = project(self._grad(theta, xb, yb, wb))
        zero = tf.UnconnectedGradients.ZERO
        if not jacobian:
            return self._flat(outer.gradient(projected, self.variables, unconnected_gradients=zero))
        parts = outer.jacobian(projected, self.variables, unconnected_gradients=zero,
                               experimental_use_pfor=True)
        rows = tf.shape(projected)[0]
        return tf.concat([tf.reshape(p, [rows, -1]) for p in parts], 1)

    def _hvp_double_backprop(self, theta, v, xb, yb, wb):
        return self._outer_gradient(theta, lambda g: tf.reduce_sum(g * tf.stop_gradient(v)),
                                    xb, yb, wb)

    def _hvp_forward_over_reverse(self, theta, v, xb, yb, wb):
        raise Hw1Error("forward-mode products do not pass through a restored serve function")

    def _hvp_block(self, theta, vs, xb, yb, wb):
        return self._outer_gradient(theta, lambda g: tf.linalg.matvec(tf.stop_gradient(vs), g),
                                    xb, yb, wb, jacobian=True)

    def _batched_losses(self, thetas, xb, yb, wb):
        """Losses at the rows of thetas on one batch, inside one graph: serve reads the
        variables, so the samples cannot be vectorised, but a sequential map (assign, then
        evaluate, one sample an iteration) replaces one Python call per sample."""
        return tf.map_fn(lambda t: self._loss_of_theta(t, xb, yb, wb), thetas,
                         fn_output_signature=self.dtype, parallel_iterations=1)

    # A pfor Jacobian of the whole gradient vectorises the second backward over all n outputs
    # at once (a 3,586-parameter CNN on 1,000 MNIST images needed > 17 GB); restored
    # convolutions' filter gradients even fall back to a while_loop inside pfor. The serve
    # route's exact Hessians come from `hvp_block` on identity columns instead, a few at a
    # time, so memory stays that of one block product.
    COLUMNS_PER_PASS = 16

    def _columns(self, theta, columns: np.ndarray) -> np.ndarray:
        """H[:, columns] (float64) from block products of unit vectors."""
        out = np.zeros((self.num_params, len(columns)))
        for start in range(0, len(columns), self.COLUMNS_PER_PASS):
            chunk = columns[start:start + self.COLUMNS_PER_PASS]
            units = np.zeros((self.num_params, len(chunk)), self.np_dtype)
            units[chunk, np.arange(len(chunk))] = 1
            out[:, start:start + len(chunk)] = self.hvp_block(units, theta)
        return out

    def _function_jacobian(self) -> Callable:
        def full(theta):
            h = self._columns(theta.numpy(), np.arange(self.num_params))
            return tf.constant((h + h.T) / 2)  # symmetric up to float rounding

        return full

    def _function_hessians(self, wanted: tuple[int, ...]) -> Callable:
        """Diagonal blocks: the rows of each tensor's own columns."""
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])

        def blocks(theta):
            out = []
            for i in wanted:
                cols = np.arange(offsets[i], offsets[i + 1])
                b = self._columns(theta.numpy(), cols)[cols]
                out.append(tf.constant(np.ravel((b + b.T) / 2)))
            return out

        return blocks


def _single_output(out):
    """serve's result as one tensor (a signature returns a dict of outputs)."""
    if isinstance(out, dict):
        if len(out) != 1:
            raise Hw1Error(f"serve returns {len(out)} outputs ({', '.join(sorted(out))}); the "
                           "loss needs one")
        out = next(iter(out.values()))
    return out


def serving_function(loaded, path) -> tuple[Callable, tf.TensorSpec]:
    """The SavedModel's `serve` (else its `serving_default` signature) and its one input's
    TensorSpec."""
    fn = getattr(loaded, "serve", None)
    if fn is None:
        fn = getattr(loaded, "signatures", {}).get("serving_default")
    if fn is None:
        raise Hw1Error(f"{path}: the SavedModel has no serve function nor a serving_default "
                       "signature")
    concrete = list(getattr(fn, "concrete_functions", None) or [fn])
    args, kwargs = concrete[0].structured_input_signature
    specs = list(args) + list(kwargs.values())
    if len(specs) != 1 or not isinstance(specs[0], tf.TensorSpec):
        raise Hw1Error(f"{path}: serve takes {len(specs)} inputs; the loss needs one tensor")
    if kwargs and not args:  # a signature is called by keyword
        name = next(iter(kwargs))
        signature = fn
        fn = lambda x: signature(**{name: x})  # noqa: E731
    return fn, specs[0]


def saved_variables(loaded) -> tuple[list, list]:
    """(trainable, non-trainable variables), each in the SavedModel's order. A Keras export
    lists them; a restored tf.Module does not, so its object graph is walked (each variable
    once, by the `trainable` flag it was saved with)."""
    listed = getattr(loaded, "trainable_variables", None)
    if listed:  # a Keras export (which also tracks copies of each under its layers' paths)
        return list(listed), list(getattr(loaded, "non_trainable_variables", ()) or ())
    found = {}
    for obj in tf.train.TrackableView(loaded).descendants():
        if isinstance(obj, tf.Variable):
            found.setdefault(id(obj), obj)
    return ([v for v in found.values() if v.trainable],
            [v for v in found.values() if not v.trainable])


def trainable_variables_of(loaded) -> tuple[list, int]:
    """(trainable variables in the SavedModel's order, how many non-trainable there are)."""
    trainable, non_trainable = saved_variables(loaded)
    return trainable, len(non_trainable)


def detect_outputs(outputs: np.ndarray, tolerance: float = 1e-3) -> str:
    """"probabilities" when every row is non-negative and sums to 1 (within `tolerance`),
    else "logits"."""
    outputs = np.asarray(outputs, np.float64)
    if outputs.ndim == 2 and outputs.shape[1] > 1 and outputs.min() >= -1e-6 and \
            np.max(np.abs(outputs.sum(axis=1) - 1.0)) <= tolerance:
        return "probabilities"
    return "logits"


def loss_for_outputs(kind: str):
    """The per-example loss for outputs of `kind`: cross-entropy from logits, cross-entropy of
    probabilities (Keras clips them to [1e-7, 1 - 1e-7]), or MSE for "regression"."""
    if kind == "logits":
        return training.loss_and_metrics(1)[0]
    if kind == "probabilities":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=False, reduction=None)
    if kind == "regression":
        return training.loss_and_metrics(0)[0]
    raise Hw1Error(f"unknown outputs {kind!r}; choose from {', '.join(OUTPUT_KINDS)}")


LOSS_NAMES = {"logits": "cross-entropy of softmax(serve output) (serve returns logits)",
              "probabilities": "cross-entropy of the serve output (serve returns "
                               "probabilities; clipped to [1e-7, 1 - 1e-7])",
              "regression": "mean squared error (real-valued labels)"}


def outputs_kind(served: np.ndarray, y: np.ndarray, outputs: str, path) -> str:
    """What serve's outputs `served` are ("logits", "probabilities" or "regression"), detected
    when `outputs` is "auto"; one error naming `path` when they do not fit the labels `y`."""
    if served.ndim != 2:
        raise Hw1Error(f"{path}: serve returns shape {served.shape[1:]} per example; the loss "
                       "needs a vector of outputs")
    integer_labels = np.issubdtype(y.dtype, np.integer)
    width = served.shape[1]
    if integer_labels and (y.min() < 0 or y.max() >= width):
        raise Hw1Error(f"{path}: labels run from {y.min()} to {y.max()} but serve returns "
                       f"{width} outputs per example")
    if not integer_labels and y.reshape(len(y), -1).shape[1] != width:
        raise Hw1Error(f"{path}: targets have {y.reshape(len(y), -1).shape[1]} values per "
                       f"example but serve returns {width}")
    if not integer_labels and outputs != "auto":
        raise Hw1Error(f"--outputs={outputs} needs integer class labels; these targets are real")
    return ("regression" if not integer_labels else
            detect_outputs(served) if outputs == "auto" else outputs)


def _inputs_for(x: np.ndarray, spec: tf.TensorSpec, path) -> tuple[np.ndarray, str]:
    """x shaped and typed as serve takes it: reshaped when only the layout differs (784 pixels
    vs 28x28x1); a note of what was done."""
    want = spec.shape[1:]
    note = ""
    if not want.is_compatible_with(x.shape[1:]):
        if want.is_fully_defined() and int(np.prod(want)) == int(np.prod(x.shape[1:])):
            note = f"inputs reshaped from {tuple(x.shape[1:])} to {tuple(want)}"
            x = x.reshape((len(x),) + tuple(want))
        else:
            raise Hw1Error(f"{path}: serve takes inputs of shape {tuple(spec.shape)}, the "
                           f"examples have shape {(None,) + tuple(x.shape[1:])}")
    return x.astype(spec.dtype.as_numpy_dtype), note


def saved_model_flat_loss(path: str | Path, x: np.ndarray, y: np.ndarray, *,
                          outputs: str = "auto", route: str = "serve",
                          spec: models.ModelSpec | None = None, batch_size: int = 4096,
                          **kwargs) -> FlatLoss:
    """The mean loss of the SavedModel at `path` over (x, y).

    route "serve": through the SavedModel's own `serve` with its trainable variables as the
    parameters (`ServeFlatLoss`), for any SavedModel with one input and one output. route
    "keras": a Keras model from `<path>.keras` (or `spec`) carrying the SavedModel's weights.
    outputs: "auto" detects logits vs probabilities from serve's outputs on the data
    (real-valued labels mean regression); "logits" / "probabilities" override.
    The returned FlatLoss has `.outputs_kind`, `.loss_name` and `.notes` (what was done).
    Bad input (other input shape, labels beyond the outputs) raises Hw1Error naming it.
    """
    if route not in ROUTES:
        raise Hw1Error(f"unknown route {route!r}; choose from {', '.join(ROUTES)}")
    if outputs not in OUTPUT_KINDS:
        raise Hw1Error(f"unknown outputs {outputs!r}; choose from {', '.join(OUTPUT_KINDS)}")
    loaded = store.load_saved_model(path)
    serve, spec_in = serving_function(loaded, path)
    x, note = _inputs_for(np.asarray(x), spec_in, path)
    y = np.asarray(y)
    served = np.concatenate([np.asarray(_single_output(serve(tf.constant(x[i:i + batch_size]))))
                             for i in range(0, len(x), batch_size)])
    kind = outputs_kind(served, y, outputs, path)
    width = served.shape[1]
    loss = loss_for_outputs(kind)
    trainable, non_trainable = trainable_variables_of(loaded)
    if not trainable:
        raise Hw1Error(f"{path}: the SavedModel has no trainable variables")
    if route == "keras":
        model = keras_model_for_saved_model(path, spec, x.shape[1:], width, loaded=loaded)
        flat = FlatLoss(model, x, y, loss=loss, batch_size=batch_size, **kwargs)
    else:
        if kwargs.pop("dtype", None) not in (None, "float32"):
            raise Hw1Error("the serve route computes in the SavedModel's own dtype; use "
                           "--route=keras for float64")
        kwargs.pop("jit_compile", None)
        flat = ServeFlatLoss(loaded, serve, trainable, x, y, loss=loss, batch_size=batch_size,
                             non_trainable=non_trainable, **kwargs)
    flat.outputs_kind = kind
    flat.loss_name = LOSS_NAMES[kind]
    fixed = (f"{non_trainable} non-trainable variables (e.g. BatchNorm moving statistics) held "
             "fixed at their saved values" if non_trainable else "no non-trainable variables")
    flat.notes = [n for n in (note, fixed) if n]
    return flat


def keras_model_for_saved_model(path: str | Path, spec: models.ModelSpec | None = None,
                                input_shape: tuple[int, ...] | None = None,
                                outputs: int | None = None, loaded=None) -> keras.Model:
    """A Keras model carrying the weights of the SavedModel at `path`.

    The architecture comes from `<path>.keras` (written by `store.export_model`), else from
    `spec` (with `input_shape` and `outputs`); the SavedModel's `trainable_variables` are then
    assigned to it (checked shape by shape), so the weights are the SavedModel's.
    """
    path = Path(path)
    loaded = store.load_saved_model(path) if loaded is None else loaded
    keras_file = path.with_suffix(".keras")
    if keras_file.is_file():
        model = keras.models.load_model(str(keras_file), compile=False)
    elif spec is not None and input_shape is not None and outputs is not None:
        model = models.build(spec, tuple(input_shape), outputs)
    else:
        raise ModelNotFoundError(f"{path}: no {keras_file.name} beside it and no model spec; "
                                 "the keras route needs the architecture (use --route=serve)")
    source = trainable_variables_of(loaded)[0]
    target = model.trainable_variables
    if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
        raise Hw1Error(f"{path}: SavedModel variables {[tuple(v.shape) for v in source]} do not "
                       f"match the architecture's {[tuple(v.shape) for v in target]}")
    for t, s in zip(target, source):
        t.assign(s.numpy())
    return model


# ------------------------------------------------------------------------- spectrum tools


@dataclasses.dataclass
class EigenResult:
    """Ritz pairs of a symmetric operator, from the extreme inwards."""

    values: np.ndarray  # (k,)
    vectors: np.ndarray  # (n, k), orthonormal columns
    residuals: np.ndarray  # (k,) ||A v - lambda v||: some true eigenvalue lies that close
    num_matvecs: int  # products used, the k residual products included


def eigenpairs(op, k: int, which: str = "LA", *, tol: float = 1e-4,
               maxiter: int | None = None, ncv: int | None = None, seed: int = 0,
               residuals: bool = True) -> EigenResult:
    """The k largest ("LA") or smallest ("SA") algebraic eigenvalues of a symmetric operator
    and their eigenvectors, with ARPACK's implicitly restarted Lanczos (`eigsh`); sorted from
    the extreme inwards. `ncv`: Lanczos basis size (ARPACK's default max(2k+1, 20) when None).

    `residuals`: also the Ritz residual norms ||A v - lambda v|| (k more products). For a
    symmetric A and a unit v, some eigenvalue of A lies within that distance of lambda, so
    each value comes with a bound on its own error (NaN when not computed).
    If ARPACK stops before all k converge, the converged ones are returned (and logged).
    """
    n = op.shape[0]
    if which not in ("LA", "SA"):
        raise Hw1Error(f"which must be LA or SA, got {which!r}")
    k = min(k, n)
    count = [0]

    def matvec(v):
        count[0] += 1
        return op.matvec(np.ravel(v))

    counted = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = np.random.RandomState(seed).standard_normal(n)
    if k >= n - 1:  # ARPACK needs k < n: small problems take the dense route
        dense = np.column_stack([counted.matvec(e) for e in np.eye(n)])
        values, vectors = np.linalg.eigh((dense + dense.T) / 2)
    else:
        try:
            # numpy's BLAS on one thread, as in `lanczos_runs`: its idle threads spin between
            # ARPACK's steps and slow the products (top-5 of the MNIST MLP: 2.4-2.5 s with the
            # default threads, 1.6-2.1 s with one, 21 products each, 2026-12-06)
            with threadpoolctl.threadpool_limits(1, user_api="blas"):
                values, vectors = scipy.sparse.linalg.eigsh(counted, k=k, which=which,
                                                            tol=tol, v0=v0, maxiter=maxiter,
                                                            ncv=ncv)
        except scipy.sparse.linalg.ArpackNoConvergence as e:
            logging.warning("eigsh: %d of %d eigenvalues converged", len(e.eigenvalues), k)
            values, vectors = e.eigenvalues, e.eigenvectors
    order = np.argsort(np.asarray(values, np.float64))
    order = order[::-1][:k] if which == "LA" else order[:k]
    values = np.asarray(values, np.float64)[order]
    vectors = np.asarray(vectors, np.float64)[:, order]
    norms = np.full(len(values), np.nan)
    if residuals and len(values):
        products = np.column_stack([counted.matvec(v) for v in vectors.T])
        norms = np.linalg.norm(products - vectors * values, axis=0)
    return EigenResult(values, vectors, norms, count[0])


def top_eigenvalues(op, k: int, which: str = "LA", *, tol: float = 1e-4,
                    maxiter: int | None = None, ncv: int | None = None,
                    seed: int = 0) -> tuple[np.ndarray, int]:
    """`eigenpairs`' values only (no residual products): (eigenvalues, products used)."""
    result = eigenpairs(op, k, which, tol=tol, maxiter=maxiter, ncv=ncv, seed=seed,
                        residuals=False)
    return result.values, result.num_matvecs


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, smallest first) between the column spans of a and b (n, k):
    0 for a shared direction, 90 for orthogonal ones."""
    return np.sort(np.degrees(scipy.linalg.subspace_angles(a, b)))


def rademacher(n: int, count: int, seed: int) -> np.ndarray:
    """(count, n) Rademacher (+-1) probes, seeded."""
    probes = np.random.RandomState(seed).randint(0, 2, size=(count, n)).astype(np.float64)
    probes *= 2  # in place: the 30 x 335k probes of the bench are 80 MB a copy
    probes -= 1
    return probes


@dataclasses.dataclass
class TraceEstimate:
    trace: float
    standard_error: float
    num_matvecs: int
    samples: np.ndarray  # per-probe estimates (Hutchinson) or residual samples (Hutch++)
    exact: bool = False  # the sum of an exact diagonal: no probes, no error

    def interval(self, level: float = 0.9) -> tuple[float, float]:
        """Student-t confidence interval of the trace at `level` from the probe samples
        (Hutch++: its sketched part is exact, the interval is the residual part's); an exact
        trace's interval is the point itself."""
        if self.exact:
            return self.trace, self.trace
        return t_interval(self.trace, self.standard_error, len(self.samples), level)


def exact_trace(diagonal: np.ndarray) -> TraceEstimate:
    """The trace as the sum of an exact diagonal (`FlatLoss.exact_diagonal`)."""
    return TraceEstimate(float(np.sum(np.asarray(diagonal, np.float64))), 0.0, 0,
                         np.zeros(0), exact=True)


def t_interval(mean: float, standard_error: float, count: int,
               level: float = 0.9) -> tuple[float, float]:
    """mean -+ t_{(1+level)/2, count-1} standard_error (NaNs below two samples)."""
    if count < 2 or not math.isfinite(standard_error):
        return math.nan, math.nan
    half = float(scipy.stats.t.ppf((1 + level) / 2, count - 1)) * standard_error
    return mean - half, mean + half


@dataclasses.dataclass
class DiagonalEstimate:
    """Hutchinson's estimate of diag(A), E[v * Av] for Rademacher v (Bekas, Kokiopoulou, Saad
    2007), with the groups' (weight tensors') per-probe sums, whose total is Hutchinson's
    trace sample of the same probe."""

    diagonal: np.ndarray  # (n,) mean over probes
    standard_error: np.ndarray  # (n,) per entry
    group_samples: np.ndarray  # (probes, groups): sum of v * Av over each group's entries
    num_matvecs: int

    def trace_estimate(self) -> TraceEstimate:
        samples = self.group_samples.sum(axis=1)
        se = samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else math.nan
        return TraceEstimate(float(samples.mean()), float(se), self.num_matvecs, samples)

    def group_traces(self, level: float = 0.9) -> list[dict]:
        """Each group's trace (its block's) with its standard error and t-interval."""
        out = []
        m = len(self.group_samples)
        for column in self.group_samples.T:
            mean = float(column.mean())
            se = float(column.std(ddof=1) / math.sqrt(m)) if m > 1 else math.nan
            out.append({"trace": mean, "standard_error": se,
                        "interval": t_interval(mean, se, m, level)})
        return out


def hutchinson_diagonal(op, probes: int = 32, seed: int = 0,
                        groups: list[int] | None = None) -> DiagonalEstimate:
    """Hutchinson's diagonal estimator over `probes` Rademacher probes (the same probes as
    `hutchinson_trace` with this seed); `groups`: sizes of consecutive index blocks (weight
    tensors) whose per-probe sums are kept. Running sums only: O(n) memory."""
    n = op.shape[0]
    groups = [n] if groups is None else list(groups)
    if sum(groups) != n:
        raise Hw1Error(f"groups of {sum(groups)} entries for an operator of size {n}")
    bounds = np.concatenate([[0], np.cumsum(groups)])
    total, squares = np.zeros(n), np.zeros(n)
    group_samples = []
    for v in rademacher(n, probes, seed):
        d = v * op.matvec(v)
        total += d
        squares += d * d
        group_samples.append(np.add.reduceat(d, bounds[:-1]) if n else np.zeros(0))
    mean = total / probes
    var = np.maximum(squares / probes - mean ** 2, 0.0) * probes / max(probes - 1, 1)
    return DiagonalEstimate(mean, np.sqrt(var / probes), np.array(group_samples), probes)


def hutchinson_trace(op, probes: int | np.ndarray = 32, seed: int = 0) -> TraceEstimate:
    """Hutchinson's estimator: mean of v^T H v over Rademacher probes, with its standard error
    (sample std / sqrt(probes)). `probes` may be the (m, n) probe matrix itself. The probes go
    to the operator as one block (`op.matmat`), which a HessianOperator splits into passes of
    `block_size` products."""
    n = op.shape[0]
    vs = rademacher(n, probes, seed) if np.isscalar(probes) else np.asarray(probes, np.float64)
    samples = np.einsum("ij,ji->i", vs, op.matmat(vs.T))
    se = samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else math.nan
    return TraceEstimate(float(samples.mean()), float(se), len(vs), samples)


def hutchpp_trace(op, matvecs: int = 30, seed: int = 0) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021): the trace of a low-rank sketch exactly
    plus Hutchinson on the deflated rest; `matvecs` products in all (a third each for the
    sketch, its projection and the residual probes). Standard error of the residual part."""
    n = op.shape[0]
    k = max(1, matvecs // 3)
    rng_s, rng_g = rademacher(n, k, seed), rademacher(n, matvecs - 2 * k, seed + 1)
    hs = op.matmat(rng_s.T)
    q, _ = np.linalg.qr(hs)
    hq = op.matmat(q)
    low_rank = float(np.trace(q.T @ hq))
    g = rng_g.T - q @ (q.T @ rng_g.T)  # probes deflated against the sketch
    samples = np.einsum("ij,ij->j", g, op.matmat(g))
    se = samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else math.nan
    return TraceEstimate(low_rank + float(samples.mean()), float(se),
                         2 * k + g.shape[1], samples)


def lanczos(op, v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`steps` Lanczos steps with full reorthogonalisation from v0: the tridiagonal's
    eigenvalues (nodes) and the squared first components of its eigenvectors (weights,
    summing to 1). Stops early on an invariant subspace."""
    return lanczos_runs(op, np.asarray(v0)[:, None], steps)[0]


def lanczos_runs(op, starts: np.ndarray, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Independent Lanczos runs (as `lanczos`) from the columns of `starts` (n, p), in
    lockstep: each step multiplies all still-running vectors as one block (`op.matmat`).

    The basis is kept in the products' own precision (float32 for a float32 FlatLoss: its
    products are no more accurate, and reorthogonalising 100 float64 vectors of 335k entries
    read 0.5 GB a step); the second Gram-Schmidt pass runs only when the first removed most
    of w (Kahan-Parlett "twice is enough": ||w'|| < 0.7 ||w||). numpy's BLAS runs on one
    thread here: its idle threads spin after each call and slowed TensorFlow's products in
    between (30 SLQ steps on the MNIST MLP: 3.1 s with the default threads, 2.0 s with one)."""
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        return _lanczos_runs(op, starts, steps)


def _lanczos_runs(op, starts: np.ndarray, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    n, p = starts.shape
    steps = min(steps, n)
    flat = getattr(op, "flat_loss", None)
    dtype = np.float32 if flat is not None and flat.np_dtype == np.float32 else np.float64
    basis = np.zeros((p, steps, n), dtype)
    alphas, betas = [[] for _ in range(p)], [[] for _ in range(p)]
    v = starts / np.linalg.norm(starts, axis=0)
    running = list(range(p))
    for j in range(steps):
        basis[running, j] = v[:, running].T
        w_block = op.matmat(v[:, running]) if len(running) > 1 else \
            op.matvec(v[:, running[0]])[:, None]
        still = []
        for col, r in enumerate(running):
            w = w_block[:, col]
            a = float(w @ v[:, r])
            alphas[r].append(a)
            # full reorthogonalisation (classical Gram-Schmidt, a second pass when needed)
            w = w.astype(dtype)
            for _ in range(2):
                before = np.linalg.norm(w)
                w = w - basis[r, :j + 1].T @ (basis[r, :j + 1] @ w)
                if np.linalg.norm(w) >= 0.7 * before:
                    break
            b = float(np.linalg.norm(w))
            if j == steps - 1 or b < 1e-10 * max(1.0, abs(a)):
                continue
            betas[r].append(b)
            v[:, r] = w / b
            still.append(r)
        running = still
        if not running:
            break
    out = []
    for alpha, beta in zip(alphas, betas):
        off = beta[:len(alpha) - 1]
        t = np.diag(alpha) + np.diag(off, 1) + np.diag(off, -1)
        nodes, vectors = np.linalg.eigh(t)
        out.append((nodes, vectors[0] ** 2))
    return out


@dataclasses.dataclass
class SLQResult:
    nodes: np.ndarray  # (probes, steps) Ritz values (NaN-padded when a run stopped early)
    weights: np.ndarray  # (probes, steps) quadrature weights, each row sums to 1
    num_matvecs: int

    def moment(self, k: int) -> float:
        """Estimate of the k-th spectral moment, tr(H^k) / n."""
        return float(np.nanmean(np.nansum(self.weights * self.nodes ** k, axis=1)))


def slq(op, steps: int = 100, probes: int = 1, seed: int = 0) -> SLQResult:
    """Stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao 2019; PyHessian's density):
    one Lanczos run per Rademacher probe, the probes in lockstep (one block product a step)."""
    n = op.shape[0]
    steps = min(steps, n)
    nodes = np.full((probes, steps), np.nan)
    weights = np.zeros((probes, steps))
    used = 0
    runs = lanczos_runs(op, rademacher(n, probes, seed).T, steps)
    for p, (theta, tau) in enumerate(runs):
        nodes[p, :len(theta)], weights[p, :len(theta)] = theta, tau
        used += len(theta)
    return SLQResult(nodes, weights, used)


def slq_density(result: SLQResult, grid: np.ndarray | None = None, sigma: float | None = None,
                num_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The spectral density on `grid`: each node a Gaussian of width `sigma` carrying its
    weight, averaged over probes (integrates to 1). Default sigma: 1% of the node range, a
    little wider than PyHessian's sqrt(1e-5) so a grid of 1000 points resolves it."""
    finite = result.nodes[np.isfinite(result.nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    width = max(hi - lo, 1e-12)
    sigma = 0.01 * width if sigma is None else sigma
    if grid is None:
        grid = np.linspace(lo - 0.05 * width - 3 * sigma, hi + 0.05 * width + 3 * sigma,
                           num_points)
    nodes = np.nan_to_num(result.nodes, nan=0.0)
    gauss = np.exp(-((grid[:, None, None] - nodes[None]) ** 2) / (2 * sigma ** 2))
    density = (gauss * result.weights[None]).sum(axis=2).mean(axis=1)
    return grid, density / (sigma * math.sqrt(2 * math.pi))


def slq_share_above(result: SLQResult, threshold: float) -> dict[str, float]:
    """The spectral density's mass above `threshold` (the share of eigenvalues above it), from
    the Gauss quadrature of each SLQ probe, averaged over probes.

    share: the quadrature's mass on nodes above the threshold (an unbiased estimate of the
      share when the Lanczos runs are complete; otherwise biased by at most the bracket);
    standard_error: the spread over probes / sqrt(probes) (NaN with one probe);
    lower, upper: the Chebyshev-Markov-Stieltjes bracket (Gauss quadrature's distribution
      function interlaces the true one): each probe's own spectral measure has its mass
      above the threshold in [share_p - tau_right, share_p + tau_left], tau_left / tau_right
      being the weights of the two nodes on either side of the threshold. Averaged over probes.
    """
    shares, lowers, uppers = [], [], []
    for nodes, weights in zip(result.nodes, result.weights):
        keep = np.isfinite(nodes)
        nodes, weights = nodes[keep], weights[keep]
        order = np.argsort(nodes)
        nodes, weights = nodes[order], weights[order]
        below = int(np.sum(nodes <= threshold))
        share = float(weights[below:].sum())
        left = float(weights[below - 1]) if below > 0 else 0.0
        right = float(weights[below]) if below < len(nodes) else 0.0
        shares.append(share)
        lowers.append(max(share - right, 0.0))
        uppers.append(min(share + left, 1.0))
    p = len(shares)
    se = float(np.std(shares, ddof=1) / math.sqrt(p)) if p > 1 else math.nan
    return {"share": float(np.mean(shares)), "standard_error": se,
            "lower": float(np.mean(lowers)), "upper": float(np.mean(uppers)), "probes": p}


# -------------------------------------------------------------------------- minimal ratio


def eigenvalue_ratio(eigenvalues, tolerance: float = 1e-6) -> dict[str, float]:
    """Minimal ratio of the slides: the share of eigenvalues above `tolerance` (positive
    curvature), and the share within +-tolerance (flat directions)."""
    e = np.asarray(eigenvalues, np.float64)
    return {"minimal_ratio": float(np.mean(e > tolerance)),
            "near_zero_ratio": float(np.mean(np.abs(e) <= tolerance))}


def sphere_samples(n: int, count: int, radius: float, seed: int) -> np.ndarray:
    """(count, n) points uniform on the sphere of `radius` (normalised Gaussians)."""
    g = np.random.RandomState(seed).standard_normal((count, n))
    return radius * g / np.linalg.norm(g, axis=1, keepdims=True)


def perturbation_ratio(batched_loss: Callable[[np.ndarray], np.ndarray], theta, radius: float,
                       samples: int = 1000, seed: int = 0, chunk: int = 256) -> float:
    """Minimal ratio by sampling: the share of random perturbations u (uniform on the sphere of
    `radius`) with loss(theta + u) > loss(theta). `batched_loss` maps (S, n) -> (S,), so the
    samples are evaluated `chunk` at a time, vectorised."""
    theta = np.asarray(theta)
    centre = float(np.ravel(batched_loss(theta[None]))[0])
    u = sphere_samples(theta.size, samples, radius, seed).astype(theta.dtype)
    higher = 0
    for start in range(0, samples, chunk):
        losses = np.asarray(batched_loss(theta[None] + u[start:start + chunk]))
        higher += int(np.sum(losses > centre))
    return higher / samples
