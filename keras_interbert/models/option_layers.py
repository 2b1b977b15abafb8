"""Layers that fold an options axis into the batch and back."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_interbert")
class MergeOptions(keras.layers.Layer):
    """`[B, O, ...]` -> `[B * O, ...]`."""

    def call(self, x):
        shape = ops.shape(x)
        return ops.reshape(x, (-1,) + tuple(shape[2:]))

    def compute_output_shape(self, shape):
        batch = None if shape[0] is None or shape[1] is None else shape[0] * shape[1]
        return (batch,) + tuple(shape[2:])


@keras.saving.register_keras_serializable(package="keras_interbert")
class SplitOptions(keras.layers.Layer):
    """`[B * O, 1]` -> `[B, O]`."""

    def __init__(self, num_options, **kwargs):
        super().__init__(**kwargs)
        self.num_options = num_options

    def call(self, x):
        return ops.reshape(x, (-1, self.num_options))

    def compute_output_shape(self, shape):
        batch = None if shape[0] is None else shape[0] // self.num_options
        return (batch, self.num_options)

    def get_config(self):
        config = super().get_config()
        config["num_options"] = self.num_options
        return config
