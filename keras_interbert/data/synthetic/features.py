"""Region class distributions and the fixed region featuriser."""
import functools

import numpy as np

from keras_interbert.data.synthetic.geometry import box_iou
from keras_interbert.data.synthetic.geometry import shape_mask
from keras_interbert.data.synthetic.vocabulary import BACKGROUND_CLASS
from keras_interbert.data.synthetic.vocabulary import COLOURS
from keras_interbert.data.synthetic.vocabulary import DEFAULT_FEATURE_DIM
from keras_interbert.data.synthetic.vocabulary import NUM_CLASSES
from keras_interbert.data.synthetic.vocabulary import PALETTE
from keras_interbert.data.synthetic.vocabulary import PROJECTION_SEED
from keras_interbert.data.synthetic.vocabulary import RAW_DESCRIPTOR_DIM
from keras_interbert.data.synthetic.vocabulary import SHAPES
from keras_interbert.data.synthetic.vocabulary import _FOREGROUND_THRESHOLD
from keras_interbert.data.synthetic.vocabulary import _GRID
from keras_interbert.data.synthetic.vocabulary import class_index


@functools.lru_cache(maxsize=1)
def _class_confusion():
    masks = np.stack([shape_mask(s, 32.0, 32.0, 24.0, 64, 64).ravel()
                      for s in SHAPES]).astype(np.float32)
    inter = masks @ masks.T
    union = masks.sum(1)[:, None] + masks.sum(1)[None, :] - inter
    shape_similarity = (inter / union) ** 4
    rgb = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)
    dist2 = ((rgb[:, None, :] - rgb[None, :, :]) ** 2).sum(-1)
    colour_similarity = np.exp(-dist2 / (2 * 60.0 ** 2))
    # [shape, colour, shape', colour'] flattened to object classes.
    joint = (shape_similarity[:, None, :, None]
             * colour_similarity[None, :, None, :])
    n = len(SHAPES) * len(COLOURS)
    joint = joint.reshape(n, n)
    np.fill_diagonal(joint, 0.0)
    confusion = 0.25 * joint / joint.sum(1, keepdims=True)
    confusion[np.arange(n), np.arange(n)] = 0.75
    return confusion


def object_class_distribution(colour, shape, visible_fraction=1.0):
    """Soft `[NUM_CLASSES]` target of a ground-truth object box."""
    confusion = _class_confusion()
    dist = np.zeros(NUM_CLASSES, dtype=np.float64)
    background = 0.05 + 0.4 * (1.0 - float(visible_fraction))
    dist[1:] = (1.0 - background) * confusion[class_index(colour, shape) - 1]
    dist[BACKGROUND_CLASS] = background
    return dist


def region_class_distributions(region_boxes, objects):
    """Soft class targets `[R, NUM_CLASSES]` of regions over a scene."""
    region_boxes = np.asarray(region_boxes, dtype=np.float32).reshape(-1, 4)
    object_dists = np.stack([
        object_class_distribution(o["colour"], o["shape"], o["visible_fraction"])
        for o in objects])
    weights = box_iou(region_boxes, np.stack([o["box"] for o in objects])) ** 2
    total = weights.sum(1, keepdims=True)
    weights = weights / np.maximum(total, 1.0)
    dists = weights @ object_dists
    dists[:, BACKGROUND_CLASS] += 1.0 - weights.sum(1)
    dists = 0.999 * dists + 0.001 / NUM_CLASSES
    return (dists / dists.sum(1, keepdims=True)).astype(np.float32)


def _attach_features(scenes, feature_dim):
    images = np.stack([s["image"] for s in scenes])
    counts = [len(s["regions"]["boxes"]) for s in scenes]
    image_index = np.repeat(np.arange(len(scenes)), counts)
    boxes = np.concatenate([s["regions"]["boxes"] for s in scenes])
    features = featurise_batch(images, image_index, boxes, feature_dim)
    for scene, part in zip(scenes, np.split(features, np.cumsum(counts)[:-1])):
        scene["regions"]["features"] = part


