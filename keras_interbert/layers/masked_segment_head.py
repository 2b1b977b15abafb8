import keras
from keras import ops

from keras_interbert.utils.initializers import interbert_kernel_initializer


@keras.saving.register_keras_serializable(package="keras_interbert")
class MaskedSegmentHead(keras.layers.Layer):
    """The masked-segment-modelling (MSM) head over text-stream outputs.

    `Dense(hidden) -> GELU(erf) -> LayerNorm`, then a decoder tied to the word
    embedding matrix (its transpose) plus a bias of its own, as BERT's
    `cls.predictions`. With `positions` ([B, M] int) it computes vocabulary
    logits only at those positions, which is where the head's cost goes
    during pretraining; without, at every position.

    Args:
        token_embedding: the backbone's `ReversibleEmbedding` for words; its
            matrix is the decoder.
        layer_norm_epsilon: float. Epsilon of the transform's LayerNorm.
        activation: the transform's activation (exact GELU by default).
        kernel_initializer: initializer of the transform's kernel.

    Examples:
    ```python
    backbone = keras_interbert.InterBERTBackbone.from_preset("interbert_tiny_en")
    head = MaskedSegmentHead(token_embedding=backbone.token_embedding)
    logits = head(np.zeros((2, 8, backbone.hidden_dim)))  # [2, 8, vocab]
    ```
    """

    def __init__(self, token_embedding, layer_norm_epsilon=1e-12,
                 kernel_initializer=None, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or interbert_kernel_initializer()
        )
        hidden_dim = token_embedding.output_dim
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

    def build(self, inputs_shape, positions_shape=None):
        self.transform_dense.build(inputs_shape)
        self.transform_layer_norm.build(
            tuple(inputs_shape[:-1]) + (self.token_embedding.output_dim,)
        )
        self.bias = self.add_weight(
            name="output_bias",
            shape=(self.token_embedding.input_dim,),
            initializer="zeros",
        )
        self.built = True

    def call(self, inputs, positions=None):
        if positions is not None:
            inputs = ops.take_along_axis(
                inputs, ops.expand_dims(ops.cast(positions, "int32"), -1),
                axis=1,
            )
        x = self.transform_dense(inputs)
        x = self.transform_layer_norm(x)
        logits = self._decode(x)
        return logits + ops.cast(self.bias, logits.dtype)

    def _decode(self, x):
        """`x @ embeddings.T`, what `token_embedding(x, reverse=True)` gives.

        Under TensorFlow without XLA, the embedding's `reverse` call
        materialises the transposed [H, V] matrix (94 MB in the published
        configuration) on every step and its gradient transposes back; a
        product that contracts the embedding's own last axis reads it in
        place. Other backends take the embedding's own path (a transposed
        view under PyTorch; XLA folds the transpose into the product).
        """
        embedding = self.token_embedding
        if (keras.config.backend() != "tensorflow" or not embedding.tie_weights
                or getattr(embedding, "reverse_dtype", None) is not None
                or getattr(embedding, "logit_soft_cap", None) is not None):
            return embedding(x, reverse=True)
        import tensorflow as tf

        kernel = ops.cast(embedding.embeddings, x.dtype)
        shape = tf.shape(x)
        flat = tf.reshape(x, [-1, shape[-1]])
        logits = tf.linalg.matmul(flat, kernel, transpose_b=True)
        return tf.reshape(
            logits, tf.concat([shape[:-1], tf.shape(kernel)[:1]], axis=0))

    def compute_output_shape(self, inputs_shape, positions_shape=None):
        length = inputs_shape[1] if positions_shape is None else positions_shape[1]
        return (inputs_shape[0], length, self.token_embedding.input_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        # `token_embedding` is the backbone's layer, passed again by the task
        # that owns this head when it is rebuilt.
        return config
