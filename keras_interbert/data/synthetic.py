"""The bundled synthetic image-caption data set ("shapes").

A deterministic generator of small rendered scenes with English and Chinese
captions, ground-truth boxes, pixel-derived region features and soft
per-region class distributions, written in the canonical region-feature
format (`keras_interbert.data.region_features`). It is the default data of
the quickstart and the tests: nothing has to be downloaded.

Scenes
------
Every image is `image_size x image_size` (default 128) RGB `uint8`, rendered
with numpy. The background is a flat dark grey (level 30-70), lightly noisy in
half of the images (Gaussian noise, sigma 3-8, on the whole image). Each image
holds 1-5 objects drawn in order (later ones on top), each one of

- 6 shapes: square, circle, triangle, cross, ring, diamond;
- 8 colours: red, green, blue, yellow, purple, orange, cyan, white (each
  object's colour jittered by up to +-12 per channel); every object after
  the first repeats the colour and shape of an earlier one with
  probability 0.2, so that groups ("two green triangles") occur;
- 2 sizes: small (side 13-19% of the image) and large (27-34%).

Objects may partly overlap: a placement is rejected when two boxes have an
IoU above 0.2, when the overlap covers more than 35% of the smaller box, or
when an object would lose more than 35% of its pixels to the new one, so
every object stays recognisable. Boxes are the tight pixel boxes
`(x1, y1, x2, y2)` of the whole drawn shape, `x2`/`y2` exclusive (the box
covers columns `x1 .. x2-1`), so the area is `(x2 - x1) * (y2 - y1)`.

Randomness is per image: image `i` of seed `s` is drawn from
`numpy.random.default_rng([s, i])`, so the first `n` images of a larger set
are the same images, and nothing in an image depends on its index.

Captions
--------
Captions are rendered from structured facts about the rendered scene:

- existence: "a large red circle", "there are two green triangles";
- relations: "a large red circle to the left of a small blue square",
  "two green triangles are above a yellow ring";
- inventories: "three shapes: a red circle, a blue square and a green cross",
  "a single small white ring".

A mention with a number word ("two green triangles") means exactly that many
objects of that colour and shape; "a"/"an" means at least one. A relation
with a plural side holds for every member. Relations come from the rendered
geometry: with `(dx, dy)` the offset between the centroids of the *visible*
pixels of two objects, `a` is left of `b` when `dx <= -0.1 * image_size` and
`|dx| >= 1.25 * |dy|` (likewise right/above/below); otherwise no relation is
stated (nor between two objects of the same colour and shape). Every
caption is rendered from the same fact in English and Chinese
(for example "一个大的红色圆形在一个小的蓝色正方形的左边"), with templates
chosen independently, so `captions_en` and `captions_zh` are parallel. Each
image gets 2-5 distinct captions. Captions never contain digits, ids or
anything but the scene's content.

Region features (the featuriser)
--------------------------------
Regions are the object boxes plus 0-3 "proposal" distractors per image
(jittered copies of an object box with IoU 0.35-0.85, or boxes placed
mostly on background), in a shuffled order. A region's feature is computed from the
PIXELS inside its box only, never from the labels:

1. The background colour of the image is the per-channel median of its
   one-pixel border.
2. The box is sampled on a 16 x 16 grid (nearest pixel to each cell centre).
   A sample is foreground when one of its channels differs from the
   background colour by more than 48.
3. A 177-d descriptor is concatenated from
   - the 8 x 8 foreground occupancy (2 x 2 mean pooled mask), x 0.25 (64);
   - the 4 x 4 cell-mean RGB colours in [0, 1], x 0.25 (48);
   - the joint RGB histogram of foreground samples, 3 levels per channel
     (thresholds 85 and 170), normalised to sum 1 (27);
   - the mean foreground RGB in [0, 1] (3);
   - edge orientations: central-difference gradients of the foreground mask,
     unsigned orientation in 8 bins of 22.5 degrees, magnitude weighted, in
     2 x 2 spatial cells, normalised to sum 1 (32);
   - geometry: foreground fraction, `sqrt(box area / image area)`,
     `log(width / height)` (3).
4. The descriptor is multiplied by a fixed Gaussian random projection
   `P[177, feature_dim]` with entries `N(0, 1/177)`, drawn by
   `numpy.random.default_rng(PROJECTION_SEED)` (`PROJECTION_SEED = 2003_13198`),
   the same for every data seed, so features of two data sets are
   comparable. `feature_dim` defaults to 2048, the published width; any
   positive width works.

Class distributions (masked-region targets)
-------------------------------------------
`NUM_CLASSES = 49`: class 0 is background, class `1 + 8 * shape + colour` is
"colour shape" (`CLASS_NAMES`). An object's distribution puts 0.75 on its
class and 0.25 on the other object classes in proportion to a fixed
confusion `shape_similarity^4 * colour_similarity`, where the shape
similarity is the IoU of the canonical shape masks and the colour similarity
is `exp(-|rgb - rgb'|^2 / (2 * 60^2))`; then a background mass of
`0.05 + 0.4 * (1 - visible fraction)` is mixed in. A region's distribution is
the mixture of the distributions of the objects it overlaps, weighted by
`IoU(region, object box)^2` (normalised when they sum above 1), the rest
going to background; finally 0.1% is spread uniformly. Everything is a
deterministic function of the scene.

Files written by `write_dataset`
--------------------------------
```
out_dir/
  regions/                  {split}-NNNNN.tfrecord + manifest.json, written by
                            RegionFeatureWriter (features and class_probs
                            stored as float16); read with region_dataset
  captions_en.jsonl         {"image_id", "caption", "split"} per line
  captions_zh.jsonl
  scenes.jsonl              per image: id, split, size, objects with box
  images/<image_id>.png     the rendered images (8-bit RGB PNG)
  metadata.json             parameters, class names, split sizes
```
Image ids are `shapes-s{seed}-{index:06d}`. The split (80/10/10 by image)
is a seeded permutation of the images, independent of their content.

Command line:
`python -m keras_interbert.data.synthetic --out DIR [--num-images N]
[--seed S] [--feature-dim D] [--language en|zh|both] [--image-size PX]
[--examples-per-shard K] [--no-images] [--overwrite]`; 2,000 images at
feature_dim 2048 take about 10 s on two CPU cores.
"""

