"""Writers of the public feature and caption formats, for tests.

Each writes a file the way the format's own documentation or reference code
lays it out, with numpy, base64 and json only (never the project's writer),
so that the converters are tested against the formats, not against
themselves:

- Karpathy's split JSON (`dataset_flickr30k.json`): `{"images": [{"filename",
  "imgid", "split", "sentences": [{"raw", "tokens", "imgid", "sentid"}],
  "sentids"}], "dataset": ...}`.
- Conceptual Captions TSV: `caption<TAB>url`, no header.
- LXMERT's feature TSV (`load_obj_tsv`): the columns `img_id, img_h, img_w,
  objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
  features`, arrays as base64 of raw int64 / float32 bytes.
- UNITER's `.npz` per image: `norm_bb` [N, 4 | 6 | 7], `features`, `conf`
  [N], `soft_labels` [N, C].
- vilbert-multi-task's `.npy` per image: `np.save` of the dictionary
  `extract_features.py` builds (`bbox`, `num_boxes`, `objects`,
  `image_width`, `image_height`, `cls_prob`, `image_id`, `features`).
"""
import base64
import json

import numpy as np

LXMERT_COLUMNS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf",
                  "attrs_id", "attrs_conf", "num_boxes", "boxes", "features")

WORDS = ("dog", "cat", "man", "woman", "child", "ball", "red", "blue",
         "green", "park", "beach", "street", "runs", "sits", "plays",
         "holds", "a", "the", "on", "with", "in", "near")


def detector_images(image_ids, feature_dim=8, num_classes=1600, seed=0,
                    min_boxes=3, max_boxes=7):
    """Per image: size, pixel boxes, features, class ids and confidences."""
    rng = np.random.default_rng(seed)
    images = []
    for image_id in image_ids:
        n = int(rng.integers(min_boxes, max_boxes + 1))
        h, w = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        x1 = rng.uniform(0, w / 2, n)
        y1 = rng.uniform(0, h / 2, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n),
                          y1 + rng.uniform(1, h / 2, n)], 1)
        images.append({
            "image_id": str(image_id),
            "image_h": h,
            "image_w": w,
            "boxes": boxes.astype(np.float32),
            "features": rng.uniform(0, 4, (n, feature_dim)).astype(np.float32),
            "objects_id": rng.integers(0, num_classes, n).astype(np.int64),
            "objects_conf": rng.uniform(0.2, 1.0, n).astype(np.float32),
            "attrs_id": rng.integers(0, 400, n).astype(np.int64),
            "attrs_conf": rng.uniform(0, 1, n).astype(np.float32),
        })
    return images


def _b64(array, dtype):
    return base64.b64encode(
        np.ascontiguousarray(array, dtype).tobytes()).decode("ascii")


def lxmert_tsv_line(image, **overrides):
    """One line of LXMERT's TSV for `image` (columns may be overridden)."""
    row = {
        "img_id": image["image_id"],
        "img_h": str(image["image_h"]),
        "img_w": str(image["image_w"]),
        "objects_id": _b64(image["objects_id"], np.int64),
        "objects_conf": _b64(image["objects_conf"], np.float32),
        "attrs_id": _b64(image["attrs_id"], np.int64),
        "attrs_conf": _b64(image["attrs_conf"], np.float32),
        "num_boxes": str(len(image["boxes"])),
        "boxes": _b64(image["boxes"], np.float32),
        "features": _b64(image["features"], np.float32),
    }
    row.update(overrides)
    return "\t".join(row[c] for c in LXMERT_COLUMNS) + "\n"


def write_lxmert_tsv(path, images):
    with open(path, "w", encoding="utf-8") as f:
        for image in images:
            f.write(lxmert_tsv_line(image))


def random_caption(rng, length=6):
    return " ".join(rng.choice(WORDS, length)) + " ."


def karpathy_file(path, splits, captions_per_image=2, seed=0,
                  dataset="flickr30k"):
    """A Karpathy split file; `splits` maps image file names to splits.

    Returns the JSON object written.
    """
    rng = np.random.default_rng(seed)
    images, sentid = [], 0
    for imgid, (filename, split) in enumerate(splits.items()):
        sentences = []
        for _ in range(captions_per_image):
            raw = random_caption(rng)
            sentences.append({"tokens": raw.rstrip(" .").split(),
                              "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append({"sentids": [s["sentid"] for s in sentences],
                       "imgid": imgid, "sentences": sentences,
                       "split": split, "filename": filename})
    data = {"images": images, "dataset": dataset}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return data


def write_cc_tsv(path, rows):
    """Conceptual Captions: `caption<TAB>url` per line, no header."""
    with open(path, "w", encoding="utf-8") as f:
        for caption, url in rows:
            f.write(f"{caption}\t{url}\n")


def write_uniter_npz(path, image, width=7, soft_labels=None):
    """UNITER's per-image `.npz`: normalised boxes, no image size."""
    w, h = image["image_w"], image["image_h"]
    x1, y1, x2, y2 = (image["boxes"].astype(np.float64)
                      / np.array([w, h, w, h])).T
    columns = [x1, y1, x2, y2]
    if width >= 6:
        columns += [x2 - x1, y2 - y1]
    if width == 7:
        columns.append((x2 - x1) * (y2 - y1))
    arrays = {"norm_bb": np.stack(columns, 1).astype(np.float32),
              "features": image["features"],
              "conf": image["objects_conf"]}
    if soft_labels is not None:
        arrays["soft_labels"] = soft_labels
    np.savez_compressed(path, **arrays)


def write_vilbert_npy(path, image, cls_prob=None, objects=True):
    """vilbert-multi-task's `extract_features.py` output for one image."""
    info = {
        "bbox": image["boxes"],
        "num_boxes": len(image["boxes"]),
        "image_width": image["image_w"],
        "image_height": image["image_h"],
        "image_id": image["image_id"],
        "features": image["features"],
    }
    if objects:
        info["objects"] = image["objects_id"]
    if cls_prob is not None:
        info["cls_prob"] = cls_prob
    np.save(path, info)
