"""Solver: minibatch training of a scratch model with a scratch update rule.

    solver = Solver(model, {"X_train": ..., "y_train": ..., "X_val": ..., "y_val": ...},
                    update_rule="adam", optim_config={"learning_rate": 1e-3}, lr_decay=0.95,
                    batch_size=100, num_epochs=10)
    solver.train()
    solver.loss_history, solver.train_acc_history, solver.val_acc_history, solver.best_val_acc

Each epoch visits a seeded permutation of the training set in minibatches (the remainder that
does not fill a batch is dropped), then decays the learning rate (lr *= lr_decay) and measures
training accuracy (on `num_train_samples` random examples) and validation accuracy; the
parameters with the best validation accuracy are kept and put back into the model at the end.
Accuracies are also recorded before the first step ("epoch 0"), as in the report.

With `backup_path`, the whole state (parameters and batch-norm statistics, the update rule's
slots, best parameters, histories, epoch and iteration counters, learning rate and the
sampling RNG) is written there atomically at epoch ends (`store.BackupSchedule`); `train()`
started again with the same arguments after a kill continues from the epoch after the backup
and ends exactly where an uninterrupted run ends (dropout masks are seeded by the step). The
caller removes the file once the run's results are kept.

Speed: `compile="xla"` (default) runs `steps_per_execution` steps (default: a whole epoch) as one
XLA-compiled `tf.function` — a `tf.while_loop` that gathers each minibatch from the training set
held on the device, computes the hand-written loss and gradients and applies the update rule to
the parameters and slots (`tf.Variable`s) in place. Per-step losses come back once per execution,
so the loss history stays exact. `compile="graph"` skips XLA; `compile="eager"` runs the same code
op by op (no tracing: the cheapest choice for a few dozen steps on 50 examples).
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from hw1_tf import store
from hw1_tf.scratch import optim

COMPILE_MODES = ("xla", "graph", "eager")


class Solver:
    def __init__(self, model, data: dict[str, np.ndarray], *, update_rule: str | optim.UpdateRule
                 = "sgd", optim_config: dict[str, Any] | None = None, lr_decay: float = 1.0,
                 batch_size: int = 100, num_epochs: int = 10, num_train_samples: int | None = 1000,
                 num_val_samples: int | None = None, checkpoint_path: str | Path | None = None,
                 print_every: int = 100, verbose: bool = True, seed: int = 0,
                 compile: str = "xla", steps_per_execution: int | None = None,
                 eval_batch_size: int = 2000, name: str = "solver",
                 backup_path: str | Path | None = None):
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
        self.model = model
        self.dtype = model.dtype
        config = dict(optim_config or {})
        self.learning_rate = float(config.pop("learning_rate", 1e-2))
        self.initial_learning_rate = self.learning_rate
        self.rule = (update_rule if isinstance(update_rule, optim.UpdateRule)
                     else optim.get(update_rule, **config))
        self.lr_decay = float(lr_decay)
        self.num_epochs = int(num_epochs)
        self.num_train_samples = num_train_samples
        self.num_val_samples = num_val_samples
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.print_every = int(print_every)
        self.verbose = verbose
        self.seed = int(seed)
        self.compile = compile
        self.eval_batch_size = int(eval_batch_size)
        self.name = name
        self.backup_path = Path(backup_path) if backup_path else None
        self._backup: store.Backup | None = None  # made at train(), once the model is set

        self.X_train = _flat(data["X_train"])
        self.y_train = np.asarray(data["y_train"], np.int32)
        self.X_val = _flat(data["X_val"])
        self.y_val = np.asarray(data["y_val"], np.int32)
        n = len(self.X_train)
        self.batch_size = min(int(batch_size), n)
        self.iterations_per_epoch = max(n // self.batch_size, 1)
        self.steps_per_execution = int(steps_per_execution or self.iterations_per_epoch)
        self._rng = np.random.RandomState(seed)

        # Training data lives on the device once; every step gathers its minibatch from it.
        self._X = tf.constant(self.X_train, self.dtype)
        self._y = tf.constant(self.y_train)
        self.slots = {name: {k: tf.Variable(v, trainable=False, name=f"{name}_{k}")
                             for k, v in self.rule.init_slots(p).items()}
                      for name, p in model.params.items()}
        self.iteration = 0
        self.epoch = 0
        self.loss_history: list[float] = []
        self.train_acc_history: list[float] = []
        self.val_acc_history: list[float] = []
        self.epoch_times: list[float] = []
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.best_params = model.get_weights()
        self.diverged = False

        if compile == "eager":
            self._run_steps, self._scores = self._train_steps, model.scores
        else:
            jit = compile == "xla"
            self._run_steps = tf.function(self._train_steps, jit_compile=jit)
            self._scores = tf.function(model.scores, jit_compile=jit, reduce_retracing=True)

    # ------------------------------------------------------------------------- one step

    def _train_steps(self, batch_indices, learning_rate, first_step):
        """Runs len(batch_indices) steps; returns their losses (computed before each update)."""
        num_steps = tf.shape(batch_indices)[0]
        losses = tf.TensorArray(self.dtype, size=num_steps)
        for k in tf.range(num_steps):
            idx = batch_indices[k]
            step = first_step + k
            loss, grads = self.model.loss(tf.gather(self._X, idx), tf.gather(self._y, idx),
                                          seed=tf.stack([tf.constant(self.seed), step]))
            for name, param in self.model.params.items():
                slots = self.slots[name]
                new_param, new_slots = self.rule.step(
                    param, grads[name], {k_: v.read_value() for k_, v in slots.items()},
                    learning_rate, step)
                param.assign(new_param)
                for slot_name, value in new_slots.items():
                    slots[slot_name].assign(value)
            losses = losses.write(k, loss)
        return losses.stack()

    # --------------------------------------------------------------------------- public

    def check_accuracy(self, X, y, num_samples: int | None = None) -> float:
        """Accuracy of the model (test mode) on X, y or a seeded subsample of num_samples."""
        X, y = _flat(X), np.asarray(y)
        if num_samples is not None and len(X) > num_samples:
            keep = self._rng.choice(len(X), num_samples, replace=False)
            X, y = X[keep], y[keep]
        correct = 0
        for start in range(0, len(X), self.eval_batch_size):
            xb = tf.constant(X[start:start + self.eval_batch_size], self.dtype)
            pred = np.argmax(np.asarray(self._scores(xb)), axis=1)
            correct += int(np.sum(pred == y[start:start + self.eval_batch_size]))
        return correct / max(len(X), 1)

    def train(self) -> "Solver":
        total = self.num_epochs * self.iterations_per_epoch
        start = time.time()
        if self.backup_path is not None and self._backup is None:
            self._backup = store.Backup(self.backup_path, self._fingerprint(), self.name)
        if self._backup is not None and not self.train_acc_history:
            self._restore_backup()
        if self.epoch == 0 and not self.train_acc_history:
            self._end_of_epoch()
        while self.epoch < self.num_epochs and not self.diverged:
            t0 = time.time()
            n_used = self.iterations_per_epoch * self.batch_size
            order = self._rng.permutation(len(self.X_train))[:n_used]
            order = order.reshape(self.iterations_per_epoch, self.batch_size).astype(np.int32)
            for lo in range(0, self.iterations_per_epoch, self.steps_per_execution):
                chunk = order[lo:lo + self.steps_per_execution]
                losses = np.asarray(self._run_steps(
                    tf.constant(chunk), tf.constant(self.learning_rate, self.dtype),
                    tf.constant(self.iteration, tf.int32)), np.float64)
                for loss in losses:
                    self.iteration += 1
                    self.loss_history.append(float(loss))
                    if self.verbose and (self.iteration == 1
                                         or self.iteration % self.print_every == 0):
                        logging.info("%s: (Time %.2f sec; Iteration %d / %d) loss: %f",
                                     self.name, time.time() - start, self.iteration, total, loss)
                if not np.all(np.isfinite(losses)):
                    self.diverged = True
                    logging.warning("%s: loss became %s at iteration %d; stopping", self.name,
                                    losses[~np.isfinite(losses)][0], self.iteration)
                    break
            self.epoch_times.append(time.time() - t0)
            self.epoch += 1
            self.learning_rate *= self.lr_decay
            self._end_of_epoch()
        if self.best_params is not None:
            self.model.set_weights(self.best_params)
        return self

    # -------------------------------------------------------------------------- helpers

    def _end_of_epoch(self) -> None:
        if self.diverged:
            train_acc = val_acc = float("nan")
        else:
            train_acc = self.check_accuracy(self.X_train, self.y_train, self.num_train_samples)
            val_acc = self.check_accuracy(self.X_val, self.y_val, self.num_val_samples)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        if self.verbose:
            logging.info("%s: (Epoch %d / %d) train acc: %f; val_acc: %f", self.name, self.epoch,
                         self.num_epochs, train_acc, val_acc)
        if val_acc > self.best_val_acc:  # False for NaN: diverged weights are never kept
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
            self.best_params = self.model.get_weights()
        if self.checkpoint_path is not None and not self.diverged:
            self.save_checkpoint(self.checkpoint_path)
        last = self.epoch == self.num_epochs or self.diverged
        if self._backup is not None and self.epoch > 0 and self._backup.due(final=last):
            self._backup.write(self._state())

    # ------------------------------------------------------------------------- backup

    def _fingerprint(self) -> dict[str, Any]:
        """What a backup must match to be resumed: rule, schedule, seed, shapes and data."""
        return store.fingerprint(
            self.X_train, self.y_train, self.X_val, self.y_val, rule=self.rule.name,
            hyperparams=self.rule.hyperparams(), learning_rate=self.initial_learning_rate,
            lr_decay=self.lr_decay, batch_size=self.batch_size, num_epochs=self.num_epochs,
            seed=self.seed, num_train_samples=self.num_train_samples,
            num_val_samples=self.num_val_samples,
            weights={k: list(v.shape) for k, v in self.model.get_weights().items()})

    def _state(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = self._rng.get_state()
        return {
            "weights": self.model.get_weights(), "best_params": self.best_params,
            "slots": {p: {s: v.numpy() for s, v in slots.items()}
                      for p, slots in self.slots.items()},
            "rng": {"name": name, "keys": keys, "pos": pos, "has_gauss": has_gauss,
                    "cached_gaussian": cached},
            "epoch": self.epoch, "iteration": self.iteration,
            "learning_rate": self.learning_rate, "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch, "diverged": self.diverged,
            "loss_history": np.asarray(self.loss_history, np.float64),
            "train_acc_history": list(self.train_acc_history),
            "val_acc_history": list(self.val_acc_history),
            "epoch_times": list(self.epoch_times)}

    def _restore_backup(self) -> None:
        """Continues from the backup at `backup_path` when there is one of this run."""
        state = self._backup.restore()
        if state is None:
            return
        self.model.set_weights(state["weights"])
        for p, slots in state["slots"].items():
            for s, value in slots.items():
                self.slots[p][s].assign(value)
        rng = state["rng"]
        self._rng.set_state((rng["name"], rng["keys"], rng["pos"], rng["has_gauss"],
                             rng["cached_gaussian"]))
        self.best_params = state["best_params"]
        self.loss_history = [float(v) for v in state["loss_history"]]
        for key in ("epoch", "iteration", "learning_rate", "best_val_acc", "best_epoch",
                    "diverged", "train_acc_history", "val_acc_history", "epoch_times"):
            setattr(self, key, state[key])
        logging.info("%s: resuming after epoch %d from the backup %s", self.name, self.epoch,
                     self.backup_path)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Writes the current and best parameters, slots and histories to an .npz, atomically."""
        arrays = {f"param/{k}": v for k, v in self.model.get_weights().items()}
        arrays.update({f"best/{k}": v for k, v in self.best_params.items()})
        arrays.update({f"slot/{p}/{s}": v.numpy() for p, slots in self.slots.items()
                       for s, v in slots.items()})
        arrays.update(epoch=self.epoch, iteration=self.iteration, learning_rate=self.learning_rate,
                      best_val_acc=self.best_val_acc, best_epoch=self.best_epoch,
                      loss_history=np.asarray(self.loss_history),
                      train_acc_history=np.asarray(self.train_acc_history),
                      val_acc_history=np.asarray(self.val_acc_history))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return store.atomic_write_bytes(path, buf.getvalue())

    def history(self) -> dict[str, Any]:
        """The run as a JSON-able dict (what results.json stores per run)."""
        return {
            "update_rule": self.rule.name,
            "hyperparams": self.rule.hyperparams(),
            "learning_rate": self.initial_learning_rate,
            "lr_decay": self.lr_decay,
            "batch_size": self.batch_size,
            "num_train": len(self.X_train),
            "num_epochs": self.num_epochs,
            "iterations_per_epoch": self.iterations_per_epoch,
            "loss_history": [x if math.isfinite(x) else None for x in self.loss_history],
            "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "final_train_acc": self.train_acc_history[-1] if self.train_acc_history else None,
            "diverged": self.diverged,
            "epoch_seconds": self.epoch_times,
        }


def load_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a Solver checkpoint; `{k[6:]: v for k, v in ... if k.startswith("param/")}`
    are the model weights (`model.set_weights`)."""
    with np.load(Path(path)) as f:
        return {k: f[k] for k in f.files}


def checkpoint_weights(checkpoint: dict[str, np.ndarray], which: str = "best"
                       ) -> dict[str, np.ndarray]:
    """The model weights of a loaded checkpoint: "best" (kept) or "param" (last)."""
    prefix = f"{which}/"
    return {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}


def _flat(x) -> np.ndarray:
    x = np.asarray(x)
    return x.reshape(len(x), -1)
