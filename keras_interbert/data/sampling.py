"""Seeded epochs and stateless per-example randomness for the pipelines.

Every random choice of an example is drawn from a key made of the seed, the
example's position (counted from the first epoch on) and a salt naming the
choice, so a pipeline gives the same examples whatever the threading,
sharding or resumption.
"""
import tensorflow as tf

from keras_interbert.data.tracing import plain


def _key(seed, position, salt):
    return tf.stack([tf.cast(seed, tf.int64) * 1000003 + salt,
                     tf.cast(position, tf.int64)])


def _uniform(seed, position, salt, low, high):
    return tf.random.stateless_uniform(
        [], _key(seed, position, salt), low, high, dtype=tf.int64)


def epoch_order(num_items, seed, shuffle, repeat):
    """`(position, item)` pairs: items in a seeded permutation per epoch.

    Epoch `e` visits every item once, in the permutation drawn from
    `(seed, e)` (or in order without `shuffle`); `position` counts examples
    from the first epoch on, and keys the example's random choices.
    """
    epochs = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
    n = int(num_items)

    def one_epoch(epoch):
        items = tf.range(n, dtype=tf.int64)
        if shuffle:
            items = tf.random.experimental.stateless_shuffle(
                items, _key(seed, epoch, 17))
        positions = epoch * n + tf.range(n, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((positions, items))

    return epochs.flat_map(plain(one_epoch))


def batched_epochs(num_items, config, to_inputs):
    """Item indices in seeded epochs, sharded, batched, then `to_inputs`.

    `config` supplies `seed`, `shuffle`, `repeat`, `num_workers`,
    `worker_index`, `batch_size` and `drop_remainder`; `to_inputs` maps a
    batch of item indices to the model's `(x, y)`.
    """
    ds = epoch_order(num_items, config.seed, config.shuffle, config.repeat)
    if config.num_workers > 1:
        ds = ds.shard(config.num_workers, config.worker_index)
    ds = ds.map(plain(lambda position, item: item))
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    ds = ds.map(plain(to_inputs), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    if not config.repeat:
        # `flat_map` hides the length; stating it lets Keras's iterators
        # under JAX and PyTorch end an evaluation without warning that the
        # input "ran out of data" (tf.data checks the figure as it runs).
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            _num_batches(num_items, config)))
    return ds.prefetch(tf.data.AUTOTUNE)


def _num_batches(num_items, config):
    """Batches of one epoch of `batched_epochs` for this worker."""
    # `shard` keeps the items at worker_index, worker_index + num_workers, ...
    items = len(range(config.worker_index, int(num_items), config.num_workers))
    if config.drop_remainder:
        return items // config.batch_size
    return -(-items // config.batch_size)
