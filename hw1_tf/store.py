"""Where every experiment's outputs live, and how they are written: atomically, always.

Layout under `output_dir` (default: the project root):
  results/<experiment>/results.json     config, command, runs and summaries (small, readable)
  results/<experiment>/arrays-<id>.npz  the results' large numpy arrays (histories, predictions,
                                        snapshots, spectra), named in results.json
  results/<experiment>/tb/<run>/        TensorBoard logs
  figures/<experiment>/*.png            drawn from results.json only (hw1_tf.plots)
  saved_models/<experiment>/<run>/      SavedModel (`model.export`), loadable without hw1_tf
  saved_models/<experiment>/<run>.keras Keras file, to continue training

A file is written to a temporary name in the same folder and renamed over the target, so an
interrupted run never leaves a half-written file nor destroys the previous one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from hw1_tf.errors import Hw1Error, ModelNotFoundError, filesystem_error


def project_root() -> Path:
    """The source checkout holding this package (has setup.cfg), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "setup.cfg").is_file() else Path.cwd()


# ------------------------------------------------------------------------------ atomic I/O


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes `data` to `path` through a temporary file renamed over it. The file gets the mode
    the user's umask gives any new file (mkstemp alone makes it 0600). A failure (full disk,
    no permission) leaves the previous file intact, removes the temporary one and is raised
    as a one-line Hw1Error naming the path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise filesystem_error(path, e) from None
        raise
    return path


def ensure_writable_dir(folder: str | Path, what: str = "--output_dir") -> Path:
    """Creates `folder` if needed and checks a file can be written there; raises a one-line
    Hw1Error otherwise (before any training, so a run cannot fail at its very end)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise filesystem_error(folder, e, what) from None
    return folder


@contextlib.contextmanager
def locked(folder: str | Path, name: str = ".results.lock"):
    """Holds an exclusive `fcntl.flock` on `<folder>/<name>` inside the block: writers of one
    results.json (several binaries into one output folder) take turns at their
    read-merge-write, so none drops another's runs. The lock file stays (empty); the kernel
    releases the lock when its holder exits, killed or not."""
    import fcntl

    folder = Path(folder)
    path = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as e:
        raise filesystem_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # releases the lock


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _is_single(dtype: np.dtype) -> bool:
    """float16/float32: precision JSON needs few digits for."""
    return np.issubdtype(dtype, np.floating) and dtype.itemsize <= 4


def _json_float(value: float | np.floating) -> float | None:
    """A float as JSON keeps it, by its dtype: float16/float32 values (numpy scalars or arrays of
    them) as the shortest decimal that reads back as the same float32 (at most 9 digits, usually
    fewer: compact, and exact once cast back to float32); float64 values (numpy's and Python's
    floats) as Python's repr, the shortest decimal that reads back as the same float64 (exact).
    Non-finite values become null."""
    if not math.isfinite(value):
        return None
    if isinstance(value, np.floating) and _is_single(value.dtype):
        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    return float(value)


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, dataclasses, tuples and Paths to plain JSON types; floats keep
    what their dtype holds (`_json_float`)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        # a float32 array's items keep their dtype (compact); other arrays as Python values
        return to_jsonable(list(obj) if _is_single(obj.dtype) else obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return _json_float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=1) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such results file; run the experiment first")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Hw1Error(f"{path}: not valid JSON ({e}); rerun the experiment that wrote it") from None


# ---------------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class Paths:
    """The output folders of one invocation."""

    output_dir: Path
    saved_models_root: Path

    @classmethod
    def create(cls, output_dir: str | Path | None = None,
               saved_models_dir: str | Path | None = None) -> "Paths":
        out = Path(output_dir) if output_dir else project_root()
        sm = Path(saved_models_dir) if saved_models_dir else out / "saved_models"
        return cls(out, sm)

    def results_dir(self, experiment: str) -> Path:
        return self.output_dir / "results" / experiment

    def results_json(self, experiment: str) -> Path:
        return self.results_dir(experiment) / "results.json"

    def tensorboard_dir(self, experiment: str, run: str) -> Path:
        return self.results_dir(experiment) / "tb" / run

    def figures_dir(self, experiment: str) -> Path:
        return self.output_dir / "figures" / experiment

    def saved_model(self, experiment: str, run: str) -> Path:
        return self.saved_models_root / experiment / run


def command_line() -> str:
    """The command as run: the program relative to the project root when inside it
    (`bin/run_x --flagfile=...`), else its name."""
    if not sys.argv:
        return ""
    program = Path(sys.argv[0]).resolve()
    try:
        program = program.relative_to(project_root())
    except ValueError:
        program = Path(program.name)
    return " ".join([program.as_posix()] + sys.argv[1:])


# ---------------------------------------------------------------------------------- arrays

# Arrays with more elements than this go to the .npz; smaller ones stay readable in the JSON.
ARRAY_MIN_SIZE = 64
_ARRAY_REF = "$array"


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Writes `arrays` as one uncompressed .npz at `path`, atomically."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz written by `save_arrays` (one-line error when missing/corrupt)."""
    if not hasattr(path, "read"):
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: arrays file missing; rerun the experiment")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise Hw1Error(f"{path}: not a readable .npz ({e}); rerun the experiment") from None


