"""N independent members of one dense architecture trained as one computation.

Every weight carries a leading member axis (kernels (N, in, out), biases (N, out)), so N small
matmuls become one batched matmul. The population minimises the SUM of the members' mean
losses: member i's gradient is exactly the gradient of its own loss, and the update rules below
(Adam, SGD, RMSprop, Adagrad, written on the stacked variables, one step counter per member) are
Keras' own, element by element. So member i follows the same numbers as the single-model core
(`hw1_tf.training`) trained with seed i:
  * initial weights: `models.build(spec)` right after `keras.utils.set_random_seed(seed_i)`;
  * data order: `pipeline.index_chunks` seeded with seed_i (or one shared order);
  * per-iteration record: loss, ||grad L_i|| (member i's parameters only) and objective,
    returned from the device once per execution, as `callbacks.IterationLog` keeps them;
  * objective switch to ||grad L||^2 (its gradient 2 H g) when the member's own norm falls below
    a threshold or after N epochs, with that member's optimizer state restarted, and the stop
    threshold freezing the member; all by masks inside the compiled step.
The threshold checks run after every iteration (the core checks after every execution, so the
two agree exactly when the core runs one step per execution). A member whose loss or gradient
becomes NaN/inf is frozen at its last finite weights and marked failed; the others go on.

`train_population` returns the population and one history per member with the structure of
`training.train`'s, so experiments and figures treat a member like any run; `Population.member(i)`
is an ordinary Keras model (the one conversion from a member to a model: `member(i, spec)` for
a narrower net padded in, `Population.from_flat` for weights computed elsewhere) and
`export_members` writes members as SavedModels. With
`backup_dir`, a population killed mid-run and started again continues from its last epoch-end
backup to the numbers an uninterrupted run ends with.

It pays where a member is too small to keep the cores busy (the HW1-1 function nets: several
times faster per member, bench/population.py); members with large matmuls (an MNIST MLP) gain
nothing from batching and are better trained one by one.
Members may also start from given weights (`initial`): narrower dense nets zero-padded to `spec`
(`padded_initial_weights`) train exactly as they would alone, so models of one depth and
different widths can share a population (the capacity experiment's small widths), and
`member(i, narrow_spec)` gives the narrow model back.

Keras' `fit` is not used: its metrics and callbacks are scalars per model, while everything here
is a vector over members. The loop mirrors the core's: several iterations per XLA call on index
chunks into data held on the device, one iteration per call without XLA under several replicas.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hw1_tf import data, distribute, models, pipeline, store, training
from hw1_tf.config import OPTIMIZERS, StopOptions
from hw1_tf.errors import Hw1Error

EVAL_BATCH = 4096
# per-iteration columns: loss, ||grad L_i||, objective used, correct predictions (classification),
# member still active after the iteration (False from its stop or failure on)
RECORD = ("loss", "grad_norm", "objective", "correct", "active")


@dataclasses.dataclass
class PopulationSettings(training.TrainSettings):
    """TrainSettings for every member (`seed` seeds the shared order only; members take their
    seeds from `train_population`'s `seeds`)."""

    shared_order: bool = False  # every member sees the batches of `seed`
    evaluate_test: bool = True  # test loss/accuracy per epoch (when the splits have a test set)


# ------------------------------------------------------------------------------ helpers


def _per_member(mask, like):
    """(N,) -> broadcastable against a stacked tensor `like` of shape (N, ...)."""
    return tf.reshape(mask, [-1] + [1] * (like.shape.rank - 1))


def _member_sq_norms(tensors):
    """(N,) sums of squares over each member's slice of all `tensors`; as (squares) @ ones, the
    form XLA on CPU vectorises (see `training._global_norm`)."""
    total = 0.0
    for t in tensors:
        m = tf.reshape(tf.square(t), [tf.shape(t)[0], -1])
        total += tf.matmul(m, tf.ones([m.shape[-1], 1], m.dtype))[:, 0]
    return total


def stacked_logits(params, x, activation, input_shape: tuple[int, ...]):
    """Outputs (N, B, outputs) of the N dense nets whose weights are `params` (kernels
    (N, in, out) and biases (N, out), alternating) for inputs shared by all of them
    (B, *input_shape) or one batch each (N, B, *input_shape)."""
    flat = math.prod(input_shape)
    shared = x.shape.rank == len(input_shape) + 1
    h = tf.reshape(x, [-1, flat] if shared else [tf.shape(params[0])[0], -1, flat])
    layers = len(params) // 2
    for j in range(layers):
        kernel, bias = params[2 * j], params[2 * j + 1]
        if h.shape.rank == 2:
            h = tf.einsum("bi,nio->nbo", h, kernel)
        else:
            h = tf.matmul(h, kernel)
        h = h + bias[:, None, :]
        if j < layers - 1:
            h = activation(h)
    return h


def initial_weights(spec: models.ModelSpec, input_shape: tuple[int, ...], outputs: int,
                    seed: int) -> list[np.ndarray]:
    """The weights `training.build_instrumented` starts a run with seed `seed` from."""
    keras.utils.set_random_seed(seed)
    network = models.build(spec, input_shape, outputs)
    return [v.numpy() for v in network.trainable_variables]


def dense_shapes(spec: models.ModelSpec, input_shape: tuple[int, ...],
                 outputs: int) -> list[tuple[int, ...]]:
    """Shapes of the weights of the dense `spec` (kernel (in, out), bias (out,), per layer)."""
    sizes = [math.prod(input_shape), *spec.hidden, outputs]
    shapes = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        shapes += [(a, b), (b,)]
    return shapes


def check_paddable(spec: models.ModelSpec, wide: models.ModelSpec) -> None:
    """Raises Hw1Error unless the dense `spec` zero-padded to `wide` computes `spec`'s function
    (same depth and activation, each width <= wide's, activation(0) = 0, no BatchNorm)."""
    if spec.kind != "dense" or wide.kind != "dense" or spec.batch_norm or wide.batch_norm:
        raise Hw1Error(f"model {spec.name}: only dense nets without BatchNorm can be padded")
    if (len(spec.hidden) != len(wide.hidden) or spec.activation != wide.activation
            or any(w < n for n, w in zip(spec.hidden, wide.hidden))):
        raise Hw1Error(f"model {spec.name} ({spec.describe()}) cannot be padded to "
                       f"{wide.describe()}: needs the same depth and activation, widths >=")
    activation = keras.activations.get(spec.activation)
    if float(activation(tf.zeros([1]))[0]) != 0.0:
        raise Hw1Error(f"model {spec.name}: padding needs activation(0) = 0; "
                       f"{spec.activation} is not")


def padded_initial_weights(spec: models.ModelSpec, wide: models.ModelSpec,
                           input_shape: tuple[int, ...], outputs: int,
                           seed: int) -> list[np.ndarray]:
    """The initial weights of `spec` (a run with seed `seed`) zero-padded to the wider `wide`
    (same depth, each width >= spec's). A padded unit has zero incoming weights and bias, so
    its pre-activation is 0 and, with activation(0) = 0, its output too: the net computes
    `spec`'s function, and every padded weight gets a zero gradient (its outgoing weights are
    zero, and so is its output), so it stays zero under any of OPTIMIZERS (zero gradient, zero
    state, zero step): as a population member it trains exactly as `spec` alone."""
    check_paddable(spec, wide)
    weights = initial_weights(spec, input_shape, outputs, seed)
    return [np.pad(w, [(0, t - n) for n, t in zip(w.shape, shape)])
            for w, shape in zip(weights, dense_shapes(wide, input_shape, outputs))]


def cropped_weights(weights: Sequence[np.ndarray], spec: models.ModelSpec,
                    input_shape: tuple[int, ...], outputs: int) -> list[np.ndarray]:
    """The block of (padded) `weights` that belongs to the narrower `spec`."""
    return [w[tuple(slice(0, n) for n in shape)]
            for w, shape in zip(weights, dense_shapes(spec, input_shape, outputs))]


# ---------------------------------------------------------------------------- optimizer


class _StackedOptimizer:
    """Keras' update rules on stacked variables, with a per-member step counter, learning rate
    and restart, applied only where a member mask is set."""

    def __init__(self, name: str, params: list[tf.Variable], learning_rate: float):
        if name not in OPTIMIZERS:
            raise Hw1Error(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
        self.name = name
        size = params[0].shape[0]
        self.learning_rate = tf.Variable(tf.fill([size], tf.constant(learning_rate, tf.float32)),
                                         trainable=False, name="learning_rate")
        self.steps = tf.Variable(tf.zeros([size]), trainable=False, name="steps")
        self.initial_slot = 0.1 if name == "adagrad" else 0.0  # Adagrad's accumulator start
        count = {"adam": 2, "sgd": 0, "rmsprop": 1, "adagrad": 1}[name]
        self.slots = [[tf.Variable(tf.fill(p.shape, self.initial_slot), trainable=False)
                       for p in params] for _ in range(count)]

    def restart(self, mask, learning_rate=None) -> None:
        """Fresh state for the members in `mask` (a new optimizer, as `set_objective` makes)."""
        self.steps.assign(tf.where(mask, 0.0, self.steps))
        if learning_rate is not None:
            self.learning_rate.assign(tf.where(mask, learning_rate, self.learning_rate))
        for slots in self.slots:
            for s in slots:
                s.assign(tf.where(_per_member(mask, s), self.initial_slot, s))

    def apply(self, grads, params, mask) -> None:
        steps = self.steps + 1.0
        if self.name == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-7
            alpha = self.learning_rate * tf.sqrt(1 - tf.pow(b2, steps)) / (1 - tf.pow(b1, steps))
        for j, (g, p) in enumerate(zip(grads, params)):
            keep = _per_member(mask, p)
            lr = _per_member(self.learning_rate, p)
            if self.name == "sgd":
                new = p - g * lr
            elif self.name == "adam":
                m, v = self.slots[0][j], self.slots[1][j]
                m_new = m + (g - m) * (1 - b1)
                v_new = v + (tf.square(g) - v) * (1 - b2)
                new = p - (m_new * _per_member(alpha, p)) / (tf.sqrt(v_new) + eps)
                m.assign(tf.where(keep, m_new, m))
                v.assign(tf.where(keep, v_new, v))
            elif self.name == "rmsprop":
                rho, eps = 0.9, 1e-7
                vel = self.slots[0][j]
                vel_new = rho * vel + (1 - rho) * tf.square(g)
                new = p - (lr * g) / tf.sqrt(vel_new + eps)
                vel.assign(tf.where(keep, vel_new, vel))
            else:  # adagrad
                acc = self.slots[0][j]
                acc_new = acc + tf.square(g)
                new = p - (lr * g) / tf.sqrt(acc_new + 1e-7)
                acc.assign(tf.where(keep, acc_new, acc))
            p.assign(tf.where(keep, new, p))
        self.steps.assign(tf.where(mask, steps, self.steps))


# ---------------------------------------------------------------------------- population


class Population:
    """N members of one dense `spec`, weights stacked along a leading member axis."""

    def __init__(self, spec: models.ModelSpec, input_shape: tuple[int, ...], outputs: int,
                 seeds: Sequence[int], strategy=None,
                 initial: Sequence[Sequence[np.ndarray]] | None = None):
        """Member i starts from `initial_weights(spec, ..., seeds[i])`, or from `initial[i]`
        (weights of `spec`'s shapes, e.g. `padded_initial_weights` of a narrower net)."""
        if spec.kind != "dense":
            raise Hw1Error(f"model {spec.name}: populations are dense only, got {spec.kind!r}")
        if not len(seeds):
            raise Hw1Error("a population needs at least one seed")
        if initial is not None:
            shapes = dense_shapes(spec, input_shape, outputs)
            if len(initial) != len(seeds) or any(
                    [tuple(np.shape(w)) for w in ws] != shapes for ws in initial):
                raise Hw1Error(f"initial weights: one list of {spec.describe()}'s shapes "
                               f"{shapes} per member ({len(seeds)}) needed")
        self.spec = spec
        self.input_shape = tuple(input_shape)
        self.outputs = outputs
        self.seeds = [int(s) for s in seeds]
        self.strategy = strategy or tf.distribute.get_strategy()
        self.activation = keras.activations.get(spec.activation)
        per_member = initial if initial is not None else [
            initial_weights(spec, self.input_shape, outputs, s) for s in self.seeds]
        with self.strategy.scope():
            self.params = [tf.Variable(np.stack([np.asarray(w[j], np.float32)
                                                 for w in per_member]), name=f"stacked_{j}")
                           for j in range(len(per_member[0]))]
        self.num_params = int(sum(np.prod(p.shape[1:]) for p in self.params))

    @property
    def size(self) -> int:
        return len(self.seeds)

    def logits(self, x):
        """Outputs (N, B, outputs) for inputs shared by all members (B, *input_shape) or one
        batch per member (N, B, *input_shape)."""
        return stacked_logits(self.params, x, self.activation, self.input_shape)

    def predict(self, x: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """Every member's outputs on `x` (B, *input_shape), or member i's on x[i] when `x` is
        (N, B, *input_shape): (N, B, outputs)."""
        axis = 0 if x.ndim == len(self.input_shape) + 1 else 1
        parts = [self._predict(tf.constant(np.take(x, range(i, min(i + batch_size,
                                                                    x.shape[axis])), axis)))
                 for i in range(0, x.shape[axis], batch_size)]
        return np.concatenate([p.numpy() for p in parts], axis=1)

    @tf.function(autograph=False)
    def _predict(self, x):
        return self.logits(x)

    def member_weights(self, i: int) -> list[np.ndarray]:
        return [p.numpy()[i] for p in self.params]

    @classmethod
    def from_flat(cls, spec: models.ModelSpec, input_shape: tuple[int, ...], outputs: int,
                  theta: np.ndarray, seeds: Sequence[int] | None = None,
                  strategy=None) -> "Population":
        """A population whose member i holds the flat parameter vector `theta[i]` ((M, P):
        each layer's kernel then bias, row-major, in `dense_shapes` order, as
        `critical.MemberLosses.flatten` lays them out), rounded to float32 as every
        population's weights are; `seeds` (default 0 .. M-1) only label the members. Its
        `member(i)` / `export_members` turn weights computed outside a population (e.g.
        float64 end points) into Keras models."""
        theta = np.asarray(theta)
        shapes = dense_shapes(spec, input_shape, outputs)
        sizes = [math.prod(s) for s in shapes]
        if theta.ndim != 2 or theta.shape[1] != sum(sizes):
            raise Hw1Error(f"flat weights of {spec.describe()}: (members, {sum(sizes)}) "
                           f"needed, got {theta.shape}")
        parts = np.split(theta, np.cumsum(sizes)[:-1], axis=1)
        initial = [[p[i].reshape(s) for p, s in zip(parts, shapes)] for i in range(len(theta))]
        return cls(spec, input_shape, outputs, range(len(theta)) if seeds is None else seeds,
                   strategy, initial=initial)

    def member(self, i: int, spec: models.ModelSpec | None = None) -> keras.Model:
        """Member i as an ordinary Keras model (`models.build`) holding its weights: the one
        conversion from a population member to a model (`export_members` and the experiments
        use it; shapes follow from the specs, no model is built to learn them).

        `spec` (default the population's): a narrower dense net that was zero-padded into
        the population (`padded_initial_weights`; same depth and activation, widths <=);
        the model is then `spec`'s, holding the block of member i's weights that belongs to
        it (`cropped_weights`), i.e. the narrow net the member trained as."""
        weights = self.member_weights(i)
        if spec is None:
            spec = self.spec
        elif dataclasses.replace(spec, name=self.spec.name) != self.spec:
            check_paddable(spec, self.spec)
            weights = cropped_weights(weights, spec, self.input_shape, self.outputs)
        network = models.build(spec, self.input_shape, self.outputs)
        network.set_weights(weights)
        return network


def export_members(population: Population, path_of: Callable[[int], str | Path],
                   members: Sequence[int] | None = None) -> list[Path]:
    """Exports members (all by default) as SavedModels at `path_of(i)` (`store.export_model`)."""
    chosen = range(population.size) if members is None else members
    return [store.export_model(population.member(i), path_of(i)) for i in chosen]


# ------------------------------------------------------------------------------- trainer


class _Trainer:
    """The compiled steps and the per-member state (objective, active, failed) of one run."""

    def __init__(self, population: Population, settings: PopulationSettings, num_classes: int,
                 train_xy, jit_compile: bool, chunk: int):
        self.pop = population
        self.settings = settings
        self.num_classes = num_classes
        self.chunk = chunk
        self.switching = (settings.switch_grad_norm_below is not None
                          or settings.switch_after_epochs is not None)
        self.may_minimise_norm = self.switching or settings.objective == "grad_norm"
        if settings.objective not in training.OBJECTIVES:
            raise Hw1Error(f"objective must be one of {training.OBJECTIVES}, "
                           f"got {settings.objective!r}")
        n = population.size
        with population.strategy.scope():
            self.optimizer = _StackedOptimizer(settings.optimizer, population.params,
                                               settings.learning_rate)
            start = training.OBJECTIVES.index(settings.objective)
            self.objective = tf.Variable(tf.fill([n], start), trainable=False, name="objective")
            self.active = tf.Variable(tf.ones([n], tf.bool), trainable=False, name="active")
        self.x_train = tf.constant(train_xy[0])
        self.y_train = tf.constant(train_xy[1])
        self.data_per_member = self.x_train.shape.rank == len(population.input_shape) + 2
        self.replicas = population.strategy.num_replicas_in_sync
        # explicit tf.while_loop / tf.cond only: AutoGraph converting the step took 5 s a trace
        self.run_chunk = tf.function(self._run_chunk, jit_compile=jit_compile, autograph=False)
        self.run_replicated = tf.function(self._run_replicated, autograph=False)
        self.eval_sums = tf.function(self._eval_sums, jit_compile=jit_compile, autograph=False)

    # ---- one iteration

    def _losses(self, x, y, global_batch):
        """Per-member summed loss / global batch (the mean once replicas are summed) and the
        number of correct predictions."""
        logits = self.pop.logits(x)
        n = self.pop.size
        if self.num_classes:
            labels = tf.broadcast_to(tf.cast(y, tf.int32), tf.shape(logits)[:2])
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                           tf.float32)
            correct = tf.reduce_sum(hits, axis=1)
        else:
            per_example = tf.reduce_mean(tf.square(y - logits), axis=-1)
            correct = tf.zeros([n])
        return tf.reduce_sum(per_example, axis=1) / tf.cast(global_batch, tf.float32), correct

    def _gradients(self, x, y, global_batch, hvp: bool, global_grads=None):
        """(losses, correct, grads, applied grads) of one batch; `applied` is 2 H_i g_i for the
        members minimising ||grad L||^2 (when `hvp`). On a replica, everything is its share,
        and `global_grads` (the replicas' summed gradients) is the g of H g: the shares of
        d/dθ <g_r, stop(g)> sum to H g."""
        params = self.pop.params
        if not hvp:
            with tf.GradientTape() as tape:
                losses, correct = self._losses(x, y, global_batch)
                total = tf.reduce_sum(losses)
            grads = tape.gradient(total, params)
            return losses, correct, grads, grads
        on_norm = tf.equal(self.objective, 1)
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                losses, correct = self._losses(x, y, global_batch)
                total = tf.reduce_sum(losses)
            grads = inner.gradient(total, params)
            full = grads if global_grads is None else global_grads
            # members on the loss are masked out of the surrogate
            surrogate = 2.0 * tf.add_n([
                tf.reduce_sum(tf.where(_per_member(on_norm, g), g * tf.stop_gradient(G), 0.))
                for g, G in zip(grads, full)])
        hv = outer.gradient(surrogate, params)
        # (members on the loss: their share of the gradient, summed over replicas like H g)
        applied = [tf.where(_per_member(on_norm, g), h, g) for h, g in zip(hv, grads)]
        return losses, correct, grads, applied

    def _update(self, losses, grads, applied):
        """Applies one iteration for the active members; the switch, stop and failure masks.
        Returns (grad norms, objective used) of the iteration."""
        s = self.settings
        norms = tf.sqrt(_member_sq_norms(grads))
        objective = self.objective.read_value()
        active = self.active.read_value()
        finite = tf.math.is_finite(losses) & tf.math.is_finite(norms)
        stepping = active & finite
        self.optimizer.apply(applied, self.pop.params, stepping)
        new_objective = objective
        if s.switch_grad_norm_below is not None:
            switch = stepping & tf.equal(objective, 0) & (norms < s.switch_grad_norm_below)
            self.optimizer.restart(switch, s.grad_norm_learning_rate)
            new_objective = tf.where(switch, 1, objective)
            self.objective.assign(new_objective)
        still = stepping
        if s.stop_grad_norm_below is not None:
            may_stop = tf.equal(new_objective, 1) if self.switching else tf.ones_like(stepping)
            still = stepping & ~(may_stop & (norms < s.stop_grad_norm_below))
        self.active.assign(still)
        return norms, objective, still

    def _batch(self, idx):
        """Rows `idx` ((B,) shared or (N, B) per member) of the training data, which is shared
        (n, ...) or one set per member (N, n, ...)."""
        if not self.data_per_member:
            return tf.gather(self.x_train, idx), tf.gather(self.y_train, idx)
        if idx.shape.rank == 1:
            return tf.gather(self.x_train, idx, axis=1), tf.gather(self.y_train, idx, axis=1)
        return (tf.gather(self.x_train, idx, batch_dims=1),
                tf.gather(self.y_train, idx, batch_dims=1))

    def _iteration(self, idx):
        """One iteration on one device: idx (B,) shared or (N, B) per member."""
        x, y = self._batch(idx)
        batch = tf.shape(idx)[-1]
        if not self.may_minimise_norm:  # no second-order branch to compile
            losses, correct, grads, applied = self._gradients(x, y, batch, False)
            norms, objective, active = self._update(losses, grads, applied)
            return losses, norms, objective, correct, active
        any_on_norm = tf.reduce_any(tf.equal(self.objective, 1) & self.active)
        losses, correct, grads, applied = tf.cond(
            any_on_norm, lambda: self._gradients(x, y, batch, True),
            lambda: self._gradients(x, y, batch, False))
        norms, objective, active = self._update(losses, grads, applied)
        return losses, norms, objective, correct, active

    def _run_chunk(self, chunk):
        """Iterations on each batch of `chunk` (k, [N,] B) in one (XLA) program; returns the
        (k, N) record columns and the batch sizes."""
        k = tf.shape(chunk)[0]
        n = self.pop.size

        def body(i, *columns):
            values = self._iteration(chunk[i])
            return (i + 1,) + tuple(
                tf.tensor_scatter_nd_update(col, [[i]], [tf.cast(v, col.dtype)])
                for col, v in zip(columns, values))

        zeros = tf.zeros([k, n])
        columns = (zeros, zeros, tf.zeros([k, n], tf.int32), zeros, tf.zeros([k, n], tf.bool))
        _, *columns = tf.while_loop(lambda i, *_: i < k, body, (tf.constant(0), *columns))
        return dict(zip(RECORD, columns))

    def _run_replicated(self, idx, hvp: bool):
        """One iteration under several replicas: each takes its slice of the global batch;
        the slices' sums are reduced in cross-replica context, where the update runs once
        (mirrored variables take it on every replica). Reductions go through the strategy's
        cross-device ops, not replica-context collectives: the collective instance keys of two
        MirroredStrategy objects in one process collided (shape mismatch) when the
        collectives' shapes differed."""
        strategy = self.pop.strategy
        batch = tf.shape(idx)[-1]

        def local_batch(idx):
            ctx = tf.distribute.get_replica_context()
            share = (batch + self.replicas - 1) // self.replicas
            start = tf.minimum(share * ctx.replica_id_in_sync_group, batch)
            return self._batch(idx[..., start:tf.minimum(start + share, batch)])

        def summed(per_replica):
            return tf.nest.map_structure(
                lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None),
                per_replica)

        losses, correct, grads, applied = summed(strategy.run(
            lambda idx: self._gradients(*local_batch(idx), batch, False), args=(idx,)))
        if hvp:
            _, _, _, applied = summed(strategy.run(
                lambda idx, g: self._gradients(*local_batch(idx), batch, True, g),
                args=(idx, grads)))
        norms, objective, active = self._update(losses, grads, applied)
        values = (losses, norms, objective, correct, active)
        return {key: v[None] for key, v in zip(RECORD, values)}

    def step_block(self, chunk: tf.Tensor) -> dict[str, np.ndarray]:
        """Runs one execution; the record columns back on the host."""
        if self.replicas > 1:
            hvp = bool(np.any((self.objective.numpy() == 1) & self.active.numpy()))
            out = self.run_replicated(chunk[0], hvp)
        else:
            out = self.run_chunk(chunk)
        return {k: v.numpy() for k, v in out.items()}

    def state(self) -> dict[str, Any]:
        """Everything the next iteration depends on: weights, optimizer slots and per-member
        step counters and learning rates, objective and active masks."""
        opt = self.optimizer
        return {"params": [p.numpy() for p in self.pop.params], "steps": opt.steps.numpy(),
                "learning_rate": opt.learning_rate.numpy(),
                "slots": [[v.numpy() for v in slots] for slots in opt.slots],
                "objective": self.objective.numpy(), "active": self.active.numpy()}

    def restore(self, state: dict[str, Any]) -> None:
        opt = self.optimizer
        variables = [*self.pop.params, opt.steps, opt.learning_rate,
                     *(v for slots in opt.slots for v in slots), self.objective, self.active]
        values = [*state["params"], state["steps"], state["learning_rate"],
                  *(v for slots in state["slots"] for v in slots), state["objective"],
                  state["active"]]
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)

    def switch(self, mask: np.ndarray) -> None:
        """Host-side switch (after N epochs) for the members in `mask`."""
        mask = tf.constant(mask) & tf.equal(self.objective, 0)
        self.optimizer.restart(mask, self.settings.grad_norm_learning_rate)
        self.objective.assign(tf.where(mask, 1, self.objective))

    # ---- evaluation

    def _eval_sums(self, x, y):
        losses, correct = self._losses(x, y, 1)
        return losses, correct

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-member mean loss and accuracy on (x, y), shared or one set per member."""
        axis = 1 if self.data_per_member else 0
        n = x.shape[axis]
        loss = np.zeros(self.pop.size)
        correct = np.zeros(self.pop.size)
        for i in range(0, n, EVAL_BATCH):
            rows = range(i, min(i + EVAL_BATCH, n))
            l, c = self.eval_sums(tf.constant(np.take(x, rows, axis)),
                                  tf.constant(np.take(y, rows, axis)))
            loss += l.numpy()
            correct += c.numpy()
        return loss / n, correct / n


# ------------------------------------------------------------------------------- training


def _index_chunks(n: int, settings: PopulationSettings, seeds: Sequence[int], chunk: int,
                  first_epoch: int = 0):
    """Chunks (k, N, B) of per-member batch indices (each member's `pipeline.index_chunks`
    with its own seed, so its batches are those of a single run with that seed), or (k, B)
    shared; from epoch `first_epoch` on (an epoch's order depends only on seed and epoch)."""
    def chunks(seed):
        return pipeline.index_chunks(n, settings.batch_size, chunk, shuffle=settings.shuffle,
                                     seed=seed, epochs=settings.epochs, first_epoch=first_epoch)

    if settings.shared_order or not settings.shuffle:
        return chunks(settings.seed)
    return tf.data.Dataset.zip(tuple(chunks(s) for s in seeds)).map(
        lambda *members: tf.stack(members, axis=1)).prefetch(2)


def _member_history(i: int, columns: dict[str, np.ndarray], batch_sizes: np.ndarray,
                    epoch_ends: list[int], end: int, test: dict[str, np.ndarray],
                    num_classes: int, switched_at: int | None, stopped: bool,
                    failed: bool) -> dict[str, Any]:
    """Member i's history in the structure of `training.train`'s, cut where it stopped."""
    starts = [0] + epoch_ends[:-1]
    kept = [e for e, s in enumerate(starts) if s < end]
    epoch = {"train_loss": [], **({"train_accuracy": []} if num_classes else {})}
    for e in kept:
        lo, hi = starts[e], min(epoch_ends[e], end)
        weights = batch_sizes[lo:hi]
        epoch["train_loss"].append(
            float(np.sum(columns["loss"][lo:hi, i] * weights) / np.sum(weights)))
        if num_classes:
            epoch["train_accuracy"].append(
                float(np.sum(columns["correct"][lo:hi, i]) / np.sum(weights)))
    for key, values in test.items():
        epoch[key] = [float(v) for v in values[kept, i]]
    return {
        "iteration": {"loss": columns["loss"][:end, i].tolist(),
                      "grad_norm": columns["grad_norm"][:end, i].tolist(),
                      "objective": columns["objective"][:end, i].astype(int).tolist()},
        "objective_names": list(training.OBJECTIVES),
        "epoch": epoch,
        "epoch_end_iteration": [min(epoch_ends[e], end) for e in kept],
        "switched_at_iteration": switched_at,
        "stopped_at_iteration": end if stopped else None,
        "failed_at_iteration": end if failed else None,
        **training.NO_EPOCH_STOP,  # a population follows no per-epoch rule (unsupported)
    }


def stack_splits(splits: Sequence[data.Splits]) -> data.Splits:
    """One Splits whose arrays carry a leading member axis: member i trains on splits[i]."""
    first = splits[0]
    for s in splits[1:]:
        if (s.x_train.shape, s.x_test.shape, s.num_classes) != \
                (first.x_train.shape, first.x_test.shape, first.num_classes):
            raise Hw1Error(f"population members need data of one shape: {s.name} has "
                           f"{s.x_train.shape}/{s.x_test.shape}, {first.name} "
                           f"{first.x_train.shape}/{first.x_test.shape}")
    return data.Splits("+".join(dict.fromkeys(s.name for s in splits)),
                       *(np.stack([getattr(s, k) for s in splits])
                         for k in ("x_train", "y_train", "x_test", "y_test")),
                       num_classes=first.num_classes)


BACKUP_FILE = "population.npz"


@dataclasses.dataclass
class _Progress:
    """What the loop has collected so far: the record blocks, batch sizes, epoch ends, test
    history, switch iterations, epochs done and the seconds trained before a resume."""

    blocks: list[dict[str, np.ndarray]]
    batch_sizes: list[int]
    epoch_ends: list[int]
    test: dict[str, list[np.ndarray]]
    switched_at: np.ndarray
    iterations: int = 0
    epochs_done: int = 0
    seconds_before: float = 0.0

    def columns(self) -> dict[str, np.ndarray]:
        return {key: np.concatenate([b[key] for b in self.blocks]) for key in RECORD}

    def state(self, seconds: float) -> dict[str, Any]:
        return {"columns": self.columns() if self.blocks else None,
                "batch_sizes": np.asarray(self.batch_sizes, np.int64),
                "epoch_ends": list(self.epoch_ends),
                "test": {k: np.asarray(v) for k, v in self.test.items()},
                "switched_at": self.switched_at.copy(), "iterations": self.iterations,
                "epochs_done": self.epochs_done, "seconds": seconds}

    @classmethod
    def restored(cls, state: dict[str, Any]) -> "_Progress":
        return cls([state["columns"]] if state["columns"] is not None else [],
                   [int(b) for b in state["batch_sizes"]], list(state["epoch_ends"]),
                   {k: list(v) for k, v in state["test"].items()},
                   np.asarray(state["switched_at"]), state["iterations"],
                   state["epochs_done"], state["seconds"])


def _fingerprint(population: Population, settings: PopulationSettings, splits: data.Splits,
                 stateful: Sequence[Any]) -> dict[str, Any]:
    """What a backup must match to be resumed: members, model, settings, training data and
    the members' starting weights (called before training: `initial` may be given ones)."""
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k != "verbose"}
    return store.fingerprint(splits.x_train, splits.y_train,
                             *(p.numpy() for p in population.params), spec=population.spec,
                             seeds=population.seeds, settings=values,
                             input_shape=population.input_shape, callbacks=len(stateful))


