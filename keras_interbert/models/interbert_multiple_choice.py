import keras
import numpy as np

from keras_interbert.models.functional_base import BackboneTask
from keras_interbert.models.input_checks import BACKBONE_INPUT_NAMES
from keras_interbert.models.input_checks import check_backbone_inputs
from keras_interbert.models.interbert_backbone import InterBERTBackbone
from keras_interbert.models.loading import backbone_of
from keras_interbert.models.loading import resolve_source
from keras_interbert.models.option_layers import MergeOptions
from keras_interbert.models.option_layers import SplitOptions
from keras_interbert.utils.initializers import backbone_kernel_initializer


class _Folded:
    """Stands in for an input when checking its shape with options folded."""

    def __init__(self, shape):
        self.shape = shape


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTMultipleChoice(BackboneTask):
    """VCR-style multiple choice (docs/architecture.md §4.2).

    Every (question, option) pair goes through the backbone with the image;
    the logit of an option is `Dense(1)(Dropout(pooled_text * pooled_image))`
    and a softmax over the options picks the answer (Q->A) or the rationale
    (QA->R, the gold answer in the first segment).

    Inputs are the backbone's six, each with an options axis after the batch
    (`token_ids` `[B, O, T]`, `region_features` `[B, O, R, D]`, ...), as
    `keras_interbert.data.multiple_choice_dataset` yields them. The output is
    `logits` `[B, O]`.

    Args:
        backbone: an `InterBERTBackbone`.
        num_options: options per question (4).
        preprocessor: optional `InterBERTMultipleChoicePreprocessor`; with
            it, `fit`, `evaluate` and `predict` take raw questions, options
            and detector outputs, and it is saved in the `.keras` file.
        dropout: dropout on the fused vector.
        dtype: dtype policy of the head.

    Examples:
    ```python
    model = keras_interbert.InterBERTMultipleChoice.from_pretrained(
        "pretrained.keras", num_options=4)
    model.compile()
    model.fit(multiple_choice_dataset(regions, "vcr_train.jsonl", tokenizer))
    ```
    """

    def __init__(self, backbone, num_options=4, dropout=0.1, preprocessor=None,
                 dtype=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.merge_options = MergeOptions(dtype=dtype, name="merge_options")
        self.fusion = keras.layers.Multiply(dtype=dtype, name="fusion")
        self.fusion_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="fusion_dropout")
        self.choice_dense = keras.layers.Dense(
            1, kernel_initializer=backbone_kernel_initializer(backbone),
            dtype=dtype, name="choice_dense")
        self.split_options = SplitOptions(num_options, dtype=dtype,
                                          name="split_options")

        # === Functional model ===
        inputs = {
            name: keras.Input(shape=(num_options,) + tuple(spec.shape[1:]),
                              dtype=spec.dtype, name=name)
            for name, spec in backbone.input.items()
        }
        features = backbone({name: self.merge_options(value)
                             for name, value in inputs.items()},
                            pooled_only=True)
        fused = self.fusion([features["text_pooled"], features["image_pooled"]])
        logits = self.choice_dense(self.fusion_dropout(fused))
        outputs = self.split_options(logits)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.num_options = num_options
        self.dropout = dropout
        self.set_preprocessor(preprocessor)

    def _image_feature_dim(self):
        return self.backbone.image_feature_dim

    def __call__(self, inputs, *args, **kwargs):
        # Check the inputs as the backbone will see them, options folded.
        if isinstance(inputs, dict) and all(
                k in inputs for k in BACKBONE_INPUT_NAMES):
            folded = {}
            for name in BACKBONE_INPUT_NAMES:
                shape = tuple(getattr(inputs[name], "shape", ()) or ())
                if len(shape) < 2 or (shape[1] is not None
                                      and shape[1] != self.num_options):
                    raise ValueError(
                        f"InterBERTMultipleChoice input '{name}': expected "
                        f"[batch, {self.num_options} options, ...], received "
                        f"shape {shape}.")
                batch = (None if shape[0] is None or shape[1] is None
                         else shape[0] * shape[1])
                folded[name] = _Folded((batch,) + shape[2:])
            check_backbone_inputs(folded, self._image_feature_dim(),
                                  "InterBERTMultipleChoice")
            return keras.Model.__call__(self, inputs, *args, **kwargs)
        return super().__call__(inputs, *args, **kwargs)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Softmax cross-entropy over the options, accuracy as the metric."""
        self._compile_finetuning(optimizer, loss, metrics, 2e-5, **kwargs)

    def predict_choices(self, dataset):
        """Argmax option and gold label of every question of `dataset`.

        Returns `(predicted, labels)` numpy int arrays over the dataset's
        questions (one pass, in the dataset's order).
        """
        predicted, labels = [], []
        for x, y in dataset:
            logits = keras.ops.convert_to_numpy(self(x, training=False))
            predicted.append(np.argmax(logits, axis=-1))
            labels.append(np.asarray(y))
        return np.concatenate(predicted), np.concatenate(labels)

    def _task_config(self):
        return {"num_options": self.num_options, "dropout": self.dropout}

    @classmethod
    def from_preset(cls, preset, num_options=4, **overrides):
        """A randomly initialised model of a named configuration, or the
        model of a preset directory (`save_to_preset`; a new choice head on
        the backbone of any other saved model)."""
        from keras_interbert.models import preset_io

        if preset_io.is_preset_directory(preset):
            model = preset_io.load_preset(preset)
            if isinstance(model, cls):
                return model
            return cls.from_pretrained(model, num_options=num_options,
                                       **overrides)
        return cls(InterBERTBackbone.from_preset(preset, **overrides),
                   num_options=num_options)

    @classmethod
    def from_pretrained(cls, source, num_options=4, **preset_overrides):
        """The backbone of `source` (a `.keras` path, preset or model) and a
        new choice head (an `InterBERTMultipleChoice` source is returned as
        is)."""
        model, what = resolve_source(source, preset_overrides)
        if isinstance(model, cls):
            return model
        return cls(backbone_of(model, what), num_options=num_options)


def multiple_choice_accuracies(q_a, qa_r):
    """VCR metrics from `(predicted, labels)` of both tasks on the same questions.

    Returns `{"q_a": ..., "qa_r": ..., "q_ar": ...}`, Q->AR counting a
    question right only when both its answer and its rationale are.
    """
    (pa, la), (pr, lr) = q_a, qa_r
    if len(pa) != len(pr):
        raise ValueError(
            f"Q->A has {len(pa)} questions and QA->R {len(pr)}; Q->AR needs "
            "both on the same questions in the same order.")
    a_right = np.asarray(pa) == np.asarray(la)
    r_right = np.asarray(pr) == np.asarray(lr)
    return {"q_a": float(a_right.mean()), "qa_r": float(r_right.mean()),
            "q_ar": float((a_right & r_right).mean())}
