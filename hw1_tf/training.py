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
import time
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hw1_tf import distribute, pipeline, store
from hw1_tf.config import OPTIMIZERS
from hw1_tf.callbacks import (HistoryTensorBoard, IterationLog, ObjectiveSwitch, ProgressLog,
                              EpochDecay, RunBackup, StopAtTarget)
from hw1_tf.errors import Hw1Error

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


def _reducible_logs(logs: dict) -> dict:
    """The step's logs in the shape Keras can reduce across replicas: under several workers
    Keras 3.15 reduces each with strategy.reduce("MEAN", axis=0), which fails on a scalar, so
    each gets a length-1 axis there (the reduction removes it). Unchanged elsewhere."""
    if distribute.in_multi_worker_mode(tf.distribute.get_strategy()):
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs


def _global_sum(values):
    """All-reduce (SUM) across replicas; identity with one replica."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


class InstrumentedModel(keras.Model):
    """A Keras model around `network` whose train step records loss and gradient norm."""

    def __init__(self, network: keras.Model, loss: keras.losses.Loss,
                 metrics: Sequence[keras.metrics.Metric] = (), objective: str = "loss",
                 record: bool = True, **kwargs):
        """`loss` gives one value per example (reduction=None): the model reduces it itself,
        see `compute_loss`. `metrics` are updated with (y, y_pred) every step."""
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise Hw1Error(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if loss.reduction not in (None, "none"):
            raise Hw1Error("InstrumentedModel needs a per-example loss (reduction=None)")
        self.network = network
        self.per_example_loss = loss
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.step_metrics = list(metrics)
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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Nothing to build: `build_instrumented` builds the network, optimizer and metrics
        before `fit`. Keras' symbolic build would average the first batch across replicas,
        which fails under MultiWorkerMirroredStrategy (PerReplica is no Tensor, Keras 3.15)."""
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def metrics(self):
        """Our loss tracker and metrics only (Keras' documented override for models that
        compute their own loss): Keras' compile() creates a loss tracker of its own, which this
        model never updates, so it must not be reported or reset."""
        return [self.loss_tracker, *self.step_metrics]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """This replica's share of the global mean loss: the sum of its examples' losses over
        the GLOBAL number of examples in the step. Summing the replicas' shares (as the
        optimizer's all-reduce of their gradients does) gives the global mean exactly, with no
        reliance on Keras scaling a mean loss by 1/replicas; with one replica it is the mean."""
        del x, training
        per_example = self.per_example_loss(y, y_pred, sample_weight)
        count = tf.cast(tf.size(per_example), per_example.dtype)
        loss = tf.reduce_sum(per_example) / _global_sum(count)
        if self.losses:  # regularisers: each replica adds its 1/replicas share
            ctx = tf.distribute.get_replica_context()
            replicas = ctx.num_replicas_in_sync if ctx is not None else 1
            loss += tf.add_n(self.losses) / tf.cast(replicas, loss.dtype)
        return loss

    def _update_metrics(self, y, y_pred, sample_weight):
        """Updates the loss tracker with the examples' own losses (the epoch's loss is then
        their exact mean, across replicas too) and the metrics; returns their results."""
        self.loss_tracker.update_state(self.per_example_loss(y, y_pred, sample_weight))
        for metric in self.step_metrics:
            metric.update_state(y, y_pred, sample_weight)
        return _reducible_logs(self.get_metrics_result())

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return self._update_metrics(y, self(x, training=False), sample_weight)

    def compile(self, *args, steps_per_execution: int = 1, jit_compile=False,
                fused_steps: bool = True, **kwargs):
        """As Keras' compile. With XLA, several steps per execution and no explicit strategy,
        the steps are fused: Keras runs one step per call on a chunk of `steps_per_execution`
        batches of indices (`hw1_tf.pipeline.index_chunks`) that one XLA program loops over, which
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
        return y_pred, self.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self.chunk_size == 1:
            y_pred, loss, grad_norm = self._one_iteration(x, y, sample_weight)
            if self.record:
                self.recorder.write(loss=loss, grad_norm=grad_norm,
                                    objective=OBJECTIVES.index(self.objective))
            return self._update_metrics(y, y_pred, sample_weight)

        # x is a chunk of index rows (pipeline.index_chunks) into the data held on the device.
        def body(i, losses, norms):  # iteration on batch i of the chunk, in one XLA program
            xi = tf.gather(self.resident_data[0], x[i])
            yi = tf.gather(self.resident_data[1], x[i])
            y_pred, loss, norm = self._one_iteration(xi, yi, None)
            self._update_metrics(yi, y_pred, None)
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


# ------------------------------------------------------------------------------------ train

# the history's record of the per-epoch stop (StopAtTarget.summary) when no rule is set
NO_EPOCH_STOP = {"stopped_at_epoch": None, "stop_reason": None, "best_epoch": None,
                 "best_monitor": None, "best_value": None}


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
    stop_loss_below: float | None = None  # after the epoch whose mean training loss is <= this
    stop_accuracy_above: float | None = None  # ... or whose training accuracy is >= this
    patience: int | None = None  # ... or once patience_monitor has not improved for this many
    patience_monitor: str = "test_accuracy"  # epochs (callbacks.MONITORS)
    patience_min_delta: float = 0.0
    learning_rate_decay: float | None = None  # learning_rate * decay**epoch (loss phase)
    grad_norm_learning_rate: float | None = None  # after the switch (None: learning_rate)
    shuffle: bool = True
    verbose: int = 1


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    table = dict(zip(OPTIMIZERS, (keras.optimizers.Adam, keras.optimizers.SGD,
                                  keras.optimizers.RMSprop, keras.optimizers.Adagrad)))
    if name not in table:
        raise Hw1Error(f"unknown optimizer {name!r}; choose from {', '.join(table)}")
    return table[name](learning_rate=learning_rate)


def loss_and_metrics(num_classes: int):
    """Per-example cross-entropy + accuracy for classification, per-example MSE for regression
    (num_classes == 0); InstrumentedModel reduces the loss itself."""
    if num_classes:
        return (keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return keras.losses.MeanSquaredError(reduction=None), []


def _all_layers(layer: keras.layers.Layer):
    """`layer` and every layer nested in it (through the public `layers` of models)."""
    yield layer
    for sub in getattr(layer, "layers", ()):
        yield from _all_layers(sub)


def _xla_slow_here(network: keras.Model) -> bool:
    """XLA's CPU convolutions are far slower than TF's oneDNN kernels (measured: a 4-conv MNIST
    net took 164 s fused under XLA vs 3.3 s without, 2 cores); on a GPU XLA is fine."""
    has_conv = any(isinstance(layer, keras.layers.Conv2D) for layer in _all_layers(network))
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
        loss, metrics = loss_and_metrics(num_classes)
        model = InstrumentedModel(network, loss, metrics, objective=settings.objective,
                                  record=settings.record_history)
        model.compile(optimizer=make_optimizer(settings.optimizer, settings.learning_rate),
                      jit_compile=jit, steps_per_execution=spe, fused_steps=settings.fused_steps)
        model.build((None,) + tuple(network.input_shape[1:]))
        # All state exists before fit: the metrics create theirs on construction, the optimizer
        # here. Keras would otherwise build from the first dataset element, which on the fused
        # path is a chunk of indices, not a batch.
        model.optimizer.build(model.trainable_variables)
    return model


def train_dataset(model: InstrumentedModel, x, y, batch_size: int, *, shuffle: bool = True,
                  seed: int = 0, epochs: int = 1, first_epoch: int = 0):
    """The training `tf.data` pipeline `model` expects for `epochs` epochs, and its steps per
    epoch (pass both to `fit`): index chunks into data the model holds on the device when its
    steps are fused, plain (x, y) batches otherwise; the same batches either way."""
    if model.chunk_size > 1:
        model.hold_training_data(x, y)
        return (pipeline.index_chunks(len(x), batch_size, model.chunk_size, shuffle=shuffle,
                                      seed=seed, epochs=epochs, first_epoch=first_epoch),
                pipeline.chunks_per_epoch(len(x), batch_size, model.chunk_size))
    return (pipeline.to_dataset(x, y, batch_size, shuffle=shuffle, seed=seed, epochs=epochs,
                                first_epoch=first_epoch),
            pipeline.batches_per_epoch(len(x), batch_size))


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


def warn_if_batch_exceeds(run_name: str, batch_size: int, examples: int) -> None:
    """A batch larger than the training set is not an error: each epoch is one full-batch step
    (every training path behaves so); the log says it."""
    if batch_size > examples:
        logging.warning("%s: --batch_size=%d exceeds the %d training examples: each epoch is "
                        "one full-batch step", run_name, batch_size, examples)


def _fingerprint(model, settings: TrainSettings, train_xy, stateful) -> dict[str, Any]:
    """What a backup of this run must match to be resumed (store.Backup): the settings, the
    training data and the starting weights (before `fit`, so a resumed run has the same)."""
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k != "verbose"}
    return store.fingerprint(*train_xy, *model.network.get_weights(), settings=values,
                             callbacks=[type(c).__name__ for c in stateful])


def train(model: InstrumentedModel, train_xy, settings: TrainSettings, *, test_xy=None,
          run_name: str = "run", callbacks=(), tensorboard_dir=None,
          backup_dir=None) -> dict[str, Any]:
    """Fits `model`; returns its history: per-iteration lists and per-epoch metrics.

    `train_xy`/`test_xy` are (x, y) numpy pairs; the training set is shuffled each epoch with the
    run's seed. With `backup_dir` the run backs itself up at every epoch end (RunBackup) and,
    started again after a kill, resumes from the last backup with the same batches (the epoch
    order depends only on the seed and the epoch) and the history recorded so far.
    Returns {"num_params", "iteration": {loss, grad_norm, objective},
    "epoch": {train_loss, test_loss, (train_/test_)accuracy}, "epoch_end_iteration", ...}.
    """
    warn_if_batch_exceeds(run_name, settings.batch_size, len(train_xy[0]))
    if settings.patience is not None and settings.patience_monitor.startswith("test_") \
            and test_xy is None:
        raise Hw1Error(f"{run_name}: --patience_monitor={settings.patience_monitor} needs the "
                       "test split evaluated every epoch; watch train_loss or train_accuracy")
    log = IterationLog(run_name)
    switch = ObjectiveSwitch(log, settings.switch_grad_norm_below, settings.switch_after_epochs,
                             settings.stop_grad_norm_below, settings.grad_norm_learning_rate)
    all_callbacks = [log, switch, *callbacks]
    target = None
    if (settings.stop_loss_below is not None or settings.stop_accuracy_above is not None
            or settings.patience is not None):
        target = StopAtTarget(log, settings.stop_loss_below, settings.stop_accuracy_above,
                              settings.patience, settings.patience_monitor,
                              settings.patience_min_delta)
        all_callbacks.insert(2, target)
    if settings.learning_rate_decay is not None:
        all_callbacks.append(EpochDecay(settings.learning_rate, settings.learning_rate_decay))
    first_epoch = 0
    if backup_dir is not None:  # after the stateful callbacks: it saves what they did
        stateful = [c for c in all_callbacks if hasattr(c, "backup_state")]
        backup = RunBackup(backup_dir, stateful, run_name=run_name,
                           fingerprint=_fingerprint(model, settings, train_xy, stateful))
        backup.restore_state(model)
        first_epoch = min(backup.restored_epoch(), settings.epochs)
        all_callbacks.append(backup)
    if settings.verbose == 0:
        all_callbacks.append(ProgressLog(log, settings.epochs))
    if tensorboard_dir is not None:
        all_callbacks.append(HistoryTensorBoard(tensorboard_dir, log))
    train_ds, steps = train_dataset(model, *train_xy, settings.batch_size,
                                    shuffle=settings.shuffle, seed=settings.seed,
                                    epochs=settings.epochs, first_epoch=first_epoch)
    _align_steps_per_execution(model, steps)
    test_ds = pipeline.to_dataset(*test_xy, max(settings.batch_size, 1024)) if test_xy else None
    start = time.perf_counter()
    model.fit(train_ds, epochs=settings.epochs, steps_per_epoch=steps,
              validation_data=test_ds,
              callbacks=all_callbacks, verbose=settings.verbose, shuffle=False)
    seconds = time.perf_counter() - start
    epochs = {}  # from the log, which holds the epochs before a resume too
    for logs in log.epoch_logs:
        for key, value in logs.items():
            name = key[4:] if key.startswith("val_") else key
            epochs.setdefault(("test_" if key.startswith("val_") else "train_") + name,
                              []).append(float(value))
    return {
        "num_params": int(model.network.count_params()),
        "seconds": seconds,
        "iteration": {"loss": log.loss, "grad_norm": log.grad_norm, "objective": log.objective},
        "objective_names": list(OBJECTIVES),
        "epoch": epochs,
        "epoch_end_iteration": log.epoch_end_iteration,
        "switched_at_iteration": switch.switched_at_iteration,
        "stopped_at_iteration": switch.stopped_at_iteration,
        **(target.summary() if target is not None else NO_EPOCH_STOP),
    }
