import re

import keras
from keras import ops


def _compile(patterns, what):
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as e:
            raise ValueError(
                f"GroupedAdamW `{what}`: {pattern!r} is not a regular "
                f"expression ({e})."
            ) from None
    return compiled


@keras.saving.register_keras_serializable(package="keras_interbert")
class GroupedAdamW(keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers and decay groups.

    Variables are put in groups by regular expressions searched in their
    `path` (e.g. `"text_stream_layer_3/feedforward_output_dense/kernel"`):
    a variable whose path matches a `learning_rate_multipliers` pattern is
    updated with `learning_rate * multiplier` (the first matching pattern
    wins), and one matching a `no_decay_patterns` pattern gets no weight
    decay. Everything else is Keras `AdamW`: bias-corrected moments,
    decoupled weight decay `variable -= lr * weight_decay * variable`
    (with the variable's own `lr`), schedules, EMA, gradient accumulation.

    Four things differ from `keras.optimizers.AdamW`, each to keep one
    optimizer correct under every backend and `tf.distribute`:

    - Under TensorFlow an embedding's gradient arrives as `tf.IndexedSlices`
      with one row per looked-up token, repeated ids included. Keras applies
      elementwise ops to the rows one by one, so Adam's second moment and
      the clipping norm get the sum of the squares of the repeated rows
      instead of the square of their sum (the segment embedding, used by
      every token, stepped 13-15% off JAX and PyTorch in
      `tests/test_cross_backend.py`). The rows are summed into a dense
      gradient first, as the other backends compute it.

    - `clipnorm` clips each variable's gradient inside `update_step`, that is
      after the gradients of all replicas have been summed. Keras clips
      before the cross-replica sum, which under `MirroredStrategy` clips each
      replica's share instead of the gradient.
    - Weight decay is applied in `update_step` with the variable's own
      learning rate (`lr * multiplier`), so a 0.1x group also decays 0.1x.
    - A `LearningRateSchedule` is evaluated at the optimizer-update count
      (`iterations`), not at the micro-batch count: with
      `gradient_accumulation_steps=k` the schedule advances once per `k`
      batches.

    Args:
        learning_rate: float or `LearningRateSchedule`. The base rate.
        weight_decay: float. Decoupled weight decay rate.
        learning_rate_multipliers: list of `(pattern, multiplier)` pairs.
        no_decay_patterns: list of patterns of variables without decay.
        **kwargs: every other `keras.optimizers.AdamW` argument (`beta_1`,
            `beta_2`, `epsilon`, `clipnorm`, `gradient_accumulation_steps`...).

    Examples:
    ```python
    optimizer = GroupedAdamW(
        learning_rate=1e-4,
        weight_decay=0.01,
        learning_rate_multipliers=[(r"(^|/)text_stream_layer_\\d+/", 0.1)],
        no_decay_patterns=[r"bias$", r"layer_norm"],
        clipnorm=1.0,
    )
    ```
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.01,
                 learning_rate_multipliers=(), no_decay_patterns=(),
                 **kwargs):
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, **kwargs
        )
        pairs = []
        for item in learning_rate_multipliers:
            if len(item) != 2:
                raise ValueError(
                    "GroupedAdamW `learning_rate_multipliers`: expected "
                    f"(pattern, multiplier) pairs; received {item!r}."
                )
            pairs.append((str(item[0]), float(item[1])))
        self.learning_rate_multipliers = pairs
        self.no_decay_patterns = [str(p) for p in no_decay_patterns]
        self._multiplier_res = _compile(
            [p for p, _ in pairs], "learning_rate_multipliers")
        self._no_decay_res = _compile(self.no_decay_patterns,
                                      "no_decay_patterns")

    def learning_rate_multiplier(self, variable):
        """The factor on the learning rate of `variable` (1.0 if no group)."""
        path = getattr(variable, "path", variable.name)
        for regex, (_, multiplier) in zip(self._multiplier_res,
                                          self.learning_rate_multipliers):
            if regex.search(path):
                return multiplier
        return 1.0

    def uses_weight_decay(self, variable):
        """Whether `variable` is decayed (a non-zero rate and no exclusion)."""
        if not self.weight_decay:
            return False
        path = getattr(variable, "path", variable.name)
        return not any(regex.search(path) for regex in self._no_decay_res)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._variable_multipliers = [
            self.learning_rate_multiplier(v) for v in variables]
        self._variable_decays = [self.uses_weight_decay(v) for v in variables]

    def _get_current_learning_rate(self):
        if isinstance(self._learning_rate,
                      keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def _clip_gradients(self, grads):
        if self.clipnorm:
            return grads  # per variable in `update_step`, after the all-reduce
        return super()._clip_gradients(grads)

    def _apply_weight_decay(self, variables):
        return  # in `update_step`, with the variable's own learning rate

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        learning_rate = ops.multiply(
            ops.cast(learning_rate, variable.dtype),
            self._variable_multipliers[index],
        )
        gradient = ops.cast(_dense(gradient), variable.dtype)
        if self.clipnorm:
            gradient = _clip_by_norm(gradient, self.clipnorm)
        if _fused_tensorflow_update(self, variable):
            return self._tensorflow_update_step(
                gradient, variable, learning_rate, index)
        if keras.backend.backend() == "torch" and not self.amsgrad:
            return self._torch_update_step(
                gradient, variable, learning_rate, index)
        if self._variable_decays[index]:
            self.assign_sub(
                variable,
                ops.multiply(
                    variable, ops.multiply(learning_rate, self.weight_decay)
                ),
            )
        super().update_step(gradient, variable, learning_rate)

    def _tensorflow_update_step(self, gradient, variable, learning_rate,
                                index):
        """The same decay and Adam step as `update_step`, in two fused ops.

        Under TensorFlow without XLA the generic step is a dozen separate
        element-wise ops per variable, each a pass over the variable (155
        million floats in the published configuration). TensorFlow's
        `ResourceApplyGradientDescent` (decay: `variable -= (lr * decay) *
        variable`) and `ResourceApplyAdam` (`alpha = lr * sqrt(1 - b2^t) /
        (1 - b1^t)`, `m += (g - m)(1 - b1)`, `v += (g^2 - v)(1 - b2)`,
        `variable -= alpha m / (sqrt(v) + eps)`, Keras `Adam`'s formula)
        compute the same in one pass each.
        """
        import tensorflow as tf

        dtype = variable.dtype
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        if self._variable_decays[index]:
            tf.raw_ops.ResourceApplyGradientDescent(
                var=variable.handle,
                alpha=ops.multiply(learning_rate,
                                   ops.cast(self.weight_decay, dtype)),
                delta=variable.read_value())
        m = self._momentums[index]
        v = self._velocities[index]
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=_tensorflow_variable(m).handle,
            v=_tensorflow_variable(v).handle,
            beta1_power=beta_1_power, beta2_power=beta_2_power,
            lr=learning_rate, beta1=ops.cast(self.beta_1, dtype),
            beta2=ops.cast(self.beta_2, dtype),
            epsilon=ops.cast(self.epsilon, dtype), grad=gradient)

    def _torch_update_step(self, gradient, variable, learning_rate, index):
        """The same decay and Adam step as `update_step`, in place.

        Under PyTorch each Keras op of the generic step allocates a new
        tensor the size of the variable; the in-place forms compute the same
        expressions (`variable + (-lr * decay) * variable`, `m + (1 - b1)
        (g - m)`, `v + (1 - b2)(g^2 - v)`, `variable - alpha m / (sqrt(v) +
        eps)`) with about half the passes over memory.
        """
        import torch

        value = _torch_tensor(variable)
        dtype = value.dtype
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = learning_rate * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m = _torch_tensor(self._momentums[index])
        v = _torch_tensor(self._velocities[index])
        with torch.no_grad():
            if self._variable_decays[index]:
                value.addcmul_(value, -learning_rate * self.weight_decay)
            m.lerp_(gradient, 1 - self.beta_1)
            v.lerp_(torch.square(gradient), 1 - self.beta_2)
            value.addcdiv_(m * alpha, v.sqrt().add_(self.epsilon), value=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate_multipliers": [
                    [p, m] for p, m in self.learning_rate_multipliers],
                "no_decay_patterns": list(self.no_decay_patterns),
            }
        )
        return config