def _extract_arrays(obj: Any, key: str, out: dict[str, np.ndarray],
                    min_size: int = ARRAY_MIN_SIZE) -> Any:
    """`obj` with each ndarray of more than `min_size` elements replaced by a reference
    {"$array": key} into `out`."""
    if isinstance(obj, np.ndarray) and obj.size > min_size:
        out[key] = obj
        return {_ARRAY_REF: key, "shape": list(obj.shape), "dtype": str(obj.dtype)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: _extract_arrays(v, f"{key}/{k}" if key else str(k), out, min_size)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_extract_arrays(v, f"{key}/{i}", out, min_size) for i, v in enumerate(obj)]
    return obj


def _restore_arrays(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if _ARRAY_REF in obj:
            return arrays[obj[_ARRAY_REF]]
        return {k: _restore_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_arrays(v, arrays) for v in obj]
    return obj


_STATE_KEY = "$state"


def save_state(path: str | Path, state: Any) -> Path:
    """Writes `state` (dicts, lists, numbers, strings and numpy arrays) as one .npz, atomically
    and exactly: every array keeps its dtype and bits, every float its repr (a training backup
    must resume bit for bit, which results.json's 7 digits would not allow)."""
    return atomic_write_bytes(path, state_bytes(state))


def state_bytes(state: Any) -> bytes:
    """`state` as the bytes of the .npz `save_state` writes (to send it elsewhere)."""
    import io

    arrays: dict[str, np.ndarray] = {}
    skeleton = _extract_arrays(state, "", arrays, min_size=-1)
    arrays[_STATE_KEY] = np.asarray(json.dumps(
        skeleton, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def state_from_bytes(raw: bytes) -> Any:
    """What `state_bytes` gave."""
    import io

    return _state_of(load_arrays(io.BytesIO(raw)), "the state received")


def _state_of(arrays: dict[str, np.ndarray], where: Any) -> Any:
    if _STATE_KEY not in arrays:
        raise Hw1Error(f"{where}: not a saved state; delete it")
    return _restore_arrays(json.loads(str(arrays.pop(_STATE_KEY))), arrays)


def load_state(path: str | Path) -> Any:
    """What `save_state` wrote at `path` (one-line Hw1Error when missing or unreadable)."""
    return _state_of(load_arrays(path), path)


class BackupSchedule:
    """When a training loop backs up at an epoch end: always after the first and the last
    epoch, otherwise once the time since the last backup is `factor` times what that backup
    took. Epochs of a tiny population last milliseconds while its backup grows with the
    history, so backing up every epoch could cost more than training; this keeps backups
    below 1/factor of the run's time, and a kill loses at most that much of it."""

    def __init__(self, factor: float = 20.0):
        self.factor = factor
        self.cost = 0.0
        self.done_at: float | None = None

    def due(self, final: bool = False) -> bool:
        return (final or self.done_at is None
                or time.perf_counter() - self.done_at >= self.factor * self.cost)

    def write(self, path: str | Path, state: Any) -> Path:
        """`save_state(path, state)`, timed."""
        started = time.perf_counter()
        out = save_state(path, state)
        self.done_at = time.perf_counter()
        self.cost = self.done_at - started
        return out


def fingerprint(*arrays: np.ndarray, **values: Any) -> dict[str, Any]:
    """What a backup must match to be resumed: `values` (settings, seeds, shapes; as JSON) and
    one sha1 of the bytes of `arrays` (training data, starting weights)."""
    digest = hashlib.sha1()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return to_jsonable({**values, "data": digest.hexdigest()})


def same_run(saved_fingerprint: Any, fingerprint: dict[str, Any], run_name: str,
             where: Path) -> bool:
    """Whether a backup's saved fingerprint is this run's; one warning when not (the run then
    starts afresh and the backup is replaced)."""
    if saved_fingerprint == fingerprint:
        return True
    logging.warning("%s: the backup in %s is of another run (other settings, seeds, data or "
                    "starting weights); starting afresh (it will be replaced)", run_name, where)
    return False


class Backup:
    """The one backup protocol of every training engine (the Keras core's `RunBackup`, the
    population, the scratch Solver): a run's state written at epoch ends, atomically and on a
    `BackupSchedule`, together with the run's `fingerprint`; started again, `restore()` gives
    the state back only when the fingerprint is this run's. A backup that is missing,
    unreadable or of another run (other settings, seeds, data or starting weights) is ignored
    with one warning, and the run starts afresh (its backup is then replaced)."""

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], run_name: str = "run",
                 factor: float = 20.0):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.run_name = run_name
        self.schedule = BackupSchedule(factor)

    def restore(self) -> Any | None:
        """The state backed up for this run, else None."""
        if not self.path.is_file():
            return None
        try:
            saved = load_state(self.path)
        except Hw1Error as e:
            logging.warning("%s: %s; starting afresh", self.run_name, e)
            return None
        if not same_run(saved.get("fingerprint"), self.fingerprint, self.run_name, self.path):
            return None
        return saved["state"]

    def due(self, final: bool = False) -> bool:
        return self.schedule.due(final)

    def write(self, state: Any) -> Path:
        return self.schedule.write(self.path, {"fingerprint": self.fingerprint, "state": state})


def save_results(paths: Paths, experiment: str, config: Any, runs: dict[str, Any],
                 **extra: Any) -> Path:
    """Writes results/<experiment>/results.json (config, command, time, runs and extras) and
    its large arrays to a new .npz beside it, then removes the .npz files it replaced. The
    .npz is written first and has a fresh name, so the JSON never names a missing file."""
    payload = {
        "experiment": experiment,
        "command": command_line(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "runs": runs,
        **extra,
    }
    arrays: dict[str, np.ndarray] = {}
    payload = _extract_arrays(payload, "", arrays)
    folder = paths.results_dir(experiment)
    if arrays:
        name = f"arrays-{secrets.token_hex(4)}.npz"
        save_arrays(folder / name, arrays)
        payload["arrays_file"] = name
    try:
        path = write_json(paths.results_json(experiment), payload)
    except BaseException:
        if arrays:  # the new arrays are named by no results.json: remove them
            (folder / payload["arrays_file"]).unlink(missing_ok=True)
        raise
    for old in folder.glob("arrays-*.npz"):
        if old.name != payload.get("arrays_file"):
            old.unlink()
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """A results.json with its arrays restored as numpy arrays."""
    path = Path(path)
    results = read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("runs"), dict):
        raise Hw1Error(f"{path}: not an experiment's results (no runs); rerun the experiment")
    if results.get("arrays_file"):
        results = _restore_arrays(results, load_arrays(path.parent / results["arrays_file"]))
    results["runs"] = dict(sorted(results["runs"].items(), key=lambda kv: natural_key(kv[0])))
    return results


def natural_key(name: str) -> tuple:
    """A sort key putting the numbers inside names in numeric order: bs16 < bs64 < bs256 <
    bs1024 (plain string order puts bs1024 first), lr0.001 < lr0.01, labels_0p50 < labels_1p00."""
    parts = re.split(r"(\d+(?:\.\d+)?)", name)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


def load_results(paths: Paths, experiment: str) -> dict[str, Any]:
    return read_results(paths.results_json(experiment))


# ---------------------------------------------------------------------------------- models


def export_model(model, path: str | Path, *, keras_file: bool = True) -> Path:
    """Exports `model` as a SavedModel at `path` (and `<path>.keras`), replacing atomically.

    The SavedModel loads with plain `tf.saved_model.load` and exposes `serve`,
    `trainable_variables` (in the model's order) and assignable variables, so analyses can
    load a trained model without hw1_tf and evaluate it at other weights.
    """
    path = Path(path)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)  # TF logs every exported signature and fingerprint
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        model.export(str(tmp / "model"), format="tf_saved_model", verbose=False)
        if keras_file:  # both written before either replaces its previous version
            model.save(str(tmp / "model.keras"))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp / "model", path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if keras_file:
            os.replace(tmp / "model.keras", path.with_suffix(".keras"))
    except OSError as e:
        raise filesystem_error(getattr(e, "filename", None) or path, e,
                               "--saved_models_dir") from None
    except Exception as e:  # TensorFlow's own file errors while exporting
        import tensorflow as tf

        if isinstance(e, tf.errors.OpError):
            raise Hw1Error(f"{path}: the SavedModel could not be written ({e.message}); free "
                           "some space or choose another --saved_models_dir; files written "
                           "before are intact") from None
        raise
    finally:
        logging.set_verbosity(verbosity)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_saved_model(path: str | Path):
    """`tf.saved_model.load(path)`, with a one-line error when it is missing or unreadable."""
    import tensorflow as tf

    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise ModelNotFoundError(f"{path}: no SavedModel here; train it first (see README)")
    try:
        return tf.saved_model.load(str(path))
    except Exception as e:  # corrupted variables or protobuf: many exception types
        raise ModelNotFoundError(f"{path}: SavedModel could not be loaded "
                                 f"({type(e).__name__}); retrain it") from None
