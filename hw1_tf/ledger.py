"""The run ledger: one mechanism for every experiment to skip what is done, resume what was
interrupted, and merge results, so none is lost nor emptied by a rerun.

  * `once(run, train)` keeps a run's record as soon as it finishes
    (results/<exp>/finished/<run>/) and skips a run already finished for the same config (unless
    `--force`); a killed run resumes from its per-epoch backup (`backup_dir`, removed once the
    record is kept). `group_once` does the same for runs trained together (a population).
  * `model_once(run, train)` is `once` for a run kept as a SavedModel (saved_models/<exp>/<run>,
    its record in <run>.json beside it): an existing SavedModel is reused, by any output folder
    that shares the --saved_models_dir, unless `--retrain`; with `--notrain_missing` an absent
    one is an error rather than trained.
  * `write(runs, **extras)` refuses to write when nothing was produced (one error, the old
    results.json untouched), and otherwise merges: results.json keeps the runs of an earlier
    invocation of the same config (`result_key`) that this one did not redo, this invocation's
    runs replace theirs, and dict-valued extras merge key by key (`REMOVE` deletes a key). A
    results.json of another config is replaced. The read-merge-write holds a lock
    (`store.locked`, flock on results/<exp>/.results.lock), so binaries finishing together into
    one output folder keep each other's runs.
  * Across several workers (`share`: the chief's bytes on every worker) every worker takes the
    chief's decision, since only the chief's folder holds the recorded runs and backups: a run
    finished for the config is skipped by all (the chief's record sent to each), and a backup is
    resumed by all (the chief's backup folder sent to each before its engine restores it).
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any, Callable, Sequence

from absl import logging

from hw1_tf import distribute, store
from hw1_tf.errors import Hw1Error, ModelNotFoundError

# Config fields that change how a run executes or where it writes, not its numbers.
EXECUTION_FIELDS = frozenset({
    "verbose", "output_dir", "saved_models_dir", "force", "tensorboard", "save_models",
    "strategy", "logical_cpus", "jit_compile", "steps_per_execution", "data_dir",
    "allow_download", "optional_datasets"})
REMOVE = object()  # an extra's dict value that deletes its key from the merged results
_RESULT_META = ("experiment", "command", "created", "config", "runs", "arrays_file")


def result_key(config: Any, stored: dict | None = None) -> dict[str, Any]:
    """What decides a run's numbers: the config (or the `stored` one, from a results.json)
    without EXECUTION_FIELDS and the Config's RUN_SELECTION (the fields choosing which runs
    to do, e.g. datasets: they say which runs exist, not what each one is)."""
    skip = EXECUTION_FIELDS | set(getattr(config, "RUN_SELECTION", ()))
    values = store.to_jsonable(config) if stored is None else stored
    return {k: v for k, v in values.items() if k not in skip}


def merge_extras(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` over `old`; dict values merge key by key, a `REMOVE` value deleting its key."""
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict):
            both = {**(old.get(key) if isinstance(old.get(key), dict) else {}), **value}
            value = {k: v for k, v in both.items() if v is not REMOVE}
        merged[key] = value
    return merged


