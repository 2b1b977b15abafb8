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


def _msm_targets_alone(model, x, y):
    """`(x, y)` with the masked-segment targets without their padding.

    The pipeline gives each caption as many target slots as the batch's
    largest masked span needs (rounded up to 8); most of them are padding
    (weight 0): in the quickstart's batches about 95 targets fill 470 slots.
    The head's vocabulary-wide logits, their softmax and their gradient are
    most of a small model's step, so the step gathers the targets with a
    nonzero weight: `x["msm_flat_positions"]` [N] (their positions in the
    batch's flattened text), `y["msm_labels"]` and `y["msm_weights"]`
    [1, N]. The loss, its gradient and the metrics are the same sums
    without the terms of weight 0. Not under XLA (`jit_compile`), which
    needs static shapes: there the padded slots stay.
    """
    if (model.jit_compile or not isinstance(x, dict)
            or "msm_positions" not in x or not isinstance(y, dict)
            or "msm_weights" not in y
            or "msm" not in model._objective.tasks):
        return x, y
    weights = y["msm_weights"]
    slots = tf.where(tf.not_equal(weights, 0))
    positions = tf.gather_nd(tf.cast(x["msm_positions"], tf.int32), slots)
    length = tf.shape(x["token_ids"])[1]
    x = {k: v for k, v in x.items() if k != "msm_positions"}
    x["msm_flat_positions"] = tf.cast(slots[:, 0], tf.int32) * length + positions
    y = dict(y, msm_labels=tf.gather_nd(y["msm_labels"], slots)[None],
             msm_weights=tf.gather_nd(weights, slots)[None])
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
    x, y = _msm_targets_alone(model, *_unpack(model, data))
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
    x, y = _msm_targets_alone(model, *_unpack(model, data))
    y_pred = model(x, training=False)
    _, values, totals = model._pretraining_loss(y, y_pred)
    model._update_loss_tracker(values, totals)
    return _logs(model)
