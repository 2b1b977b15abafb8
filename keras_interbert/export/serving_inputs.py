"""In-graph checks and layout of what a serving client sends (TF ops only).

A client sends raw values: caption strings, the detector's region features
and pixel boxes, the image size and how many of the given regions are real.
`checked_image_inputs` rejects anything the model cannot score with an
`InvalidArgumentError` naming the input (a `tf.debugging.Assert`, a core
op), before any other op sees the value; `serving_regions` then builds the
backbone's region inputs the way `keras_interbert.data.to_backbone_regions`
does for one example, batched.

Shapes are checked in the graph rather than by the signature because
TensorFlow Serving checks a request's dtypes against the signature but not
its shapes: a signature shape would let a wrong-rank or wrong-width request
through to ops that were specialised for the declared shape.
"""
import tensorflow as tf

from keras_interbert.preprocessing.region_packer import InterBERTRegionPacker


# Bounds on what a client may send (far beyond any detector's output and
# any image's size; beyond them float32 arithmetic overflows).
MAX_FEATURE_MAGNITUDE = 1e6
MAX_BOX_COORDINATE = 1e6


class InputChecks:
    """Collects `Assert` ops and gates tensors on them.

    `gate` returns the tensors through `identity` ops that depend on every
    check so far, so no later op runs on a value that failed a check (and
    fails first with a less clear message).
    """

    def __init__(self):
        self._pending = []

    def require(self, condition, name, message, *data):
        """Fails unless `condition`, with `message` (then `data`) on `name`."""
        self._pending.append(tf.debugging.Assert(
            condition, [f"Invalid serving input `{name}`: {message}", *data],
            summarize=16, name=f"check_{name}"))

    def gate(self, tensors, shapes=None):
        """`tensors` after every pending check, with static `shapes` set.

        The shapes are set statically (`set_shape`), not checked by an op: an
        `EnsureShape` could fail before the checks, with a vaguer message.
        """
        with tf.control_dependencies(self._pending):
            gated = {k: tf.identity(v) for k, v in tensors.items()}
        self._pending = []
        for name, shape in (shapes or {}).items():
            gated[name].set_shape(shape)
        return gated


def _rank_check(checks, tensors, expected):
    for name, (rank, described) in expected.items():
        checks.require(tf.equal(tf.rank(tensors[name]), rank), name,
                       f"expected {described} (rank {rank}); received shape",
                       tf.shape(tensors[name]))


def checked_text(checks, tensors, names):
    """Checks that each of `names` is a `[batch]` string tensor."""
    _rank_check(checks, tensors,
                {n: (1, "a [batch] string tensor") for n in names})
    return checks.gate({n: tensors[n] for n in names},
                       {n: [None] for n in names})


