import keras
import keras_hub
from keras import ops

from keras_interbert.layers.interbert_transformer_layer import (
    InterBERTTransformerLayer,
)
from keras_interbert.models.input_checks import BACKBONE_INPUT_NAMES
from keras_interbert.models.functional_base import FunctionalBase
from keras_interbert.utils.activations import hidden_activation
from keras_interbert.utils.initializers import interbert_kernel_initializer


@keras.saving.register_keras_serializable(package="keras_interbert")
class ImageTextSplit(keras.layers.Layer):
    """Splits the joint `[image slots | text]` sequence back into its parts.

    The number of image slots is read from `region_mask` at run time, so one
    model serves any region count.
    """

    def call(self, joint, region_mask):
        num_slots = ops.shape(region_mask)[1]
        return joint[:, :num_slots, :], joint[:, num_slots:, :]

    def compute_output_shape(self, joint_shape, region_mask_shape):
        num_slots = region_mask_shape[1]
        text_len = None
        if joint_shape[1] is not None and num_slots is not None:
            text_len = joint_shape[1] - num_slots
        return (
            (joint_shape[0], num_slots, joint_shape[2]),
            (joint_shape[0], text_len, joint_shape[2]),
        )


@keras.saving.register_keras_serializable(package="keras_interbert")
class SequencePooling(keras.layers.Layer):
    """The vector a pooler reads from a sequence: its first slot, or the mean.

    `mode="first"` (the original) takes position 0 (`[CLS]`, the global image
    token); `mode="mean"` averages the real positions of `mask` (a row with
    none gives zeros).
    """

    MODES = ("first", "mean")

    def __init__(self, mode="first", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"`pooling` must be one of {list(self.MODES)}; "
                             f"received {mode!r}.")
        self.mode = mode

    def call(self, sequence, mask):
        if self.mode == "first":
            return sequence[:, 0, :]
        weights = ops.expand_dims(ops.cast(mask, sequence.dtype), -1)
        total = ops.sum(sequence * weights, axis=1)
        return total / ops.maximum(ops.sum(weights, axis=1), 1.0)

    def compute_output_shape(self, sequence_shape, mask_shape=None):
        return (sequence_shape[0], sequence_shape[2])

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