import argparse
import functools
import json
import os
import struct
import time
import zlib

import numpy as np

SHAPES = ("square", "circle", "triangle", "cross", "ring", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
SIZES = ("small", "large")
PALETTE = {
    "red": (220, 45, 45),
    "green": (45, 190, 60),
    "blue": (40, 60, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
    "white": (240, 240, 240),
}
RELATIONS = ("left", "right", "above", "below")
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below",
                    "below": "above"}
CLASS_NAMES = ("background",) + tuple(
    f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND_CLASS = 0
SPLITS = ("train", "val", "test")
PROJECTION_SEED = 2003_13198
RAW_DESCRIPTOR_DIM = 177
DEFAULT_FEATURE_DIM = 2048
DEFAULT_IMAGE_SIZE = 128

_GRID = 16
_FOREGROUND_THRESHOLD = 48.0
_SIZE_RANGE = {"small": (0.13, 0.19), "large": (0.27, 0.34)}
_MAX_BOX_IOU = 0.2
_MAX_OVERLAP_OF_SMALLER = 0.35
_MIN_VISIBLE_FRACTION = 0.65
_REPEAT_PROBABILITY = 0.2
_RELATION_MIN_OFFSET = 0.1
_RELATION_DOMINANCE = 1.25

_NUMBER_EN = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
_NUMBER_ZH = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五"}
_COLOUR_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
              "purple": "紫色", "orange": "橙色", "cyan": "青色",
              "white": "白色"}
_SHAPE_ZH = {"square": "正方形", "circle": "圆形", "triangle": "三角形",
             "cross": "十字形", "ring": "圆环", "diamond": "菱形"}
_SIZE_ZH = {"small": "小", "large": "大"}
_RELATION_EN = {"left": "to the left of", "right": "to the right of",
                "above": "above", "below": "below"}
_RELATION_ZH = {"left": ("左边", "左侧"), "right": ("右边", "右侧"),
                "above": ("上面", "上方"), "below": ("下面", "下方")}


def class_index(colour, shape):
    """Index of the class "colour shape" in `CLASS_NAMES`."""
    if colour not in COLOURS:
        raise ValueError(f"`colour` must be one of {COLOURS}. Received: {colour!r}")
    if shape not in SHAPES:
        raise ValueError(f"`shape` must be one of {SHAPES}. Received: {shape!r}")
    return 1 + SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)


# ---------------------------------------------------------------- rendering


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


# --------------------------------------------------- class distributions


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


# ---------------------------------------------------------------- captions


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape):
    return shape + "es" if shape.endswith("s") else shape + "s"


def _mention_en(mention):
    words = [w for w in (mention["size"], mention["colour"]) if w]
    if mention["count"] == 1:
        words.append(mention["shape"])
        return f"{_article(words[0])} {' '.join(words)}"
    words.append(_plural(mention["shape"]))
    return f"{_NUMBER_EN[mention['count']]} {' '.join(words)}"


