import keras

from keras_interbert.models.functional_base import BackboneTask
from keras_interbert.models.interbert_backbone import InterBERTBackbone
from keras_interbert.models.loading import backbone_of
from keras_interbert.models.loading import resolve_source
from keras_interbert.utils.initializers import backbone_kernel_initializer


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTTextClassifier(BackboneTask):
    """Text-only classification or regression on the text path (docs/architecture.md §4.3).

    The text goes in with no image (a single masked, all-zero image slot, as
    `keras_interbert.data.text_classification_dataset` emits): the
    interaction layers then act as BERT's first layers and the text stream
    as the rest. The classifier reads the pooled text vector (the text
    stream's `[CLS]` through the pretrained `ReLU(Dense)` text pooler):
    `Dense(num_classes)(Dropout(text_pooled))`, logits `[B, num_classes]`
    (`num_classes=1` for regression).

    Args:
        backbone: an `InterBERTBackbone`.
        num_classes: classes (or 1 for a regression score).
        dropout: dropout before the classifier.
        preprocessor: optional `InterBERTTextClassifierPreprocessor`; with
            it, `fit`, `evaluate` and `predict` take raw `text` (and
            `text_pair`), and it is saved in the `.keras` file.
        dtype: dtype policy of the head.

    Examples:
    ```python
    classifier = keras_interbert.InterBERTTextClassifier.from_pretrained(
        "pretrained.keras", num_classes=3)
    classifier.compile()
    classifier.fit(text_classification_dataset(data, tokenizer, config))
    ```
    """

    def __init__(self, backbone, num_classes, dropout=0.1, preprocessor=None,
                 dtype=None, **kwargs):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1; received {num_classes}.")
        # === Layers ===
        self.backbone = backbone
        self.classifier_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="classifier_dropout")
        self.classifier_dense = keras.layers.Dense(
            int(num_classes), kernel_initializer=backbone_kernel_initializer(backbone),
            dtype=dtype, name="classifier_dense")

        # === Functional model ===
        inputs = backbone.input
        features = backbone(inputs, pooled_only=True)
        outputs = self.classifier_dense(
            self.classifier_dropout(features["text_pooled"]))
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.num_classes = int(num_classes)
        self.dropout = dropout
        self.set_preprocessor(preprocessor)

    def _image_feature_dim(self):
        return self.backbone.image_feature_dim

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Cross-entropy and accuracy (mean squared error for one output).

        The image stream and the image pooler do not reach the output; they
        are frozen here so that no optimizer slot is spent on them.
        """
        backbone = self.backbone
        for layer in list(backbone.image_stream_layers) + [backbone.image_pooler]:
            layer.trainable = False
        self._compile_finetuning(optimizer, loss, metrics, 2e-5,
                                 regression=self.num_classes == 1, **kwargs)

    def _task_config(self):
        return {"num_classes": self.num_classes, "dropout": self.dropout}

    @classmethod
    def from_preset(cls, preset, num_classes, **overrides):
        """A randomly initialised classifier of a named configuration, or the
        model of a preset directory (`save_to_preset`; a saved classifier
        must have `num_classes` classes, any other saved model gives its
        backbone and a new classifier)."""
        from keras_interbert.models import preset_io

        if preset_io.is_preset_directory(preset):
            return cls.from_pretrained(preset_io.load_preset(preset),
                                       num_classes=num_classes, **overrides)
        return cls(InterBERTBackbone.from_preset(preset, **overrides),
                   num_classes=num_classes)

    @classmethod
    def from_pretrained(cls, source, num_classes, **preset_overrides):
        """The backbone of `source` (a `.keras` path, preset or model) and a
        new classifier (an `InterBERTTextClassifier` source is returned as
        is after checking its class count)."""
        model, what = resolve_source(source, preset_overrides)
        if isinstance(model, cls):
            if model.num_classes != int(num_classes):
                raise ValueError(
                    f"{what} classifies into {model.num_classes} classes, "
                    f"not {num_classes}.")
            return model
        return cls(backbone_of(model, what), num_classes=num_classes)
