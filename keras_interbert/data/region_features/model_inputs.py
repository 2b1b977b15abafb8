"""A parsed record to the backbone's region inputs, one example at a time.

The layout is `InterBERTRegionPacker`'s (`pack_regions`).
"""
import tensorflow as tf

from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.errors import check_policy
from keras_interbert.preprocessing.region_packer import pack_regions
from keras_interbert.preprocessing.region_packer import slot_values


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
