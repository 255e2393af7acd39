"""The one training core: an instrumented Keras model and the `train` function every experiment
uses.

`InstrumentedModel` wraps any Keras network. Its `train_step` (keeping `fit`, callbacks and
metrics) records, for EVERY iteration:
  * `loss`       the global mean mini-batch loss,
  * `grad_norm`  ||grad L||_2 of the globally all-reduced gradient (not one replica's share),
  * `objective`  0 = the step minimised the loss, 1 = it minimised ||grad L||^2.
The values go into preallocated device-side buffers, one slot per step of an execution, read back
once per execution by `IterationLog`; so the history stays exact under `steps_per_execution > 1`
and `jit_compile=True`, at the cost of one small device-to-host copy per execution.

Objective "grad_norm" minimises ||grad L||^2 whose gradient is 2 H g (a Hessian-vector product,
from a nested tape). Under several replicas each replica differentiates <g_r, stop(g)> where g is
the all-reduced gradient; the optimizer's own all-reduce then sums the replicas' H_r g into H g.
`ObjectiveSwitch` flips the objective when the norm falls below a threshold or after N epochs,
and stops training when it falls below a stop threshold.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hw1_tf import data, distribute
from hw1_tf.errors import Hw1Error, TrainingDivergedError

OBJECTIVES = ("loss", "grad_norm")


class _Recorder:
    """Device-side per-iteration buffers (a plain object, so Keras neither tracks nor exports it).

    Created inside the strategy scope; `ONLY_FIRST_REPLICA` aggregation lets every replica write
    the (identical, globally reduced) value in replica context.
    """

    FIELDS = ("loss", "grad_norm", "objective")

    def __init__(self, capacity: int):
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.capacity = capacity
        self.buffers = {
            f: tf.Variable(tf.zeros([capacity], tf.float32), trainable=False, aggregation=agg,
                           name=f"record_{f}")
            for f in self.FIELDS
        }
        self.count = tf.Variable(0, dtype=tf.int32, trainable=False, aggregation=agg,
                                 name="record_count")

    def write(self, **values) -> None:
        """Appends one iteration's values (one slot per field)."""
        index = [[self.count.read_value()]]
        for field, value in values.items():
            buf = self.buffers[field]
            buf.assign(tf.tensor_scatter_nd_update(buf, index, [tf.cast(value, tf.float32)]))
        self.count.assign_add(1)

    def write_block(self, count, **columns) -> None:
        """Appends `count` iterations at once from (capacity,)-shaped columns (fused path:
        the loop carries plain tensors and touches the variables once per execution)."""
        start = self.count.read_value()
        keep = tf.range(self.capacity) < count
        for field, column in columns.items():
            buf = self.buffers[field]
            shifted = tf.roll(tf.cast(column, tf.float32), shift=start, axis=0)
            in_block = tf.roll(keep, shift=start, axis=0)
            buf.assign(tf.where(in_block, shifted, buf))
        self.count.assign_add(count)

    def drain(self) -> dict[str, np.ndarray]:
        """Reads the filled slots back to the host and empties the buffers."""
        n = int(self.count.numpy())
        out = {f: self.buffers[f].numpy()[:n].copy() for f in self.FIELDS}
        self.count.assign(0)
        return out


