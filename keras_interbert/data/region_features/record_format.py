"""The canonical region record and a folder's `manifest.json`.

One `tf.train.Example` per image, in shards named
`{split}-{index:05d}.tfrecord`: the record's checks, its serialization,
shard names and the manifest (docs/data.md).
"""
import json
import os

import numpy as np
import tensorflow as tf

from keras_interbert.data.errors import RegionDataError
from keras_interbert.utils.atomic import write_json_atomically
from keras_interbert.utils.paths import check_plain_name


MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "keras_interbert.region_features"
FORMAT_VERSION = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)


def shard_name(split, index):
    """The file name of shard `index` of `split`: `{split}-{index:05d}.tfrecord`."""
    return f"{split}-{index:05d}.tfrecord"


def _record_name(image_id, record):
    if record is not None:
        return record
    return f"image {image_id!r}" if image_id is not None else None


def _as_image_id(image_id, path, record):
    if isinstance(image_id, bytes):
        try:
            image_id = image_id.decode("utf-8")
        except UnicodeDecodeError:
            raise RegionDataError(
                f"image_id {image_id!r} is not UTF-8.", path, record,
                kind="bad_image_id",
            ) from None
    elif isinstance(image_id, (int, np.integer)) and not isinstance(
        image_id, bool
    ):
        image_id = str(int(image_id))
    if not isinstance(image_id, str) or not image_id.strip():
        raise RegionDataError(
            f"image_id must be a non-empty string; received {image_id!r}.",
            path, record, kind="bad_image_id",
        )
    return image_id


def _as_size(value, name, path, record):
    if isinstance(value, (bytes, str)):
        try:
            value = float(value)
        except ValueError:
            raise RegionDataError(
                f"{name} must be a number; received {value!r}.", path, record,
                kind="bad_image_size",
            ) from None
    try:
        number = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        raise RegionDataError(
            f"{name} must be a scalar number; received {value!r}.", path,
            record, kind="bad_image_size",
        ) from None
    if not np.isfinite(number) or number <= 0 or number != int(number):
        raise RegionDataError(
            f"{name} must be a positive whole number of pixels; received "
            f"{value!r}.", path, record, kind="bad_image_size",
        )
    return int(number)


def _as_matrix(value, name, path, record):
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise RegionDataError(
            f"{name} is not a numeric array ({e}).", path, record,
            kind="shape_mismatch",
        ) from None
    return array


def _first_bad_row(mask):
    rows = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return int(rows[0]), len(rows)


