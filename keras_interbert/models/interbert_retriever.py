import keras
from keras import ops

from keras_interbert.layers.image_text_matching_head import ImageTextMatchingHead
from keras_interbert.models.functional_base import BackboneTask
from keras_interbert.models.interbert_backbone import InterBERTBackbone
from keras_interbert.models.loading import backbone_of
from keras_interbert.models.loading import resolve_source
from keras_interbert.utils.initializers import backbone_kernel_initializer


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTRetriever(BackboneTask):
    """Image-text retrieval by the matching head (spec section 4.1).

    Scores an (image, caption) pair with the image-text matching head of
    pretraining: `itm_logits` `[B, 2]`, class 0 = matched; the retrieval
    score is `softmax(itm_logits)[:, 0]` (`match_probability`). Finetuning
    trains the same head with 2-way cross-entropy on the four pairs per
    caption that `keras_interbert.data.retrieval_training_dataset` yields.

    Args:
        backbone: an `InterBERTBackbone`.
        itm_head: an `ImageTextMatchingHead` to reuse (the pretrained one),
            or `None` for a new, randomly initialised head.
        itm_dropout: dropout on the fused vector of a new head.
        dtype: dtype policy of the head.

    Examples:
    ```python
    retriever = keras_interbert.InterBERTRetriever.from_pretrained(
        "runs/pretrain/pretrained.keras")
    retriever.compile(optimizer=keras_interbert.training.finetuning_optimizer(
        total_steps=1000, steps_per_epoch=50))
    retriever.fit(keras_interbert.data.retrieval_training_dataset(...))
    probabilities = retriever.match_probability(x)
    ```
    """

    def __init__(self, backbone, itm_head=None, itm_dropout=0.1, dtype=None,
                 **kwargs):
        # === Layers ===
        self.backbone = backbone
        if itm_head is None:
            itm_head = ImageTextMatchingHead(
                dropout=itm_dropout,
                kernel_initializer=backbone_kernel_initializer(backbone),
                dtype=dtype, name="itm_head")
        self.itm_head = itm_head

        # === Functional model ===
        inputs = backbone.input
        features = backbone(inputs)
        outputs = {"itm_logits": self.itm_head(features["text_pooled"],
                                               features["image_pooled"])}
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.itm_dropout = itm_head.dropout

    def _image_feature_dim(self):
        return self.backbone.image_feature_dim

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Configures finetuning: 2-way cross-entropy on `itm_logits`.

        `optimizer="auto"` is `finetuning_optimizer()` at the spec's 4e-5
        (constant: pass your own for warmup and step decay). `loss` and
        `metrics` default to sparse categorical cross-entropy from logits
        and accuracy, against integer labels (0 = matched).
        """
        self._compile_finetuning(optimizer, loss, metrics, 4e-5, **kwargs)

    def match_probability(self, x, batch_size=256):
        """`softmax(itm_logits)[:, 0]` of the pairs in `x`, as numpy `[B]`."""
        logits = self.predict(x, batch_size=batch_size, verbose=0)
        return keras.ops.convert_to_numpy(
            ops.softmax(logits["itm_logits"], axis=-1)[:, 0])

    def _task_config(self):
        return {"itm_dropout": self.itm_dropout}

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A randomly initialised retriever of a named configuration."""
        return cls(InterBERTBackbone.from_preset(preset, **overrides))

    @classmethod
    def from_pretrained(cls, source, **preset_overrides):
        """A retriever from a pretrained model.

        Args:
            source: a `.keras` path, a preset name, or a model object: an
                `InterBERTPretrainer` (its backbone and matching head are
                kept, the spec's choice), an `InterBERTRetriever` (returned
                as is), or an `InterBERTBackbone` (a new head).
            **preset_overrides: backbone config overrides for a preset name.
        """
        model, what = resolve_source(source, preset_overrides)
        if isinstance(model, cls):
            return model
        backbone = backbone_of(model, what)
        return cls(backbone, itm_head=getattr(model, "itm_head", None))
