"""Region features on disk: the canonical TFRecord format, its writer and reader.

One `tf.train.Example` per image, in shards named `{split}-{index:05d}.tfrecord`
with a `manifest.json` per directory; captions in JSON Lines. The reader turns
a record into the backbone's region inputs (`to_backbone_regions`) with graph
ops, so it runs inside `tf.data.Dataset.map`. See `docs/data.md`.

This module is part of the data pipeline and uses TensorFlow directly; the
model itself only sees the arrays it produces.
"""

import glob
import json
import os
import re

import numpy as np
import tensorflow as tf

from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import PolicyHandler
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.errors import check_policy
from keras_interbert.preprocessing.region_packer import pack_regions
from keras_interbert.preprocessing.region_packer import region_locations
from keras_interbert.preprocessing.region_packer import slot_values
from keras_interbert.utils.atomic import atomic_path
from keras_interbert.utils.atomic import fsync_path
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


class RegionFeatureWriter:
    """Writes images' region features into the canonical sharded TFRecords.

    One `tf.train.Example` per image goes into `{directory}/{split}-NNNNN.tfrecord`
    (`examples_per_shard` images per shard); `close()` writes or updates
    `{directory}/manifest.json` with the feature width, the class count and
    the shard list. Every record is validated first (see
    `validate_region_record`), so nothing invalid enters the files: a bad
    record raises a `RegionDataError`, or under `policy="skip"` is left out
    and listed in `report`. Shards are written under a `.tmp` name and get
    their final names in `close()`; leaving the `with` block by an exception
    (or calling `abort()`) deletes this run's files and leaves the manifest
    and any earlier shards untouched.

    Args:
        directory: output folder (created if missing).
        split: split name used in the file names and the manifest.
        examples_per_shard: images per shard file.
        feature_dim: expected feature width D; `None` takes it from the
            manifest already in `directory`, else from the first image.
        num_classes: class-probability width C; `None` takes it from the
            manifest, else from the first image (no `class_probs` there means
            the data set stores none). Either all images have `class_probs`
            or none.
        policy: `"raise"` or `"skip"` (see above).
        report: an `ErrorReport` that collects skipped records.
        overwrite: replace this split's shards if they already exist;
            otherwise existing shards for `split` raise `FileExistsError`.
        box_tolerance: how many pixels a box may stick out of the image.
        num_object_classes: the detector's class count, when images come
            with `object_ids` (e.g. 1600 for Visual Genome bottom-up
            features): every id must lie below it, and the manifest records
            it, which lets pretraining build masked-region targets from the
            ids. `None` takes it from the manifest's other splits, else
            leaves it unstated. Either all images of a split have
            `object_ids` (and `object_confs`) or none.

    Examples:

    >>> import tempfile, numpy as np
    >>> out = tempfile.mkdtemp()
    >>> with RegionFeatureWriter(out, split="val") as writer:
    ...     _ = writer.write("img1", 480, 640,
    ...                      boxes=np.array([[0, 0, 10, 20]], "float32"),
    ...                      features=np.ones((1, 8), "float32"))
    >>> [os.path.basename(p) for p in writer.close()]
    ['val-00000.tfrecord']
    """

    def __init__(
        self,
        directory,
        split="train",
        examples_per_shard=1000,
        feature_dim=None,
        num_classes=None,
        policy="raise",
        report=None,
        overwrite=False,
        box_tolerance=0.0,
        num_object_classes=None,
    ):
        if not split or not isinstance(split, str) or os.sep in split:
            raise ValueError(
                f"split must be a non-empty name without '{os.sep}'; "
                f"received {split!r}."
            )
        if int(examples_per_shard) < 1:
            raise ValueError(
                "examples_per_shard must be >= 1; received "
                f"{examples_per_shard!r}."
            )
        self.directory = str(directory)
        self.split = split
        self.examples_per_shard = int(examples_per_shard)
        self.box_tolerance = float(box_tolerance)
        self._handler = PolicyHandler(policy, report, what="images")
        self.report = self._handler.report
        os.makedirs(self.directory, exist_ok=True)

        self._manifest = read_manifest(self.directory)
        binding = _manifest_binding(self._manifest, split)
        if binding is not None:
            m_dim, m_classes, others = binding
            manifest_path = os.path.join(self.directory, MANIFEST_NAME)
            if feature_dim is not None and feature_dim != m_dim:
                raise RegionDataError(
                    f"feature_dim {feature_dim} differs from the manifest's "
                    f"feature_dim {m_dim} (splits {others}); write to another "
                    "folder.", manifest_path, kind="feature_dim",
                )
            if num_classes is not None and num_classes != m_classes:
                raise RegionDataError(
                    f"num_classes {num_classes} differs from the manifest's "
                    f"num_classes {m_classes} (splits {others}); write to "
                    "another folder.", manifest_path, kind="num_classes",
                )
            feature_dim, num_classes = m_dim, m_classes
            self._expect_probs = m_classes is not None
        else:
            self._expect_probs = True if num_classes is not None else None
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.num_object_classes = _object_class_binding(
            self._manifest, split, num_object_classes, self.directory)
        # Whether the images carry object_ids / object_confs: set by the
        # first image written, then required of every other one.
        self._expect_ids = None
        self._expect_confs = None

        # This split's shards are exactly those its manifest entry lists
        # (`train-*.tfrecord` would also match `train-extra`'s), plus any
        # unlisted file with one of the names this writer would use.
        listed = manifest_shard_names(self._manifest, split, self.directory)
        own_name = re.compile(rf"^{re.escape(split)}-\d{{5}}\.tfrecord$")
        unlisted = sorted(n for n in os.listdir(self.directory)
                          if own_name.match(n) and n not in (listed or ()))
        if (listed is not None or unlisted) and not overwrite:
            raise FileExistsError(
                f"{self.directory} already holds split {split!r} "
                f"({len(listed or ()) + len(unlisted)} shard files); pass "
                "overwrite=True to replace it."
            )
        self._stale = [os.path.join(self.directory, n) for n in listed or ()]

        self._shards = []  # finished: dicts with path/num_examples/num_boxes
        self._writer = None
        self._tmp_path = None
        self._shard_examples = 0
        self._shard_boxes = 0
        self._ids = set()
        self._closed = False
        self.num_written = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def write(self, image_id, image_h, image_w, boxes, features,
              class_probs=None, source=None, object_ids=None,
              object_confs=None):
        """Validate and append one image; returns `False` if it was skipped.

        Args:
            image_id: unique (per split) id, a string (ints are turned into
                their decimal string).
            image_h, image_w: image size in pixels.
            boxes: float `[N, 4]`, pixel `x1, y1, x2, y2`.
            features: `[N, D]`; stored as float16.
            class_probs: optional `[N, C]` float, stored as float16.
            source: `(path, record)` of the input this image comes from, used
                in error messages.
            object_ids: optional `[N]` detector class ids (whole numbers >= 0,
                below `num_object_classes` when stated).
            object_confs: optional `[N]` detector confidences in [0, 1].
        """
        if self._closed:
            raise RuntimeError("write() on a closed RegionFeatureWriter.")
        path, record = source if source is not None else (None, None)
        try:
            values = validate_region_record(
                image_id, image_h, image_w, boxes, features, class_probs,
                feature_dim=self.feature_dim,
                num_classes=self.num_classes,
                expect_class_probs=self._expect_probs,
                box_tolerance=self.box_tolerance,
                path=path, record=record,
            )
            if values[0] in self._ids:
                raise RegionDataError(
                    f"image_id {values[0]!r} was already written to split "
                    f"{self.split!r}.", path, _record_name(values[0], record),
                    kind="duplicate_image_id",
                )
            where = _record_name(values[0], record)
            ids, confs = validate_object_classes(
                object_ids, object_confs, values[3].shape[0],
                self.num_object_classes, path, where)
            for name, given, expected in (
                    ("object_ids", ids, self._expect_ids),
                    ("object_confs", confs, self._expect_confs)):
                if expected is not None and (given is not None) != expected:
                    raise RegionDataError(
                        f"{name} {'missing' if expected else 'given'}: the "
                        f"first image of split {self.split!r} "
                        f"{'had' if expected else 'had no'} {name}; all "
                        "images must agree.", path, where,
                        kind="object_classes_mismatch")
        except RegionDataError as e:
            self._handler.handle(e)
            return False
        image_id, image_h, image_w, boxes, features, probs = values
        if self._expect_ids is None:
            self._expect_ids = ids is not None
            self._expect_confs = confs is not None
        if self.feature_dim is None:
            self.feature_dim = int(features.shape[1])
        if self._expect_probs is None:
            self._expect_probs = probs is not None
            self.num_classes = None if probs is None else int(probs.shape[1])
        self._ids.add(image_id)
        if self._writer is None:
            self._open_shard()
        self._writer.write(serialize_region_example(
            image_id, image_h, image_w, boxes, features, probs, ids, confs
        ))
        self._shard_examples += 1
        self._shard_boxes += int(boxes.shape[0])
        self.num_written += 1
        if self._shard_examples >= self.examples_per_shard:
            self._finish_shard()
        return True

    @property
    def has_object_ids(self):
        """Whether this split's images carry `object_ids` (None: no image yet)."""
        return self._expect_ids

    def match_layout(self, other):
        """Require of the next images the layout `other` has written.

        For writers of several splits of one folder fed from one source:
        once one of them has seen an image, the others take its feature
        width, class count and optional fields, so a disagreement fails at
        the image instead of at `close()`, when other splits are written.
        """
        if other is self or other.num_written == 0 or self.num_written:
            return
        self.feature_dim = other.feature_dim
        self.num_classes = other.num_classes
        self._expect_probs = other._expect_probs
        self._expect_ids = other._expect_ids
        self._expect_confs = other._expect_confs

    def _open_shard(self):
        name = shard_name(self.split, len(self._shards))
        self._tmp_path = os.path.join(self.directory, name + ".tmp")
        self._writer = tf.io.TFRecordWriter(self._tmp_path)
        self._shard_examples = 0
        self._shard_boxes = 0

    def _finish_shard(self):
        # Shards keep their .tmp name until close(), so that an aborted run
        # (or one that overwrites a split) never leaves a mix of old and new.
        self._writer.close()
        self._writer = None
        self._shards.append({
            "path": os.path.basename(self._tmp_path)[: -len(".tmp")],
            "num_examples": self._shard_examples,
            "num_boxes": self._shard_boxes,
        })
        self._tmp_path = None

    def _remove_stale(self):
        keep = {s["path"] for s in self._shards}
        for path in self._stale:
            if os.path.basename(path) not in keep and os.path.exists(path):
                os.remove(path)

    def close(self):
        """Finish the last shard, write the manifest; returns the shard paths."""
        if self._closed:
            return [os.path.join(self.directory, s["path"])
                    for s in self._shards]
        if self._writer is not None:
            self._finish_shard()
        manifest = read_manifest(self.directory) or {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "splits": {},
        }
        # Another writer (e.g. one per split) may have closed in the meantime.
        binding = _manifest_binding(manifest, self.split)
        if binding is not None:
            m_dim, m_classes, others = binding
            if self.feature_dim is None:
                self.feature_dim = m_dim
            if self._expect_probs is None:
                self.num_classes = m_classes
            if (self.feature_dim, self.num_classes) != (m_dim, m_classes):
                self.abort()
                raise RegionDataError(
                    f"split {self.split!r} has (feature_dim, num_classes) = "
                    f"({self.feature_dim}, {self.num_classes}) but the splits "
                    f"{others} in the same folder have ({m_dim}, {m_classes}); "
                    "nothing was written for this split.",
                    os.path.join(self.directory, MANIFEST_NAME),
                    kind="feature_dim",
                )
        for shard in self._shards:  # on the disk before they count
            fsync_path(os.path.join(self.directory, shard["path"] + ".tmp"))
        for shard in self._shards:
            final = os.path.join(self.directory, shard["path"])
            os.replace(final + ".tmp", final)
        self._remove_stale()
        manifest.update({
            "feature_dim": self.feature_dim,
            "feature_dtype": "float16",
            "num_classes": self.num_classes,
            "class_probs_dtype": "float16",
            "box_format": "x1,y1,x2,y2 in pixels (float32)",
        })
        if self.num_object_classes is not None:
            manifest["num_object_classes"] = self.num_object_classes
        else:
            manifest.setdefault("num_object_classes", None)
        manifest["splits"][self.split] = {
            "shards": self._shards,
            "num_examples": sum(s["num_examples"] for s in self._shards),
            "num_boxes": sum(s["num_boxes"] for s in self._shards),
            "num_skipped": self.report.num_skipped,
            "object_ids": bool(self._expect_ids),
            "object_confs": bool(self._expect_confs),
        }
        _write_json_atomic(
            os.path.join(self.directory, MANIFEST_NAME), manifest
        )
        self._closed = True
        self._handler.finish()
        return [os.path.join(self.directory, s["path"]) for s in self._shards]

    def abort(self):
        """Delete what this writer wrote; the manifest is left as it was."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp_path and os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)
        for shard in self._shards:
            path = os.path.join(self.directory, shard["path"] + ".tmp")
            if os.path.exists(path):
                os.remove(path)
        self._shards = []
        self._closed = True


# ---------------------------------------------------------------- captions --

def _validate_caption(obj, path, record):
    if not isinstance(obj, dict):
        raise RegionDataError(
            f"a caption record must be a JSON object; received "
            f"{type(obj).__name__}.", path, record, kind="bad_caption",
        )
    missing = [k for k in ("image_id", "caption") if k not in obj]
    if missing:
        raise RegionDataError(
            f"caption record lacks {missing} (has {sorted(obj)}).", path,
            record, kind="bad_caption",
        )
    image_id = obj["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        raise RegionDataError(
            f"image_id must be a string or an integer; received "
            f"{image_id!r}.", path, record, kind="bad_image_id",
        )
    image_id = str(image_id)
    if not image_id.strip():
        raise RegionDataError(
            "image_id is empty.", path, record, kind="bad_image_id"
        )
    caption = obj["caption"]
    if not isinstance(caption, str):
        raise RegionDataError(
            f"caption must be a string; received {caption!r}.", path, record,
            kind="bad_caption",
        )
    if not caption.strip():
        raise RegionDataError(
            f"empty caption for image {image_id!r}.", path, record,
            kind="empty_caption",
        )
    out = dict(obj)
    out["image_id"] = image_id
    if "split" in out and not (isinstance(out["split"], str) and out["split"]):
        raise RegionDataError(
            f"split must be a non-empty string; received {out['split']!r}.",
            path, record, kind="bad_caption",
        )
    return out


def write_captions(path, records, policy="raise", report=None):
    """Write caption records as JSON Lines (UTF-8, one object per line).

    Each record is a dict with `image_id` (string; an int is written as its
    decimal string), a non-empty `caption` and optionally `split`; other keys
    are kept. Invalid records raise a `RegionDataError`, or are left out and
    reported under `policy="skip"`.

    Returns:
        The number of records written.

    Examples:

    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "captions.jsonl")
    >>> write_captions(p, [{"image_id": "a", "caption": "a dog"}])
    1
    >>> read_captions(p)
    [{'image_id': 'a', 'caption': 'a dog'}]
    """
    handler = PolicyHandler(policy, report, what="captions")
    count = 0
    with atomic_path(path, suffix=".tmp") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for index, obj in enumerate(records):
                try:
                    obj = _validate_caption(obj, str(path), f"record {index}")
                except RegionDataError as e:
                    handler.handle(e)
                    continue
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                count += 1
    handler.finish()
    return count


def read_captions(path, policy="raise", report=None):
    """Read and validate a JSON Lines caption file.

    Blank lines are ignored. A line that is not a JSON object, lacks
    `image_id` or `caption`, or has an empty caption raises a
    `RegionDataError` naming the file and the line number (or, under
    `policy="skip"`, is dropped and added to `report`). `image_id` comes back
    as a string.

    Returns:
        A list of dicts, in file order.
    """
    return read_json_lines(
        path, lambda obj, path, record, line_no: _validate_caption(
            obj, path, record),
        what="captions", kind="bad_caption", policy=policy, report=report)


def read_json_lines(path, validate, what, kind, policy="raise", report=None):
    """Read a JSON Lines file, one validated record per non-blank line.

    `validate(obj, path, record, line_no)` returns the record to keep or
    raises a `RegionDataError`; a line that is not UTF-8 or not JSON raises
    one of `kind` naming the file and the line. Under `policy="skip"` bad
    lines are dropped and added to `report`. Returns the records in file
    order.
    """
    handler = PolicyHandler(policy, report, what=what)
    path = os.fspath(path)
    out = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            record = f"line {line_no}"
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RegionDataError(f"not UTF-8 ({e}).", path, record,
                                          kind=kind) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RegionDataError(
                        f"not valid JSON ({e.msg} at column {e.colno}).",
                        path, record, kind=kind) from None
                out.append(validate(obj, path, record, line_no))
            except RegionDataError as e:
                handler.handle(e)
    handler.finish()
    return out


def check_captions_against_images(captions, image_ids, policy="raise",
                                  report=None, path=None):
    """Keep the captions whose `image_id` is among `image_ids`.

    A caption whose image has no region features raises a `RegionDataError`
    naming the caption (its position in `captions`, 1-based) and the image
    id, or under `policy="skip"` is dropped and added to `report`.

    Args:
        captions: list of caption dicts (as from `read_captions`).
        image_ids: iterable of the image ids that have region features, e.g.
            `region_image_ids(...)`.
        path: the caption file name, for messages.

    Returns:
        The list of captions that have an image.
    """
    handler = PolicyHandler(policy, report, what="captions")
    known = {str(i.decode("utf-8") if isinstance(i, bytes) else i)
             for i in image_ids}
    kept = []
    for index, caption in enumerate(captions, start=1):
        image_id = str(caption["image_id"])
        if image_id in known:
            kept.append(caption)
            continue
        handler.handle(RegionDataError(
            f"caption {caption.get('caption', '')[:60]!r} refers to image "
            f"{image_id!r}, which has no region features.", path,
            f"caption {index}", kind="missing_image",
        ))
    handler.finish()
    return kept


# ------------------------------------------------------------------ reader --

def _resolve_files(file_pattern_or_paths, split):
    """Shard paths, plus the manifests of the folders they come from."""
    if isinstance(file_pattern_or_paths, (str, os.PathLike)):
        items = [os.fspath(file_pattern_or_paths)]
    else:
        items = [os.fspath(p) for p in file_pattern_or_paths]
    paths = []
    for item in items:
        if os.path.isdir(item):
            manifest = read_manifest(item)
            if manifest is None:
                raise RegionDataError(
                    f"the folder has no {MANIFEST_NAME}; pass shard paths "
                    "or a glob instead.", item, kind="bad_manifest",
                )
            splits = manifest.get("splits", {})
            chosen = split
            if chosen is None:
                if len(splits) != 1:
                    raise ValueError(
                        f"{item} holds the splits {sorted(splits)}; pass "
                        "split= to choose one."
                    )
                chosen = next(iter(splits))
            if chosen not in splits:
                raise ValueError(
                    f"{item} has no split {chosen!r}; it has {sorted(splits)}."
                )
            paths.extend(os.path.join(item, name) for name in
                         manifest_shard_names(manifest, chosen, item))
        elif glob.has_magic(item):
            matched = sorted(glob.glob(item))
            if not matched:
                raise RegionDataError(
                    "no files match this pattern.", item, kind="no_files"
                )
            paths.extend(matched)
        else:
            if not os.path.exists(item):
                raise RegionDataError(
                    "no such file.", item, kind="no_files"
                )
            paths.append(item)
    if not paths:
        raise RegionDataError(
            f"no shard files in {file_pattern_or_paths!r}.", kind="no_files"
        )
    manifests = {}
    for p in paths:
        folder = os.path.dirname(os.path.abspath(p))
        if folder not in manifests:
            manifests[folder] = read_manifest(folder)
    return paths, manifests


def _dims_from_manifests(manifests, feature_dim, num_classes):
    found = {
        (m.get("feature_dim"), m.get("num_classes")): folder
        for folder, m in manifests.items() if m is not None
    }
    if len(found) > 1:
        raise RegionDataError(
            "the files come from folders whose manifests disagree on "
            f"(feature_dim, num_classes): {found}.", kind="feature_dim",
        )
    if found:
        (m_dim, m_classes), folder = next(iter(found.items()))
        where = os.path.join(folder, MANIFEST_NAME)
        if feature_dim is not None and feature_dim != m_dim:
            raise RegionDataError(
                f"feature_dim={feature_dim} was requested, but the manifest "
                f"says the features have width {m_dim}.", where,
                kind="feature_dim",
            )
        if num_classes is not None and num_classes != m_classes:
            raise RegionDataError(
                f"num_classes={num_classes} was requested, but the manifest "
                f"says {m_classes}.", where, kind="num_classes",
            )
        return m_dim, m_classes
    if feature_dim is None:
        raise RegionDataError(
            f"no {MANIFEST_NAME} next to the files and no feature_dim "
            "given; pass feature_dim (and num_classes if the files hold "
            "class_probs).", kind="feature_dim",
        )
    return feature_dim, num_classes


def region_files(file_pattern_or_paths, split=None):
    """The shard paths that `region_dataset` would read, in order."""
    return _resolve_files(file_pattern_or_paths, split)[0]


def region_dataset(
    file_pattern_or_paths,
    split=None,
    feature_dim=None,
    num_classes=None,
    policy="raise",
    shuffle_files=False,
    seed=None,
    num_parallel_reads=None,
    num_parallel_calls=tf.data.AUTOTUNE,
    class_probs_dtype=tf.float32,
):
    """A `tf.data.Dataset` of parsed region-feature examples.

    Each element is a dict: `image_id` (tf.string scalar), `image_h`,
    `image_w`, `num_boxes` (int32 scalars), `boxes` [N,4] float32 pixels,
    `features` [N,D] float32 and, when the data set has them, `class_probs`
    [N,C] float32. N varies per image (batch with `padded_batch` or map with
    `to_backbone_regions` first).

    Every record is checked while it is read: byte lengths that do not match
    `num_boxes`, `feature_dim` and `num_classes`, zero regions, non-positive
    image sizes, NaN/infinite values and boxes outside the image or with
    x2 < x1 / y2 < y1. Under `policy="raise"` such a record stops iteration
    with a `tf.errors.InvalidArgumentError` whose message names the problem
    and the image id; under `policy="skip"` it is dropped (use
    `scan_region_files` for a list of what would be dropped).

    Args:
        file_pattern_or_paths: a canonical folder (its manifest lists the
            shards of `split`), a glob pattern, a path or a list of paths.
        split: which split of a folder; needed when it holds several.
        feature_dim, num_classes: the expected widths. Default: from the
            manifest next to the files; if given and the manifest disagrees, a
            `RegionDataError` is raised. Without a manifest `feature_dim` is
            required and `num_classes=None` means "no class_probs".
        policy: `"raise"` or `"skip"`.
        shuffle_files: shuffle the shard order (with `seed`).
        num_parallel_reads: shards read at once (`TFRecordDataset`).
        class_probs_dtype: dtype of `class_probs`; `tf.float16` (as stored)
            halves the memory traffic of 1601-way targets.

    Examples:

    >>> ds = region_dataset("/data/cc_features", split="train")  # doctest: +SKIP
    >>> ds = ds.map(to_backbone_regions)                        # doctest: +SKIP
    """
    check_policy(policy)
    paths, manifests = _resolve_files(file_pattern_or_paths, split)
    feature_dim, num_classes = _dims_from_manifests(
        manifests, feature_dim, num_classes
    )
    feature_dim = int(feature_dim)
    has_probs = num_classes is not None
    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle_files:
        files = files.shuffle(len(paths), seed=seed)
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=num_parallel_reads)

    spec = {
        "image_id": tf.io.FixedLenFeature([], tf.string),
        "image_h": tf.io.FixedLenFeature([], tf.int64),
        "image_w": tf.io.FixedLenFeature([], tf.int64),
        "num_boxes": tf.io.FixedLenFeature([], tf.int64),
        "boxes": tf.io.FixedLenSequenceFeature(
            [], tf.float32, allow_missing=True),
        "features": tf.io.FixedLenFeature([], tf.string),
    }
    if has_probs:
        spec["class_probs"] = tf.io.FixedLenFeature([], tf.string)

    def parse(serialized):
        return tf.io.parse_single_example(serialized, spec)

    def layout_checks(raw):
        n = raw["num_boxes"]
        checks = [
            (n > 0, "the image has zero regions (num_boxes <= 0)"),
            (tf.logical_and(raw["image_h"] > 0, raw["image_w"] > 0),
             "image_h and image_w must be positive"),
            (tf.equal(tf.cast(tf.size(raw["boxes"]), tf.int64), 4 * n),
             "'boxes' holds a number of values other than 4 x num_boxes"),
            (tf.equal(tf.cast(tf.strings.length(raw["features"]), tf.int64),
                      2 * feature_dim * n),
             f"'features' holds a number of bytes other than num_boxes x "
             f"feature_dim ({feature_dim}) x 2 (float16): wrong feature width "
             "or a damaged record"),
        ]
        if has_probs:
            checks.append((
                tf.equal(
                    tf.cast(tf.strings.length(raw["class_probs"]), tf.int64),
                    2 * int(num_classes) * n),
                f"'class_probs' holds a number of bytes other than num_boxes x "
                f"num_classes ({num_classes}) x 2 (float16)",
            ))
        return checks

    def decode(raw):
        out = {
            "image_id": raw["image_id"],
            "image_h": tf.cast(raw["image_h"], tf.int32),
            "image_w": tf.cast(raw["image_w"], tf.int32),
            "num_boxes": tf.cast(raw["num_boxes"], tf.int32),
            "boxes": tf.reshape(raw["boxes"], [-1, 4]),
            "features": tf.cast(tf.reshape(
                tf.io.decode_raw(raw["features"], tf.float16,
                                 little_endian=True),
                [-1, feature_dim]), tf.float32),
        }
        if has_probs:
            out["class_probs"] = tf.cast(tf.reshape(
                tf.io.decode_raw(raw["class_probs"], tf.float16,
                                 little_endian=True),
                [-1, int(num_classes)]), class_probs_dtype)
        return out

    def value_checks(ex):
        boxes = ex["boxes"]
        h = tf.cast(ex["image_h"], tf.float32)
        w = tf.cast(ex["image_w"], tf.float32)
        checks = [
            (tf.reduce_all(tf.math.is_finite(ex["features"])),
             "'features' contain NaN or infinite values"),
            (tf.reduce_all(tf.math.is_finite(boxes)),
             "'boxes' contain NaN or infinite values"),
            (tf.reduce_all(tf.logical_and(boxes[:, 2] >= boxes[:, 0],
                                          boxes[:, 3] >= boxes[:, 1])),
             "a box has x2 < x1 or y2 < y1"),
            (tf.reduce_all(tf.logical_and(
                tf.logical_and(boxes[:, 0] >= 0.0, boxes[:, 1] >= 0.0),
                tf.logical_and(boxes[:, 2] <= w, boxes[:, 3] <= h))),
             "a box lies outside the image"),
        ]
        if has_probs:
            checks.append((
                tf.reduce_all(tf.math.is_finite(ex["class_probs"])),
                "'class_probs' contain NaN or infinite values",
            ))
        return checks

    def asserting(check_fn, then_fn):
        def fn(x):
            deps = [
                tf.debugging.Assert(
                    cond, [f"region_dataset: {msg}; image_id:", x["image_id"]])
                for cond, msg in check_fn(x)
            ]
            with tf.control_dependencies(deps):
                return tf.nest.map_structure(tf.identity, then_fn(x))
        return fn

    def all_ok(check_fn):
        def fn(x):
            return tf.reduce_all(tf.stack([c for c, _ in check_fn(x)]))
        return fn

    ds = ds.map(parse, num_parallel_calls=num_parallel_calls)
    if policy == "raise":
        ds = ds.map(asserting(layout_checks, decode),
                    num_parallel_calls=num_parallel_calls)
        ds = ds.map(asserting(value_checks, lambda x: x),
                    num_parallel_calls=num_parallel_calls)
    else:
        ds = ds.filter(all_ok(layout_checks))
        ds = ds.map(decode, num_parallel_calls=num_parallel_calls)
        ds = ds.filter(all_ok(value_checks))
    return ds


def region_dims(file_pattern_or_paths, split=None, feature_dim=None,
                num_classes=None):
    """`(feature_dim, num_classes)` of region files, as `region_dataset` finds them.

    From the manifests next to the files (checked against the arguments when
    both are given); `num_classes` is None when the files hold no
    `class_probs`.
    """
    _, manifests = _resolve_files(file_pattern_or_paths, split)
    return _dims_from_manifests(manifests, feature_dim, num_classes)


def region_object_classes(file_pattern_or_paths, split=None):
    """What the files hold of detector class ids, from their manifests.

    Returns:
        A dict: `object_ids` and `object_confs` (True when every shard's
        split records them), `num_object_classes` (the count the manifest
        states, or None).
    """
    paths, manifests = _resolve_files(file_pattern_or_paths, split)
    ids = confs = bool(paths)
    counts = set()
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        manifest = manifests.get(folder) or {}
        entry = None
        for info in (manifest.get("splits") or {}).values():
            names = [s.get("path") for s in info.get("shards", ())
                     if isinstance(s, dict)]
            if os.path.basename(path) in names:
                entry = info
                break
        ids = ids and bool((entry or {}).get("object_ids"))
        confs = confs and bool((entry or {}).get("object_confs"))
        counts.add(manifest.get("num_object_classes"))
    counts.discard(None)
    if len(counts) > 1:
        raise RegionDataError(
            "the files come from folders whose manifests disagree on "
            f"num_object_classes: {sorted(counts)}.",
            kind="num_object_classes")
    return {"object_ids": ids, "object_confs": ids and confs,
            "num_object_classes": counts.pop() if counts else None}


def _decode_float16_rows(strings, rows, width):
    """`[B]` byte strings of float16 rows -> `[B, rows, width]`, zero-padded.

    Decoded as little-endian uint16 and bit-cast: the padded raw decoder has
    no float16 kernel.
    """
    values = tf.io.decode_raw(strings, tf.uint16, little_endian=True,
                              fixed_length=2 * width * rows)
    return tf.reshape(tf.bitcast(values, tf.float16), [-1, rows, width])


def parse_region_batch(serialized, feature_dim, num_classes=None,
                       max_regions=None, features_dtype=tf.float32,
                       class_probs_dtype=tf.float32, object_ids=False,
                       object_confs=False, num_object_classes=None):
    """Parse, check and decode a batch of serialized region records at once.

    The batched counterpart of `region_dataset`'s reading (for
    `TFRecordDataset(...).batch(n).map(...)`): the same checks under
    `policy="raise"`, done with a few vectorised ops per batch instead of a
    few dozen per record. A failing record fails the batch with an
    `InvalidArgumentError` naming the problem and the first bad image id.

    Regions are padded with zeros to the batch's largest `num_boxes` N. With
    `max_regions`, only each image's first `max_regions` regions are returned
    (every stored region is still checked), so N <= `max_regions`.

    Args:
        serialized: string `[B]`, canonical `tf.train.Example` records.
        feature_dim: D, the feature width (see `region_dims`).
        num_classes: C when the records hold `class_probs`, else None.
        max_regions: optional cap on the regions returned per image.
        features_dtype, class_probs_dtype: output dtypes (`tf.float16` keeps
            the stored values without conversion).
        object_ids, object_confs: also parse the detector class ids and
            confidences (records written with them; see
            `region_object_classes`).
        num_object_classes: with `object_ids`, fail on an id at or above it.

    Returns:
        A dict: `image_id` string `[B]`, `image_h`, `image_w`, `num_boxes`
        int32 `[B]` (stored counts), `boxes` float32 `[B, N, 4]` pixels,
        `features` `[B, N, D]` and, with `num_classes`, `class_probs`
        `[B, N, C]`; rows past an image's regions are zero. With
        `object_ids`, `object_ids` int32 `[B, N]` (-1 past an image's
        regions); with `object_confs`, `object_confs` float32 `[B, N]`.

    Examples:

    >>> records = tf.data.TFRecordDataset(region_files("/data/cc", "train"))  # doctest: +SKIP
    >>> batches = records.batch(64).map(
    ...     lambda s: parse_region_batch(s, *region_dims("/data/cc", "train")))  # doctest: +SKIP
    """
    feature_dim = int(feature_dim)
    has_probs = num_classes is not None
    spec = {
        "image_id": tf.io.FixedLenFeature([], tf.string),
        "image_h": tf.io.FixedLenFeature([], tf.int64),
        "image_w": tf.io.FixedLenFeature([], tf.int64),
        "num_boxes": tf.io.FixedLenFeature([], tf.int64),
        "boxes": tf.io.RaggedFeature(tf.float32),
        "features": tf.io.FixedLenFeature([], tf.string),
    }
    if has_probs:
        spec["class_probs"] = tf.io.FixedLenFeature([], tf.string)
    if object_ids:
        spec["object_ids"] = tf.io.RaggedFeature(tf.int64)
    if object_confs:
        spec["object_confs"] = tf.io.RaggedFeature(tf.float32)
    raw = tf.io.parse_example(serialized, spec)
    image_id = raw["image_id"]
    n = raw["num_boxes"]

    def asserting(checks):
        deps = []
        for ok, message in checks:
            first_bad = tf.boolean_mask(image_id, tf.logical_not(ok))[:1]
            deps.append(tf.debugging.Assert(
                tf.reduce_all(ok),
                [f"parse_region_batch: {message}; image_id:", first_bad]))
        return deps

    def byte_count(name, width):
        return tf.equal(tf.cast(tf.strings.length(raw[name]), tf.int64),
                        2 * width * n)

    layout = [
        (n > 0, "the image has zero regions (num_boxes <= 0)"),
        (tf.logical_and(raw["image_h"] > 0, raw["image_w"] > 0),
         "image_h and image_w must be positive"),
        (tf.equal(tf.cast(raw["boxes"].row_lengths(), tf.int64), 4 * n),
         "'boxes' holds a number of values other than 4 x num_boxes"),
        (byte_count("features", feature_dim),
         f"'features' holds a number of bytes other than num_boxes x "
         f"feature_dim ({feature_dim}) x 2 (float16): wrong feature width "
         "or a damaged record"),
    ]
    if has_probs:
        layout.append((
            byte_count("class_probs", int(num_classes)),
            f"'class_probs' holds a number of bytes other than num_boxes x "
            f"num_classes ({num_classes}) x 2 (float16)"))
    for name in ("object_ids", "object_confs"):
        if name in spec:
            layout.append((
                tf.equal(tf.cast(raw[name].row_lengths(), tf.int64), n),
                f"'{name}' holds a number of values other than num_boxes"))
    if object_ids and num_object_classes is not None:
        layout.append((
            tf.reduce_all((raw["object_ids"] >= 0) & (
                raw["object_ids"] < int(num_object_classes)), axis=1),
            f"an object id lies outside [0, num_object_classes="
            f"{int(num_object_classes)})"))
    with tf.control_dependencies(asserting(layout)):
        rows = tf.cast(tf.reduce_max(n), tf.int32)
        boxes = tf.reshape(raw["boxes"].to_tensor(shape=[None, None]),
                           [-1, rows, 4])
        features = _decode_float16_rows(raw["features"], rows, feature_dim)
        if has_probs:
            probs = _decode_float16_rows(raw["class_probs"], rows,
                                         int(num_classes))
    h = tf.cast(raw["image_h"], tf.float32)[:, tf.newaxis]
    w = tf.cast(raw["image_w"], tf.float32)[:, tf.newaxis]
    x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
    # Padded rows are zero boxes, which pass every box check.
    values = [
        (tf.reduce_all(tf.math.is_finite(features), axis=[1, 2]),
         "'features' contain NaN or infinite values"),
        (tf.reduce_all(tf.math.is_finite(boxes), axis=[1, 2]),
         "'boxes' contain NaN or infinite values"),
        (tf.reduce_all((x2 >= x1) & (y2 >= y1), axis=1),
         "a box has x2 < x1 or y2 < y1"),
        (tf.reduce_all((x1 >= 0.0) & (y1 >= 0.0) & (x2 <= w) & (y2 <= h),
                       axis=1),
         "a box lies outside the image"),
    ]
    if has_probs:
        values.append((tf.reduce_all(tf.math.is_finite(probs), axis=[1, 2]),
                       "'class_probs' contain NaN or infinite values"))
    keep = rows if max_regions is None else tf.minimum(rows, int(max_regions))
    with tf.control_dependencies(asserting(values)):
        out = {
            "image_id": tf.identity(image_id),
            "image_h": tf.cast(raw["image_h"], tf.int32),
            "image_w": tf.cast(raw["image_w"], tf.int32),
            "num_boxes": tf.cast(n, tf.int32),
            "boxes": boxes[:, :keep],
            "features": tf.cast(features[:, :keep], features_dtype),
        }
        if has_probs:
            out["class_probs"] = tf.cast(probs[:, :keep], class_probs_dtype)
        if object_ids:
            out["object_ids"] = tf.cast(raw["object_ids"].to_tensor(
                default_value=-1, shape=[None, None]), tf.int32)[:, :keep]
        if object_confs:
            out["object_confs"] = raw["object_confs"].to_tensor(
                default_value=0.0, shape=[None, None])[:, :keep]
    return out


def scan_region_files(file_pattern_or_paths, split=None, feature_dim=None,
                      num_classes=None, box_tolerance=0.0):
    """Check every record eagerly; returns an `ErrorReport` of the bad ones.

    Slower than `region_dataset` but names each bad record's file, its index
    in the file and its image id, and lists all of them rather than stopping
    at the first.
    """
    paths, manifests = _resolve_files(file_pattern_or_paths, split)
    feature_dim, num_classes = _dims_from_manifests(
        manifests, feature_dim, num_classes
    )
    report = ErrorReport()
    for path in paths:
        for index, serialized in enumerate(tf.data.TFRecordDataset(path)):
            record = f"record {index}"
            try:
                ex = tf.train.Example.FromString(serialized.numpy())
            except Exception as e:  # protobuf's DecodeError
                report.add(RegionDataError(
                    f"not a tf.train.Example ({e}).", path, record,
                    kind="malformed_record"))
                continue
            f = ex.features.feature
            try:
                image_id = f["image_id"].bytes_list.value[0].decode("utf-8")
                record = f"record {index} (image {image_id!r})"
                n = int(f["num_boxes"].int64_list.value[0])
                raw = f["features"].bytes_list.value[0]
                if len(raw) != 2 * n * feature_dim:
                    raise RegionDataError(
                        f"'features' has {len(raw)} bytes; num_boxes={n} x "
                        f"feature_dim={feature_dim} x 2 = "
                        f"{2 * n * feature_dim} expected.", path, record,
                        kind="feature_dim")
                boxes = np.asarray(f["boxes"].float_list.value, np.float32)
                if boxes.size != 4 * n:
                    raise RegionDataError(
                        f"'boxes' has {boxes.size} values; 4 x num_boxes="
                        f"{4 * n} expected.", path, record,
                        kind="shape_mismatch")
                probs = None
                if num_classes is not None:
                    praw = f["class_probs"].bytes_list.value[0]
                    if len(praw) != 2 * n * num_classes:
                        raise RegionDataError(
                            f"'class_probs' has {len(praw)} bytes; "
                            f"{2 * n * num_classes} expected.", path, record,
                            kind="num_classes")
                    probs = np.frombuffer(praw, "<f2").reshape(n, num_classes)
                validate_region_record(
                    image_id,
                    f["image_h"].int64_list.value[0],
                    f["image_w"].int64_list.value[0],
                    boxes.reshape(n, 4),
                    np.frombuffer(raw, "<f2").reshape(n, feature_dim),
                    probs,
                    feature_dim=feature_dim,
                    num_classes=num_classes,
                    box_tolerance=box_tolerance,
                    path=path, record=record,
                )
            except RegionDataError as e:
                report.add(e)
            except (IndexError, KeyError, UnicodeDecodeError) as e:
                report.add(RegionDataError(
                    f"missing or malformed field ({e!r}).", path, record,
                    kind="malformed_record"))
    return report


def region_image_ids(file_pattern_or_paths, split=None):
    """The image ids stored in canonical files, as a list of strings."""
    paths, _ = _resolve_files(file_pattern_or_paths, split)
    spec = {"image_id": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(paths).map(
        lambda s: tf.io.parse_single_example(s, spec)["image_id"])
    return [v.decode("utf-8") for v in ds.as_numpy_iterator()]


# ------------------------------------------------------ model-side inputs --

def recompute_global_region(region_features, region_mask):
    """Set slot 0 to the mean of the real region slots' current features.

    For features changed after `to_backbone_regions` (e.g. zeroed by region
    masking): the original pretraining code averages the *masked* features,
    zeroed regions counting in the denominator (docs/architecture.md §1.2, §6 quirk 3).
    Works on `[R+1, D]` or batched `[B, R+1, D]` inputs; the mean is over the
    slots 1..R whose mask is 1 (the kept regions, so after truncation).
    """
    region_features = tf.convert_to_tensor(region_features)
    mask = tf.cast(region_mask, region_features.dtype)[..., 1:, tf.newaxis]
    regions = region_features[..., 1:, :]
    total = tf.reduce_sum(regions * mask, axis=-2, keepdims=True)
    count = tf.maximum(tf.reduce_sum(mask, axis=-2, keepdims=True), 1.0)
    return tf.concat([total / count, regions], axis=-2)


def has_regions(example):
    """`True` when the example has at least one region (for `Dataset.filter`)."""
    return tf.shape(example["boxes"])[0] > 0


def to_backbone_regions(
    example,
    max_regions=36,
    features=None,
    global_feature="all_regions",
    policy="raise",
    include_class_probs=True,
):
    """Build the backbone's region inputs from one parsed example (graph ops).

    The image slots are `[global, r1..rK, padding]`, `max_regions + 1` of
    them. If the image has more than `max_regions` regions only the **first**
    `max_regions` are kept (files store regions in detector order, the most
    confident first). Slot 0 is the global image token: feature = mean of the
    image's region features, location `[0, 0, 1, 1, 1]`, mask 1.

    Args:
        example: a dict from `region_dataset` (unbatched).
        max_regions: R, the number of region slots after the global one
            (36 for pretraining; 101 gives Flickr30K's 102 slots).
        features: optional `[N, D]` features to use instead of
            `example["features"]` for both the region slots and the global
            mean, e.g. already-masked features. For features masked after
            this function, call `recompute_global_region`.
        global_feature: `"all_regions"` (mean over all N stored regions,
            before truncation: the finetuning rule) or `"kept_regions"`
            (mean over the K kept ones).
        policy: what an image without regions does. `"raise"`: fails (a
            `RegionDataError` when run eagerly, an `InvalidArgumentError`
            inside `Dataset.map`). `"skip"`: gives a zero global feature
            with mask 1 and only padding slots; drop such images beforehand
            with `dataset.filter(has_regions)` (`region_dataset(...,
            policy="skip")` already does).
        include_class_probs: emit `region_class_probs` when the example has
            `class_probs`.

    Returns:
        A dict with `region_features` [R+1, D] float32, `region_locations`
        [R+1, 5] float32, `region_mask` [R+1] int32 (1 = real slot, the
        global one included), `region_boxes` [R+1, 4] float32 normalised
        `x1/W, y1/H, x2/W, y2/H` (slot 0 = `[0, 0, 1, 1]`, padding = 0), and
        when class_probs exist `region_class_probs` [R+1, C] in the dtype
        `class_probs` was read in (zeros
        at slot 0 and the padding).
    """
    check_policy(policy)
    if global_feature not in ("all_regions", "kept_regions"):
        raise ValueError(
            "global_feature must be 'all_regions' or 'kept_regions'; "
            f"received {global_feature!r}."
        )
    max_regions = int(max_regions)
    if max_regions < 1:
        raise ValueError(f"max_regions must be >= 1; received {max_regions}.")
    feats = tf.cast(
        example["features"] if features is None else features, tf.float32)
    boxes = tf.cast(example["boxes"], tf.float32)
    num = tf.shape(boxes)[0]
    feature_dim = feats.shape[-1]

    if policy == "raise":
        if tf.executing_eagerly():
            if int(num) == 0:
                image_id = example.get("image_id")
                if image_id is not None:
                    image_id = image_id.numpy().decode("utf-8")
                raise RegionDataError(
                    "the image has zero regions; to_backbone_regions needs at "
                    "least one (or policy='skip').",
                    record=None if image_id is None else f"image {image_id!r}",
                    kind="no_regions",
                )
        else:
            ident = example.get("image_id", tf.constant("?"))
            with tf.control_dependencies([tf.debugging.Assert(
                    num > 0,
                    ["to_backbone_regions: the image has zero regions; "
                     "image_id:", ident])]):
                feats = tf.identity(feats)
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(feats)[0], num,
            message="to_backbone_regions: features and boxes have different "
                    "numbers of rows")]):
        feats = tf.identity(feats)

    # The one layout (`InterBERTRegionPacker`), on a batch of one image.
    size = tf.stack([example["image_h"], example["image_w"]])[tf.newaxis]
    slots = pack_regions(feats[tf.newaxis], boxes[tf.newaxis], size,
                         num[tf.newaxis], max_regions,
                         global_feature=global_feature)
    slots = {k: v[0] for k, v in slots.items()}
    slots_n = max_regions + 1
    out = {
        "region_features": tf.ensure_shape(
            slots["region_features"], [slots_n, feature_dim]),
        "region_locations": tf.ensure_shape(slots["region_locations"],
                                            [slots_n, 5]),
        "region_mask": tf.ensure_shape(slots["region_mask"], [slots_n]),
        # Slot 0's box is the whole image, [0, 0, 1, 1].
        "region_boxes": tf.ensure_shape(
            slots["region_locations"][:, :4], [slots_n, 4]),
    }
    if include_class_probs and "class_probs" in example:
        probs = example["class_probs"]  # float32 or float16, kept as read
        out["region_class_probs"] = tf.ensure_shape(
            slot_values(tf.zeros([tf.shape(probs)[1]], probs.dtype), probs,
                        tf.minimum(num, max_regions), max_regions),
            [slots_n, probs.shape[-1]])
    return out