def checked_image_inputs(checks, inputs, feature_dim, batch_size):
    """Checks the four image inputs; returns them with static shapes.

    Args:
        checks: an `InputChecks`.
        inputs: dict with `region_features` float32 `[B, N, D]`,
            `region_boxes` float32 `[B, N, 4]` pixel `x1, y1, x2, y2`,
            `image_size` int32 `[B, 2]` `(height, width)` and `num_regions`
            int32 `[B]`.
        feature_dim: D, the model's `image_feature_dim`.
        batch_size: the batch size of the text inputs (a scalar tensor).
    """
    names = ("region_features", "region_boxes", "image_size", "num_regions")
    x = {n: inputs[n] for n in names}
    _rank_check(checks, x, {
        "region_features": (3, f"float32 [batch, regions, {feature_dim}]"),
        "region_boxes": (3, "float32 [batch, regions, 4]"),
        "image_size": (2, "int32 [batch, 2] (height, width)"),
        "num_regions": (1, "int32 [batch]"),
    })
    x = checks.gate(x, {"region_features": [None, None, None],
                        "region_boxes": [None, None, None],
                        "image_size": [None, None], "num_regions": [None]})
    features_shape = tf.shape(x["region_features"])
    boxes_shape = tf.shape(x["region_boxes"])
    for name in names:
        checks.require(tf.equal(tf.shape(x[name])[0], batch_size), name,
                       "expected the batch size of the text,", batch_size,
                       "; received shape", tf.shape(x[name]))
    checks.require(tf.equal(features_shape[2], feature_dim),
                   "region_features",
                   f"expected feature width {feature_dim} (the model's "
                   "image_feature_dim); received shape", features_shape)
    checks.require(tf.reduce_all(tf.equal(
        boxes_shape, tf.stack([features_shape[0], features_shape[1], 4]))),
        "region_boxes", "expected [batch, regions, 4] with the batch and "
        "region count of region_features, whose shape is", features_shape,
        "; received shape", boxes_shape)
    checks.require(tf.equal(tf.shape(x["image_size"])[1], 2), "image_size",
                   "expected [batch, 2] (height, width); received shape",
                   tf.shape(x["image_size"]))
    x = checks.gate(x, {"region_features": [None, None, feature_dim],
                        "region_boxes": [None, None, 4],
                        "image_size": [None, 2]})

    num = x["num_regions"]
    given = features_shape[1]
    checks.require(tf.reduce_all((num >= 0) & (num <= given)), "num_regions",
                   "expected values in [0, N], N the number of region rows "
                   "given, which is", given, "; received", num)
    checks.require(tf.reduce_all(x["image_size"] > 0), "image_size",
                   "expected positive (height, width); received",
                   x["image_size"])
    # Only the first num_regions rows are real; the rest is padding and may
    # hold anything.
    real = tf.sequence_mask(tf.clip_by_value(num, 0, given), given)[..., None]
    boxes = x["region_boxes"]
    finite = tf.math.is_finite(boxes)
    # A non-finite box fails the first check only, so each bad box gets
    # one message.
    skip = ~real | ~finite
    x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
    where = "in the first num_regions rows (num_regions:"
    checks.require(tf.reduce_all(finite | ~real), "region_boxes",
                   f"expected finite values {where}", num,
                   "); found NaN or inf")
    checks.require(tf.reduce_all((boxes >= 0) | skip), "region_boxes",
                   f"expected non-negative pixel coordinates {where}", num,
                   "); found a negative one")
    ordered = (x2 >= x1) & (y2 >= y1)
    checks.require(tf.reduce_all(ordered | tf.reduce_any(skip, axis=-1)),
                   "region_boxes", f"expected x2 >= x1 and y2 >= y1 {where}",
                   num, "); found a box with x2 < x1 or y2 < y1")
    checks.require(
        tf.reduce_all(tf.math.is_finite(x["region_features"]) | ~real),
        "region_features", f"expected finite values {where}", num,
        "); found NaN or inf")
    # Finite but huge values overflow in the global mean and the locations
    # (3e38 + 3e38 is inf, inf - inf NaN): refused rather than answered NaN.
    checks.require(
        tf.reduce_all((tf.abs(x["region_features"]) <= MAX_FEATURE_MAGNITUDE)
                      | ~real | ~tf.math.is_finite(x["region_features"])),
        "region_features",
        f"expected magnitudes of at most {MAX_FEATURE_MAGNITUDE:g} {where}",
        num, "); found a larger one")
    checks.require(tf.reduce_all((boxes <= MAX_BOX_COORDINATE) | skip),
                   "region_boxes", f"expected pixel coordinates of at most "
                   f"{MAX_BOX_COORDINATE:g} {where}", num,
                   "); found a larger one")
    return checks.gate(x)


def serving_regions(inputs, max_regions):
    """The backbone's region inputs from checked serving inputs (batched).

    The layout of every path into the model, `InterBERTRegionPacker`
    (keras_interbert/preprocessing/region_packer.py): slot 0 the global
    image slot (mean of the `num_regions` real regions' features, location
    `[0, 0, 1, 1, 1]`, mask 1), then the first `max_regions` real regions,
    then zero padding with mask 0.

    Returns:
        `region_features` `[B, max_regions + 1, D]`, `region_locations`
        `[B, max_regions + 1, 5]` and `region_mask` `[B, max_regions + 1]`
        int32.
    """
    packer = InterBERTRegionPacker(max_regions)
    return packer(inputs["region_features"], inputs["region_boxes"],
                  inputs["image_size"], inputs["num_regions"])