def _key_mask(mask):
    """A 0/1 key mask in which a row with no real key lets every key through.

    The original adds `(1 - m) * -10000` to the attention scores; on a row
    where every key is masked that constant cancels in the softmax, so every
    key is attended. Unmasking such rows reproduces that exactly and keeps
    fused attention kernels (which would give NaN on an all-false row) safe.
    """
    mask = ops.cast(mask, "int32")
    has_key = ops.any(ops.not_equal(mask, 0), axis=1, keepdims=True)
    return ops.where(has_key, mask, ops.ones_like(mask))


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTBackbone(FunctionalBase):
    """The InterBERT encoder: a shared single stream, then one stack per modality.

    Image slots (slot 0 is the global image token) and text tokens are
    embedded separately, concatenated image first, and run through
    `num_single_stream_layers` BERT layers with full attention across both
    modalities (interaction). The joint sequence is then split: the text part
    goes through `num_text_layers` layers that see only text, the image part
    through `num_image_layers` layers with their own head count, feed-forward
    width and dropout. Poolers (`Dense` + ReLU on the first slot of each
    stream) give `text_pooled` and `image_pooled`.

    Image slots get no position and no segment embedding, as in the
    original code. With every `region_mask` entry 0 the text path is exactly a
    BERT encoder of `num_single_stream_layers + num_text_layers` layers.

    Inputs (a dict): `token_ids` [B, T], `segment_ids` [B, T], `text_mask`
    [B, T] (1 = real token), `region_features` [B, R, image_feature_dim],
    `region_locations` [B, R, 5], `region_mask` [B, R] (1 = real slot).
    Outputs (a dict): `text_sequence` [B, T, H], `image_sequence` [B, R, H],
    `text_pooled` [B, P], `image_pooled` [B, P].

    Args:
        vocabulary_size: int. Word-piece vocabulary size.
        num_single_stream_layers: int. Shared interaction layers.
        num_text_layers: int. Text-stream layers.
        num_image_layers: int. Image-stream layers.
        hidden_dim: int. Width of every stream.
        num_heads: int. Heads of the single-stream and text layers.
        intermediate_dim: int. Feed-forward width of those layers.
        num_image_heads: int. Heads of the image-stream layers.
        image_intermediate_dim: int. Feed-forward width of the image layers.
        pooled_dim: int. Width of both poolers (`bi_hidden_size`).
        image_feature_dim: int. Width of a region feature (2048 published).
        dropout: float. Hidden dropout of embeddings, single and text layers.
        attention_dropout: float. Attention dropout of single and text layers.
        image_dropout: float. Hidden dropout of the image-stream layers.
        image_attention_dropout: float. Their attention dropout.
        max_sequence_length: int. Number of learned text positions.
        num_segments: int. Number of segment (token type) ids.
        layer_norm_epsilon: float. Epsilon of every LayerNorm.
        approximate_gelu: bool. Use the tanh approximation of GELU instead of
            the exact (erf) one; only for weights trained that way (Google
            BERT, keras-hub BERT). InterBERT uses the exact GELU.
        initializer_range: float. Standard deviation of the normal
            initializer of every kernel and embedding (BERT's
            `initializer_range`; 0.02 in the published configuration). The
            pretraining heads and the finetuning heads use the same value.
        pooling: `"first"` (the original: each pooler reads `[CLS]` and the
            global image token) or `"mean"` (each pooler reads the mean of
            its stream's real positions; not in the published model).
        dtype: dtype policy of the layers.

    Examples:
    ```python
    backbone = keras_interbert.InterBERTBackbone(
        vocabulary_size=120, num_single_stream_layers=1, num_text_layers=1,
        num_image_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
        num_image_heads=2, image_intermediate_dim=64, pooled_dim=48,
        image_feature_dim=16,
    )
    outputs = backbone({
        "token_ids": np.ones((2, 8), "int32"),
        "segment_ids": np.zeros((2, 8), "int32"),
        "text_mask": np.ones((2, 8), "int32"),
        "region_features": np.random.rand(2, 5, 16).astype("float32"),
        "region_locations": np.random.rand(2, 5, 5).astype("float32"),
        "region_mask": np.ones((2, 5), "int32"),
    })
    outputs["text_pooled"].shape  # (2, 48)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_single_stream_layers,
        num_text_layers,
        num_image_layers,
        hidden_dim,
        num_heads,
        intermediate_dim,
        num_image_heads,
        image_intermediate_dim,
        pooled_dim,
        image_feature_dim,
        dropout=0.1,
        attention_dropout=0.1,
        image_dropout=0.2,
        image_attention_dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        layer_norm_epsilon=1e-12,
        approximate_gelu=False,
        initializer_range=0.02,
        pooling="first",
        dtype=None,
        **kwargs,
    ):
        initializer_range = float(initializer_range)
        if not initializer_range > 0:
            raise ValueError(
                "`initializer_range` must be a positive standard deviation. "
                f"Received: initializer_range={initializer_range}"
            )

        # === Layers ===
        def init():
            return interbert_kernel_initializer(initializer_range)
        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            tie_weights=True,
            embeddings_initializer=init(),
            dtype=dtype,
            name="token_embedding",
        )
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            sequence_length=max_sequence_length,
            initializer=init(),
            dtype=dtype,
            name="position_embedding",
        )
        self.segment_embedding = keras.layers.Embedding(
            input_dim=num_segments,
            output_dim=hidden_dim,
            embeddings_initializer=init(),
            dtype=dtype,
            name="segment_embedding",
        )
        self.text_embeddings_add = keras.layers.Add(
            dtype=dtype, name="text_embeddings_add"
        )
        self.text_embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=dtype,
            name="text_embeddings_layer_norm",
        )
        self.text_embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="text_embeddings_dropout"
        )
        self.image_feature_projection = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=init(),
            dtype=dtype,
            name="image_feature_projection",
        )
        self.image_location_projection = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=init(),
            dtype=dtype,
            name="image_location_projection",
        )
        self.image_embeddings_add = keras.layers.Add(
            dtype=dtype, name="image_embeddings_add"
        )
        self.image_embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=dtype,
            name="image_embeddings_layer_norm",
        )
        self.image_embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="image_embeddings_dropout"
        )

        def transformer_layer(name, heads, ffn, hidden_drop, attn_drop):
            return InterBERTTransformerLayer(
                intermediate_dim=ffn,
                num_heads=heads,
                dropout=hidden_drop,
                attention_dropout=attn_drop,
                activation=hidden_activation(approximate_gelu),
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=init(),
                dtype=dtype,
                name=name,
            )

        self.single_stream_layers = [
            transformer_layer(f"single_stream_layer_{i}", num_heads,
                              intermediate_dim, dropout, attention_dropout)
            for i in range(num_single_stream_layers)
        ]
        self.text_stream_layers = [
            transformer_layer(f"text_stream_layer_{i}", num_heads,
                              intermediate_dim, dropout, attention_dropout)
            for i in range(num_text_layers)
        ]
        self.image_stream_layers = [
            transformer_layer(f"image_stream_layer_{i}", num_image_heads,
                              image_intermediate_dim, image_dropout,
                              image_attention_dropout)
            for i in range(num_image_layers)
        ]
        self.image_text_split = ImageTextSplit(
            dtype=dtype, name="image_text_split"
        )
        self.text_pooling = SequencePooling(
            pooling, dtype=dtype, name="text_pooling")
        self.image_pooling = SequencePooling(
            pooling, dtype=dtype, name="image_pooling")
        self.text_pooler = keras.layers.Dense(
            pooled_dim,
            activation="relu",
            kernel_initializer=init(),
            dtype=dtype,
            name="text_pooler",
        )
        self.image_pooler = keras.layers.Dense(
            pooled_dim,
            activation="relu",
            kernel_initializer=init(),
            dtype=dtype,
            name="image_pooler",
        )

        # === Functional model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        segment_ids = keras.Input(
            shape=(None,), dtype="int32", name="segment_ids"
        )
        text_mask = keras.Input(shape=(None,), dtype="int32", name="text_mask")
        region_features = keras.Input(
            shape=(None, image_feature_dim),
            dtype="float32",
            name="region_features",
        )
        region_locations = keras.Input(
            shape=(None, 5), dtype="float32", name="region_locations"
        )
        region_mask = keras.Input(
            shape=(None,), dtype="int32", name="region_mask"
        )

        words = self.token_embedding(token_ids)
        text = self.text_embeddings_add(
            [words, self.position_embedding(words),
             self.segment_embedding(segment_ids)]
        )
        text = self.text_embeddings_layer_norm(text)
        text = self.text_embeddings_dropout(text)

        image = self.image_embeddings_add(
            [self.image_feature_projection(region_features),
             self.image_location_projection(region_locations)]
        )
        image = self.image_embeddings_layer_norm(image)
        image = self.image_embeddings_dropout(image)

        image_keys = _key_mask(region_mask)
        text_keys = _key_mask(text_mask)
        joint_keys = _key_mask(ops.concatenate(
            [ops.cast(region_mask, "int32"), ops.cast(text_mask, "int32")],
            axis=1,
        ))
        joint = ops.concatenate([image, text], axis=1)
        for layer in self.single_stream_layers:
            joint = layer(joint, padding_mask=joint_keys)
        image, text = self.image_text_split(joint, region_mask)
        # The input of each stream's last layer, for the pooled-only graph.
        text_last_input, image_last_input = text, image
        for layer in self.text_stream_layers:
            text_last_input = text
            text = layer(text, padding_mask=text_keys)
        for layer in self.image_stream_layers:
            image_last_input = image
            image = layer(image, padding_mask=image_keys)

        outputs = {
            "text_sequence": text,
            "image_sequence": image,
            "text_pooled": self.text_pooler(
                self.text_pooling(text, text_mask)),
            "image_pooled": self.image_pooler(
                self.image_pooling(image, region_mask)),
        }
        inputs = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "text_mask": text_mask,
            "region_features": region_features,
            "region_locations": region_locations,
            "region_mask": region_mask,
        }

        # === Pooled-only graph (`call(..., pooled_only=True)`) ===
        # The poolers read position 0 of each stream, so a stream's last
        # layer is needed there alone: its keys and values over every
        # position, its query, attention output and feed-forward layer at
        # row 0. Same layers and weights; the last layer's other rows are not
        # computed (with the "mean" pooling, which reads every row, it is
        # the full graph's pooled part).
        def first_rows(stream, layers, last_input, keys):
            if pooling != "first" or not layers:
                return stream
            return layers[-1](last_input, padding_mask=keys, first_only=True)

        pooled_text = first_rows(text, self.text_stream_layers,
                                 text_last_input, text_keys)
        pooled_image = first_rows(image, self.image_stream_layers,
                                  image_last_input, image_keys)
        pooled_graph = keras.Model(inputs, {
            "text_pooled": self.text_pooler(
                self.text_pooling(pooled_text, text_mask)),
            "image_pooled": self.image_pooler(
                self.image_pooling(pooled_image, region_mask)),
        }, name="pooled_graph")
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        # Not a tracked attribute: its layers are this model's, and tracking
        # it would give every weight a second path when saving.
        object.__setattr__(self, "_pooled_graph", pooled_graph)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_single_stream_layers = num_single_stream_layers
        self.num_text_layers = num_text_layers
        self.num_image_layers = num_image_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_image_heads = num_image_heads
        self.image_intermediate_dim = image_intermediate_dim
        self.pooled_dim = pooled_dim
        self.image_feature_dim = image_feature_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.image_dropout = image_dropout
        self.image_attention_dropout = image_attention_dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.layer_norm_epsilon = layer_norm_epsilon
        self.approximate_gelu = approximate_gelu
        self.initializer_range = initializer_range
        self.pooling = pooling

    input_names = BACKBONE_INPUT_NAMES

    def call(self, inputs, training=None, mask=None, pooled_only=False):
        """The outputs dict; with `pooled_only=True`, `text_pooled` and
        `image_pooled` alone, for the tasks that read nothing else (the
        matching head, retrieval, the classifiers).

        Outside training the pooled-only call computes each stream's last
        layer at its first position only, which is all the poolers read: the
        same numbers as the full call's pooled outputs, for less work (about
        7% of the forward at retrieval's 30 tokens and 102 image slots). In
        training it runs the full graph (the dropout masks of the last
        layers then stay those of the full call).
        """
        if pooled_only and not training:
            return self._pooled_graph.call(inputs, training=training)
        outputs = super().call(inputs, training=training, mask=mask)
        if not pooled_only:
            return outputs
        # In training the full graph runs, so that every dropout layer draws
        # the masks it draws in the full call: a finetuning run takes the
        # same steps as before the pooled-only call existed.
        return {k: outputs[k] for k in ("text_pooled", "image_pooled")}

    def compute_output_spec(self, inputs, training=None, mask=None,
                            pooled_only=False):
        if not pooled_only:
            return super().compute_output_spec(inputs, training=training,
                                               mask=mask)
        return self._pooled_graph.compute_output_spec(inputs)

    def _image_feature_dim(self):
        return self.image_feature_dim

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_single_stream_layers": self.num_single_stream_layers,
                "num_text_layers": self.num_text_layers,
                "num_image_layers": self.num_image_layers,
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "num_image_heads": self.num_image_heads,
                "image_intermediate_dim": self.image_intermediate_dim,
                "pooled_dim": self.pooled_dim,
                "image_feature_dim": self.image_feature_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "image_dropout": self.image_dropout,
                "image_attention_dropout": self.image_attention_dropout,
                "max_sequence_length": self.max_sequence_length,
                "num_segments": self.num_segments,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "approximate_gelu": self.approximate_gelu,
                "initializer_range": self.initializer_range,
            }
        )
        # Written only when not the original's, so configs of the faithful
        # model stay as they were.
        if self.pooling != "first":
            config["pooling"] = self.pooling
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A backbone from a named configuration or a preset directory.

        `preset` is one of `keras_interbert.presets.list_presets()` (random
        weights; keyword arguments override single config values, e.g.
        `image_feature_dim`), or a directory written by `save_to_preset`
        (the saved config and weights; of a task's directory, its backbone).
        """
        from keras_interbert.models import preset_io
        from keras_interbert.presets import preset_backbone_config

        if preset_io.is_preset_directory(preset):
            if overrides:
                raise ValueError(
                    f"{preset} is a saved backbone; it loads as saved, "
                    f"without config overrides (received {sorted(overrides)}).")
            return preset_io.load_backbone(preset)

        config = preset_backbone_config(preset)
        config.update(overrides)
        return cls(**config)

    def save_to_preset(self, preset_dir, overwrite=False):
        """Writes config and weights to `preset_dir` (see
        `keras_interbert.models.preset_io`); `from_preset(preset_dir)` loads
        them."""
        from keras_interbert.models import preset_io

        return preset_io.save_to_preset(self, preset_dir, overwrite=overwrite)
