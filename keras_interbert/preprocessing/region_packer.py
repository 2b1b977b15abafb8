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

    Call arguments:
        region_features: float `[B, N, D]`; rows at or after
            `num_regions` are padding and may hold anything (even NaN).
        region_boxes: float `[B, N, 4]` pixel `x1, y1, x2, y2`.
        image_size: int `[B, 2]` `(height, width)`.
        num_regions: int `[B]`, how many of the `N` rows are real.

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
                 **kwargs):
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
        self.built = True

    @property
    def num_slots(self):
        return self.max_regions + 1

    def call(self, region_features, region_boxes, image_size, num_regions):
        features = tf.cast(region_features, tf.float32)
        boxes = tf.cast(region_boxes, tf.float32)
        num = tf.cast(num_regions, tf.int32)
        size = tf.cast(image_size, tf.float32)
        given = tf.shape(features)[1]
        r = self.max_regions
        real = tf.sequence_mask(tf.clip_by_value(num, 0, given), given)
        # `where`, not a product: padding rows may hold NaN.
        features = tf.where(real[..., None], features, 0.0)
        boxes = tf.where(real[..., None], boxes, 0.0)
        kept_count = tf.minimum(num, r)
        averaged = real if self.global_feature == "all_regions" else (
            tf.sequence_mask(tf.minimum(kept_count, given), given))
        count = tf.reduce_sum(tf.cast(averaged, tf.float32), axis=1)
        global_feature = tf.reduce_sum(
            tf.where(averaged[..., None], features, 0.0), axis=1) / (
                tf.maximum(count, 1.0)[:, None])
        locations = region_locations(boxes, size[:, 0:1], size[:, 1:2])
        kept = tf.sequence_mask(kept_count, r)

        def to_slots(values):
            values = values[:, :r]
            values = tf.pad(values, [[0, 0], [0, r - tf.shape(values)[1]],
                                     [0, 0]])
            return tf.where(kept[..., None], values, 0.0)

        batch = tf.shape(features)[0]
        first_location = tf.tile(tf.constant([GLOBAL_LOCATION]), [batch, 1])
        slots = r + 1
        return {
            "region_features": tf.ensure_shape(
                tf.concat([global_feature[:, None], to_slots(features)], 1),
                [None, slots, features.shape[-1]]),
            "region_locations": tf.ensure_shape(
                tf.concat([first_location[:, None], to_slots(locations)], 1),
                [None, slots, 5]),
            "region_mask": tf.ensure_shape(
                tf.concat([tf.ones([batch, 1], tf.int32),
                           tf.cast(kept, tf.int32)], 1), [None, slots]),
        }

    def get_config(self):
        config = super().get_config()
        config.update({"max_regions": self.max_regions,
                       "global_feature": self.global_feature})
        return config
