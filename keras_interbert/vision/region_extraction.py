"""Decoded images in, canonical region records out (the Python pipeline)."""
import math

import numpy as np
import tensorflow as tf
from keras import ops

from keras_interbert.vision.grid_boxes import grid_boxes
from keras_interbert.vision.image_decoding import letterbox
from keras_interbert.vision.image_decoding import resized_shape


def prepare_images(images, image_size):
    """Letterbox a list of `[H, W, 3]` images into one float32 batch.

    Returns `(batch [B, S, S, 3], sizes int32 [B, 2] (h, w))`.
    """
    padded, sizes = [], []
    for image in images:
        p, size = letterbox(tf.convert_to_tensor(image), image_size)
        padded.append(p.numpy())
        sizes.append(size.numpy())
    return np.stack(padded), np.stack(sizes).astype("int32")


def _scales(sizes, image_size):
    new_h, new_w = resized_shape(sizes[:, 0], sizes[:, 1], image_size)
    new_h, new_w = new_h.numpy(), new_w.numpy()
    sx = new_w / sizes[:, 1]
    sy = new_h / sizes[:, 0]
    return np.stack([sx, sy, sx, sy], -1)[:, None, :].astype("float32"), \
        new_h, new_w


def extract_regions(extractor, images, boxes=None, grid_levels=(6,),
                    detector=None, pad_regions_to=8):
    """Region features for a batch of decoded images.

    The box source is, in this order of precedence: `detector` (a
    `DetectorBoxes`), the user's `boxes` (a list of `[N_i, 4]` pixel boxes of
    the original images, e.g. ground-truth boxes), or `grid_boxes` with
    `grid_levels`.

    Args:
        extractor: a `RegionFeatureExtractor`.
        images: a list of `[H, W, 3]` uint8 images (any sizes).
        pad_regions_to: region counts are padded up to a multiple of this,
            so compiled predict functions see few distinct shapes.

    Returns:
        A list with one dict per image: `image_h`, `image_w`, `boxes`
        `[N, 4]` float32 in the original image's pixels, `features`
        `[N, D]` float32 and `class_probs` `[N, C]` (the detector's, else the
        extractor's class head's, else `None`).
    """
    size = extractor.image_size
    batch, sizes = prepare_images(images, size)
    scale, new_h, new_w = _scales(sizes, size)
    limits = np.stack([new_w, new_h, new_w, new_h], -1)[:, None, :]
    probs = None
    if detector is not None:
        found = detector(batch)
        lb_boxes = ops.convert_to_numpy(found["boxes"])
        probs = ops.convert_to_numpy(found["class_probs"])
        counts = ops.convert_to_numpy(found["num_regions"]).astype(int)
        # Boxes in the padding are clipped to the resized image.
        lb_boxes = np.minimum(lb_boxes, limits).astype("float32")
    elif boxes is not None:
        if len(boxes) != len(images):
            raise ValueError(f"boxes must hold one [N, 4] array per image; "
                             f"received {len(boxes)} for {len(images)} images.")
        counts = np.array([len(b) for b in boxes])
        lb_boxes = np.zeros((len(images), max(counts.max(), 1), 4), "float32")
        for i, b in enumerate(boxes):
            b = np.asarray(b, "float32").reshape(-1, 4)
            lb_boxes[i, :len(b)] = b
        lb_boxes = lb_boxes * scale
    else:
        lb_boxes = ops.convert_to_numpy(
            grid_boxes(new_h, new_w, grid_levels)).astype("float32")
        counts = np.full(len(images), lb_boxes.shape[1])
    rows = lb_boxes.shape[1]
    padded_rows = int(math.ceil(rows / pad_regions_to) * pad_regions_to)
    lb_padded = np.pad(lb_boxes, [(0, 0), (0, padded_rows - rows), (0, 0)])
    out = extractor.predict_on_batch({"images": batch, "boxes": lb_padded})
    features = ops.convert_to_numpy(out["region_features"])
    if probs is None and "class_probs" in out:
        probs = ops.convert_to_numpy(out["class_probs"])
    original = lb_boxes / scale
    results = []
    for i, n in enumerate(counts):
        h, w = int(sizes[i, 0]), int(sizes[i, 1])
        b = np.clip(original[i, :n], 0, [w, h, w, h]).astype("float32")
        results.append({
            "image_h": h, "image_w": w, "boxes": b,
            "features": features[i, :n],
            "class_probs": None if probs is None else probs[i, :n],
        })
    return results