class Ledger:
    """The finished runs, backups and results of one experiment under one config."""

    def __init__(self, experiment: str, config: Any, paths: store.Paths, *,
                 several_workers: bool = False,
                 share: Callable[[bytes | None], bytes] | None = None):
        """`share(data)`: across several workers, the chief's `data` on every worker (a
        collective: every worker calls it at the same point; distribute.broadcast_from_chief)."""
        if several_workers and share is None:
            raise ValueError("several workers need `share` (the chief's bytes on each worker)")
        self.experiment = experiment
        self.config = config
        self.paths = paths
        self.several_workers = several_workers
        self.share = share
        self._fresh: set[str] = set()  # backups already discarded by --force in this invocation

    # ------------------------------------------------------------------------------ reading

    def same_config(self, results: dict | None) -> bool:
        return bool(results) and isinstance(results.get("config"), dict) and \
            result_key(self.config, results["config"]) == result_key(self.config)

    def previous(self) -> dict | None:
        """The results.json of the same config, else None (none, another config, or
        unreadable: then it will be replaced)."""
        path = self.paths.results_json(self.experiment)
        if not path.is_file():
            return None
        try:
            results = store.read_results(path)
        except Hw1Error as e:
            logging.warning("%s (it will be replaced)", e)
            return None
        return results if self.same_config(results) else None

    def _finished_runs(self) -> dict[str, Any]:
        """Runs kept by `once` for the same config and not yet merged by `write`."""
        runs = {}
        folder = self.paths.results_dir(self.experiment) / "finished"
        for path in sorted(folder.glob("*/results.json")):
            try:
                results = store.read_results(path)
            except Hw1Error as e:
                logging.warning("%s (ignored)", e)
                continue
            if self.same_config(results):
                runs.update(results["runs"])
        return runs

    def finished(self, run_name: str):
        """The record of `run_name` if it already finished for the same config, else None
        (across several workers: the chief's answer, on every worker)."""
        runs = self._finished_runs()
        if run_name not in runs:
            runs = (self.previous() or {}).get("runs", {})
        record = runs.get(run_name)
        if not self.several_workers:
            return record
        shared = self.share(store.state_bytes([record]) if record is not None else b"")
        return store.state_from_bytes(shared)[0] if shared else None

    @property
    def may_skip(self) -> bool:
        """Whether finished runs may be skipped: not with --force."""
        return not getattr(self.config, "force", False)

    # ------------------------------------------------------------------------ runs done once

    def _keep(self, run_name: str, record: Any) -> None:
        name = f"{self.experiment}/finished/{run_name.replace('/', '__')}"
        store.save_results(self.paths, name, self.config, {run_name: record})

    def once(self, run_name: str, train: Callable[[], Any]) -> Any:
        """`train()`'s record of `run_name`, or the kept one when the run already finished for
        the same config (unless --force). A new record is kept at once, so an interrupted study
        costs only the run in flight, and that one resumes from its backup."""
        if self.may_skip:
            record = self.finished(run_name)
            if record is not None:
                logging.info("%s/%s: already finished for this config, skipped (--force reruns "
                             "it)", self.experiment, run_name)
                return record
        record = train()
        self._keep(run_name, record)
        self.remove_backup(run_name)
        return record

    def group_once(self, run_names: Sequence[str], train: Callable[[], dict[str, Any]], *,
                   backup: str | None = None) -> dict[str, Any]:
        """`once` for runs trained together (a population): the kept records when every one of
        `run_names` already finished for the same config, else `train()`'s, each kept; then
        the group's backup `backup` is removed."""
        if self.may_skip:
            records = {n: self.finished(n) for n in run_names}
            if all(r is not None for r in records.values()):
                logging.info("%s: %d runs already finished for this config, skipped (--force "
                             "reruns them)", self.experiment, len(records))
                return records
        records = train()
        for name, record in records.items():
            self._keep(name, record)
        if backup is not None:
            self.remove_backup(backup)
        return records

    # ------------------------------------------------------- runs kept as SavedModels (reuse)

    def model_record_path(self, run_name: str) -> Path:
        """The training record kept beside run `run_name`'s SavedModel, so a reused model (a
        SavedModel under --saved_models_dir, possibly from another output folder) keeps its
        history."""
        return self.paths.saved_model(self.experiment, run_name).with_suffix(".json")

    def keep_model_record(self, run_name: str, record: dict[str, Any]) -> None:
        store.write_json(self.model_record_path(run_name), record)

    def model_to_train(self, run_name: str) -> bool:
        """Whether `model_once` trains `run_name`: with --retrain, or when its SavedModel is
        absent (then an error under --notrain_missing); else its SavedModel is reused."""
        path = self.paths.saved_model(self.experiment, run_name)
        if getattr(self.config, "retrain", False):
            return True
        if path.exists():
            return False
        if not getattr(self.config, "train_missing", True):
            raise ModelNotFoundError(f"{path}: no SavedModel (train it without "
                                     "--notrain_missing, or point --saved_models_dir at it)")
        return True

    def model_once(self, run_name: str, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The record of `run_name`, a run kept as its SavedModel: `train()`'s (which exports
        the SavedModel), kept beside it, or the kept one of the SavedModel reused (see
        `model_to_train`). The record says which: "reused"."""
        reused = not self.model_to_train(run_name)
        if not reused:
            self.keep_model_record(run_name, train())
            self.remove_backup(run_name)
        else:
            logging.info("%s/%s: SavedModel %s reused (--retrain trains it again)", self.experiment,
                         run_name, self.paths.saved_model(self.experiment, run_name))
        # read back either way, so a trained and a reused run give the same numbers
        return {**(self.model_record(run_name) or {}), "reused": reused}

    def model_record(self, run_name: str) -> dict[str, Any] | None:
        """The record kept beside the SavedModel of `run_name`, else None."""
        path = self.model_record_path(run_name)
        return store.read_json(path) if path.is_file() else None

    # ------------------------------------------------------------------------------ backups

    def _backup_path(self, name: str) -> Path:
        return self.paths.results_dir(self.experiment) / "backup" / name.replace("/", "__")

    def backup_folder(self, name: str) -> Path:
        """Where run (or group) `name` keeps its per-epoch backup while it trains. With
        --force a run starts from scratch: a leftover backup of it (an earlier invocation
        killed mid-run) is discarded the first time this invocation asks for it, not resumed."""
        folder = self._backup_path(name)
        if getattr(self.config, "force", False) and name not in self._fresh:
            self._fresh.add(name)
            if folder.exists():
                logging.info("%s/%s: --force: discarding the backup in %s (starting from "
                             "scratch)", self.experiment, name, folder)
                shutil.rmtree(folder)
        return folder

    def backup_dir(self, name: str) -> Path:
        """`backup_folder`; across several workers filled first with the chief's backup, so
        every worker resumes from the same epoch (or all start afresh)."""
        folder = self.backup_folder(name)
        if self.several_workers:
            shared = self.share(_pack(folder) if folder.is_dir() else b"")
            if not distribute.is_chief():  # the others compute into a scratch folder
                shutil.rmtree(folder, ignore_errors=True)
                if shared:
                    _unpack(shared, folder)
        return folder

    def remove_backup(self, name: str) -> None:
        """Removes the backup `name` (its results are kept now), and backup/ once empty."""
        folder = self._backup_path(name)
        shutil.rmtree(folder, ignore_errors=True)
        if folder.parent.is_dir() and not any(folder.parent.iterdir()):
            folder.parent.rmdir()

    # ------------------------------------------------------------------------------ writing

    def write(self, runs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Writes results.json (numpy arrays to the .npz beside it), merged with the earlier
        results of the same config (see the module doc); returns them as written. Raises
        Hw1Error, writing nothing, when `runs` is empty."""
        path = self.paths.results_json(self.experiment)
        if not runs:
            skipped = "; ".join(f"{k}: {v}" for k, v in
                                (extra.get("skipped_datasets") or {}).items() if v is not REMOVE)
            raise Hw1Error(f"{self.experiment}: nothing was produced"
                           f"{f' ({skipped})' if skipped else ''}; {path} left as it was")
        # the read-merge-write under one lock: a binary writing the same results.json at the
        # same moment (another selection of runs, one output folder) waits, then merges ours
        with store.locked(path.parent):
            previous = self.previous() or {"runs": {}}
            all_runs = {**previous["runs"], **self._finished_runs(), **runs}
            kept = len(all_runs) - len(runs)
            if kept:
                logging.info("%s: %d earlier run(s) of the same config kept in %s",
                             self.experiment, kept, path)
            extras = merge_extras({k: v for k, v in previous.items() if k not in _RESULT_META},
                                  extra)
            store.save_results(self.paths, self.experiment, self.config, all_runs, **extras)
            shutil.rmtree(self.paths.results_dir(self.experiment) / "finished",
                          ignore_errors=True)
            return store.load_results(self.paths, self.experiment)