def _global_sum(values):
    """All-reduce (SUM) across replicas; identity with one replica."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


class InstrumentedModel(keras.Model):
    """A Keras model around `network` whose train step records loss and gradient norm."""

    def __init__(self, network: keras.Model, objective: str = "loss", record: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise Hw1Error(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.network = network
        self.objective = objective
        self.record = record  # False: no per-iteration history (to measure what it costs)
        self.recorder: _Recorder | None = None
        self.chunk_size = 1
        self.resident_data: tuple | None = None  # fused path: (x, y) variables on the device
        self._resident_source: tuple = ()

    def hold_training_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """Copies the training arrays into device variables for the fused path (once per
        array pair; untracked, so neither checkpoints nor SavedModels carry them)."""
        if self._resident_source and self._resident_source[0] is x and \
                self._resident_source[1] is y:
            return
        with self.distribute_strategy.scope():
            self.resident_data = (tf.Variable(x, trainable=False), tf.Variable(y, trainable=False))
        self._resident_source = (x, y)
        # the traced train function captured the previous variables
        if self.train_function is not None:
            self.make_train_function(force=True)

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def compile(self, *args, steps_per_execution: int = 1, jit_compile=False,
                fused_steps: bool = True, **kwargs):
        """As Keras' compile. With XLA, several steps per execution and no explicit strategy,
        the steps are fused: Keras runs one step per call on a chunk of `steps_per_execution`
        batches of indices (`hw1_tf.data.index_chunks`) that one XLA program loops over, which
        removes the per-step dispatch cost of Keras' own multi-step loop (1.5x faster for the
        MNIST MLP at batch 64 here, bench/train_throughput.py)."""
        # Only without an explicit strategy: under any tf.distribute strategy (one_device and
        # single-worker multi_worker included) the optimizer's merge_call cannot sit inside the
        # fused loop, so Keras' own multi-step loop is used there.
        self.chunk_size = (steps_per_execution if fused_steps and jit_compile is True
                           and steps_per_execution > 1 and not tf.distribute.has_strategy()
                           else 1)
        super().compile(*args, jit_compile=jit_compile,
                        steps_per_execution=1 if self.chunk_size > 1 else steps_per_execution,
                        **kwargs)
        with self.distribute_strategy.scope():
            self.recorder = _Recorder(capacity=steps_per_execution)

    def set_objective(self, objective: str, *, fresh_optimizer: bool = True,
                      learning_rate: float | None = None) -> None:
        """Switches what the train step minimises; retraces the train function once.

        With `fresh_optimizer` the optimizer restarts (same class and settings, optionally
        another learning rate): Adam's moments from the loss phase would otherwise keep pushing
        along the old gradient (measured: ||g|| jumped 30x right after the switch)."""
        if objective not in OBJECTIVES:
            raise Hw1Error(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective == self.objective:
            return
        self.objective = objective
        if fresh_optimizer:
            config = self.optimizer.get_config()
            if learning_rate is not None:
                config["learning_rate"] = learning_rate
            with self.distribute_strategy.scope():
                optimizer = type(self.optimizer).from_config(config)
                optimizer.build(self.trainable_variables)  # not inside the traced loop
            self.optimizer = optimizer
        if self.train_function is not None:
            self.make_train_function(force=True)

    def _loss(self, x, y, sample_weight):
        y_pred = self(x, training=True)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=True)
        return y_pred, loss

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self.chunk_size == 1:
            y_pred, loss, grad_norm = self._one_iteration(x, y, sample_weight)
            if self.record:
                self.recorder.write(loss=loss, grad_norm=grad_norm,
                                    objective=OBJECTIVES.index(self.objective))
            return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        # x is a chunk of index rows (data.index_chunks) into the data held on the device.
        def body(i, losses, norms):  # iteration on batch i of the chunk, in one XLA program
            xi = tf.gather(self.resident_data[0], x[i])
            yi = tf.gather(self.resident_data[1], x[i])
            y_pred, loss, norm = self._one_iteration(xi, yi, None)
            self.compute_metrics(xi, yi, y_pred, sample_weight=None)
            return (i + 1, tf.tensor_scatter_nd_update(losses, [[i]], [loss]),
                    tf.tensor_scatter_nd_update(norms, [[i]], [norm]))

        zeros = tf.zeros([self.recorder.capacity], tf.float32)
        count, losses, norms = tf.while_loop(lambda i, *_: i < tf.shape(x)[0], body,
                                             (tf.constant(0), zeros, zeros))
        if self.record:
            self.recorder.write_block(count, loss=losses, grad_norm=norms,
                                      objective=zeros + OBJECTIVES.index(self.objective))
        return self.get_metrics_result()

    def _one_iteration(self, x, y, sample_weight):
        """One optimizer step on one batch; returns (predictions, global mean loss, ||grad L||)
        for the caller to record."""
        variables = self.trainable_variables
        if self.objective == "loss":
            with tf.GradientTape() as tape:
                y_pred, loss = self._loss(x, y, sample_weight)
            grads = tape.gradient(loss, variables)
            global_grads = _global_sum(grads)
            applied = grads
        else:
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    y_pred, loss = self._loss(x, y, sample_weight)
                grads = inner.gradient(loss, variables)
                global_grads = _global_sum(grads)
                # d/dθ Σ_r <g_r, stop(g)> = H g, so 2x this is the gradient of ||g||^2.
                surrogate = 2.0 * tf.add_n([tf.reduce_sum(g * tf.stop_gradient(G))
                                            for g, G in zip(grads, global_grads)])
            applied = outer.gradient(surrogate, variables)
        grad_norm = _global_norm(global_grads)
        self.optimizer.apply_gradients(zip(applied, variables))

        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        self._loss_tracker.update_state(_unscale(loss), sample_weight=batch)
        return y_pred, tf.cast(_global_sum(loss), tf.float32), tf.cast(grad_norm, tf.float32)


def _global_norm(tensors):
    """||concat(tensors)||_2, each sum of squares done as (squares as a matrix) @ ones: XLA on
    CPU lowers a reduction to a slow scalar loop but a matmul to its vectorised multithreaded
    kernel. Measured on the MNIST MLP at batch 64: tf.linalg.global_norm made recording cost
    28% of the step, this form 2%."""
    sums = []
    for t in tensors:
        m = tf.reshape(t, [-1, t.shape[-1]]) if t.shape.rank and t.shape.rank > 1 else \
            tf.reshape(t, [1, -1])
        sums.append(tf.reduce_sum(tf.matmul(tf.square(m), tf.ones([m.shape[-1], 1], m.dtype))))
    return tf.sqrt(tf.add_n(sums))


def _unscale(loss):
    """The replica's share of the loss times the number of replicas (Keras scales it down)."""
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    return loss * tf.cast(replicas, loss.dtype)


