"""One `.npz` per image (BUTD-caffe style, pixel boxes)."""
from keras_interbert.data.convert.common import _check_num_boxes
from keras_interbert.data.convert.common import _expand_inputs
from keras_interbert.data.convert.common import _load_npz
from keras_interbert.data.convert.common import _object_fields
from keras_interbert.data.convert.common import _per_file_records
from keras_interbert.data.convert.common import _run
from keras_interbert.data.convert.common import image_id_from_name
from keras_interbert.data.errors import RegionDataError


NPZ_KEYS = {
    "features": ("features", "x"),
    "boxes": ("boxes", "bbox"),
    "image_h": ("image_h", "image_height"),
    "image_w": ("image_w", "image_width"),
    "num_boxes": ("num_boxes", "num_bbox"),
    "class_probs": ("cls_prob", "class_probs", "soft_labels", "conf"),
    "object_ids": ("objects_id", "object_ids", "objects"),
    "object_confs": ("objects_conf", "object_confs", "conf"),
}


def _npz_get(data, role, path, record, required=True):
    for key in NPZ_KEYS[role]:
        if key in data.files:
            try:
                value = data[key]
            except ValueError:
                raise RegionDataError(
                    f"key {key!r} holds pickled Python objects, which are not "
                    "loaded (unsafe); store a numeric array.", path, record,
                    kind="malformed_file",
                ) from None
            if role == "class_probs" and key == "conf" and value.ndim != 2:
                continue  # a per-box confidence [N], not a distribution
            if role == "object_confs" and key == "conf" and value.ndim != 1:
                continue  # class distributions [N, C], not a confidence
            return key, value
    if required:
        raise RegionDataError(
            f"no {role} array: expected one of the keys "
            f"{list(NPZ_KEYS[role])}; the file has {sorted(data.files)}.",
            path, record, kind="malformed_file",
        )
    return None, None


def read_npz_record(path, id_pattern=None):
    """The `writer.write` keyword arguments for one per-image `.npz` file."""
    stem = image_id_from_name(path, id_pattern)
    record = f"image {stem!r}"

    def read(data):
        image_id, where = stem, record
        if "image_id" in data.files and id_pattern is None:
            try:
                raw_id = data["image_id"]
            except ValueError:
                raw_id = None
            if raw_id is not None and raw_id.ndim == 0:
                image_id = str(raw_id.item())
                if isinstance(raw_id.item(), bytes):
                    image_id = raw_id.item().decode("utf-8", "replace")
                where = f"image {image_id!r}"

        def get(role, required=False):
            return _npz_get(data, role, path, where, required=required)

        out = {
            "image_id": image_id,
            "features": get("features", True)[1],
            "boxes": get("boxes", True)[1],
            "image_h": get("image_h", True)[1],
            "image_w": get("image_w", True)[1],
        }
        key, num_boxes = get("num_boxes")
        _check_num_boxes(key, num_boxes, out["boxes"], path, where)
        _, probs = get("class_probs")
        if probs is not None:
            out["class_probs"] = probs
        out.update(_object_fields(get, path, where))
        return out, where

    return _load_npz(path, record, read)


def convert_npz(inputs, output_dir, split="train", feature_dim=None,
                num_classes=None, policy="raise", examples_per_shard=1000,
                overwrite=False, box_tolerance=0.0, progress=True,
                num_object_classes=None, splits_from=None, id_pattern=None):
    """Convert per-image `.npz` files into canonical TFRecords.

    Accepted keys (first present wins): features `features` or `x` [N,D];
    boxes `boxes` or `bbox` [N,4] pixels x1,y1,x2,y2; `image_h` or
    `image_height`; `image_w` or `image_width`; optional `num_boxes` or
    `num_bbox` (must equal N); optional class probabilities `cls_prob`,
    `class_probs`, `soft_labels`, or `conf` when it is 2-D [N,C] (a 1-D
    `conf` is a per-box confidence); optional detector class ids
    `objects_id`, `object_ids` or `objects` [N] with confidences
    `objects_conf`, `object_confs` or a 1-D `conf` [N], stored as
    `object_ids` / `object_confs`. The image id is the scalar `image_id` key
    if present, else the file name without `.npz`. Pickled object arrays
    (e.g. BUTD's `info`) are never loaded.

    Args:
        inputs: `.npz` paths, folders (their `*.npz`, sorted) or globs.
        id_pattern: take the image id from the file name with this regular
            expression (see `image_id_from_name`) instead.
        num_object_classes, splits_from: see `convert_tsv`.

    Returns:
        A report dict (see `convert_tsv`).
    """
    paths = _expand_inputs(inputs, ".npz")

    records = _per_file_records(
        paths, lambda path: read_npz_record(path, id_pattern), progress)
    return _run(records, output_dir, split, examples_per_shard, feature_dim,
                num_classes, policy, overwrite, box_tolerance, paths, "npz",
                num_object_classes, splits_from)
