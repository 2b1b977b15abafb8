import math

import keras
from keras import ops

from keras_interbert.utils.initializers import interbert_kernel_initializer


@keras.saving.register_keras_serializable(package="keras_interbert")
class ContrastiveHead(keras.layers.Layer):
    """Image-text contrastive (ITC) head: pooled vectors to a shared space.

    Not part of the published InterBERT: an optional fourth pretraining task
    (as in later vision-language models) that gives the model a real dual
    encoder. Each modality's pooled vector, computed with that modality
    *alone* in the backbone, goes through its own linear projection (none
    with `projection_dim=None`: the pooled vectors themselves are compared,
    so the contrastive task aligns them coordinate by coordinate, which is
    what the matching head's product `pooled_t * pooled_v` reads) and is
    L2-normalised; a pair's score is the cosine of the two embeddings times
    a learned scale `exp(s)`, with `s` initialised to
    `log(1 / initial_temperature)` and capped at `log(max_scale)`.

    `call(text_pooled, image_pooled)` returns the `[B_t, B_i]` score matrix
    of every text against every image; `embed_text` and `embed_image` give
    the normalised embeddings alone (for indexing and a first stage).

    Args:
        projection_dim: int, or None for no projection. Width of the shared
            embedding space.
        initial_temperature: float. Softmax temperature at initialisation.
        max_scale: float. Upper bound of the learned scale.
        kernel_initializer: initializer of the projection kernels.

    Examples:
    ```python
    head = ContrastiveHead(projection_dim=32)
    scores = head(np.ones((4, 96)), np.ones((5, 96)))  # [4, 5]
    ```
    """

    def __init__(self, projection_dim=128, initial_temperature=0.07,
                 max_scale=100.0, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if projection_dim is not None and not (
                isinstance(projection_dim, int) and projection_dim > 0):
            raise ValueError(
                "ContrastiveHead: `projection_dim` must be a positive int or "
                f"None (no projection); received {projection_dim!r}.")
        if not 0.0 < float(initial_temperature):
            raise ValueError(
                "ContrastiveHead: `initial_temperature` must be > 0; "
                f"received {initial_temperature!r}.")
        if not float(max_scale) >= 1.0 / float(initial_temperature):
            raise ValueError(
                f"ContrastiveHead: `max_scale` ({max_scale}) must be at least "
                f"1 / initial_temperature ({1.0 / initial_temperature:g}).")
        self.projection_dim = projection_dim
        self.initial_temperature = float(initial_temperature)
        self.max_scale = float(max_scale)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or interbert_kernel_initializer())
        self.text_projection = self.image_projection = None
        if projection_dim is not None:
            self.text_projection = keras.layers.Dense(
                projection_dim, kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy, name="text_projection")
            self.image_projection = keras.layers.Dense(
                projection_dim, kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy, name="image_projection")

    def build(self, text_pooled_shape, image_pooled_shape=None):
        if self.text_projection is not None:
            self.text_projection.build(text_pooled_shape)
            self.image_projection.build(
                image_pooled_shape or text_pooled_shape)
        self.log_scale = self.add_weight(
            shape=(), name="log_scale",
            initializer=keras.initializers.Constant(
                math.log(1.0 / self.initial_temperature)),
            dtype="float32")
        self.built = True

    def _normalise(self, x):
        x = ops.cast(x, "float32")
        return x / ops.sqrt(ops.maximum(
            ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))

    def embed_text(self, text_pooled):
        if self.text_projection is not None:
            text_pooled = self.text_projection(text_pooled)
        return self._normalise(text_pooled)

    def embed_image(self, image_pooled):
        if self.image_projection is not None:
            image_pooled = self.image_projection(image_pooled)
        return self._normalise(image_pooled)

    def scale(self):
        return ops.exp(ops.minimum(ops.cast(self.log_scale, "float32"),
                                   math.log(self.max_scale)))

    def call(self, text_pooled, image_pooled):
        text = self.embed_text(text_pooled)
        image = self.embed_image(image_pooled)
        return self.scale() * ops.matmul(text, ops.transpose(image))

    def compute_output_shape(self, text_pooled_shape, image_pooled_shape=None):
        image_pooled_shape = image_pooled_shape or text_pooled_shape
        return (text_pooled_shape[0], image_pooled_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update({
            "projection_dim": self.projection_dim,
            "initial_temperature": self.initial_temperature,
            "max_scale": self.max_scale,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer),
        })
        return config
