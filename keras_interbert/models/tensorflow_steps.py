"""The TensorFlow `train_step` and `test_step` of `InterBERTPretrainer`.

Both run once per replica under `tf.distribute`. The loss each replica
differentiates is its share of the global loss (local sums over global
counts, see `pretraining_objective`), so the sum of the replicas' gradients,
which the optimizer all-reduces, is the single-device gradient of the whole
batch; Keras' default step instead divides a per-replica mean by the replica
count, which is only right when every replica holds the same number of
targets. The metric trackers are updated with global values, see
`InterBERTPretrainer._update_trackers`.
"""
import keras
import tensorflow as tf

from keras_interbert.models.replica_context import num_replicas_in_sync


def _unpack(model, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    model._check_no_sample_weight(sample_weight)
    return x, y


def _agree_on_finiteness(grads):
    """Makes every replica's gradients non-finite if any replica's are.

    The `LossScaleOptimizer` skips a step with non-finite gradients, deciding
    on the gradients it is given, which are a replica's own share; replicas
    that disagreed would take different branches around the all-reduce.
    """
    context = tf.distribute.get_replica_context()
    dense = [None if g is None else tf.convert_to_tensor(g) for g in grads]
    finite = tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(g)) for g in dense if g is not None])
    bad = context.all_reduce(tf.distribute.ReduceOp.SUM,
                             1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(bad > 0.0, float("nan"), 1.0)
    return [None if g is None else g * tf.cast(poison, g.dtype) for g in dense]


def _logs(model):
    logs = model.get_metrics_result()
    if isinstance(model.distribute_strategy,
                  tf.distribute.MultiWorkerMirroredStrategy):
        # Keras 3.15 reduces the step's logs across workers with
        # `strategy.reduce("MEAN", value, axis=0)`, which needs an axis;
        # every replica holds the same global value, so the mean is it.
        logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def _check_optimizer(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if inner.gradient_accumulation_steps and num_replicas_in_sync() > 1:
        # Keras applies accumulated gradients inside a `cond` that would
        # hold the cross-replica all-reduce, which tf.distribute forbids.
        raise ValueError(
            "InterBERTPretrainer: `gradient_accumulation_steps` "
            f"({inner.gradient_accumulation_steps}) is not supported under a "
            f"tf.distribute strategy with {num_replicas_in_sync()} replicas "
            "(Keras 3.15 cannot all-reduce inside the accumulation `cond`); "
            "raise the global batch size instead, or use JAX DataParallel."
        )


def train_step(model, data):
    _check_optimizer(model.optimizer)
    x, y = _unpack(model, data)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss, values, totals = model._pretraining_loss(y, y_pred)
        scaled_loss = model.optimizer.scale_loss(loss)
    variables = model.trainable_variables
    grads = tape.gradient(scaled_loss, variables)
    if (isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            and num_replicas_in_sync() > 1):
        grads = _agree_on_finiteness(grads)
    model.optimizer.apply(grads, variables)
    model._update_loss_tracker(values, totals)
    return _logs(model)


def test_step(model, data):
    x, y = _unpack(model, data)
    y_pred = model(x, training=False)
    _, values, totals = model._pretraining_loss(y, y_pred)
    model._update_loss_tracker(values, totals)
    return _logs(model)
