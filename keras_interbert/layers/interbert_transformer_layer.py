import warnings

import keras
import keras_hub

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

    def call(self, inputs, *args, **kwargs):
        if inputs.shape[1] != 1:
            return super().call(inputs, *args, **kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=ONE_KEY_SOFTMAX_WARNING,
                                    category=UserWarning)
            return super().call(inputs, *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["attention_dropout"] = self.attention_dropout
        return config