def _mention_zh(mention, rng):
    text = _NUMBER_ZH[mention["count"]] + "个"
    if mention["size"]:
        text += _SIZE_ZH[mention["size"]] + "的"
    if mention["colour"]:
        text += _COLOUR_ZH[mention["colour"]]
        if not mention["size"] and rng.random() < 0.3:
            text += "的"
    return text + _SHAPE_ZH[mention["shape"]]


def _join_en(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _join_zh(items):
    return items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]


def _make_mention(unit, objects, rng, in_list=False):
    """A mention of one object (int) or of a whole colour-shape group (tuple)."""
    if isinstance(unit, tuple):
        members = list(unit)
        first = objects[members[0]]
        sizes = {objects[k]["size"] for k in members}
        size = first["size"] if len(sizes) == 1 and rng.random() < 0.5 else None
        return {"count": len(members), "size": size, "colour": first["colour"],
                "shape": first["shape"], "objects": members}
    obj = objects[unit]
    colour = obj["colour"] if in_list or rng.random() < 0.9 else None
    size = obj["size"] if rng.random() < 0.6 else None
    return {"count": 1, "size": size, "colour": colour, "shape": obj["shape"],
            "objects": [unit]}


def _unit_members(unit):
    return list(unit) if isinstance(unit, tuple) else [unit]


def _fact_pool(objects, image_size):
    groups = {}
    for k, obj in enumerate(objects):
        groups.setdefault((obj["colour"], obj["shape"]), []).append(k)
    units = [k for k in range(len(objects))]
    units += [tuple(m) for m in groups.values() if len(m) > 1]
    pool = [("exists", u) for u in units]
    for subject in units:
        members = _unit_members(subject)
        for ref in range(len(objects)):
            # "a red square above a red square" is true but says little.
            if ref in members or (objects[ref]["colour"], objects[ref]["shape"]) \
                    == (objects[members[0]]["colour"], objects[members[0]]["shape"]):
                continue
            rels = {spatial_relation(objects[m]["centroid"],
                                     objects[ref]["centroid"], image_size)
                    for m in members}
            if len(rels) == 1 and None not in rels:
                pool.append(("relation", subject, rels.pop(), ref))
    pool.append(("list", tuple(tuple(m) if len(m) > 1 else m[0]
                               for m in groups.values())))
    return pool


def _render_fact(fact, objects, rng):
    kind = fact[0]
    if kind == "exists":
        m = _make_mention(fact[1], objects, rng)
        plural = m["count"] > 1
        en_templates = (["{m}", "there are {m}", "an image of {m}",
                         "a picture with {m} in it"] if plural else
                        ["{m}", "there is {m}", "an image of {m}",
                         "a picture with {m} in it", "{m} in the picture"])
        zh_templates = ["{m}", "图中有{m}", "画面里有{m}", "图片上有{m}"]
        en = en_templates[rng.integers(len(en_templates))].format(m=_mention_en(m))
        zh = zh_templates[rng.integers(len(zh_templates))].format(
            m=_mention_zh(m, rng))
        return en, zh, {"type": "exists", "mention": m}
    if kind == "relation":
        _, subject, relation, ref = fact
        s = _make_mention(subject, objects, rng)
        r = _make_mention(ref, objects, rng)
        if rng.random() < 0.5:
            s, r, relation = r, s, INVERSE_RELATION[relation]
        be = "is" if s["count"] == 1 else "are"
        en_templates = ["{s} {rel} {r}", "{s} {be} {rel} {r}",
                        "there {be} {s} {rel} {r}"]
        en = en_templates[rng.integers(len(en_templates))].format(
            s=_mention_en(s), r=_mention_en(r), be=be, rel=_RELATION_EN[relation])
        zh_rel = _RELATION_ZH[relation][rng.integers(2)]
        zh_templates = ["{s}在{r}的{rel}", "{s}位于{r}的{rel}", "{r}的{rel}有{s}"]
        zh = zh_templates[rng.integers(len(zh_templates))].format(
            s=_mention_zh(s, rng), r=_mention_zh(r, rng), rel=zh_rel)
        return en, zh, {"type": "relation", "subject": s, "relation": relation,
                        "reference": r}
    units = list(fact[1])
    rng.shuffle(units)
    mentions = [_make_mention(u, objects, rng, in_list=True) for u in units]
    total = len(objects)
    if total == 1:
        m = mentions[0]
        body = _mention_en(m).split(" ", 1)[1]
        en = [f"a single {body}", f"only {_mention_en(m)}",
              f"{_mention_en(m)} alone"][rng.integers(3)]
        zh = ["只有{m}", "图中只有{m}"][rng.integers(2)].format(m=_mention_zh(m, rng))
    else:
        items_en = _join_en([_mention_en(m) for m in mentions])
        items_zh = _join_zh([_mention_zh(m, rng) for m in mentions])
        n_en = _NUMBER_EN[total]
        en = ["{n} shapes: {items}", "{items}", "an image with {items}",
              "{n} objects: {items}"][rng.integers(4)].format(n=n_en, items=items_en)
        zh = ["图中共有{n}个图形：{items}", "{items}", "画面里有{items}"][
            rng.integers(3)].format(n=_NUMBER_ZH[total], items=items_zh)
    return en, zh, {"type": "list", "mentions": mentions, "total": total}


