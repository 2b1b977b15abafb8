import keras

from keras_interbert.layers.image_text_matching_head import ImageTextMatchingHead
from keras_interbert.layers.masked_region_head import MaskedRegionHead
from keras_interbert.layers.masked_segment_head import MaskedSegmentHead
from keras_interbert.models.functional_base import FunctionalBase
from keras_interbert.models.interbert_backbone import InterBERTBackbone
from keras_interbert.utils.activations import hidden_activation


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTPretrainer(FunctionalBase):
    """InterBERT with its three pretraining heads.

    Wraps an `InterBERTBackbone` and adds the masked-segment head (tied to
    the word embeddings), the masked-region head and the image-text matching
    head. Called on the backbone's inputs it returns logits for every
    position: `msm_logits` [B, T, V], `mrm_logits` [B, R, C] (slot 0, the
    global token, included) and `itm_logits` [B, 2] (class 0 = matched).

    Args:
        backbone: an `InterBERTBackbone`.
        num_region_classes: int. Width of the masked-region target
            distribution (1601 for the Visual Genome detector).
        itm_dropout: float. Dropout on the fused pooled vector.
        dtype: dtype policy of the heads.

    Examples:
    ```python
    backbone = keras_interbert.InterBERTBackbone.from_preset("interbert_tiny_en")
    pretrainer = keras_interbert.InterBERTPretrainer(backbone, num_region_classes=17)
    outputs = pretrainer(inputs)  # msm_logits, mrm_logits, itm_logits
    ```
    """

    def __init__(self, backbone, num_region_classes, itm_dropout=0.1,
                 dtype=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.msm_head = MaskedSegmentHead(
            token_embedding=backbone.token_embedding,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            activation=hidden_activation(backbone.approximate_gelu),
            dtype=dtype,
            name="msm_head",
        )
        self.mrm_head = MaskedRegionHead(
            num_classes=num_region_classes,
            hidden_dim=backbone.hidden_dim,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            activation=hidden_activation(backbone.approximate_gelu),
            dtype=dtype,
            name="mrm_head",
        )
        self.itm_head = ImageTextMatchingHead(
            dropout=itm_dropout, dtype=dtype, name="itm_head"
        )

        # === Functional model ===
        inputs = backbone.input
        features = backbone(inputs)
        outputs = {
            "msm_logits": self.msm_head(features["text_sequence"]),
            "mrm_logits": self.mrm_head(features["image_sequence"]),
            "itm_logits": self.itm_head(
                features["text_pooled"], features["image_pooled"]
            ),
        }
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.num_region_classes = num_region_classes
        self.itm_dropout = itm_dropout

    def _image_feature_dim(self):
        return self.backbone.image_feature_dim

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "backbone": keras.layers.serialize(self.backbone),
            "num_region_classes": self.num_region_classes,
            "itm_dropout": self.itm_dropout,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Backbone and heads, randomly initialised, from a named configuration."""
        from keras_interbert.presets import preset_task_config

        backbone = InterBERTBackbone.from_preset(preset, **overrides)
        return cls(backbone, **preset_task_config(preset))
