"""Example requests and TensorFlow Serving's warmup file.

TensorFlow Serving replays `assets.extra/tf_serving_warmup_requests` (a
TFRecord file of `tensorflow.serving.PredictionLog` records) through the
model when it loads a version, so the first client request does not pay for
graph initialisation. The records are built with the protos of the
`tensorflow-serving-api` package.
"""
import os

import numpy as np
import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
WARMUP_BATCH_SIZES = (1, 8)

_CAPTIONS = (
    "a man rides a brown horse along the beach",
    "two dogs play with a red ball in the park",
    "a plate of food with rice and vegetables",
    "",
)
_OPTIONS = ("a horse", "a dog", "a cat", "a bicycle", "a plate of food")


def example_inputs(metadata, signature, batch_size, seed=0,
                   num_given_regions=12):
    """Plausible numpy inputs of one signature of an export.

    Args:
        metadata: the export's metadata (`interbert_export.json`).
        signature: a signature name of the export.
        batch_size: rows in the request.
        seed: seed of the random region features and boxes.
        num_given_regions: N, the region rows given per image (the first
            rows are real: `num_regions` is drawn in `[1, N]`).

    Returns:
        A dict from input name to a numpy array.
    """
    rng = np.random.default_rng(seed)
    texts = [_CAPTIONS[i % len(_CAPTIONS)] for i in range(batch_size)]
    names = metadata["signatures"][signature]["inputs"]
    out = {}
    if "text" in names:
        out["text"] = np.array(texts, dtype=object)
    if "text_pair" in names:
        out["text_pair"] = np.array(texts[::-1], dtype=object)
    if "question" in names:
        out["question"] = np.array(
            ["what is in the picture?"] * batch_size, dtype=object)
    if "options" in names:
        count = metadata["num_options"]
        out["options"] = np.array(
            [[_OPTIONS[(i + j) % len(_OPTIONS)] for j in range(count)]
             for i in range(batch_size)], dtype=object)
    if "region_features" in names:
        n, d = num_given_regions, metadata["image_feature_dim"]
        height, width = 480, 640
        corners = np.sort(rng.uniform(0, 1, (batch_size, n, 2, 2)), axis=2)
        boxes = np.concatenate(
            [corners[:, :, 0] * [width, height], corners[:, :, 1] * [width,
                                                                     height]],
            axis=-1)
        out["region_features"] = np.abs(
            rng.normal(size=(batch_size, n, d))).astype(np.float32)
        out["region_boxes"] = boxes.astype(np.float32)
        out["image_size"] = np.tile(np.array([[height, width]], np.int32),
                                    [batch_size, 1])
        out["num_regions"] = rng.integers(1, n + 1, batch_size).astype(
            np.int32)
    return out


def _tensor_proto(value):
    if value.dtype == object:
        value = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(
            value)
        return tf.make_tensor_proto(value, dtype=tf.string)
    return tf.make_tensor_proto(value)


def predict_request(model_name, signature, inputs):
    """A `tensorflow.serving.PredictRequest` for numpy `inputs`."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(_tensor_proto(value))
    return request


def write_warmup_requests(export_dir, model_name, metadata,
                          batch_sizes=WARMUP_BATCH_SIZES):
    """Writes one warmup record per signature and batch size.

    Returns:
        The path of the warmup file.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature in metadata["signature_names"]:
            for batch_size in batch_sizes:
                request = predict_request(
                    model_name, signature,
                    example_inputs(metadata, signature, batch_size,
                                   seed=batch_size))
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
    return path