def _restore_backup(backup: store.Backup, trainer: _Trainer, stateful: Sequence[Any],
                    run_name: str) -> _Progress | None:
    """The progress of the backup with the trainer and the stateful callbacks set to it, or
    None (no backup, or one of another run: ignored)."""
    state = backup.restore()
    if state is None:
        return None
    trainer.restore(state["trainer"])
    for fn, value in zip(stateful, state["callbacks"]):
        fn.restore_state(value)
    progress = _Progress.restored(state["progress"])
    logging.info("%s: resuming after epoch %d from the backup in %s", run_name,
                 progress.epochs_done, backup.path.parent)
    return progress


def unsupported(settings: Any) -> list[str]:
    """The options set in `settings` (or a config) that a population does not follow and a
    model trained alone does (config.StopOptions: a population stops a member only on
    ||grad L|| and keeps one learning rate): the one place that says so, for
    `train_population` and for experiments choosing how to train (capacity)."""
    return [f.name for f in dataclasses.fields(StopOptions)
            if getattr(settings, f.name, f.default) not in (None, f.default)]


def train_population(spec: models.ModelSpec, splits: data.Splits | Sequence[data.Splits],
                     settings: PopulationSettings,
                     seeds: Sequence[int], *, strategy=None, run_name: str = "population",
                     callbacks: Sequence[Callable[[int, Population], None]] = (),
                     backup_dir: str | Path | None = None,
                     initial: Sequence[Sequence[np.ndarray]] | None = None
                     ) -> tuple[Population, list[dict[str, Any]]]:
    """Trains one member per seed of `spec` on `splits` (shared, or a sequence with one
    Splits per member, all of one shape); returns (population, histories). Members start from
    their seed's initial weights, or from `initial` (see `Population`); seeds[i] still orders
    member i's batches.

    histories[i] has the keys of `training.train`'s history (plus `failed_at_iteration`,
    `population_size`; `seconds` is the whole population's time). `callbacks` are called as
    fn(epoch, population) after every epoch; those with `backup_state()` (arrays, numbers,
    lists, dicts) and `restore_state(state)` are backed up with the run.

    With `backup_dir`, the whole state (weights, optimizer slots and step counters, masks, the
    history so far, the callbacks' state) is written there atomically at epoch ends
    (`store.BackupSchedule`: the first, the last, and as often as costs under 5% of the
    time); started again after a kill with the same arguments, training continues from the
    epoch after the backup and ends exactly where an uninterrupted run ends (an epoch's batch
    order depends only on the seed and the epoch). The caller removes `backup_dir` once the
    results are kept.
    """
    refused = unsupported(settings)
    if refused:
        raise Hw1Error("a population does not stop at a training loss or accuracy target and "
                       "keeps its learning rate; train these models one by one to use "
                       + " / ".join(f"--{k}" for k in refused))
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(splits, data.Splits):
        if len(splits) != len(seeds):
            raise Hw1Error(f"{len(splits)} datasets for {len(seeds)} members; give one each")
        splits = stack_splits(splits)
        input_shape = splits.input_shape[1:]
    else:
        input_shape = splits.input_shape
    jit, spe = distribute.execution_settings(strategy, settings.jit_compile,
                                             settings.steps_per_execution)
    chunk = spe if strategy.num_replicas_in_sync == 1 else 1
    outputs = splits.num_classes or 1
    population = Population(spec, input_shape, outputs, seeds, strategy, initial)
    trainer = _Trainer(population, settings, splits.num_classes,
                       (splits.x_train, splits.y_train), jit, chunk)
    logging.info("%s: %d members of %s, %d parameters each, %d epochs", run_name,
                 population.size, spec.describe(), population.num_params, settings.epochs)
    n = splits.x_train.shape[1 if trainer.data_per_member else 0]
    training.warn_if_batch_exceeds(run_name, settings.batch_size, n)
    size = population.size
    evaluate_test = settings.evaluate_test and splits.x_test is not None and splits.x_test.size
    stateful = [fn for fn in callbacks if hasattr(fn, "backup_state")]
    backup = store.Backup(Path(backup_dir) / BACKUP_FILE,
                          _fingerprint(population, settings, splits, stateful),
                          run_name) if backup_dir is not None else None
    progress = backup and _restore_backup(backup, trainer, stateful, run_name)
    if not progress:
        switched_at = np.full(size, -1)
        switched_at[trainer.objective.numpy() == 1] = -2  # minimised the norm from the start
        progress = _Progress([], [], [], {"test_loss": [], **(
            {"test_accuracy": []} if splits.num_classes else {})}, switched_at)
    per_epoch = pipeline.chunks_per_epoch(n, settings.batch_size, chunk)
    start = time.perf_counter()
    first_epoch = progress.epochs_done
    # a run whose members had all stopped was over when it was backed up
    done = first_epoch >= settings.epochs or not trainer.active.numpy().any()
    chunks = iter(_index_chunks(n, settings, population.seeds, chunk, first_epoch)
                  if not done else ())
    for epoch in range(first_epoch, settings.epochs if not done else first_epoch):
        for _ in range(per_epoch):
            idx = next(chunks)
            block = trainer.step_block(idx)
            k = block["loss"].shape[0]
            first_on_norm = np.where(block["objective"].any(axis=0),
                                     block["objective"].argmax(axis=0), k)
            progress.blocks.append(block)
            progress.batch_sizes += [idx.shape[-1]] * k
            progress.iterations += k
            _note_switches(progress.switched_at, trainer.objective.numpy(),
                           progress.iterations - k + first_on_norm, progress.iterations)
        progress.epoch_ends.append(progress.iterations)
        if settings.switch_after_epochs is not None and epoch + 1 >= settings.switch_after_epochs:
            trainer.switch(trainer.active.numpy())
            _note_switches(progress.switched_at, trainer.objective.numpy(),
                           np.full(size, progress.iterations), progress.iterations)
        if evaluate_test:
            loss, accuracy = trainer.evaluate(splits.x_test, splits.y_test)
            progress.test["test_loss"].append(loss)
            if splits.num_classes:
                progress.test["test_accuracy"].append(accuracy)
        for fn in callbacks:
            fn(epoch, population)
        progress.epochs_done = epoch + 1
        active = trainer.active.numpy()
        if backup and backup.due(final=epoch + 1 == settings.epochs or not active.any()):
            backup.write({
                "trainer": trainer.state(),
                "callbacks": [fn.backup_state() for fn in stateful],
                "progress": progress.state(progress.seconds_before
                                           + time.perf_counter() - start)})
        _log_progress(run_name, epoch, first_epoch, settings, progress.blocks[-1], active, start)
        if not active.any():
            break
    seconds = progress.seconds_before + time.perf_counter() - start
    return population, _histories(population, progress.columns(),
                                  np.asarray(progress.batch_sizes), progress.epoch_ends,
                                  {k: np.asarray(v) for k, v in progress.test.items() if v},
                                  splits.num_classes, progress.switched_at, seconds, run_name)


