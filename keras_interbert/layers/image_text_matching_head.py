import keras
from keras import ops

from keras_interbert.utils.initializers import interbert_kernel_initializer


@keras.saving.register_keras_serializable(package="keras_interbert")
class ImageTextMatchingHead(keras.layers.Layer):
    """The image-text matching (ITM) head: fused pooled vectors to 2 logits.

    `Dense(2)(Dropout(pooled_text * pooled_image))`. Class 0 means the caption
    matches the image, class 1 that it does not; the retrieval score is
    `softmax(logits)[..., 0]`.

    Args:
        dropout: float. Dropout on the fused vector.
        kernel_initializer: initializer of the kernel.

    Examples:
    ```python
    head = ImageTextMatchingHead()
    logits = head(np.ones((2, 96)), np.ones((2, 96)))  # [2, 2]
    ```
    """

    def __init__(self, dropout=0.1, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or interbert_kernel_initializer()
        )
        self.fusion_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="fusion_dropout"
        )
        self.classifier = keras.layers.Dense(
            2,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="classifier",
        )

    def build(self, text_pooled_shape, image_pooled_shape=None):
        self.classifier.build(text_pooled_shape)
        self.built = True

    def call(self, text_pooled, image_pooled, training=None):
        fused = ops.multiply(text_pooled, image_pooled)
        fused = self.fusion_dropout(fused, training=training)
        return self.classifier(fused)

    def compute_output_shape(self, text_pooled_shape, image_pooled_shape=None):
        return tuple(text_pooled_shape[:-1]) + (2,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
