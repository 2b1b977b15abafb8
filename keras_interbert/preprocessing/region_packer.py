"""The backbone's region slots from detector output, batched (TF ops).

One layout for every path into the model (docs/architecture.md §1.2):
slot 0 is the global image slot, then the image's first `max_regions`
regions (detectors and feature files list them most confident first), then
zero padding.

| slot | feature | location | mask |
|---|---|---|---|
| 0 | mean of the image's real region features | `[0, 0, 1, 1, 1]` | 1 |
| 1 .. K | region `k - 1` | `[x1/W, y1/H, x2/W, y2/H, area/(W*H)]` | 1 |
| K+1 .. R | zeros | zeros | 0 |

with `K = min(num_regions, max_regions)`. The global mean is taken over all
`num_regions` real regions, before truncation (the finetuning rule of the
original code), or over the kept ones with `global_feature="kept_regions"`.

Every path into the model lays regions out with this module: the layer
(the task preprocessors, the SavedModel signatures), `pack_regions` (the
pretraining pipeline through `InterBERTPretrainerPreprocessor`, which
zeroes masked regions with `region_masked`; `to_backbone_regions`, one
image at a time) and `mean_of_first` / `region_slots` (`RegionTable`, which
keeps each image's regions packed and lays them out when gathering).
"""
import keras
import tensorflow as tf

# Location of the global image slot: the whole image, area 1.
GLOBAL_LOCATION = (0.0, 0.0, 1.0, 1.0, 1.0)