def _captions(objects, rng, image_size, min_captions, max_captions):
    pool = _fact_pool(objects, image_size)
    weight = {"exists": 1.0, "relation": 2.0, "list": 1.5}
    p = np.array([weight[f[0]] for f in pool])
    order = rng.choice(len(pool), size=len(pool), replace=False, p=p / p.sum())
    wanted = int(rng.integers(min_captions, max_captions + 1))
    captions, seen = [], set()
    for attempt in range(4 * max_captions + 8):
        if len(captions) >= wanted:
            break
        fact = pool[order[attempt % len(order)]]
        en, zh, structured = _render_fact(fact, objects, rng)
        if en in seen:
            continue
        seen.add(en)
        captions.append({"en": en, "zh": zh, "fact": structured})
    return captions


# ------------------------------------------------------------------ scenes


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


def _attach_features(scenes, feature_dim):
    images = np.stack([s["image"] for s in scenes])
    counts = [len(s["regions"]["boxes"]) for s in scenes]
    image_index = np.repeat(np.arange(len(scenes)), counts)
    boxes = np.concatenate([s["regions"]["boxes"] for s in scenes])
    features = featurise_batch(images, image_index, boxes, feature_dim)
    for scene, part in zip(scenes, np.split(features, np.cumsum(counts)[:-1])):
        scene["regions"]["features"] = part


# ------------------------------------------------------------- featuriser


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


# --------------------------------------------------------------------- PNG


