"""The `score_image` signature: encoded image and caption in, match out.

Decoding (`DecodeImage`: JPEG, PNG, GIF, BMP), the letterbox resize, the
`RegionFeatureExtractor` (image backbone + RoIAlign), grid boxes and then
the `score` path of the matching signatures (tokenization, packing, region
layout, InterBERT, matching head) all run in one graph. The image side is the
same code as `recipes/extract_regions.py` runs (`keras_interbert.vision`), so
a served image gets the features its training data got.
"""
import numpy as np
import tensorflow as tf

from keras_interbert.export.serving_inputs import InputChecks
from keras_interbert.export.serving_inputs import checked_text
from keras_interbert.vision.grid_boxes import grid_boxes
from keras_interbert.vision.grid_boxes import num_grid_boxes
from keras_interbert.vision.image_decoding import decode_image
from keras_interbert.vision.image_decoding import letterbox
from keras_interbert.vision.image_decoding import letterbox_boxes
from keras_interbert.vision.image_decoding import resized_shape

SCORE_IMAGE_IO = (
    {"image_bytes": ("string", "[batch] encoded JPEG, PNG, GIF or BMP"),
     "text": ("string", "[batch]")},
    {"match_probability": "[batch]", "itm_logits": "[batch, 2]"})


def image_regions(extractor, image_bytes, grid_levels):
    """Graph ops: `[B]` encoded images to the `score` signature's inputs."""
    size = extractor.image_size

    def one(encoded):
        return letterbox(decode_image(encoded), size)

    images, sizes = tf.map_fn(
        one, image_bytes, fn_output_signature=(
            tf.TensorSpec([size, size, 3], tf.float32),
            tf.TensorSpec([2], tf.int32)))
    new_h, new_w = resized_shape(sizes[:, 0], sizes[:, 1], size)
    boxes = grid_boxes(new_h, new_w, grid_levels)
    out = extractor({"images": images, "boxes": boxes}, training=False)
    original = letterbox_boxes(boxes, sizes, size, inverse=True)
    limit = tf.cast(tf.stack([sizes[:, 1], sizes[:, 0]] * 2, axis=-1),
                    tf.float32)[:, tf.newaxis, :]
    original = tf.clip_by_value(original, 0.0, limit)
    count = num_grid_boxes(grid_levels)
    return {"region_features": tf.cast(out["region_features"], tf.float32),
            "region_boxes": original,
            "image_size": sizes,
            "num_regions": tf.fill(tf.shape(sizes)[:1], count)}


def score_image_signature(score, extractor, grid_levels=(6,)):
    """`{"score_image": (function, specs)}` built on a `score` function."""

    def score_image(image_bytes, text):
        checks = InputChecks()
        inputs = checked_text(checks, {"image_bytes": image_bytes,
                                       "text": text},
                              ["image_bytes", "text"])
        regions = image_regions(extractor, inputs["image_bytes"], grid_levels)
        return score(inputs["text"], **regions)

    specs = (tf.TensorSpec(None, tf.string, name="image_bytes"),
             tf.TensorSpec(None, tf.string, name="text"))
    return {"score_image": (score_image, specs)}


