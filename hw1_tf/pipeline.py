"""The training input pipelines: each epoch's example order (a stateless permutation of
(seed, epoch)), batched `tf.data` datasets, and the index chunks of the fused XLA path. Every
pipeline takes its order from `epoch_order`, so the same seed gives the same batches on every
path and under every strategy."""

from __future__ import annotations

import numpy as np


def epoch_order(n: int, *, shuffle: bool = False, seed: int = 0, epochs: int = 1,
                first_epoch: int = 0):
    """A `tf.data.Dataset` of the orders of the `n` examples in epochs `first_epoch` ..
    `epochs - 1` (int32; a run resumed at epoch k starts at k). Shuffled, epoch e is the
    stateless permutation seeded by (seed, e): it depends on nothing else (not on how many
    iterators Keras opened), so the same seed gives the same batches on every path. Both
    training pipelines (`to_dataset` and the fused path's `index_chunks`) take their order
    from here."""
    import tensorflow as tf

    def order(epoch):
        indices = tf.range(n, dtype=tf.int32)
        if not shuffle:
            return indices
        return tf.random.experimental.stateless_shuffle(
            indices, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))

    return tf.data.Dataset.range(first_epoch, epochs).map(order)


def batches_per_epoch(n: int, batch_size: int, drop_remainder: bool = False) -> int:
    return n // batch_size + (0 if drop_remainder or n % batch_size == 0 else 1)


def to_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
               seed: int = 0, epochs: int = 1, drop_remainder: bool = False,
               first_epoch: int = 0):
    """A batched `tf.data.Dataset` of (x, y) covering `epochs` epochs (`epoch_order`); train
    with `steps_per_epoch=batches_per_epoch(...)` when `epochs > 1`."""
    import tensorflow as tf

    x_all, y_all = tf.constant(x), tf.constant(y)
    batches = epoch_order(len(x), shuffle=shuffle, seed=seed, epochs=epochs,
                          first_epoch=first_epoch).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(
            batch_size, drop_remainder=drop_remainder))
    count = (epochs - first_epoch) * batches_per_epoch(len(x), batch_size, drop_remainder)
    return batches.map(lambda idx: (tf.gather(x_all, idx), tf.gather(y_all, idx)),
                       num_parallel_calls=tf.data.AUTOTUNE).apply(
        tf.data.experimental.assert_cardinality(count)).prefetch(tf.data.AUTOTUNE)


def chunks_per_epoch(n: int, batch_size: int, chunk: int) -> int:
    return -(-(n // batch_size) // chunk) + (1 if n % batch_size else 0)


def index_chunks(n: int, batch_size: int, chunk: int, *, shuffle: bool = False, seed: int = 0,
                 epochs: int = 1, first_epoch: int = 0):
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

    count = (epochs - first_epoch) * chunks_per_epoch(n, batch_size, chunk)
    return epoch_order(n, shuffle=shuffle, seed=seed, epochs=epochs,
                       first_epoch=first_epoch).flat_map(split).apply(
        tf.data.experimental.assert_cardinality(count)).prefetch(2)  # flat_map hides the count