def encode_png(image):
    """Encode a `uint8[H, W, 3]` (or `[H, W]`) array as PNG bytes."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError("`image` must be uint8 [H, W, 3] or [H, W]. "
                         f"Received: {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    colour_type = 2 if image.ndim == 3 else 0
    rows = image.reshape(height, -1)
    # Filter type 0 on every scanline: the background noise defeats PNG's
    # predictors, so the smarter filters would only cost time.
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind, data):
        body = kind + data
        return (struct.pack(">I", len(data)) + body
                + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def save_png(path, image):
    with open(path, "wb") as f:
        f.write(encode_png(image))


# ------------------------------------------------------------------ writing


def _scene_record(scene):
    regions = scene["regions"]
    return {
        "image_id": scene["image_id"],
        "split": scene["split"],
        "height": int(scene["image"].shape[0]),
        "width": int(scene["image"].shape[1]),
        "background": scene["background"],
        "objects": [{k: o[k] for k in ("shape", "colour", "size", "box",
                                       "visible_fraction", "centroid")}
                    for o in scene["objects"]],
        "region_object_index": [int(v) for v in regions["object_index"]],
    }


def write_dataset(out_dir, num_images=2000, seed=0,
                  feature_dim=DEFAULT_FEATURE_DIM, languages=("en", "zh"),
                  image_size=DEFAULT_IMAGE_SIZE, examples_per_shard=1000,
                  save_images=True, overwrite=False, chunk_size=256,
                  progress=True, **scene_kwargs):
    """Generate the data set and write it under `out_dir`.

    Writes region features per split through `RegionFeatureWriter` under
    `out_dir/regions`, `captions_<language>.jsonl`, `scenes.jsonl`, the PNG
    images under `out_dir/images` (with `save_images`) and `metadata.json`.
    Returns the metadata dict (with the shard paths, relative to
    `out_dir`, in `"shards"`). With
    `overwrite=False`, a folder that already holds region shards raises
    `FileExistsError`; if generation fails, the shards written so far are
    deleted.

    Examples:
    ```python
    metadata = write_dataset("/tmp/shapes", num_images=100, feature_dim=64)
    ds = region_dataset("/tmp/shapes/regions", split="train")
    ```
    """
    from keras_interbert.data.region_features import RegionFeatureWriter
    from keras_interbert.data.region_features import write_captions

    languages = tuple(languages)
    for language in languages:
        if language not in ("en", "zh"):
            raise ValueError("`languages` must contain only 'en' and 'zh'. "
                             f"Received: {languages}")
    if num_images < 1:
        raise ValueError(f"`num_images` must be positive. Received: {num_images}")
    start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    image_dir = os.path.join(out_dir, "images")
    if save_images:
        os.makedirs(image_dir, exist_ok=True)
    splits = assign_splits(num_images, seed)
    region_dir = os.path.join(out_dir, "regions")
    writers = {
        split: RegionFeatureWriter(region_dir, split=split,
                                   examples_per_shard=examples_per_shard,
                                   feature_dim=feature_dim,
                                   num_classes=NUM_CLASSES,
                                   overwrite=overwrite)
        for split in SPLITS if split in splits
    }
    # metadata.json marks a finished data set: an overwrite in progress is
    # not one.
    if os.path.exists(os.path.join(out_dir, "metadata.json")):
        os.remove(os.path.join(out_dir, "metadata.json"))
    captions = {language: [] for language in languages}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_images, desc="synthetic images", unit="img")
    num_regions = 0
    shards = []
    try:
        with open(os.path.join(out_dir, "scenes.jsonl"), "w",
                  encoding="utf-8") as scene_file:
            for chunk_start in range(0, num_images, chunk_size):
                chunk = []
                for index in range(chunk_start,
                                   min(num_images, chunk_start + chunk_size)):
                    scene = generate_scene(index, seed=seed,
                                           image_size=image_size, **scene_kwargs)
                    scene["split"] = splits[index]
                    chunk.append(scene)
                _attach_features(chunk, feature_dim)
                for scene in chunk:
                    regions = scene["regions"]
                    writers[scene["split"]].write(
                        scene["image_id"], image_size, image_size,
                        regions["boxes"], regions["features"],
                        class_probs=regions["class_probs"])
                    num_regions += len(regions["boxes"])
                    scene_file.write(json.dumps(_scene_record(scene)) + "\n")
                    for language in languages:
                        captions[language].extend(
                            {"image_id": scene["image_id"], "caption": c[language],
                             "split": scene["split"]}
                            for c in scene["captions"])
                    if save_images:
                        save_png(os.path.join(image_dir,
                                              scene["image_id"] + ".png"),
                                 scene["image"])
                if bar is not None:
                    bar.update(len(chunk))
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    for writer in writers.values():
        shards.extend(os.path.relpath(p, out_dir) for p in writer.close())
    for language in languages:
        write_captions(os.path.join(out_dir, f"captions_{language}.jsonl"),
                       captions[language])
    metadata = {
        "name": "keras_interbert synthetic shapes",
        "num_images": num_images,
        "seed": seed,
        "feature_dim": feature_dim,
        "image_size": image_size,
        "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "projection_seed": PROJECTION_SEED,
        "languages": list(languages),
        "num_regions": num_regions,
        "num_captions": {lang: len(c) for lang, c in captions.items()},
        "split_sizes": {s: splits.count(s) for s in SPLITS},
        "shards": shards,
        "seconds": round(time.time() - start, 3),
    }
    # Written last and atomically: its presence means a complete data set.
    from keras_interbert.utils.atomic import write_json_atomically

    write_json_atomically(os.path.join(out_dir, "metadata.json"), metadata,
                          ensure_ascii=False)
    return metadata


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.data.synthetic",
        description="Write the synthetic shapes image-caption data set.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feature-dim", type=int, default=DEFAULT_FEATURE_DIM)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--language", choices=("en", "zh", "both"), default="both")
    parser.add_argument("--examples-per-shard", type=int, default=1000)
    parser.add_argument("--no-images", action="store_true",
                        help="do not write the PNG images")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace region shards already in --out")
    args = parser.parse_args(argv)
    languages = ("en", "zh") if args.language == "both" else (args.language,)
    metadata = write_dataset(
        args.out, num_images=args.num_images, seed=args.seed,
        feature_dim=args.feature_dim, languages=languages,
        image_size=args.image_size, examples_per_shard=args.examples_per_shard,
        save_images=not args.no_images, overwrite=args.overwrite)
    print(f"Wrote {metadata['num_images']} images, {metadata['num_regions']} "
          f"regions and {metadata['num_captions']} captions to {args.out} in "
          f"{metadata['seconds']:.1f} s.")


if __name__ == "__main__":
    main()