def validate_region_record(
    image_id,
    image_h,
    image_w,
    boxes,
    features,
    class_probs=None,
    *,
    feature_dim=None,
    num_classes=None,
    expect_class_probs=None,
    box_tolerance=0.0,
    path=None,
    record=None,
):
    """Check one image's regions and return them in their stored dtypes.

    Raises a `RegionDataError` naming `path`, `record` (or the image id) and
    the problem for: an empty image id, a non-positive image size, zero
    regions, shapes that do not match (`boxes` [N,4], `features` [N,D],
    `class_probs` [N,C]), a feature width other than `feature_dim`, NaN or
    infinite values (also values beyond the float16 range, which would turn
    into infinities on storage), boxes with `x2 < x1` or `y2 < y1`, boxes
    outside `[0, W] x [0, H]` by more than `box_tolerance` pixels, and
    negative class probabilities.

    Args:
        expect_class_probs: `True`/`False` to require/forbid `class_probs`;
            `None` accepts either.

    Returns:
        `(image_id str, image_h int, image_w int, boxes float32 [N,4],
        features float16 [N,D], class_probs float16 [N,C] or None)`.
    """
    record = _record_name(
        image_id if isinstance(image_id, str) else None, record
    )
    image_id = _as_image_id(image_id, path, record)
    record = _record_name(image_id, record)
    image_h = _as_size(image_h, "image_h", path, record)
    image_w = _as_size(image_w, "image_w", path, record)

    boxes = _as_matrix(boxes, "boxes", path, record)
    if boxes.size == 0:
        raise RegionDataError(
            "the image has zero regions (boxes is empty); every image needs "
            "at least one region.", path, record, kind="no_regions",
        )
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise RegionDataError(
            f"boxes must have shape [N, 4]; received {boxes.shape}.", path,
            record, kind="shape_mismatch",
        )
    num_boxes = boxes.shape[0]
    if not np.all(np.isfinite(boxes)):
        row, count = _first_bad_row(~np.isfinite(boxes))
        raise RegionDataError(
            f"boxes contain NaN or infinite values ({count} boxes, first at "
            f"row {row}: {boxes[row].tolist()}).", path, record,
            kind="non_finite",
        )
    x1, y1, x2, y2 = boxes.T
    reversed_rows = (x2 < x1) | (y2 < y1)
    if reversed_rows.any():
        row, count = _first_bad_row(reversed_rows)
        raise RegionDataError(
            f"boxes must be x1,y1,x2,y2 with x2 >= x1 and y2 >= y1; {count} "
            f"boxes are not, first at row {row}: {boxes[row].tolist()}.",
            path, record, kind="box_order",
        )
    tol = float(box_tolerance)
    outside = (
        (x1 < -tol) | (y1 < -tol) | (x2 > image_w + tol) | (y2 > image_h + tol)
    )
    if outside.any():
        row, count = _first_bad_row(outside)
        raise RegionDataError(
            f"{count} boxes lie outside the {image_w}x{image_h} (W x H) "
            f"image, first at row {row}: {boxes[row].tolist()}.", path, record,
            kind="box_outside_image",
        )

    features = _as_matrix(features, "features", path, record)
    if features.ndim != 2 or features.shape[0] != num_boxes:
        raise RegionDataError(
            f"features must have shape [num_boxes={num_boxes}, D]; received "
            f"{features.shape}.", path, record, kind="shape_mismatch",
        )
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise RegionDataError(
            f"feature width {features.shape[1]} differs from the expected "
            f"feature_dim {feature_dim}.", path, record, kind="feature_dim",
        )
    if features.shape[1] == 0:
        raise RegionDataError(
            "features have width 0.", path, record, kind="feature_dim",
        )
    if not np.all(np.isfinite(features)):
        row, count = _first_bad_row(~np.isfinite(features))
        raise RegionDataError(
            f"features contain NaN or infinite values ({count} regions, first "
            f"at row {row}).", path, record, kind="non_finite",
        )
    if np.abs(features).max() > FLOAT16_MAX:
        raise RegionDataError(
            f"features exceed the float16 range (max |x| = "
            f"{np.abs(features).max():.6g} > {FLOAT16_MAX}); they would be "
            "stored as infinities.", path, record, kind="non_finite",
        )

    if class_probs is None:
        if expect_class_probs:
            raise RegionDataError(
                f"class_probs are missing; this data set stores class_probs "
                f"with {num_classes} classes for every image.", path, record,
                kind="class_probs_mismatch",
            )
        stored_probs = None
    else:
        if expect_class_probs is False:
            raise RegionDataError(
                "class_probs were given, but this data set stores none (the "
                "first image had none); pass num_classes to the writer to "
                "store them.", path, record, kind="class_probs_mismatch",
            )
        probs = _as_matrix(class_probs, "class_probs", path, record)
        if probs.ndim != 2 or probs.shape[0] != num_boxes:
            raise RegionDataError(
                f"class_probs must have shape [num_boxes={num_boxes}, C]; "
                f"received {probs.shape}.", path, record,
                kind="shape_mismatch",
            )
        if num_classes is not None and probs.shape[1] != num_classes:
            raise RegionDataError(
                f"class_probs width {probs.shape[1]} differs from the expected "
                f"num_classes {num_classes}.", path, record,
                kind="num_classes",
            )
        if not np.all(np.isfinite(probs)):
            row, count = _first_bad_row(~np.isfinite(probs))
            raise RegionDataError(
                f"class_probs contain NaN or infinite values ({count} regions, "
                f"first at row {row}).", path, record, kind="non_finite",
            )
        if (probs < 0).any():
            row, count = _first_bad_row(probs < 0)
            raise RegionDataError(
                f"class_probs must be >= 0; {count} regions have negative "
                f"entries, first at row {row}.", path, record,
                kind="bad_class_probs",
            )
        if probs.max() > FLOAT16_MAX:
            raise RegionDataError(
                "class_probs exceed the float16 range.", path, record,
                kind="bad_class_probs",
            )
        stored_probs = probs.astype(np.float16)
    return (
        image_id,
        image_h,
        image_w,
        boxes.astype(np.float32),
        features.astype(np.float16),
        stored_probs,
    )