def example_image_bytes(batch_size, seed=0):
    """Small encoded photographs-to-be: alternately PNG and JPEG, of
    different sizes and aspect ratios (requests for warmup and checks)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(batch_size):
        h, w = 24 + 9 * (i % 4), 40 - 5 * (i % 3)
        ramp = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
        image = np.clip(ramp + rng.normal(0, 20, (h, w, 3)), 0, 255)
        image = tf.constant(image.astype(np.uint8))
        encoded = tf.io.encode_png(image) if i % 2 == 0 else (
            tf.io.encode_jpeg(image, quality=90))
        out.append(encoded.numpy())
    return np.array(out, dtype=object)


def append_image_warmup(export_dir, model_name, batch_sizes=(1, 4)):
    """Adds `score_image` requests to the export's warmup file."""
    import os

    from tensorflow_serving.apis import prediction_log_pb2

    from keras_interbert.export.warmup import WARMUP_FILE
    from keras_interbert.export.warmup import predict_request

    path = os.path.join(export_dir, WARMUP_FILE)
    records = []
    if os.path.exists(path):
        records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
        for batch_size in batch_sizes:
            texts = np.array(["a photograph"] * batch_size, dtype=object)
            request = predict_request(model_name, "score_image",
                                      {"text": texts})
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(
                example_image_bytes(batch_size, batch_size), tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def python_score_inputs(extractor, inputs, grid_levels):
    """The `score` inputs of a `score_image` request, computed by the Python
    extraction pipeline (eager decoding, `extract_regions`) instead of the
    serving graph."""
    from keras_interbert.vision.region_extraction import extract_regions

    images = [decode_image(b).numpy() for b in inputs["image_bytes"]]
    results = extract_regions(extractor, images,
                              grid_levels=tuple(grid_levels))
    return {
        "text": inputs["text"],
        "region_features": np.stack([r["features"] for r in results]),
        "region_boxes": np.stack([r["boxes"] for r in results]),
        "image_size": np.array([[r["image_h"], r["image_w"]]
                                for r in results], np.int32),
        "num_regions": np.array([len(r["boxes"]) for r in results],
                                np.int32),
    }


def check_feature_source(extractor, source, name=None, allow_other=False):
    """Refuses an image extractor that would serve other features than the
    model was trained on.

    `source` is the model preprocessor's `region_feature_source`
    (`keras_interbert.data.feature_source_of`). An extractor matches
    features from `recipes/extract_regions.py` when its
    `feature_fingerprint` is the recorded one (for a record without a
    fingerprint: when the image size, feature width, stride and RoIAlign
    settings agree, with a warning that the weights were not compared).
    Features no extractor of this project made (the synthetic data set,
    detector features converted from files) match none.

    With nothing recorded (`source` None) one warning line goes to stderr
    and the export proceeds. A mismatch raises `ValueError` naming both the
    recorded source and the given extractor, unless `allow_other`, which
    turns it into a warning line.
    """
    import sys

    from keras_interbert.data.feature_source import describe_feature_source
    from keras_interbert.data.feature_source import short_fingerprint
    from keras_interbert.vision.region_feature_extractor import (
        feature_fingerprint)

    fingerprint = feature_fingerprint(extractor)
    given = (f"image extractor {name or type(extractor).__name__} "
             f"({extractor.feature_dim}-d, image_size "
             f"{extractor.image_size}, fingerprint "
             f"{short_fingerprint(fingerprint)})")

    def warn(message):
        print(f"warning: {message}", file=sys.stderr, flush=True)

    if source is None:
        warn(f"the model records no region feature source, so nothing "
             f"checks that the {given} gives the features it was trained "
             "on; exporting anyway.")
        return
    kind = source.get("kind")
    if kind == "extracted" and source.get("fingerprint"):
        if source["fingerprint"] == fingerprint:
            return
    elif kind == "extracted":
        roi = source.get("roi_align") or {}
        recorded = {"image_size": source.get("image_size"),
                    "feature_dim": source.get("feature_dim"),
                    "feature_stride": source.get("feature_stride"),
                    "output_size": roi.get("output_size"),
                    "sampling_ratio": roi.get("sampling_ratio")}
        differ = [k for k, v in recorded.items()
                  if v is not None and v != getattr(extractor, k)]
        if not differ:
            warn(f"the model's feature source records no fingerprint; the "
                 f"{given} has its settings, but its weights cannot be "
                 "compared; exporting anyway.")
            return
    elif kind not in ("synthetic", "converted"):
        warn(f"the model records region features of unknown kind {kind!r}; "
             f"cannot check the {given}; exporting anyway.")
        return
    problem = (f"the {given} does not give the features the model was "
               f"trained on: {describe_feature_source(source)}")
    if allow_other:
        warn(problem + "; exporting anyway (allowed).")
        return
    raise ValueError(
        problem + ". Serve it with the extractor that made its training data "
        "(recipes/extract_regions.py's), or pass allow_other_features=True "
        "(--allow-other-features) to export it anyway.")
