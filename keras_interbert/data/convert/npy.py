"""vilbert-multi-task's per-image `.npy` dictionaries."""
import numpy as np

from keras_interbert.data.convert.common import _check_num_boxes
from keras_interbert.data.convert.common import _expand_inputs
from keras_interbert.data.convert.common import _per_file_records
from keras_interbert.data.convert.common import _run
from keras_interbert.data.convert.common import image_id_from_name
from keras_interbert.data.convert.common import safe_unpickle
from keras_interbert.data.errors import RegionDataError


NPY_KEYS = {
    "image_h": ("image_h", "image_height"),
    "image_w": ("image_w", "image_width"),
    "boxes": ("boxes", "bbox"),
    "features": ("features",),
}


def read_npy_record(path, id_pattern=None):
    """The `writer.write` keyword arguments for one vilbert `.npy` file.

    vilbert-multi-task's `extract_features.py` saves one dictionary per
    image with `np.save`: `image_id`, `image_h`/`image_height`,
    `image_w`/`image_width`, `num_boxes`, `boxes`/`bbox` [N,4] pixels,
    `features` [N,D], and `cls_prob` [N,C] (stored as `class_probs`) or
    `objects` [N] (the detector's class ids, stored as `object_ids`). The
    dictionary is a pickle; it is read with a restricted unpickler that
    only builds containers, strings, numbers and numpy arrays.
    """
    stem = image_id_from_name(path, id_pattern)
    record = f"image {stem!r}"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if not dtype.hasobject:
                raise RegionDataError(
                    f"holds a plain {dtype} array of shape {shape}, not a "
                    "feature dictionary (np.save of a dict).", path, record,
                    kind="malformed_file")
            payload = f.read()
    except (OSError, ValueError) as e:
        raise RegionDataError(f"cannot read the .npy file ({e}).", path,
                              record, kind="malformed_file") from None
    try:
        item = safe_unpickle(payload)
    except Exception as e:
        raise RegionDataError(f"cannot unpickle the dictionary ({e}).", path,
                              record, kind="malformed_file") from None
    if isinstance(item, np.ndarray) and item.shape == ():
        item = item.item()
    if not isinstance(item, dict):
        raise RegionDataError(
            f"holds a {type(item).__name__}, not a feature dictionary.",
            path, record, kind="malformed_file")
    image_id = stem
    if "image_id" in item and id_pattern is None:
        image_id = item["image_id"]
        if isinstance(image_id, np.ndarray) and image_id.shape == ():
            image_id = image_id.item()
        if isinstance(image_id, bytes):
            image_id = image_id.decode("utf-8", "replace")
        image_id = str(image_id)
        record = f"image {image_id!r}"

    def get(role, required=True):
        names = NPY_KEYS.get(role, (role,))
        for name in names:
            if name in item:
                return name, item[name]
        if required:
            raise RegionDataError(
                f"the dictionary lacks {names[0]!r} (has "
                f"{sorted(map(str, item))}).", path, record,
                kind="malformed_record")
        return None, None

    out = {"image_id": image_id}
    for role in ("image_h", "image_w", "boxes", "features"):
        out[role] = get(role)[1]
    for role in ("boxes", "features"):
        value = out[role]
        if not (isinstance(value, np.ndarray) and value.dtype.kind in "fiu"):
            raise RegionDataError(
                f"{role} is a {type(value).__name__}, not a numeric array.",
                path, record, kind="malformed_record")
    key, num_boxes = get("num_boxes", required=False)
    _check_num_boxes(key, num_boxes, out["boxes"], path, record)
    _, probs = get("cls_prob", required=False)
    if probs is not None:
        out["class_probs"] = probs
    _, objects = get("objects", required=False)
    if objects is not None:
        out["object_ids"] = objects
    return out, record


def convert_npy(inputs, output_dir, split="train", feature_dim=None,
                num_classes=None, policy="raise", examples_per_shard=1000,
                overwrite=False, box_tolerance=0.0, progress=True,
                num_object_classes=None, splits_from=None, id_pattern=None):
    """Convert vilbert-multi-task's per-image `.npy` dictionaries.

    See `read_npy_record` for the keys. A file with both `cls_prob` and
    `objects` stores both.

    Unpickling untrusted data can run arbitrary code. The dictionaries are
    read with a restricted unpickler, but convert only files you trust.

    Returns:
        A report dict (see `convert_tsv`).
    """
    paths = _expand_inputs(inputs, ".npy")

    records = _per_file_records(
        paths, lambda path: read_npy_record(path, id_pattern), progress)
    return _run(records, output_dir, split, examples_per_shard, feature_dim,
                num_classes, policy, overwrite, box_tolerance, paths, "npy",
                num_object_classes, splits_from)
