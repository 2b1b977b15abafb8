"""Matching: `score` and `embed` for a retriever or a pretrainer."""
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


def _model_classes():
    from keras_interbert.models.interbert_pretrainer import InterBERTPretrainer
    from keras_interbert.models.interbert_retriever import InterBERTRetriever

    return (InterBERTRetriever, InterBERTPretrainer)


def matching_signatures(model, tokenizer, packer, options):
    """`score` and `embed` for an `InterBERTRetriever` or `InterBERTPretrainer`.

    Both score with the matching head (`itm_head`) on the backbone's pooled
    vectors; `match_probability` is `softmax(itm_logits)[:, 0]`.
    """
    backbone = model.backbone
    head = model.itm_head
    feature_dim = backbone.image_feature_dim

    def pooled(text, region_features, region_boxes, image_size, num_regions):
        checks = InputChecks()
        text = checked_text(checks, {"text": text}, ["text"])["text"]
        image = checked_image_inputs(
            checks, image_dict(region_features, region_boxes, image_size,
                                num_regions),
            feature_dim, tf.shape(text)[0])
        x = dict(packer(tokenizer(text)))
        x.update(serving_regions(image, options.max_regions))
        features = backbone(x, training=False, pooled_only=True)
        return (tf.cast(features["text_pooled"], tf.float32),
                tf.cast(features["image_pooled"], tf.float32))

    def score(text, region_features, region_boxes, image_size, num_regions):
        text_pooled, image_pooled = pooled(
            text, region_features, region_boxes, image_size, num_regions)
        logits = tf.cast(head(text_pooled, image_pooled, training=False),
                         tf.float32)
        return {"match_probability": tf.nn.softmax(logits, axis=-1)[:, 0],
                "itm_logits": logits}

    def embed(text, region_features, region_boxes, image_size, num_regions):
        text_pooled, image_pooled = pooled(
            text, region_features, region_boxes, image_size, num_regions)
        # The matching head's input before its dropout and classifier.
        return {"text_pooled": text_pooled, "image_pooled": image_pooled,
                "fused": text_pooled * image_pooled}

    specs = (tf.TensorSpec(None, tf.string, name="text"),) + IMAGE_SPECS
    return {"score": (score, specs), "embed": (embed, specs)}


def describe_signatures(model, options):
    text = {"text": ("string", "[batch]")}
    return {
        "score": ({**text, **IMAGE_INPUTS_IO},
                  {"match_probability": "[batch]", "itm_logits": "[batch, 2]"}),
        "embed": ({**text, **IMAGE_INPUTS_IO},
                  {"text_pooled": "[batch, pooled_dim]",
                   "image_pooled": "[batch, pooled_dim]",
                   "fused": "[batch, pooled_dim]"}),
    }


def reference(model, export_dir, metadata, signature, inputs):
    """The Keras model's `score` / `embed` answer to a request."""
    from keras_interbert.export.reference import as_numpy as numpy
    from keras_interbert.export.reference import pipeline_inputs
    from keras_interbert.export.reference import softmax

    backbone = model.backbone
    x = pipeline_inputs(export_dir, metadata, inputs)
    features = backbone(x, training=False, pooled_only=True)
    text_pooled = numpy(features["text_pooled"])
    image_pooled = numpy(features["image_pooled"])
    if signature == "embed":
        return {"text_pooled": text_pooled, "image_pooled": image_pooled,
                "fused": text_pooled * image_pooled}
    logits = numpy(model(x, training=False)["itm_logits"])
    return {"itm_logits": logits,
            "match_probability": softmax(logits)[:, 0]}


register(ServingTask(
    name="matching", model_classes=_model_classes,
    defaults={"sequence_length": 30, "max_regions": 101,
              "truncate_after_packing": True},
    min_sequence_length=3, uses_regions=True, accepts_text_pairs=False,
    build_signatures=matching_signatures,
    describe_signatures=describe_signatures, reference=reference))
