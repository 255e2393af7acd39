"""The one data layer: every dataset the study uses, loaded as numpy splits.

Sources, in the order `load` tries them:
  * MNIST-format IDX folders (`<data_dir>/<name>/*-ubyte[.gz]`), verified by size and sha256 of
    the uncompressed bytes, so gzipped and plain copies both pass. Works offline.
  * tensorflow-datasets (`<data_dir>/tfds`), when its data is prepared there or may be downloaded.
  * scikit-learn's embedded 8x8 digits (`digits`): no files at all, for tests and instant demos.
  * 1-D target functions (`function_splits`) for the function-fitting experiments.

The IDX format lives in `hw1_tf.idx`, fetching into `<data_dir>` in `hw1_tf.fetch`, and the
training input pipelines in `hw1_tf.pipeline`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from hw1_tf import functions, idx
from hw1_tf.errors import DataError


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


# -------------------------------------------------------------------------------------- tfds


def tfds_dir(data_dir: Path) -> Path:
    """Where tensorflow-datasets keeps its prepared data under `data_dir`."""
    return Path(data_dir) / "tfds"


def host_reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tfds_prepared(name: str, data_dir: Path) -> bool:
    """Whether tensorflow-datasets has prepared `name` under `data_dir`."""
    return any((tfds_dir(Path(data_dir)) / name).glob("*/dataset_info.json"))


def dataset_present(name: str, data_dir: Path) -> bool:
    """Whether `name` can be loaded from `data_dir` without fetching: the one place that knows
    (a complete IDX folder, prepared tfds data, or scikit-learn's digits)."""
    return name == "digits" or idx.idx_folder_complete(name, Path(data_dir)) or \
        tfds_prepared(name, data_dir)


def load_tfds(name: str, data_dir: Path, download: bool) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) from tensorflow-datasets, downloading if allowed."""
    import tensorflow_datasets as tfds

    prepared = tfds_prepared(name, data_dir)
    if download and not prepared and name in TFDS_HOSTS and not host_reachable(TFDS_HOSTS[name]):
        raise DataError(f"{name}: not prepared in {tfds_dir(data_dir)} and its download host "
                        f"{TFDS_HOSTS[name]} is unreachable (no internet?); run bin/fetch_data "
                        f"--datasets={name} where there is internet and copy {tfds_dir(data_dir)}")

    try:
        splits = tfds.load(name, split=["train", "test"], data_dir=str(tfds_dir(data_dir)),
                           download=download, as_supervised=True)
        # batch and concatenate (tfds' batch_size=-1 aborts on datasets of unknown cardinality)
        arrays = []
        for ds in splits:
            xs, ys = zip(*tfds.as_numpy(ds.batch(10000)))
            arrays += [np.concatenate(xs), np.concatenate(ys)]
    except Exception as e:  # tfds raises many types (AssertionError, DatasetNotFoundError, IO)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{name}: not available through tensorflow-datasets in "
                        f"{tfds_dir(data_dir)} ({first_line[:160]}); run bin/fetch_data "
                        f"--datasets={name} --data_dir={data_dir} where there is internet") from None
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
    elif name in idx.IDX_SETS and (data_dir / name).is_dir():
        arrays = idx.load_idx_folder(name, data_dir / name)
    elif name in idx.IDX_SETS and not allow_download and not tfds_dir(data_dir).is_dir():
        raise DataError(f"{data_dir / name}: no {name} data; run bin/fetch_data --datasets={name} "
                        f"--data_dir={data_dir}")
    else:
        arrays = load_tfds(name, data_dir, download=allow_download)
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


CORRUPTIONS = ("labels", "shuffled_pixels", "random_pixels", "gaussian")


def _flat(x: np.ndarray) -> np.ndarray:
    """(n, ...) -> (n, pixels), also for n = 0 (nothing chosen at fraction 0)."""
    return x.reshape(len(x), int(np.prod(x.shape[1:])))


def shuffle_pixels(x: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Every image's pixels reordered by one fixed permutation (the same for all images)."""
    flat = _flat(x)
    return flat[:, permutation].reshape(x.shape)


def random_pixels(x: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Every image's pixels reordered by its own random permutation."""
    flat = _flat(x)
    order = np.argsort(rng.random_sample(flat.shape), axis=1)
    return np.take_along_axis(flat, order, axis=1).reshape(x.shape)


def gaussian_like(x: np.ndarray, rng: np.random.RandomState, mean: float,
                  std: float) -> np.ndarray:
    """Gaussian noise images with the given mean and standard deviation."""
    return rng.normal(mean, std, size=x.shape).astype(x.dtype)


def corrupt(splits: Splits, kind: str, fraction: float, seed: int = 0,
            corrupt_test: bool = False) -> Splits:
    """`splits` with a seeded `fraction` of the training examples corrupted (Zhang et al. 2017):
      labels           the chosen labels shuffled among themselves (`randomize_labels`),
      shuffled_pixels  the chosen images' pixels in one fixed permuted order,
      random_pixels    the chosen images' pixels each in its own random order,
      gaussian         the chosen images replaced by Gaussian noise of the data's mean and std.
    The test set stays clean unless `corrupt_test` (the same fraction, drawn independently);
    with shuffled_pixels at fraction 1 the test images get the same permutation regardless,
    since the permutation then only renames the input coordinates. `y_train_clean` keeps the
    true training labels."""
    if kind not in CORRUPTIONS:
        raise DataError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"corruption fraction {fraction} is not in [0, 1]")
    rng = np.random.RandomState(seed)
    permutation = rng.permutation(int(np.prod(splits.input_shape)))
    mean, std = float(splits.x_train.mean()), float(splits.x_train.std())

    def apply(x, y, rng):
        chosen = np.sort(rng.choice(len(x), int(round(fraction * len(x))), replace=False))
        x, y = x.copy(), y.copy()
        if kind == "labels":
            y[chosen] = y[rng.permutation(chosen)]
        elif kind == "shuffled_pixels":
            x[chosen] = shuffle_pixels(x[chosen], permutation)
        elif kind == "random_pixels":
            x[chosen] = random_pixels(x[chosen], rng)
        else:
            x[chosen] = gaussian_like(x[chosen], rng, mean, std)
        return x, y

    x_train, y_train = apply(splits.x_train, splits.y_train, rng)
    x_test, y_test = splits.x_test, splits.y_test
    if corrupt_test:
        x_test, y_test = apply(x_test, y_test, np.random.RandomState(seed + 1))
    elif kind == "shuffled_pixels" and fraction == 1.0:
        x_test = shuffle_pixels(x_test, permutation)
    clean = splits.y_train_clean if splits.y_train_clean is not None else splits.y_train
    return dataclasses.replace(splits, x_train=x_train, y_train=y_train, x_test=x_test,
                               y_test=y_test, y_train_clean=clean.copy())


def function_splits(function_name: str, n_train: int, n_test: int, seed: int = 0) -> Splits:
    """Samples a registered 1-D target function: random training x, an evenly spaced test grid."""
    fn = functions.get(function_name)
    low, high = fn.domain
    rng = np.random.RandomState(seed)
    x_train = np.sort(rng.uniform(low, high, size=(n_train, 1))).astype(np.float32)
    x_test = np.linspace(low, high, n_test, dtype=np.float32)[:, None]
    return Splits(function_name, x_train, fn(x_train).astype(np.float32), x_test,
                  fn(x_test).astype(np.float32), num_classes=0)
