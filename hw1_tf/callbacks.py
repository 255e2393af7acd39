"""Callbacks of a training run: the core's own (the per-iteration log, the objective switch,
progress lines) and the ones an experiment adds per run (weight snapshots for trajectories,
TensorBoard with the per-iteration history), and `RunBackup`, the per-epoch backup a killed
run resumes from. Any `keras.callbacks.Callback` can be passed to `hw1_tf.training.train`
beside them; one with `backup_state()` (numbers, strings, lists, dicts and numpy arrays) and
`restore_state(state)` is backed up and restored with the run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hw1_tf import store
from hw1_tf.errors import Hw1Error, TrainingDivergedError, filesystem_error


class IterationLog(keras.callbacks.Callback):
    """Drains the model's per-iteration buffers after each execution; stops on NaN/inf loss."""

    def __init__(self, run_name: str = "run"):
        super().__init__()
        self.run_name = run_name
        self.loss: list[float] = []
        self.grad_norm: list[float] = []
        self.objective: list[int] = []
        self.epoch_end_iteration: list[int] = []
        self.epoch_logs: list[dict[str, float]] = []  # Keras' epoch logs, resumed runs included

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
        self.epoch_logs.append({k: float(v) for k, v in (logs or {}).items()})

    def backup_state(self) -> dict:
        # Python floats of float32 values: json writes them exactly (shortest repr)
        return {"loss": self.loss, "grad_norm": self.grad_norm, "objective": self.objective,
                "epoch_end_iteration": self.epoch_end_iteration, "epoch_logs": self.epoch_logs}

    def restore_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

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

    def backup_state(self) -> dict:
        return {"objective": self.model.objective, "switched": self.switched_at_iteration,
                "stopped": self.stopped_at_iteration}

    def restore_state(self, state: dict) -> None:
        self.switched_at_iteration = state["switched"]
        self.stopped_at_iteration = state["stopped"]
        if state["objective"] != self.model.objective:  # before the optimizer state is loaded
            self.model.set_objective(state["objective"], learning_rate=self.learning_rate)


MONITORS = {"test_accuracy": ("val_accuracy", +1), "test_loss": ("val_loss", -1),
            "train_accuracy": ("accuracy", +1), "train_loss": ("loss", -1)}  # key, sign


class StopAtTarget(keras.callbacks.Callback):
    """The per-epoch stopping rules of a model trained alone, checked after every epoch on
    Keras' epoch logs:

    * a target: the epoch's mean training loss <= `loss_below`, or its training accuracy
      >= `accuracy_above` (models compared at one training loss, as Jiang et al. 2019 train
      every model to cross-entropy 0.01; a memorisation run stopped once it has fitted);
    * convergence: `monitor` (a key of MONITORS) has not improved by more than `min_delta`
      on its best for `patience` epochs (the test split must be evaluated for a test_*
      monitor).

    Records the stop epoch (1-based), its reason, and the monitor's best epoch and value."""

    def __init__(self, log: IterationLog, loss_below: float | None = None,
                 accuracy_above: float | None = None, patience: int | None = None,
                 monitor: str = "test_accuracy", min_delta: float = 0.0):
        super().__init__()
        if monitor not in MONITORS:
            raise Hw1Error(f"unknown patience monitor {monitor!r}; choose from "
                           f"{', '.join(MONITORS)}")
        self.log = log
        self.loss_below = loss_below
        self.accuracy_above = accuracy_above
        self.patience = patience
        self.monitor = monitor
        self.min_delta = min_delta
        self.stopped_at_epoch: int | None = None  # 1-based, None: ran every epoch
        self.stop_reason: str | None = None
        self.best_epoch: int | None = None  # 1-based, of the monitor (with patience)
        self.best_value: float | None = None

    def _plateau(self, epoch: int, logs: dict) -> str | None:
        """Why the run has converged after `epoch` (0-based), or None; updates the best."""
        key, sign = MONITORS[self.monitor]
        if key not in logs:
            raise Hw1Error(f"{self.log.run_name}: --patience_monitor={self.monitor} needs "
                           f"{key!r} in the epoch's logs (evaluate the test split every epoch "
                           "or watch a train_* monitor)")
        value = float(logs[key])
        if self.best_value is None or sign * (value - self.best_value) > self.min_delta:
            self.best_value, self.best_epoch = value, epoch + 1
        if epoch + 1 - self.best_epoch >= self.patience:
            return (f"{self.monitor} not improved for {self.patience} epochs (best "
                    f"{self.best_value:.4g} at epoch {self.best_epoch})")
        return None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss, accuracy = logs.get("loss"), logs.get("accuracy")
        reached = []
        if self.loss_below is not None and loss is not None and loss <= self.loss_below:
            reached.append(f"training loss {loss:.4g} <= {self.loss_below:g}")
        if (self.accuracy_above is not None and accuracy is not None
                and accuracy >= self.accuracy_above):
            reached.append(f"training accuracy {accuracy:.4f} >= {self.accuracy_above:g}")
        if self.patience is not None:
            converged = self._plateau(epoch, logs)
            if converged:
                reached.append(converged)
        if reached:
            self.stopped_at_epoch = epoch + 1
            self.stop_reason = " and ".join(reached)
            self.model.stop_training = True
            logging.info("%s: stopping after epoch %d: %s", self.log.run_name, epoch + 1,
                         self.stop_reason)

    def backup_state(self) -> dict:
        return {"stopped_at_epoch": self.stopped_at_epoch, "stop_reason": self.stop_reason,
                "best_epoch": self.best_epoch, "best_value": self.best_value}

    def restore_state(self, state: dict) -> None:
        for key in ("stopped_at_epoch", "stop_reason", "best_epoch", "best_value"):
            setattr(self, key, state.get(key))

    def summary(self) -> dict:
        """What the history records of the stop (None where it does not apply)."""
        return {"stopped_at_epoch": self.stopped_at_epoch, "stop_reason": self.stop_reason,
                "best_epoch": self.best_epoch,
                "best_monitor": self.monitor if self.patience is not None else None,
                "best_value": self.best_value}