# ------------------------------------------------------------------------------- callbacks


class IterationLog(keras.callbacks.Callback):
    """Drains the model's per-iteration buffers after each execution; stops on NaN/inf loss."""

    def __init__(self, run_name: str = "run"):
        super().__init__()
        self.run_name = run_name
        self.loss: list[float] = []
        self.grad_norm: list[float] = []
        self.objective: list[int] = []
        self.epoch_end_iteration: list[int] = []

    def on_train_batch_end(self, batch, logs=None):
        values = self.model.recorder.drain()
        if values["loss"].size and not np.all(np.isfinite(values["loss"])):
            bad = len(self.loss) + int(np.argmax(~np.isfinite(values["loss"])))
            raise TrainingDivergedError(
                f"{self.run_name}: the loss became {values['loss'][bad - len(self.loss)]} at "
                f"iteration {bad}; lower --learning_rate or change the optimizer")
        self.loss.extend(values["loss"].tolist())
        self.grad_norm.extend(values["grad_norm"].tolist())
        self.objective.extend(values["objective"].astype(int).tolist())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end_iteration.append(len(self.loss))

    @property
    def last_grad_norm(self) -> float:
        return self.grad_norm[-1] if self.grad_norm else math.inf


class ObjectiveSwitch(keras.callbacks.Callback):
    """Loss -> gradient-norm minimisation when ||g|| < `switch_below` or after `switch_after_epochs`
    epochs; stops once ||g|| < `stop_below` (while minimising the norm, or at once if the switch is
    disabled). Checked after every execution, on the last recorded iteration."""

    def __init__(self, log: IterationLog, switch_below: float | None = None,
                 switch_after_epochs: int | None = None, stop_below: float | None = None,
                 learning_rate: float | None = None):
        super().__init__()
        self.log = log
        self.learning_rate = learning_rate  # of the gradient-norm phase (None: unchanged)
        self.switch_below = switch_below
        self.switch_after_epochs = switch_after_epochs
        self.stop_below = stop_below
        self.switched_at_iteration: int | None = None
        self.stopped_at_iteration: int | None = None

    def _switch(self):
        if self.model.objective != "grad_norm":
            self.switched_at_iteration = len(self.log.loss)
            logging.info("%s: switching to gradient-norm minimisation at iteration %d "
                         "(||g|| = %.3g)", self.log.run_name, self.switched_at_iteration,
                         self.log.last_grad_norm)
            self.model.set_objective("grad_norm", learning_rate=self.learning_rate)

    def on_train_batch_end(self, batch, logs=None):
        norm = self.log.last_grad_norm
        if self.switch_below is not None and norm < self.switch_below:
            self._switch()
        switching = self.switch_below is not None or self.switch_after_epochs is not None
        if (self.stop_below is not None and norm < self.stop_below
                and (self.model.objective == "grad_norm" or not switching)):
            self.stopped_at_iteration = len(self.log.loss)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.switch_after_epochs is not None and epoch + 1 >= self.switch_after_epochs:
            self._switch()


