"""Sums across data-parallel replicas, for losses normalised by global counts.

Only TensorFlow's `tf.distribute` runs the step once per replica on a slice
of the batch. Under JAX `DataParallel` (and on one device anywhere) the step
sees the whole batch as one array, so a sum over it is already global and
the replica count is 1.
"""
import keras


def _tf_replica_context():
    if keras.config.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def num_replicas_in_sync():
    """Replicas that each run the step on a share of the batch (1 if none)."""
    context = _tf_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def sum_over_replicas(values):
    """A dict of scalars summed over all replicas (itself on one replica)."""
    context = _tf_replica_context()
    if context is None:
        return dict(values)
    import tensorflow as tf

    names = sorted(values)
    # One all-reduce of a vector instead of one per scalar.
    stacked = tf.stack([tf.cast(values[n], tf.float32) for n in names])
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, stacked)
    return {n: summed[i] for i, n in enumerate(names)}