class EpochDecay(keras.callbacks.Callback):
    """Learning rate `base * decay**epoch` at the start of every epoch while the loss is
    minimised (Zhang et al. 2017 fit random labels with a 0.95 decay per epoch). A function of
    the epoch only, so a resumed run gets the same rates; the gradient-norm phase keeps its
    own rate."""

    def __init__(self, base: float, decay: float):
        super().__init__()
        self.base, self.decay = base, decay

    def on_epoch_begin(self, epoch, logs=None):
        if getattr(self.model, "objective", "loss") == "loss":
            self.model.optimizer.learning_rate.assign(self.base * self.decay ** epoch)


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


class WeightSnapshots(keras.callbacks.Callback):
    """The network's weights, flattened, before training and every `every_epochs` epochs (and
    after the last epoch): the whole model and one layer (`layer`: index among the layers that
    have weights), for the optimisation-trajectory figures."""

    def __init__(self, every_epochs: int = 3, layer: int = 0):
        super().__init__()
        if every_epochs < 1:
            raise Hw1Error(f"snapshot interval must be >= 1 epoch, got {every_epochs}")
        self.every_epochs = every_epochs
        self.layer = layer
        self.epochs: list[int] = []
        self.whole: list[np.ndarray] = []
        self.layer_weights: list[np.ndarray] = []

    def _weighted_layers(self):
        network = getattr(self.model, "network", self.model)
        return [layer for layer in network.layers if layer.trainable_weights]

    def _take(self, epoch: int) -> None:
        network = getattr(self.model, "network", self.model)
        layers = self._weighted_layers()
        if not -len(layers) <= self.layer < len(layers):
            raise Hw1Error(f"layer {self.layer} does not exist: the model has {len(layers)} "
                           "layers with weights")
        flat = lambda ws: np.concatenate([np.ravel(w.numpy()) for w in ws])  # noqa: E731
        self.epochs.append(epoch)
        self.whole.append(flat(network.trainable_weights))
        self.layer_weights.append(flat(layers[self.layer].trainable_weights))

    def on_train_begin(self, logs=None):
        if not self.epochs:
            self._take(0)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every_epochs == 0 or done == self.params.get("epochs"):
            if not self.epochs or self.epochs[-1] != done:
                self._take(done)

    def backup_state(self) -> dict:
        """The snapshots so far (a resumed run keeps those taken before its kill)."""
        return {"epochs": list(self.epochs), "whole": list(self.whole),
                "layer": list(self.layer_weights)}

    def restore_state(self, state: dict) -> None:
        self.epochs = [int(e) for e in state["epochs"]]
        self.whole, self.layer_weights = list(state["whole"]), list(state["layer"])

    def arrays(self) -> dict[str, np.ndarray]:
        """{"epochs": (k,), "whole": (k, params), "layer": (k, layer params)}."""
        return {"epochs": np.asarray(self.epochs), "whole": np.stack(self.whole),
                "layer": np.stack(self.layer_weights)}


class HistoryTensorBoard(keras.callbacks.Callback):
    """TensorBoard logs of what this tool records: every iteration's loss, gradient norm and
    objective (from `log`, written after each execution), and every epoch's metrics
    (train_* and test_*). Keras' own TensorBoard callback writes epoch scalars only."""

    def __init__(self, log_dir: str | Path, log: IterationLog):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.log = log
        self.written = 0
        self.writer = None

    def on_train_begin(self, logs=None):
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.writer = tf.summary.create_file_writer(str(self.log_dir))
            self.written = len(self.log.loss)  # a resumed run wrote those before its kill
        except (OSError, tf.errors.OpError) as e:
            raise Hw1Error(f"{self.log_dir}: cannot write TensorBoard logs there "
                           f"({getattr(e, 'message', e)}); choose another --output_dir or pass "
                           "--notensorboard") from None

    def on_train_batch_end(self, batch, logs=None):
        n = len(self.log.loss)
        if n <= self.written:
            return
        with self.writer.as_default():
            for i in range(self.written, n):
                tf.summary.scalar("iteration/loss", self.log.loss[i], step=i)
                tf.summary.scalar("iteration/grad_norm", self.log.grad_norm[i], step=i)
                tf.summary.scalar("iteration/objective", self.log.objective[i], step=i)
        self.written = n

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default():
            for key, value in (logs or {}).items():
                name = key[4:] if key.startswith("val_") else key
                prefix = "test_" if key.startswith("val_") else "train_"
                tf.summary.scalar(f"epoch/{prefix}{name}", float(value), step=epoch + 1)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()


