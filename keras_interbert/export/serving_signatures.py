"""The serving signatures of each InterBERT task, as traced TF functions.

Each builder returns `{name: (function, input_signature)}`; the functions
take the raw client values (strings, region features, pixel boxes) and do
all preprocessing in the graph: tokenization, packing and truncation, the
region layout with the global image slot, then the model.

Every input is declared with its dtype and an unknown shape; its shape is
checked in the graph (see `serving_inputs`), so a bad request fails with an
`InvalidArgumentError` naming the input, in TensorFlow Serving as in Python.
"""
import tensorflow as tf

from keras_interbert.export.serving_inputs import InputChecks
from keras_interbert.export.serving_inputs import checked_image_inputs
from keras_interbert.export.serving_inputs import checked_text
from keras_interbert.export.serving_inputs import serving_regions

IMAGE_SPECS = (
    tf.TensorSpec(None, tf.float32, name="region_features"),
    tf.TensorSpec(None, tf.float32, name="region_boxes"),
    tf.TensorSpec(None, tf.int32, name="image_size"),
    tf.TensorSpec(None, tf.int32, name="num_regions"),
)


def _image_dict(region_features, region_boxes, image_size, num_regions):
    return {"region_features": region_features, "region_boxes": region_boxes,
            "image_size": image_size, "num_regions": num_regions}


def _tokenize_together(tokenizer, columns):
    """Word pieces of several `[B]` string columns in one tokenizer call."""
    ids = tokenizer(tf.concat(columns, axis=0))
    pieces, start = [], tf.constant(0, tf.int64)
    for column in columns:
        end = start + tf.shape(column, out_type=tf.int64)[0]
        pieces.append(ids[start:end])
        start = end
    return pieces


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
            checks, _image_dict(region_features, region_boxes, image_size,
                                num_regions),
            feature_dim, tf.shape(text)[0])
        x = dict(packer(tokenizer(text)))
        x.update(serving_regions(image, options.max_regions))
        features = backbone(x, training=False)
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


def _text_only_regions(batch, feature_dim):
    # One masked all-zero image slot, as `text_classification_dataset` feeds.
    return {
        "region_features": tf.zeros([batch, 1, feature_dim], tf.float32),
        "region_locations": tf.zeros([batch, 1, 5], tf.float32),
        "region_mask": tf.zeros([batch, 1], tf.int32),
    }


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
        segments = _tokenize_together(tokenizer, [columns[n] for n in names])
        x = dict(packer(*segments))
        x.update(_text_only_regions(batch, feature_dim))
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
            checks, _image_dict(region_features, region_boxes, image_size,
                                num_regions), feature_dim, batch)
        flat_options = tf.reshape(options, [-1])
        question_ids, option_ids = _tokenize_together(
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
