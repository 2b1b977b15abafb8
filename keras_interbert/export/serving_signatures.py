"""Pieces shared by the serving signatures of every task (export/tasks/).

Each task's builder returns `{name: (function, input_signature)}`; the
functions take the raw client values (strings, region features, pixel
boxes) and do all preprocessing in the graph: tokenization, packing and
truncation, the region layout with the global image slot, then the model.

Every input is declared with its dtype and an unknown shape; its shape is
checked in the graph (see `serving_inputs`), so a bad request fails with an
`InvalidArgumentError` naming the input, in TensorFlow Serving as in Python.
"""
import tensorflow as tf


# How the image inputs are described in `interbert_export.json`.
IMAGE_INPUTS_IO = {
    "region_features": ("float32", "[batch, regions, image_feature_dim]"),
    "region_boxes": ("float32", "[batch, regions, 4] pixel x1, y1, x2, y2"),
    "image_size": ("int32", "[batch, 2] (height, width) in pixels"),
    "num_regions": ("int32", "[batch] real rows of region_features"),
}

IMAGE_SPECS = (
    tf.TensorSpec(None, tf.float32, name="region_features"),
    tf.TensorSpec(None, tf.float32, name="region_boxes"),
    tf.TensorSpec(None, tf.int32, name="image_size"),
    tf.TensorSpec(None, tf.int32, name="num_regions"),
)


def image_dict(region_features, region_boxes, image_size, num_regions):
    return {"region_features": region_features, "region_boxes": region_boxes,
            "image_size": image_size, "num_regions": num_regions}