class ProgressLog(keras.callbacks.Callback):
    """One log line per tenth of the run (epoch, loss, last ||g||, elapsed, ETA): progress for
    long quiet runs (verbose=0), where Keras prints nothing."""

    def __init__(self, log: IterationLog, epochs: int, every: int | None = None):
        super().__init__()
        self.log = log
        self.epochs = epochs
        self.every = every or max(1, epochs // 10)
        self.start = time.perf_counter()

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every and done != self.epochs:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.epochs - done)
        logging.info("%s: epoch %d/%d, loss %.4g, ||g|| %.3g, %.0f s elapsed, ETA %.0f s",
                     self.log.run_name, done, self.epochs, (logs or {}).get("loss", math.nan),
                     self.log.last_grad_norm, elapsed, eta)


# ------------------------------------------------------------------------------------ train


@dataclasses.dataclass
class TrainSettings:
    """The knobs of one training run (experiments copy them from their configs)."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    jit_compile: bool = True
    steps_per_execution: int = 64
    fused_steps: bool = True  # XLA + several steps + one replica: loop inside one XLA program
    record_history: bool = True  # per-iteration loss / grad norm / objective
    objective: str = "loss"
    switch_grad_norm_below: float | None = None
    switch_after_epochs: int | None = None
    stop_grad_norm_below: float | None = None
    grad_norm_learning_rate: float | None = None  # after the switch (None: learning_rate)
    shuffle: bool = True
    verbose: int = 1


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    table = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
             "rmsprop": keras.optimizers.RMSprop, "adagrad": keras.optimizers.Adagrad}
    if name not in table:
        raise Hw1Error(f"unknown optimizer {name!r}; choose from {', '.join(table)}")
    return table[name](learning_rate=learning_rate)


def loss_and_metrics(num_classes: int):
    """Cross-entropy + accuracy for classification, MSE for regression (num_classes == 0)."""
    if num_classes:
        return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return keras.losses.MeanSquaredError(), []


def _xla_slow_here(network: keras.Model) -> bool:
    """XLA's CPU convolutions are far slower than TF's oneDNN kernels (measured: a 4-conv MNIST
    net took 164 s fused under XLA vs 3.3 s without, 2 cores); on a GPU XLA is fine."""
    has_conv = any(isinstance(layer, keras.layers.Conv2D) for layer in network._flatten_layers())
    return has_conv and not tf.config.list_logical_devices("GPU")


def build_instrumented(network_fn, num_classes: int, settings: TrainSettings, strategy=None):
    """Builds `network_fn()` inside the strategy scope, wraps and compiles it."""
    strategy = strategy or tf.distribute.get_strategy()
    jit, spe = distribute.execution_settings(strategy, settings.jit_compile,
                                             settings.steps_per_execution)
    keras.utils.set_random_seed(settings.seed)
    with strategy.scope():
        network = network_fn()
        if jit and _xla_slow_here(network):
            logging.info("%s: XLA disabled (convolutions under XLA on CPU ran 20-50x slower "
                         "here); training without jit_compile", network.name)
            jit = False
        model = InstrumentedModel(network, objective=settings.objective,
                                  record=settings.record_history)
        loss, metrics = loss_and_metrics(num_classes)
        model.compile(optimizer=make_optimizer(settings.optimizer, settings.learning_rate),
                      loss=loss, metrics=metrics, jit_compile=jit, steps_per_execution=spe,
                      fused_steps=settings.fused_steps)
        input_shape = tuple(network.input_shape[1:])
        model.build((None,) + input_shape)
        if model.chunk_size > 1:
            # Build metrics, loss and optimizer state on one plain batch now: Keras would
            # otherwise build them from the first (chunk-shaped) element of the dataset.
            y0 = np.zeros((1,), np.int32) if num_classes else np.zeros((1, 1), np.float32)
            model._symbolic_build(data_batch=(np.zeros((1,) + input_shape, np.float32), y0))
    return model


def train_dataset(model: InstrumentedModel, x, y, batch_size: int, *, shuffle: bool = True,
                  seed: int = 0, epochs: int = 1):
    """The training `tf.data` pipeline `model` expects for `epochs` epochs, and its steps per
    epoch (pass both to `fit`): index chunks into data the model holds on the device when its
    steps are fused, plain (x, y) batches otherwise; the same batches either way."""
    if model.chunk_size > 1:
        model.hold_training_data(x, y)
        return (data.index_chunks(len(x), batch_size, model.chunk_size, shuffle=shuffle,
                                  seed=seed, epochs=epochs),
                data.chunks_per_epoch(len(x), batch_size, model.chunk_size))
    return (data.to_dataset(x, y, batch_size, shuffle=shuffle, seed=seed, epochs=epochs),
            data.batches_per_epoch(len(x), batch_size))


def _align_steps_per_execution(model: InstrumentedModel, steps_per_epoch: int) -> None:
    """Keras' own multi-step loop runs whole executions, so over a dataset spanning all epochs
    an execution would run past the epoch's end (an epoch of 63 steps at 32 per execution ran
    64). Use the largest divisor of the epoch's steps instead (the fused path needs nothing:
    its chunks never cross an epoch)."""
    spe = model.steps_per_execution
    if model.chunk_size > 1 or spe <= 1 or steps_per_epoch % spe == 0:
        return
    aligned = max(d for d in range(1, spe + 1) if steps_per_epoch % d == 0)
    logging.info("steps_per_execution %d -> %d to end executions at epoch ends (%d steps)",
                 spe, aligned, steps_per_epoch)
    model.steps_per_execution = aligned
    if model.train_function is not None:
        model.make_train_function(force=True)


def train(model: InstrumentedModel, train_xy, settings: TrainSettings, *, test_xy=None,
          run_name: str = "run", callbacks=(), tensorboard_dir=None) -> dict[str, Any]:
    """Fits `model`; returns its history: per-iteration lists and per-epoch metrics.

    `train_xy`/`test_xy` are (x, y) numpy pairs; the training set is shuffled each epoch with the
    run's seed. Returns {"num_params", "iteration": {loss, grad_norm, objective},
    "epoch": {train_loss, test_loss, (train_/test_)accuracy}, "epoch_end_iteration", ...}.
    """
    log = IterationLog(run_name)
    switch = ObjectiveSwitch(log, settings.switch_grad_norm_below, settings.switch_after_epochs,
                             settings.stop_grad_norm_below, settings.grad_norm_learning_rate)
    all_callbacks = [log, switch, *callbacks]
    if settings.verbose == 0:
        all_callbacks.append(ProgressLog(log, settings.epochs))
    if tensorboard_dir is not None:
        all_callbacks.append(keras.callbacks.TensorBoard(str(tensorboard_dir), profile_batch=0))
    train_ds, steps = train_dataset(model, *train_xy, settings.batch_size,
                                    shuffle=settings.shuffle, seed=settings.seed,
                                    epochs=settings.epochs)
    _align_steps_per_execution(model, steps)
    test_ds = data.to_dataset(*test_xy, max(settings.batch_size, 1024)) if test_xy else None
    start = time.perf_counter()
    fit = model.fit(train_ds, epochs=settings.epochs, steps_per_epoch=steps,
                    validation_data=test_ds,
                    callbacks=all_callbacks, verbose=settings.verbose, shuffle=False)
    seconds = time.perf_counter() - start
    epochs = {}
    for key, values in fit.history.items():
        name = key[4:] if key.startswith("val_") else key
        epochs[("test_" if key.startswith("val_") else "train_") + name] = [float(v) for v in values]
    return {
        "num_params": int(model.network.count_params()),
        "seconds": seconds,
        "iteration": {"loss": log.loss, "grad_norm": log.grad_norm, "objective": log.objective},
        "objective_names": list(OBJECTIVES),
        "epoch": epochs,
        "epoch_end_iteration": log.epoch_end_iteration,
        "switched_at_iteration": switch.switched_at_iteration,
        "stopped_at_iteration": switch.stopped_at_iteration,
    }