def validate_object_classes(object_ids, object_confs, num_boxes,
                            num_object_classes=None, path=None, record=None):
    """Check an image's detector class ids and confidences, one per region.

    `object_ids` are the detector's class indices (LXMERT's `objects_id`,
    vilbert's `objects`): whole numbers >= 0, below `num_object_classes`
    when it is given. `object_confs` are its confidences for those classes
    (`objects_conf`): finite and in [0, 1]. Either may be `None`.

    Returns:
        `(int64 [N] or None, float32 [N] or None)`.
    """
    out = []
    for name, values in (("object_ids", object_ids),
                         ("object_confs", object_confs)):
        if values is None:
            out.append(None)
            continue
        try:
            array = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise RegionDataError(
                f"{name} is not a numeric array ({e}).", path, record,
                kind="bad_object_classes") from None
        if array.shape[0] != num_boxes:
            raise RegionDataError(
                f"{name} holds {array.shape[0]} values for num_boxes="
                f"{num_boxes} regions; one per region is needed.", path,
                record, kind="bad_object_classes")
        if not np.all(np.isfinite(array)):
            raise RegionDataError(
                f"{name} contain NaN or infinite values.", path, record,
                kind="bad_object_classes")
        if name == "object_ids":
            bad = (array < 0) | (array != np.round(array))
            if num_object_classes is not None:
                bad |= array >= num_object_classes
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                limit = ("" if num_object_classes is None else
                         f" below num_object_classes={num_object_classes}")
                raise RegionDataError(
                    f"object_ids must be whole numbers >= 0{limit}; region "
                    f"{row} has {array[row]:g} ({int(bad.sum())} bad).", path,
                    record, kind="bad_object_classes")
            out.append(array.astype(np.int64))
        else:
            bad = (array < 0) | (array > 1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise RegionDataError(
                    f"object_confs must lie in [0, 1]; region {row} has "
                    f"{array[row]:g}.", path, record,
                    kind="bad_object_classes")
            out.append(array.astype(np.float32))
    return tuple(out)


def _bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _float_feature(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def serialize_region_example(image_id, image_h, image_w, boxes, features,
                             class_probs=None, object_ids=None,
                             object_confs=None):
    """Serialize already-validated arrays (see `validate_region_record`)."""
    feature = {
        "image_id": _bytes_feature([image_id.encode("utf-8")]),
        "image_h": _int_feature([int(image_h)]),
        "image_w": _int_feature([int(image_w)]),
        "num_boxes": _int_feature([int(boxes.shape[0])]),
        "boxes": _float_feature(boxes.reshape(-1).tolist()),
        "features": _bytes_feature([features.astype("<f2").tobytes()]),
    }
    if class_probs is not None:
        feature["class_probs"] = _bytes_feature(
            [class_probs.astype("<f2").tobytes()]
        )
    if object_ids is not None:
        feature["object_ids"] = _int_feature(
            np.asarray(object_ids, np.int64).tolist())
    if object_confs is not None:
        feature["object_confs"] = _float_feature(
            np.asarray(object_confs, np.float32).tolist())
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def read_manifest(directory):
    """The manifest of a canonical directory, or `None` if it has none."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RegionDataError(
            f"cannot read the manifest ({e}).", path, kind="bad_manifest"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise RegionDataError(
            f"not a region-feature manifest (expected format {FORMAT_NAME!r}).",
            path, kind="bad_manifest",
        )
    return manifest


def _manifest_binding(manifest, split):
    """`(feature_dim, num_classes, other splits)` that `split` must match.

    Only the *other* splits of a folder bind a writer, so rewriting a
    folder's only split may change its widths.
    """
    if manifest is None or manifest.get("feature_dim") is None:
        return None
    others = sorted(s for s in manifest.get("splits", {}) if s != split)
    if not others:
        return None
    return manifest["feature_dim"], manifest.get("num_classes"), others


def _object_class_binding(manifest, split, num_object_classes, directory):
    """The class count of `split`'s object ids, checked against the folder.

    The other splits of a folder bind it, as they bind the widths.
    """
    if num_object_classes is not None:
        num_object_classes = int(num_object_classes)
        if num_object_classes < 1:
            raise ValueError("num_object_classes must be >= 1; received "
                             f"{num_object_classes}.")
    stated = (manifest or {}).get("num_object_classes")
    others = sorted(s for s in (manifest or {}).get("splits", {}) if s != split)
    if stated is None or not others:
        return num_object_classes
    if num_object_classes is not None and num_object_classes != stated:
        raise RegionDataError(
            f"num_object_classes {num_object_classes} differs from the "
            f"manifest's num_object_classes {stated} (splits {others}); write "
            "to another folder.", os.path.join(directory, MANIFEST_NAME),
            kind="num_object_classes")
    return int(stated)


def _write_json_atomic(path, data):
    write_json_atomically(path, data, ensure_ascii=False)


def manifest_shard_names(manifest, split, directory):
    """The shard file names the manifest of `directory` lists for `split`.

    Each must be a plain file name in `directory` (no `..`, no separator,
    not absolute), so that neither a reader nor an overwrite can reach a
    file outside the folder; a manifest that lists another one raises a
    `RegionDataError` naming the manifest. `None` if `split` is not listed.
    """
    listed = ((manifest or {}).get("splits") or {}).get(split)
    if listed is None:
        return None
    path = os.path.join(directory, MANIFEST_NAME)
    shards = listed.get("shards") if isinstance(listed, dict) else None
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and "path" in s for s in shards):
        raise RegionDataError(
            f"split {split!r} has no list of shards with paths.", path,
            kind="bad_manifest")
    names = []
    for shard in shards:
        try:
            names.append(check_plain_name(shard["path"], "shard path"))
        except ValueError as e:
            raise RegionDataError(
                f"split {split!r}: {e} Shard paths are file names inside the "
                "manifest's folder.", path, kind="bad_manifest") from None
    return names