FINGERPRINT_FILE = "fingerprint.json"


class RunBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that survives a kill at any moment and backs up the
    run's own state beside the weights.

    At each epoch end Keras writes the weights, the optimizer state and the epoch, and this
    writes the `stateful` callbacks' `backup_state()` (the per-iteration history, the objective
    switch, weight snapshots; `store.save_state`, exact), all into `<backup_dir>/staging`, which
    then replaces `<backup_dir>/current` by renames: a kill leaves one complete backup, the
    previous or the new one. Started again, `restored_epoch()` tells where the data must start,
    `restore_state(model)` restores the callbacks' state, and Keras the weights and the epoch in
    `on_train_begin`. It must come after the stateful callbacks in `fit`'s list, so their epoch
    end is in the backup. With `fingerprint` (store.Backup's protocol), a backup of another run
    (other settings, data or starting weights) is discarded with one warning instead of being
    restored. The caller removes `backup_dir` once the run's results are recorded (Keras' own
    delete-at-end is off for that reason)."""

    def __init__(self, backup_dir: str | Path, stateful=(), run_name: str = "run",
                 fingerprint: dict | None = None):
        self.root = Path(backup_dir)
        super().__init__(str(self.root / "current"), save_freq="epoch", delete_checkpoint=False)
        self.stateful = list(stateful)
        self.run_name = run_name
        self.fingerprint = fingerprint
        current, old = self.root / "current", self.root / "old"
        if old.is_dir() and not current.is_dir():  # killed between the two renames
            os.replace(old, current)
        shutil.rmtree(self.root / "staging", ignore_errors=True)
        saved = current / FINGERPRINT_FILE
        if fingerprint is not None and current.is_dir() and not store.same_run(
                store.read_json(saved) if saved.is_file() else None, fingerprint, run_name,
                current):
            shutil.rmtree(current)  # another run's: Keras must not restore it

    def restored_epoch(self) -> int:
        """Epochs already done according to the backup (0 without one)."""
        path = self.root / "current" / "training_metadata.json"
        return int(json.loads(path.read_text())["epoch"]) if path.is_file() else 0

    def restore_state(self, model) -> None:
        """Restores the stateful callbacks (before `fit`, so they start from it; the weights
        and epoch are restored by Keras in `on_train_begin`)."""
        state = self.root / "current" / "run_state.npz"
        if not state.is_file():
            return
        for callback, value in zip(self.stateful, store.load_state(state)):
            callback.set_model(model)
            callback.restore_state(value)
        logging.info("%s: resuming after epoch %d from the backup in %s", self.run_name,
                     self.restored_epoch(), self.root)

    def _use_folder(self, folder: Path) -> None:
        # the paths BackupAndRestore derives from its backup_dir in __init__
        self.backup_dir = str(folder)
        self._weights_path = str(folder / "latest.weights.h5")
        self._training_metadata_path = str(folder / "training_metadata.json")
        self._prev_weights_path = f"{self._weights_path}.bkp"
        self._prev_training_metadata_path = f"{self._training_metadata_path}.bkp"

    def _save_model(self):
        staging, current, old = (self.root / n for n in ("staging", "current", "old"))
        shutil.rmtree(staging, ignore_errors=True)
        self._use_folder(staging)
        try:
            super()._save_model()
            store.save_state(staging / "run_state.npz",
                             [c.backup_state() for c in self.stateful])
            if self.fingerprint is not None:
                store.write_json(staging / FINGERPRINT_FILE, self.fingerprint)
            if current.is_dir():
                os.replace(current, old)
            os.replace(staging, current)
        except OSError as e:  # Keras' weights file (h5py) or the renames: full disk, no permission
            shutil.rmtree(staging, ignore_errors=True)
            raise filesystem_error(getattr(e, "filename", None) or staging, e) from None
        finally:
            self._use_folder(current)
        shutil.rmtree(old, ignore_errors=True)


class InitialWeights(keras.callbacks.Callback):
    """Keeps the network's flat weight vector as training starts (theta_0: distance from
    initialisation and other measures relative to it)."""

    def __init__(self):
        super().__init__()
        self.theta: np.ndarray | None = None

    def on_train_begin(self, logs=None):
        network = getattr(self.model, "network", self.model)
        self.theta = np.concatenate([np.ravel(np.asarray(v.numpy()))
                                     for v in network.trainable_variables])
