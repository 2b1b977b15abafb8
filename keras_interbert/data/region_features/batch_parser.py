"""`parse_region_batch`: serialized records parsed and checked a batch at once."""
import tensorflow as tf


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