def _pack(folder: Path) -> bytes:
    """The files under `folder` as the bytes of an uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _unpack(raw: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(folder, filter="data")


# ------------------------------------------------------------------ the whole study (run_all)


class StudyLog:
    """`bin/run_all`'s record of the whole study, results/run_all.json: per experiment its last
    state ("running", "done", "failed"), wall seconds, the command, the fingerprint of what
    decides its results (flag file, extra flags, code) and the `created` stamp of the
    results.json it wrote. A rerun skips what is done for the same fingerprint, so a killed
    run_all resumes at the experiment it was in (whose own ledger then skips its finished
    runs); earlier runs' seconds give the ETA."""

    NAME = "run_all.json"

    def __init__(self, paths: store.Paths):
        self.paths = paths
        self.path = paths.output_dir / "results" / self.NAME

    def read(self) -> dict[str, dict[str, Any]]:
        """{experiment: its entry}; {} when there is none or it is unreadable (then rewritten)."""
        if not self.path.is_file():
            return {}
        try:
            entries = store.read_json(self.path).get("experiments", {})
        except (Hw1Error, AttributeError) as e:
            logging.warning("%s: %s (it will be rewritten)", self.path, e)
            return {}
        return entries if isinstance(entries, dict) else {}

    def record(self, experiment: str, **entry: Any) -> dict[str, Any]:
        """Writes `entry` as `experiment`'s (atomically, the others kept); returns it."""
        entries = self.read()
        entries[experiment] = entry
        store.write_json(self.path, {"experiments": entries})
        return entry

    def created(self, experiment: str) -> str | None:
        """The `created` stamp of the experiment's results.json, None when absent/unreadable."""
        try:
            return store.read_json(self.paths.results_json(experiment)).get("created")
        except (Hw1Error, AttributeError):
            return None

    def done(self, experiment: str, fingerprint: str) -> dict[str, Any] | None:
        """The entry of `experiment` when it finished for `fingerprint` and its results.json
        is still the one it wrote; else None."""
        entry = self.read().get(experiment)
        if (entry and entry.get("status") == "done" and entry.get("fingerprint") == fingerprint
                and entry.get("created") is not None
                and entry.get("created") == self.created(experiment)):
            return entry
        return None

    def seconds(self, experiment: str, profile: str) -> float | None:
        """The wall seconds of the last finished run of `experiment` with `profile`."""
        entry = self.read().get(experiment) or {}
        if entry.get("profile") == profile and entry.get("last_done_seconds") is not None:
            return float(entry["last_done_seconds"])
        return None

    def failed(self, experiment: str) -> dict[str, Any] | None:
        """The entry of `experiment` when its last run_all failed and no results were written
        since (then its REPORT.md section is marked with the command that reproduces it)."""
        entry = self.read().get(experiment)
        if not entry or entry.get("status") != "failed":
            return None
        created = self.created(experiment)
        if created is not None and created > entry.get("finished", ""):
            return None
        return entry
