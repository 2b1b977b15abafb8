"""Shape masks, boxes and spatial relations of the synthetic scenes."""

import numpy as np

from keras_interbert.data.synthetic.vocabulary import SHAPES
from keras_interbert.data.synthetic.vocabulary import _RELATION_DOMINANCE
from keras_interbert.data.synthetic.vocabulary import _RELATION_MIN_OFFSET


def shape_mask(shape, cx, cy, radius, height, width):
    """Boolean `[height, width]` mask of a shape centred at `(cx, cy)`.

    `radius` is half the side of the shape's square extent; pixel `(x, y)`
    is tested at its centre `(x + 0.5, y + 0.5)`.
    """
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5 - cx
    ax, ay = np.abs(xs), np.abs(ys)
    if shape == "square":
        return (ax <= radius) & (ay <= radius)
    if shape == "circle":
        return xs * xs + ys * ys <= radius * radius
    if shape == "ring":
        d2 = xs * xs + ys * ys
        return (d2 <= radius * radius) & (d2 >= (0.55 * radius) ** 2)
    if shape == "triangle":
        # Apex up, base at the bottom of the extent.
        return (ys <= radius) & (ax <= (ys + radius) / 2.0)
    if shape == "cross":
        arm = 0.33 * radius
        return (((ax <= radius) & (ay <= arm)) | ((ay <= radius) & (ax <= arm)))
    if shape == "diamond":
        return ax + ay <= radius
    raise ValueError(f"`shape` must be one of {SHAPES}. Received: {shape!r}")


def _mask_box(mask):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1],
                    dtype=np.float32)


def box_iou(boxes_a, boxes_b):
    """Pairwise IoU `[len(a), len(b)]` of pixel boxes `(x1, y1, x2, y2)`."""
    a = np.asarray(boxes_a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float32).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2])
                 - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3])
                 - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _box_intersection(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih


def spatial_relation(centroid_a, centroid_b, image_size):
    """Relation of object `a` to object `b` ("left", "right", "above",
    "below") from their visible-pixel centroids `(x, y)`, or None when
    neither axis dominates clearly."""
    dx = float(centroid_a[0]) - float(centroid_b[0])
    dy = float(centroid_a[1]) - float(centroid_b[1])
    min_offset = _RELATION_MIN_OFFSET * image_size
    if abs(dx) >= min_offset and abs(dx) >= _RELATION_DOMINANCE * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) >= min_offset and abs(dy) >= _RELATION_DOMINANCE * abs(dx):
        return "above" if dy < 0 else "below"
    return None