@functools.lru_cache(maxsize=8)
def projection_matrix(feature_dim):
    """The fixed `[RAW_DESCRIPTOR_DIM, feature_dim]` random projection."""
    if int(feature_dim) < 1:
        raise ValueError(f"`feature_dim` must be positive. Received: {feature_dim}")
    rng = np.random.default_rng(PROJECTION_SEED)
    matrix = rng.standard_normal((RAW_DESCRIPTOR_DIM, int(feature_dim)))
    matrix = (matrix / np.sqrt(RAW_DESCRIPTOR_DIM)).astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def region_descriptors(images, image_index, boxes):
    """The 177-d pixel descriptors (before projection) of boxes.

    Args:
        images: `uint8[B, H, W, 3]`.
        image_index: `int[R]`, the image of each box.
        boxes: `float[R, 4]` pixel boxes `(x1, y1, x2, y2)`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("`images` must have shape [B, H, W, 3]. "
                         f"Received: {images.shape}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    image_index = np.asarray(image_index, dtype=np.int64).reshape(-1)
    if len(image_index) != len(boxes):
        raise ValueError("`image_index` and `boxes` must have the same length. "
                         f"Received: {len(image_index)} and {len(boxes)}")
    _, height, width, _ = images.shape
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0],
                             images[:, :, -1]], axis=1)
    background = np.median(border, axis=1).astype(np.float32)[image_index]

    x1 = np.clip(boxes[:, 0], 0, width - 1)
    y1 = np.clip(boxes[:, 1], 0, height - 1)
    x2 = np.clip(boxes[:, 2], x1 + 1, width)
    y2 = np.clip(boxes[:, 3], y1 + 1, height)
    t = (np.arange(_GRID, dtype=np.float32) + 0.5) / _GRID
    xs = np.clip(np.floor(x1[:, None] + t * (x2 - x1)[:, None]), 0, width - 1)
    ys = np.clip(np.floor(y1[:, None] + t * (y2 - y1)[:, None]), 0, height - 1)
    crops = images[image_index[:, None, None], ys.astype(np.int64)[:, :, None],
                   xs.astype(np.int64)[:, None, :]].astype(np.float32)
    r = len(boxes)
    diff = np.abs(crops - background[:, None, None, :]).max(-1)
    fg = (diff > _FOREGROUND_THRESHOLD).astype(np.float32)
    fg_count = fg.sum((1, 2))

    occupancy = fg.reshape(r, 8, 2, 8, 2).mean((2, 4)).reshape(r, 64)
    cells = (crops / 255.0).reshape(r, 4, 4, 4, 4, 3).mean((2, 4)).reshape(r, 48)

    levels = (crops >= 85).astype(np.int64) + (crops >= 170).astype(np.int64)
    code = levels[..., 0] * 9 + levels[..., 1] * 3 + levels[..., 2]
    hist = np.zeros((r, 27), dtype=np.float32)
    np.add.at(hist, (np.repeat(np.arange(r), _GRID * _GRID), code.reshape(-1)),
              fg.reshape(-1))
    hist /= np.maximum(fg_count, 1.0)[:, None]
    mean_rgb = (crops * fg[..., None]).sum((1, 2)) / (
        255.0 * np.maximum(fg_count, 1.0)[:, None])

    padded = np.pad(fg, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
    gy = padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / (np.pi / 8)).astype(np.int64), 7)
    onehot = (bins[..., None] == np.arange(8)).astype(np.float32)
    orient = (onehot * magnitude[..., None]).reshape(r, 2, 8, 2, 8, 8).sum((2, 4))
    orient = orient.reshape(r, 32)
    orient /= np.maximum(orient.sum(1, keepdims=True), 1e-6)

    bw, bh = x2 - x1, y2 - y1
    geometry = np.stack([fg.mean((1, 2)),
                         np.sqrt(bw * bh / float(height * width)),
                         np.log(bw / bh)], axis=1)
    raw = np.concatenate([0.25 * occupancy, 0.25 * cells, hist, mean_rgb,
                          orient, geometry], axis=1)
    return raw.astype(np.float32)


def featurise_batch(images, image_index, boxes, feature_dim=DEFAULT_FEATURE_DIM):
    """Region features `float32[R, feature_dim]` of boxes over a batch of
    images (see the module docstring for the featuriser)."""
    raw = region_descriptors(images, image_index, boxes)
    return raw @ projection_matrix(feature_dim)


def featurise(image, boxes, feature_dim=DEFAULT_FEATURE_DIM):
    """Region features `float32[N, feature_dim]` of pixel boxes `[N, 4]` in
    one `uint8[H, W, 3]` image, computed from its pixels only.

    Examples:
    ```python
    scene = generate_scene(0, seed=0)
    features = featurise(scene["image"], scene["regions"]["boxes"], 64)
    ```
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError("`image` must have shape [H, W, 3]. "
                         f"Received: {image.shape}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return featurise_batch(image[None], np.zeros(len(boxes), np.int64), boxes,
                           feature_dim)
