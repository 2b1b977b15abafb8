import keras

from keras_interbert.utils.initializers import interbert_kernel_initializer


@keras.saving.register_keras_serializable(package="keras_interbert")
class MaskedRegionHead(keras.layers.Layer):
    """The masked-region-modelling (MRM) head over image-stream outputs.

    `Dense(hidden) -> GELU(erf) -> LayerNorm -> Dense(num_classes)`: logits
    of the detector's class distribution (1601 Visual Genome classes in the
    published model) for every image slot. The global slot 0 is included in
    the output; the loss drops it.

    Args:
        num_classes: int. Width of the target class distribution.
        hidden_dim: int. Width of the transform.
        layer_norm_epsilon: float. Epsilon of the transform's LayerNorm.
        activation: the transform's activation (exact GELU by default).
        kernel_initializer: initializer of both kernels.

    Examples:
    ```python
    head = MaskedRegionHead(num_classes=17, hidden_dim=32)
    logits = head(np.zeros((2, 10, 32)))  # [2, 10, 17]
    ```
    """

    def __init__(self, num_classes, hidden_dim, layer_norm_epsilon=1e-12,
                 kernel_initializer=None, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or interbert_kernel_initializer()
        )
        self.transform_dense = keras.layers.Dense(
            hidden_dim,
            activation=self.activation,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="transform_dense",
        )
        self.transform_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="transform_layer_norm",
        )
        self.decoder = keras.layers.Dense(
            num_classes,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="decoder",
        )

    def build(self, inputs_shape):
        self.transform_dense.build(inputs_shape)
        hidden_shape = tuple(inputs_shape[:-1]) + (self.hidden_dim,)
        self.transform_layer_norm.build(hidden_shape)
        self.decoder.build(hidden_shape)
        self.built = True

    def call(self, inputs):
        x = self.transform_dense(inputs)
        x = self.transform_layer_norm(x)
        return self.decoder(x)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "hidden_dim": self.hidden_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
