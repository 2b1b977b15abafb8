"""Rendered scenes: objects, distractor regions, splits."""

import numpy as np

from keras_interbert.data.synthetic.captions import _captions
from keras_interbert.data.synthetic.features import _attach_features
from keras_interbert.data.synthetic.features import region_class_distributions
from keras_interbert.data.synthetic.geometry import _box_intersection
from keras_interbert.data.synthetic.geometry import _mask_box
from keras_interbert.data.synthetic.geometry import box_iou
from keras_interbert.data.synthetic.geometry import shape_mask
from keras_interbert.data.synthetic.vocabulary import COLOURS
from keras_interbert.data.synthetic.vocabulary import DEFAULT_IMAGE_SIZE
from keras_interbert.data.synthetic.vocabulary import PALETTE
from keras_interbert.data.synthetic.vocabulary import SHAPES
from keras_interbert.data.synthetic.vocabulary import SIZES
from keras_interbert.data.synthetic.vocabulary import _MAX_BOX_IOU
from keras_interbert.data.synthetic.vocabulary import _MAX_OVERLAP_OF_SMALLER
from keras_interbert.data.synthetic.vocabulary import _MIN_VISIBLE_FRACTION
from keras_interbert.data.synthetic.vocabulary import _REPEAT_PROBABILITY
from keras_interbert.data.synthetic.vocabulary import _SIZE_RANGE