def _dense(gradient):
    """The gradient as a dense tensor, the rows of repeated indices summed."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.math.unsorted_segment_sum(
                gradient.values, gradient.indices,
                num_segments=gradient.dense_shape[0])
    return ops.convert_to_tensor(gradient)


def _fused_tensorflow_update(optimizer, variable):
    """Whether `update_step` may use TensorFlow's fused Adam kernel.

    Plain TensorFlow resource variables outside a `tf.distribute` strategy
    (whose mirrored variables keep the generic, strategy-aware path), and
    not AMSGrad.
    """
    if keras.backend.backend() != "tensorflow" or optimizer.amsgrad:
        return False
    import tensorflow as tf

    if tf.distribute.has_strategy():
        return False
    return (isinstance(variable, tf.Variable)
            and not isinstance(variable, tf.distribute.DistributedValues)
            and variable.dtype in (tf.float16, tf.bfloat16, tf.float32,
                                   tf.float64))


def _tensorflow_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _torch_tensor(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _clip_by_norm(gradient, clipnorm):
    squared = ops.sum(ops.square(gradient))
    # The `where` keeps the gradient of `sqrt` finite at 0.
    norm = ops.sqrt(ops.where(squared > 0, squared, ops.ones_like(squared)))
    norm = ops.where(squared > 0, norm, ops.zeros_like(norm))
    # `g * (c / max(norm, c))`: one pass over the gradient instead of two.
    return ops.multiply(
        gradient, ops.divide(ops.cast(clipnorm, norm.dtype),
                             ops.maximum(norm, clipnorm)))
