import warnings

import keras
import keras_hub
from keras import ops

# Keras warns on every softmax over an axis of size 1, which is what a
# one-slot sequence attends over (an empty modality is one padded slot:
# `InterBERTPretrainer.unimodal_pooled`, the two-stage first stage, the text
# classifier's empty image). Attending to a single key is well defined (its
# weight is 1), so the warning says nothing about such a call.
ONE_KEY_SOFTMAX_WARNING = "You are using a softmax over axis"


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTTransformerLayer(keras_hub.layers.TransformerEncoder):
    """A post-LayerNorm BERT block with separate attention and hidden dropout.

    keras-hub's `TransformerEncoder` uses one dropout rate for the attention
    probabilities and for the two residual branches. InterBERT's image stream
    needs two different rates (hidden 0.2, attention 0.1), so this layer
    accepts `attention_dropout` and otherwise is exactly the keras-hub block
    (erf GELU, post-LN, `padding_mask` turned into a key mask).

    Args:
        intermediate_dim: int. Width of the feed-forward layer.
        num_heads: int. Number of attention heads.
        dropout: float. Dropout on the two residual branches.
        attention_dropout: float. Dropout on the attention probabilities.
            Defaults to `dropout`.
        **kwargs: everything else `keras_hub.layers.TransformerEncoder` takes.

    Examples:
    ```python
    layer = InterBERTTransformerLayer(
        intermediate_dim=64, num_heads=2, dropout=0.2, attention_dropout=0.1
    )
    y = layer(np.zeros((1, 5, 32)), padding_mask=np.ones((1, 5)))
    ```
    """

    def __init__(self, intermediate_dim, num_heads, dropout=0.0,
                 attention_dropout=None, **kwargs):
        super().__init__(
            intermediate_dim=intermediate_dim,
            num_heads=num_heads,
            dropout=dropout,
            **kwargs,
        )
        self.attention_dropout = (
            dropout if attention_dropout is None else attention_dropout
        )

    def build(self, inputs_shape):
        # The parent builds every sublayer with `self.dropout`; build it with
        # the attention rate, then give the residual dropouts the hidden rate.
        hidden_dropout = self.dropout
        self.dropout = self.attention_dropout
        try:
            super().build(inputs_shape)
        finally:
            self.dropout = hidden_dropout
        self._self_attention_dropout.rate = hidden_dropout
        self._feedforward_dropout.rate = hidden_dropout

    def call(self, inputs, padding_mask=None, attention_mask=None,
             training=None, first_only=False, **kwargs):
        """The block on `inputs`; with `first_only=True`, at position 0 alone.

        `first_only` gives `[B, 1, H]`: the first position's query attends
        to every key and value of `inputs` and only its row goes through the
        attention output, the residuals, the layer norms and the
        feed-forward layer, which is the same math as the full block's row
        0. A pooler that reads position 0 needs nothing else from a stream's
        last layer (`InterBERTBackbone(..., pooled_only=True)`).

        Outside training under TensorFlow the block runs as `_block` with
        the feed-forward layer's first product, bias and activation as one
        `MatMul` + `BiasAdd` + activation, which TensorFlow's graph
        optimizer fuses into one oneDNN kernel (docs/benchmarks.md). In
        training, and under JAX and PyTorch, the full block is keras-hub's
        `TransformerEncoder.call`.
        """
        own = first_only or (
            not training and not kwargs
            and keras.config.backend() == "tensorflow"
            and getattr(inputs, "_keras_mask", None) is None)
        call = self._block if own else super().call
        arguments = dict(padding_mask=padding_mask,
                         attention_mask=attention_mask, training=training)
        arguments.update({"first_only": first_only} if own else kwargs)
        if inputs.shape[1] != 1:
            return call(inputs, **arguments)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=ONE_KEY_SOFTMAX_WARNING,
                                    category=UserWarning)
            return call(inputs, **arguments)

    def _block(self, inputs, padding_mask=None, attention_mask=None,
               training=None, first_only=False):
        # keras-hub's `TransformerEncoder.call`, with the query cut to row 0
        # for `first_only` and the feed-forward product of `_intermediate`.
        mask = None
        if padding_mask is not None:
            mask = ops.expand_dims(ops.cast(padding_mask, "int32"), axis=1)
        if attention_mask is not None:
            rows = attention_mask[:, :1, :] if first_only else attention_mask
            rows = ops.cast(rows, "int32")
            mask = rows if mask is None else ops.minimum(mask, rows)
        residual = inputs[:, :1, :] if first_only else inputs
        values = inputs
        if self.normalize_first:
            values = self._self_attention_layer_norm(inputs)
        query = values[:, :1, :] if first_only else values
        x = self._self_attention_layer(
            query=query, value=values, attention_mask=mask,
            training=training)
        x = self._self_attention_dropout(x, training=training) + residual
        if not self.normalize_first:
            x = self._self_attention_layer_norm(x)
        residual = x
        if self.normalize_first:
            x = self._feedforward_layer_norm(x)
        x = self._feedforward_output_dense(self._intermediate(x, training))
        x = self._feedforward_dropout(x, training=training) + residual
        if not self.normalize_first:
            x = self._feedforward_layer_norm(x)
        return x

    def _intermediate(self, x, training):
        """The feed-forward layer's first `Dense` (with its activation).

        Outside training under TensorFlow: on the rows flattened to 2-D, as
        `MatMul`, `BiasAdd` and the activation, the pattern TensorFlow's
        remapper fuses (Keras' `Dense` adds its bias with `AddV2` on the
        3-D product, which it does not). The same formula; in training the
        layer itself runs, as keras-hub's block runs it.
        """
        dense = self._feedforward_intermediate_dense
        if (training or keras.config.backend() != "tensorflow"
                or not dense.use_bias or getattr(dense, "lora_enabled", False)
                or getattr(dense, "quantization_mode", None)):
            return dense(x)
        import tensorflow as tf

        flat = tf.reshape(x, [-1, x.shape[-1]])
        y = tf.matmul(flat, ops.cast(dense.kernel, x.dtype))
        y = dense.activation(tf.nn.bias_add(y, ops.cast(dense.bias, x.dtype)))
        return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [dense.units]], 0))

    def compute_output_spec(self, inputs, *args, first_only=False, **kwargs):
        if not first_only:
            return super().compute_output_spec(inputs, *args, **kwargs)
        return keras.KerasTensor((inputs.shape[0], 1, inputs.shape[2]),
                                 dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config["attention_dropout"] = self.attention_dropout
        return config
