"""Reading canonical region files.

Which shards a folder or pattern names, their widths, a checked `tf.data`
reader, an eager scan of every record and the image ids.
"""
import glob
import os

import numpy as np
import tensorflow as tf

from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.errors import check_policy
from keras_interbert.data.region_features.record_format import MANIFEST_NAME
from keras_interbert.data.region_features.record_format import manifest_shard_names
from keras_interbert.data.region_features.record_format import read_manifest
from keras_interbert.data.region_features.record_format import validate_region_record
from keras_interbert.data.tracing import plain


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

    ds = ds.map(plain(parse), num_parallel_calls=num_parallel_calls)
    if policy == "raise":
        ds = ds.map(plain(asserting(layout_checks, decode)),
                    num_parallel_calls=num_parallel_calls)
        ds = ds.map(plain(asserting(value_checks, lambda x: x)),
                    num_parallel_calls=num_parallel_calls)
    else:
        ds = ds.filter(plain(all_ok(layout_checks)))
        ds = ds.map(plain(decode), num_parallel_calls=num_parallel_calls)
        ds = ds.filter(plain(all_ok(value_checks)))
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


def _listed_image_ids(manifest):
    """`{shard name: image ids}` for the shards whose manifest entry lists
    their ids (written by `RegionFeatureWriter` since the ids were added);
    an entry whose list does not match its `num_examples` is left out."""
    found = {}
    for entry in ((manifest or {}).get("splits") or {}).values():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        for shard in shards if isinstance(shards, list) else ():
            ids = shard.get("image_ids") if isinstance(shard, dict) else None
            if (isinstance(ids, list) and isinstance(shard.get("path"), str)
                    and len(ids) == shard.get("num_examples")
                    and all(isinstance(i, str) for i in ids)):
                found[shard["path"]] = ids
    return found


def _scan_image_ids(paths):
    spec = {"image_id": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(paths).map(
        plain(lambda s: tf.io.parse_single_example(s, spec)["image_id"]))
    return [v.decode("utf-8") for v in ds.as_numpy_iterator()]


def region_image_ids(file_pattern_or_paths, split=None):
    """The image ids stored in canonical files, as a list of strings.

    Taken from the manifest's shard entries where they list them (no shard
    is opened); the shards of older folders, or files without a manifest,
    are read record by record.
    """
    paths, manifests = _resolve_files(file_pattern_or_paths, split)
    listed = {folder: _listed_image_ids(m) for folder, m in manifests.items()}
    ids, unlisted = [], []
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        known = listed[folder].get(name)
        if known is None:
            unlisted.append(path)
            continue
        if unlisted:  # consecutive unlisted shards are read in one pass
            ids.extend(_scan_image_ids(unlisted))
            unlisted = []
        ids.extend(known)
    if unlisted:
        ids.extend(_scan_image_ids(unlisted))
    return ids