def region_locations(boxes, image_h, image_w):
    """5-d locations `[x1/W, y1/H, x2/W, y2/H, (x2-x1)(y2-y1)/(W*H)]`.

    Args:
        boxes: `[..., 4]` pixel boxes `x1, y1, x2, y2`.
        image_h, image_w: image size (scalars or broadcastable).
    """
    boxes = tf.cast(boxes, tf.float32)
    h = tf.cast(image_h, tf.float32)
    w = tf.cast(image_w, tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
    area = (x2 - x1) * (y2 - y1) / (w * h)
    return tf.stack([x1 / w, y1 / h, x2 / w, y2 / h, area], axis=-1)


def empty_image_slots(batch, num_slots, feature_dim):
    """`num_slots` all-zero image slots of mask 0 per example: the image
    side of a text-only input (the text path alone is then BERT)."""
    return {
        "region_features": tf.zeros([batch, num_slots, feature_dim],
                                    tf.float32),
        "region_locations": tf.zeros([batch, num_slots, 5], tf.float32),
        "region_mask": tf.zeros([batch, num_slots], tf.int32),
    }


def mean_of_first(features, count):
    """The mean of rows `0 .. count - 1` of `features` `[..., N, D]`.

    Rows at or past `count` are ignored (they may hold anything, even NaN);
    a count of 0 gives zeros. `count` (int `[...]`) is clipped to N.
    """
    features = tf.convert_to_tensor(features)
    rows = tf.shape(features)[-2]
    count = tf.minimum(tf.cast(count, tf.int32), rows)
    averaged = tf.sequence_mask(count, rows)
    total = tf.reduce_sum(
        tf.where(averaged[..., tf.newaxis], features,
                 tf.zeros_like(features)), axis=-2)
    return total / tf.maximum(tf.cast(count, features.dtype),
                              1.0)[..., tf.newaxis]


def slot_values(first, values, kept, max_regions):
    """`[first, values[0], .., values[kept - 1], 0, ..]`: `max_regions + 1` slots.

    Args:
        first: `[..., W]`, slot 0.
        values: `[..., N, W]` per-region values (any N; rows at or past
            `kept` are replaced by zeros).
        kept: int `[...]`, the regions kept (at most `max_regions`).
        max_regions: R.

    Returns:
        `[..., R + 1, W]`, in the dtype of `values`.
    """
    values = tf.convert_to_tensor(values)
    r = int(max_regions)
    values = values[..., :r, :]
    rank = values.shape.rank
    values = tf.pad(values, [[0, 0]] * (rank - 2)
                    + [[0, r - tf.shape(values)[-2]], [0, 0]])
    keep = tf.sequence_mask(kept, r)
    body = tf.where(keep[..., tf.newaxis], values, tf.zeros_like(values))
    first = tf.cast(first, values.dtype)[..., tf.newaxis, :]
    return tf.concat([first, body], axis=-2)


def region_slots(global_feature, features, locations, kept, max_regions):
    """The backbone's region inputs from a global feature and per-region values.

    Slot 0 holds `global_feature` at `GLOBAL_LOCATION`, slots `1 .. kept`
    the first `kept` regions, the rest zeros with mask 0 (the table in the
    module docstring). Any leading shape `[...]`.

    Args:
        global_feature: float `[..., D]`.
        features: float `[..., N, D]`.
        locations: float `[..., N, 5]` (see `region_locations`).
        kept: int `[...]`, at most `min(N, max_regions)`.
        max_regions: R.

    Returns:
        `region_features` float32 `[..., R+1, D]`, `region_locations` float32
        `[..., R+1, 5]`, `region_mask` int32 `[..., R+1]`.
    """
    r = int(max_regions)
    kept = tf.convert_to_tensor(kept)
    first_location = tf.broadcast_to(
        tf.constant(GLOBAL_LOCATION, tf.float32),
        tf.concat([tf.shape(kept), [5]], axis=0))
    return {
        "region_features": slot_values(global_feature, features, kept, r),
        "region_locations": slot_values(first_location, locations, kept, r),
        "region_mask": tf.concat(
            [tf.ones_like(kept, tf.int32)[..., tf.newaxis],
             tf.sequence_mask(kept, r, dtype=tf.int32)], axis=-1),
    }


def pack_regions(region_features, region_boxes, image_size, num_regions,
                 max_regions, global_feature="all_regions",
                 region_masked=None, global_after_masking=True):
    """`InterBERTRegionPacker`'s layout as a function (see the layer)."""
    features = tf.cast(region_features, tf.float32)
    boxes = tf.cast(region_boxes, tf.float32)
    size = tf.cast(image_size, tf.float32)
    given = tf.shape(features)[1]
    num = tf.clip_by_value(tf.cast(num_regions, tf.int32), 0, given)
    real = tf.sequence_mask(num, given)[..., tf.newaxis]
    # `where`, not a product: padding rows may hold NaN.
    features = tf.where(real, features, 0.0)
    boxes = tf.where(real, boxes, 0.0)
    kept = tf.minimum(num, int(max_regions))
    slot_features = features
    if region_masked is not None:
        # Masked region modelling zeroes the chosen regions' features.
        slot_features = features * (
            1.0 - tf.cast(region_masked, tf.float32))[..., tf.newaxis]
    averaged = slot_features if global_after_masking else features
    global_value = mean_of_first(
        averaged, num if global_feature == "all_regions" else kept)
    locations = region_locations(boxes, size[:, 0:1], size[:, 1:2])
    return region_slots(global_value, slot_features, locations, kept,
                        max_regions)


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTRegionPacker(keras.layers.Layer):
    """Lays out a batch of detector outputs as the backbone's region inputs.

    Runs as TensorFlow ops (inside `tf.data.Dataset.map`, a SavedModel
    signature, or eagerly) under any Keras backend; see the module
    docstring for the layout.

    Args:
        max_regions: int, R: the region slots after the global one (101
            gives the 102 slots of the original retrieval finetuning, 36
            the pretraining's 37).
        global_feature: `"all_regions"` (mean over the `num_regions` real
            regions) or `"kept_regions"` (mean over the first
            `max_regions` of them).
        global_after_masking: with `region_masked`, average the features
            after masking, a zeroed region counting as zeros (the original
            pretraining code), rather than before.

    Call arguments:
        region_features: float `[B, N, D]`; rows at or after
            `num_regions` are padding and may hold anything (even NaN).
        region_boxes: float `[B, N, 4]` pixel `x1, y1, x2, y2`.
        image_size: int `[B, 2]` `(height, width)`.
        num_regions: int `[B]`, how many of the `N` rows are real.
        region_masked: optional float or bool `[B, N]`, 1 where masked
            region modelling zeroes a region's features (see
            `InterBERTPretrainerPreprocessor`).

    Returns:
        A dict: `region_features` float32 `[B, R+1, D]`, `region_locations`
        float32 `[B, R+1, 5]`, `region_mask` int32 `[B, R+1]`.

    Examples:
    ```python
    packer = InterBERTRegionPacker(max_regions=2)
    slots = packer(features, boxes, image_size=[[480, 640]], num_regions=[3])
    slots["region_mask"]  # [[1, 1, 1]]: the global slot, then 2 of 3 regions
    ```
    """

    def __init__(self, max_regions=101, global_feature="all_regions",
                 global_after_masking=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if isinstance(max_regions, bool) or int(max_regions) != max_regions \
                or int(max_regions) < 1:
            raise ValueError("`max_regions` must be a positive int; received "
                             f"{max_regions!r}.")
        if global_feature not in ("all_regions", "kept_regions"):
            raise ValueError("`global_feature` must be 'all_regions' or "
                             f"'kept_regions'; received {global_feature!r}.")
        self.max_regions = int(max_regions)
        self.global_feature = global_feature
        self.global_after_masking = bool(global_after_masking)
        self.built = True

    @property
    def num_slots(self):
        return self.max_regions + 1

    def call(self, region_features, region_boxes, image_size, num_regions,
             region_masked=None):
        slots = pack_regions(
            region_features, region_boxes, image_size, num_regions,
            self.max_regions, global_feature=self.global_feature,
            region_masked=region_masked,
            global_after_masking=self.global_after_masking)
        n = self.max_regions + 1
        width = tf.convert_to_tensor(region_features).shape[-1]
        return {
            "region_features": tf.ensure_shape(slots["region_features"],
                                               [None, n, width]),
            "region_locations": tf.ensure_shape(slots["region_locations"],
                                                [None, n, 5]),
            "region_mask": tf.ensure_shape(slots["region_mask"], [None, n]),
        }

    def get_config(self):
        config = super().get_config()
        config.update({"max_regions": self.max_regions,
                       "global_feature": self.global_feature,
                       "global_after_masking": self.global_after_masking})
        return config