def _note_switches(switched_at: np.ndarray, objective: np.ndarray, first_on_norm: np.ndarray,
                   iterations: int) -> None:
    """Remembers, for members newly minimising the norm, the iteration they switched at: their
    first iteration on the norm in the block, else (switched at its end) the iteration count."""
    new = (objective == 1) & (switched_at == -1)
    switched_at[new] = np.minimum(first_on_norm[new], iterations)


def _log_progress(run_name, epoch, first_epoch, settings, block, active, start) -> None:
    done = epoch + 1
    every = max(1, settings.epochs // 10)
    if settings.verbose == 0 and done % every and done != settings.epochs:
        return
    elapsed = time.perf_counter() - start  # of this session: a resumed run started later
    losses = block["loss"][-1][active] if active.any() else block["loss"][-1]
    logging.info("%s: epoch %d/%d, %d/%d members active, median loss %.4g, %.0f s elapsed, "
                 "ETA %.0f s", run_name, done, settings.epochs, int(active.sum()), active.size,
                 float(np.median(losses)), elapsed,
                 elapsed / (done - first_epoch) * (settings.epochs - done))


def _histories(population, columns, batch_sizes, epoch_ends, test, num_classes, switched_at,
               seconds, run_name) -> list[dict[str, Any]]:
    total = len(batch_sizes)
    finite = np.isfinite(columns["loss"]) & np.isfinite(columns["grad_norm"])
    out = []
    for i in range(population.size):
        # the member is frozen from its first inactive iteration on: later records are not its
        # own. That iteration stopped it (its update applied) or failed it (not applied).
        inactive = np.flatnonzero(~columns["active"][:, i])
        stopped = inactive.size > 0 and bool(finite[inactive[0], i])
        failed = inactive.size > 0 and not stopped
        end = total if not inactive.size else int(inactive[0]) + (1 if stopped else 0)
        if failed:
            logging.warning("%s member %d (seed %d): the loss became %s at iteration %d; marked "
                            "failed, weights kept from before", run_name, i, population.seeds[i],
                            columns["loss"][end, i], end)
        switched = int(switched_at[i]) if switched_at[i] >= 0 else None
        history = _member_history(i, columns, batch_sizes, epoch_ends, end, test, num_classes,
                                  switched if switched is None or switched <= end else None,
                                  stopped, failed)
        history.update(num_params=population.num_params, seconds=seconds,
                       population_size=population.size)
        out.append(history)
    return out
