"""Multiple choice: `choose` (a question, its options and an image)."""
import numpy as np
import tensorflow as tf

from keras_interbert.export.serving_inputs import InputChecks
from keras_interbert.export.serving_inputs import checked_image_inputs
from keras_interbert.export.serving_inputs import checked_text
from keras_interbert.export.serving_inputs import serving_regions
from keras_interbert.export.serving_signatures import IMAGE_INPUTS_IO
from keras_interbert.export.serving_signatures import IMAGE_SPECS
from keras_interbert.export.serving_signatures import image_dict
from keras_interbert.export.tasks import ServingTask
from keras_interbert.export.tasks import register
from keras_interbert.preprocessing.preprocessor_base import tokenize_together


def _model_classes():
    from keras_interbert.models.interbert_multiple_choice import (
        InterBERTMultipleChoice,
    )

    return (InterBERTMultipleChoice,)


def multiple_choice_signatures(model, tokenizer, packer, options):
    """`choose` for an `InterBERTMultipleChoice`.

    Each option is packed after the question (`[CLS] question [SEP] option
    [SEP]`, longest-first truncation) and scored with the image; outputs
    `logits` `[B, O]`, `probabilities` `[B, O]` and `choice` `[B]`.
    """
    num_options = model.num_options
    feature_dim = model.backbone.image_feature_dim
    max_regions = options.max_regions

    def choose(question, options, region_features, region_boxes, image_size,
               num_regions):
        checks = InputChecks()
        question = checked_text(checks, {"question": question},
                                ["question"])["question"]
        batch = tf.shape(question)[0]
        checks.require(tf.equal(tf.rank(options), 2), "options",
                       f"expected a [batch, {num_options}] string tensor; "
                       "received shape", tf.shape(options))
        options = checks.gate({"options": options},
                              {"options": [None, None]})["options"]
        checks.require(tf.reduce_all(tf.equal(
            tf.shape(options), tf.stack([batch, num_options]))), "options",
            f"expected [batch, {num_options}] with the batch size of "
            "`question`,", batch, "; received shape", tf.shape(options))
        options = checks.gate({"options": options},
                              {"options": [None, num_options]})["options"]
        image = checked_image_inputs(
            checks, image_dict(region_features, region_boxes, image_size,
                                num_regions), feature_dim, batch)
        flat_options = tf.reshape(options, [-1])
        question_ids, option_ids = tokenize_together(
            tokenizer, [question, flat_options])
        # Row b * O + o is question b with its option o.
        owner = tf.repeat(tf.range(batch), num_options)
        text = packer(tf.gather(question_ids, owner), option_ids)
        regions = serving_regions(image, max_regions)
        x = {k: tf.reshape(v, [-1, num_options, v.shape[-1]])
             for k, v in text.items()}
        for name, value in regions.items():
            repeated = tf.repeat(value[:, None], num_options, axis=1)
            x[name] = tf.ensure_shape(
                repeated, [None, num_options] + value.shape[1:].as_list())
        logits = tf.cast(model(x, training=False), tf.float32)
        return {"logits": logits,
                "probabilities": tf.nn.softmax(logits, axis=-1),
                "choice": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    specs = (tf.TensorSpec(None, tf.string, name="question"),
             tf.TensorSpec(None, tf.string, name="options")) + IMAGE_SPECS
    return {"choose": (choose, specs)}


def describe_signatures(model, options):
    return {"choose": ({"question": ("string", "[batch]"),
                        "options": ("string", "[batch, num_options]"),
                        **IMAGE_INPUTS_IO},
                       {"logits": "[batch, num_options]",
                        "probabilities": "[batch, num_options]",
                        "choice": "[batch] int32"})}


def reference(model, export_dir, metadata, signature, inputs):
    """The Keras model's `choose` answer to a request."""
    from keras_interbert.export.reference import as_numpy as numpy
    from keras_interbert.export.reference import pipeline_inputs
    from keras_interbert.export.reference import softmax

    size, count = inputs["options"].shape
    x = pipeline_inputs(
        export_dir, metadata,
        {"question": np.repeat(inputs["question"], count),
         "options": inputs["options"].reshape(-1)},
        ("question", "options"))
    x = {k: v.reshape(size, count, -1) for k, v in x.items()}
    image = {k: v for k, v in inputs.items()
             if k not in ("question", "options")}
    image["text"] = inputs["question"]
    regions = pipeline_inputs(export_dir, metadata, image)
    for name in ("region_features", "region_locations", "region_mask"):
        x[name] = np.repeat(regions[name][:, None], count, axis=1)
    logits = numpy(model(x, training=False))
    return {"logits": logits, "probabilities": softmax(logits),
            "choice": logits.argmax(-1).astype(np.int32)}


register(ServingTask(
    name="multiple_choice", model_classes=_model_classes,
    defaults={"sequence_length": 60, "max_regions": 99,
              "truncate_after_packing": False},
    min_sequence_length=4, uses_regions=True, accepts_text_pairs=False,
    build_signatures=multiple_choice_signatures,
    describe_signatures=describe_signatures, reference=reference))