def _render(rng, image_size, max_objects):
    height = width = image_size
    level = float(rng.integers(30, 71))
    noise_sigma = float(rng.uniform(3.0, 8.0)) if rng.random() < 0.5 else 0.0
    canvas = np.full((height, width, 3), level, dtype=np.float32)
    label_map = np.full((height, width), -1, dtype=np.int8)
    target = int(rng.integers(1, max_objects + 1))
    objects, masks = [], []
    for _ in range(target):
        for _attempt in range(60):
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = COLOURS[rng.integers(len(COLOURS))]
            if objects and rng.random() < _REPEAT_PROBABILITY:
                # Groups ("two green triangles") need repeated objects.
                twin = objects[rng.integers(len(objects))]
                shape, colour = twin["shape"], twin["colour"]
            size = SIZES[rng.integers(len(SIZES))]
            low, high = _SIZE_RANGE[size]
            radius = 0.5 * image_size * float(rng.uniform(low, high))
            cx = float(rng.uniform(radius + 1, width - radius - 1))
            cy = float(rng.uniform(radius + 1, height - radius - 1))
            mask = shape_mask(shape, cx, cy, radius, height, width)
            if not mask.any():
                continue
            box = _mask_box(mask)
            if objects:
                boxes = np.stack([o["box"] for o in objects])
                if box_iou(box[None], boxes).max() > _MAX_BOX_IOU:
                    continue
                area = (box[2] - box[0]) * (box[3] - box[1])
                if any(_box_intersection(box, o["box"]) > _MAX_OVERLAP_OF_SMALLER
                       * min(area, o["area"]) for o in objects):
                    continue
                # The new object is drawn on top: keep every older one
                # recognisable.
                if any(np.count_nonzero((label_map == k) & ~mask)
                       < _MIN_VISIBLE_FRACTION * o["pixels"]
                       for k, o in enumerate(objects)):
                    continue
            jitter = rng.integers(-12, 13, size=3)
            rgb = np.clip(np.array(PALETTE[colour]) + jitter, 0, 255)
            k = len(objects)
            canvas[mask] = rgb
            label_map[mask] = k
            objects.append({
                "shape": shape, "colour": colour, "size": size,
                "box": box, "area": float((box[2] - box[0]) * (box[3] - box[1])),
                "pixels": int(mask.sum()), "rgb": [int(v) for v in rgb],
                "center": [cx, cy], "radius": radius,
            })
            masks.append(mask)
            break
    if noise_sigma > 0:
        canvas += rng.normal(0.0, noise_sigma, size=canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    for k, obj in enumerate(objects):
        visible = label_map == k
        obj["visible_fraction"] = float(visible.sum() / obj.pop("pixels"))
        obj["centroid"] = [float(xs[visible].mean() + 0.5),
                           float(ys[visible].mean() + 0.5)]
        obj.pop("area")
    background = {"level": int(level), "noise_sigma": noise_sigma}
    return image, label_map, objects, background


def _distractor_boxes(rng, objects, image_size, max_distractors):
    boxes = []
    count = int(rng.integers(0, max_distractors + 1)) if max_distractors else 0
    object_boxes = np.stack([o["box"] for o in objects])
    for _ in range(count):
        if rng.random() < 0.6:
            base = object_boxes[rng.integers(len(objects))]
            w, h = base[2] - base[0], base[3] - base[1]
            for _attempt in range(30):
                nw = w * rng.uniform(0.8, 1.3)
                nh = h * rng.uniform(0.8, 1.3)
                cx = (base[0] + base[2]) / 2 + rng.uniform(-0.35, 0.35) * w
                cy = (base[1] + base[3]) / 2 + rng.uniform(-0.35, 0.35) * h
                box = np.round([cx - nw / 2, cy - nh / 2, cx + nw / 2,
                                cy + nh / 2]).clip(0, image_size)
                if box[2] - box[0] < 4 or box[3] - box[1] < 4:
                    continue
                if 0.35 <= box_iou(box[None], base[None])[0, 0] <= 0.85:
                    boxes.append(box.astype(np.float32))
                    break
        else:
            for _attempt in range(20):
                w = rng.uniform(0.1, 0.3) * image_size
                h = rng.uniform(0.1, 0.3) * image_size
                x1 = rng.uniform(0, image_size - w)
                y1 = rng.uniform(0, image_size - h)
                box = np.round([x1, y1, x1 + w, y1 + h]).astype(np.float32)
                if box_iou(box[None], object_boxes).max() < 0.1:
                    break
            boxes.append(box)
    return boxes


def generate_scene(index, seed=0, image_size=DEFAULT_IMAGE_SIZE, max_objects=5,
                   max_distractors=3, min_captions=2, max_captions=5):
    """Render scene `index` of data seed `seed`.

    Returns a dict with `image` (`uint8[H, W, 3]`), `label_map`
    (`int8[H, W]`, the index of the object visible at each pixel, -1 for
    background), `objects` (dicts with `shape`, `colour`, `size`, `box`,
    `visible_fraction`, `centroid` (of the visible pixels), `rgb`, and the
    drawing parameters `center` and `radius`), `regions` (`boxes`
    `float32[R, 4]`, `object_index` `int32[R]` (-1 for a distractor) and
    `class_probs` `float32[R, NUM_CLASSES]`) and `captions` (dicts with
    `en`, `zh` and the structured `fact` they render).
    """
    if image_size < 32:
        raise ValueError(f"`image_size` must be at least 32. Received: {image_size}")
    if not 1 <= max_objects <= 5:
        raise ValueError(f"`max_objects` must be in [1, 5]. Received: {max_objects}")
    if not 1 <= min_captions <= max_captions:
        raise ValueError("Expected 1 <= `min_captions` <= `max_captions`. "
                         f"Received: {min_captions}, {max_captions}")
    rng = np.random.default_rng([int(seed), int(index)])
    image, label_map, objects, background = _render(rng, image_size, max_objects)
    boxes = [o["box"] for o in objects]
    object_index = list(range(len(objects)))
    for box in _distractor_boxes(rng, objects, image_size, max_distractors):
        boxes.append(box)
        object_index.append(-1)
    order = rng.permutation(len(boxes))
    boxes = np.stack(boxes)[order].astype(np.float32)
    object_index = np.asarray(object_index, dtype=np.int32)[order]
    captions = _captions(objects, rng, image_size, min_captions, max_captions)
    for obj in objects:
        obj["box"] = [float(v) for v in obj["box"]]
    return {
        "index": int(index),
        "image_id": f"shapes-s{int(seed)}-{int(index):06d}",
        "image": image,
        "label_map": label_map,
        "background": background,
        "objects": objects,
        "regions": {
            "boxes": boxes,
            "object_index": object_index,
            "class_probs": region_class_distributions(boxes, objects),
        },
        "captions": captions,
    }


def assign_splits(num_images, seed=0, fractions=(0.8, 0.1, 0.1)):
    """Split names for images `0 .. num_images-1`: a seeded permutation cut
    into train/val/test by `fractions` (val and test get at least one image
    when there are 3 or more)."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError("`fractions` must be three non-negative numbers summing "
                         f"to 1. Received: {fractions}")
    n_val = int(round(fractions[1] * num_images))
    n_test = int(round(fractions[2] * num_images))
    if num_images >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    order = np.random.default_rng([int(seed), 0x5B117]).permutation(num_images)
    splits = np.array(["train"] * num_images, dtype=object)
    splits[order[:n_val]] = "val"
    splits[order[n_val:n_val + n_test]] = "test"
    return [str(s) for s in splits]


def generate_scenes(num_images, seed=0, feature_dim=None, **scene_kwargs):
    """Generate `num_images` scenes (see `generate_scene`), each with its
    `split`; with `feature_dim`, also `regions["features"]`
    (`float32[R, feature_dim]`, see `featurise`)."""
    splits = assign_splits(num_images, seed)
    scenes = []
    for index in range(num_images):
        scene = generate_scene(index, seed=seed, **scene_kwargs)
        scene["split"] = splits[index]
        scenes.append(scene)
    if feature_dim is not None and scenes:
        _attach_features(scenes, feature_dim)
    return scenes
