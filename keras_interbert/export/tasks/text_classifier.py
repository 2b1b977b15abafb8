"""Text classification: `classify_text` (text, or text pairs)."""
import numpy as np
import tensorflow as tf

from keras_interbert.export.serving_inputs import InputChecks
from keras_interbert.export.serving_inputs import checked_text
from keras_interbert.export.tasks import ServingTask
from keras_interbert.export.tasks import register
from keras_interbert.preprocessing.preprocessor_base import tokenize_together
from keras_interbert.preprocessing.region_packer import empty_image_slots


def _model_classes():
    from keras_interbert.models.interbert_text_classifier import (
        InterBERTTextClassifier,
    )

    return (InterBERTTextClassifier,)


def _class_outputs(logits):
    logits = tf.cast(logits, tf.float32)
    if logits.shape[-1] == 1:
        return {"logits": logits, "score": logits[:, 0]}
    return {"logits": logits,
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "class_id": tf.argmax(logits, axis=-1, output_type=tf.int32)}


def text_classifier_signatures(model, tokenizer, packer, options):
    """`classify_text` for an `InterBERTTextClassifier`.

    Outputs `logits` `[B, C]`, `probabilities` and `class_id` (or, for a
    one-output regression model, `logits` `[B, 1]` and `score` `[B]`).
    """
    feature_dim = model.backbone.image_feature_dim

    def run(columns):
        checks = InputChecks()
        names = list(columns)
        columns = checked_text(checks, columns, names)
        batch = tf.shape(columns["text"])[0]
        for name in names[1:]:
            checks.require(tf.equal(tf.shape(columns[name])[0], batch), name,
                           "expected the batch size of `text`,", batch,
                           "; received shape", tf.shape(columns[name]))
        columns = checks.gate(columns)
        segments = tokenize_together(tokenizer, [columns[n] for n in names])
        x = dict(packer(*segments))
        x.update(empty_image_slots(batch, 1, feature_dim))
        return _class_outputs(model(x, training=False))

    if options.text_pairs:
        def classify_text(text, text_pair):
            return run({"text": text, "text_pair": text_pair})

        specs = (tf.TensorSpec(None, tf.string, name="text"),
                 tf.TensorSpec(None, tf.string, name="text_pair"))
    else:
        def classify_text(text):
            return run({"text": text})

        specs = (tf.TensorSpec(None, tf.string, name="text"),)
    return {"classify_text": (classify_text, specs)}


def describe_signatures(model, options):
    inputs = {"text": ("string", "[batch]")}
    if options.text_pairs:
        inputs["text_pair"] = ("string", "[batch]")
    outputs = ({"logits": "[batch, 1]", "score": "[batch]"}
               if model.num_classes == 1 else
               {"logits": "[batch, num_classes]",
                "probabilities": "[batch, num_classes]",
                "class_id": "[batch] int32"})
    return {"classify_text": (inputs, outputs)}


def reference(model, export_dir, metadata, signature, inputs):
    """The Keras model's `classify_text` answer to a request."""
    from keras_interbert.export.reference import as_numpy as numpy
    from keras_interbert.export.reference import pipeline_inputs
    from keras_interbert.export.reference import softmax

    columns = ["text"] + (["text_pair"] if "text_pair" in inputs else [])
    x = pipeline_inputs(export_dir, metadata,
                        {c: inputs[c] for c in columns}, columns)
    size = len(inputs["text"])
    x["region_features"] = np.zeros(
        (size, 1, metadata["image_feature_dim"]), np.float32)
    x["region_locations"] = np.zeros((size, 1, 5), np.float32)
    x["region_mask"] = np.zeros((size, 1), np.int32)
    logits = numpy(model(x, training=False))
    if logits.shape[-1] == 1:
        return {"logits": logits, "score": logits[:, 0]}
    return {"logits": logits, "probabilities": softmax(logits),
            "class_id": logits.argmax(-1).astype(np.int32)}


register(ServingTask(
    name="text_classifier", model_classes=_model_classes,
    defaults={"sequence_length": 128, "max_regions": 0,
              "truncate_after_packing": False},
    min_sequence_length=4, uses_regions=False, accepts_text_pairs=True,
    build_signatures=text_classifier_signatures,
    describe_signatures=describe_signatures, reference=reference))
