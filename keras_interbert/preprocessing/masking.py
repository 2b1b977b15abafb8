"""Masking rules of InterBERT pretraining, as TensorFlow graph ops.

Every function runs inside `tf.data.Dataset.map` (no `tf.py_function`) and
draws its randomness from `tf.random.stateless_*` ops keyed by a `seed`
tensor of shape `[2]` (int32 or int64): the same seed always gives the same
masks, so a pipeline is reproducible (derive one seed per example, e.g. with
`tf.data.Dataset.random(seed).batch(2)` zipped in, or
`tf.random.experimental.stateless_split`).

Every function accepts one example (text `[T]`, regions `[N]`) or a batch
(`[B, T]`, `[B, N]`); in a batch every row draws independently. A batch may
also take one seed per row (`seed` of shape `[B, 2]`): row b's draws then
depend only on `seed[b]`, so an example gets the same masks whichever batch
it lands in (the pretraining pipeline keys them on the example's index).
Per-row draws come from a counter-based hash (SplitMix64), not from
`tf.random`, since TensorFlow's stateless ops take one seed per call.

Text conventions: the input is a packed, padded sequence `[CLS] w1..wn [SEP]
0...` (see `InterBERTTextPacker`). The caption word pieces are the positions
where `text_mask` is 1 and the id is neither `[CLS]` nor `[SEP]`; caption
coordinate k is the k-th such position (token index k + 1 in the usual
layout). The outputs are `(masked_token_ids, labels, weights)`: int32 ids with
the replacements applied, int32 labels holding the original id at every
prediction target and 0 elsewhere, and float32 weights, 1.0 at targets and
0.0 elsewhere.

Region conventions: the regions are the real detector regions of an image,
in slot order, before the global image slot is prepended; `region_mask` is 1
for a real region and 0 for a padded slot, and padded slots are never masked.
"""
import tensorflow as tf


_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment
_SPLIT = 0xD1B54A32D192ED03  # a second odd constant, for deriving sub-keys


def _u64(value):
    return tf.constant(value, tf.uint64)


def _mix64(x):
    """SplitMix64's finaliser: a bijection of uint64 that scrambles all bits."""
    x = (x ^ tf.bitwise.right_shift(x, _u64(30))) * _u64(0xBF58476D1CE4E5B9)
    x = (x ^ tf.bitwise.right_shift(x, _u64(27))) * _u64(0x94D049BB133111EB)
    return x ^ tf.bitwise.right_shift(x, _u64(31))


def _check_seed(seed):
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank not in (1, 2) or (
        seed.shape[-1] is not None and seed.shape[-1] != 2
    ):
        raise ValueError(
            f"`seed` must be an int tensor of shape [2] (one seed) or [B, 2] "
            f"(one per row). Received shape {seed.shape}."
        )
    if not seed.dtype.is_integer:
        raise ValueError(f"`seed` must be integer. Received {seed.dtype}.")
    return tf.cast(seed, tf.int64)


def row_keys(seeds):
    """One uint64 key per row from per-row seeds `[B, 2]` (any int dtype)."""
    seeds = tf.bitcast(tf.cast(seeds, tf.int64), tf.uint64)
    return _mix64(_mix64(seeds[:, 0] + _u64(_GOLDEN)) ^ seeds[:, 1])


def example_seeds(seed, example_index, salt):
    """Per-example seeds `[B, 2]` int64: `(seed * 1000003 + salt, index)`.

    The pretraining data keys every draw on the example's index (its number
    in the stream) and a salt naming the draw, so an example gets the same
    draws whichever batch it falls in; pass the result as `seed` to the
    masking functions (one seed per row).

    Args:
        seed: int, the run's seed.
        example_index: int `[B]`, the examples' numbers.
        salt: int, which draw (the pipeline's: 1 negative or not, 3 text
            masking, 4 region masking, 5/11/13 caption choices).
    """
    example_index = tf.cast(example_index, tf.int64)
    return tf.stack([tf.fill(tf.shape(example_index),
                             tf.constant(int(seed) * 1000003 + int(salt),
                                         tf.int64)),
                     example_index], axis=1)


def _seeds(seed, count):
    """`count` independent sub-seeds: `[2]` tensors, or `[B]` uint64 row keys.

    `seed` is a public seed (`[2]` or `[B, 2]`) or row keys from an earlier
    split.
    """
    if not (isinstance(seed, tf.Tensor) and seed.dtype == tf.uint64):
        seed = _check_seed(seed)
        if seed.shape.rank == 1:
            return tf.unstack(
                tf.random.experimental.stateless_split(seed, count))
        seed = row_keys(seed)
    return [_mix64(seed + _u64((i + 1) * _SPLIT % 2**64))
            for i in range(count)]


def row_uniform(shape, keys):
    """float64 values in [0, 1); row b of `shape` depends only on `keys[b]`.

    Element j of a row is SplitMix64's output j + 1 from state `keys[b]`
    (top 53 bits), so rows are independent streams.

    Args:
        shape: `[B, ...]`, an int list or 1-d tensor.
        keys: uint64 `[B]`, e.g. from `row_keys`.
    """
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int64)
    rank = shape.shape[0]
    counter = tf.reshape(tf.range(1, tf.reduce_prod(shape[1:]) + 1,
                                  dtype=tf.int64), shape[1:])
    keys = tf.reshape(keys, tf.concat([[-1], tf.ones([rank - 1], tf.int64)], 0))
    bits = _mix64(keys + tf.bitcast(counter, tf.uint64) * _u64(_GOLDEN))
    return (tf.cast(tf.bitwise.right_shift(bits, _u64(11)), tf.float64)
            * (1.0 / 2**53))


def _uniform(shape, seed):
    """float64 in [0, 1): one stateless draw (seed `[2]`) or per row (keys)."""
    if seed.dtype == tf.uint64:
        return row_uniform(shape, seed)
    return tf.random.stateless_uniform(shape, seed, dtype=tf.float64)


def _uniform_int(shape, seed, maxval):
    """int32 in [0, maxval)."""
    if seed.dtype == tf.uint64:
        return tf.cast(tf.floor(row_uniform(shape, seed) * maxval), tf.int32)
    return tf.random.stateless_uniform(shape, seed, minval=0, maxval=maxval,
                                       dtype=tf.int32)


def _check_rows(seed, batch, unbatched):
    """Per-row seeds need a batch of as many rows."""
    seed = _check_seed(seed)
    if seed.shape.rank != 2:
        return
    if unbatched:
        raise ValueError(
            "A `seed` of shape [B, 2] (one per row) needs batched inputs; "
            "received one example.")
    if seed.shape[0] is not None and batch.shape[0] is not None and (
            seed.shape[0] != batch.shape[0]):
        raise ValueError(
            f"`seed` has {seed.shape[0]} rows (one per example) but the batch "
            f"has {batch.shape[0]}.")


def _as_batch(tensor, name, rank, dtype):
    tensor = tf.convert_to_tensor(tensor)
    if tensor.shape.rank not in (rank, rank + 1):
        raise ValueError(
            f"`{name}` must have rank {rank} (one example) or {rank + 1} (a "
            f"batch). Received shape {tensor.shape}."
        )
    unbatched = tensor.shape.rank == rank
    tensor = tf.cast(tensor, dtype)
    return (tensor[tf.newaxis] if unbatched else tensor), unbatched


def _caption_positions(token_ids, text_mask, special_ids):
    is_caption = tf.cast(text_mask, tf.bool)
    for special_id in special_ids:
        if special_id is not None:
            is_caption &= token_ids != special_id
    return is_caption


def _replace_targets(token_ids, targets, seed, vocabulary_size, mask_id,
                     mask_probability, random_probability):
    """BERT's 80/10/10: [MASK], a uniformly random id, or unchanged."""
    choice_seed, random_id_seed = _seeds(seed, 2)
    shape = tf.shape(token_ids)
    u = _uniform(shape, choice_seed)
    random_ids = _uniform_int(shape, random_id_seed, vocabulary_size)
    replacement = tf.where(
        u < mask_probability,
        tf.fill(shape, tf.constant(mask_id, tf.int32)),
        tf.where(u < mask_probability + random_probability, random_ids,
                 token_ids),
    )
    masked = tf.where(targets, replacement, token_ids)
    labels = tf.where(targets, token_ids, tf.zeros_like(token_ids))
    weights = tf.cast(targets, tf.float32)
    return masked, labels, weights


def _check_text(vocabulary_size, mask_probability, random_probability):
    if int(vocabulary_size) < 1:
        raise ValueError(
            f"`vocabulary_size` must be positive. Received {vocabulary_size}."
        )
    if not (0 <= mask_probability and 0 <= random_probability
            and mask_probability + random_probability <= 1):
        raise ValueError(
            "`mask_probability` and `random_probability` must be >= 0 with a "
            f"sum <= 1. Received {mask_probability} and {random_probability}."
        )


def mask_segment_span(
    token_ids,
    text_mask,
    seed,
    vocabulary_size,
    mask_id,
    cls_id=101,
    sep_id=102,
    gate_ratio=0.3,
    mask_probability=0.8,
    random_probability=0.1,
):
    """Masked segment modelling: one random span of the caption (docs/architecture.md §3.2).

    With n caption word pieces: if `floor(gate_ratio * n) == 0` (n <= 3 for
    0.3) nothing is masked. Otherwise a start `s ~ UniformInt[0, n]`
    (inclusive, so `s = n` masks nothing) and a length `l ~ UniformInt[1, n]`
    are drawn, and caption positions `s .. min(s + l - 1, n - 1)` become the
    prediction targets (token index `s + 1 ..` after `[CLS]`). Each target is
    replaced by `[MASK]` with `mask_probability`, by an id drawn uniformly
    from `[0, vocabulary_size)` with `random_probability`, and kept
    otherwise. On average ~35% of a 34-piece caption is a target, and ~3% of
    such captions get no target at all.

    Args:
        token_ids: int `[T]` or `[B, T]`, packed and padded.
        text_mask: int `[T]` or `[B, T]`, 1 on real tokens.
        seed: int tensor `[2]`, or `[B, 2]` (one per row of a batch).
        vocabulary_size: int. Random replacements are drawn from
            `[0, vocabulary_size)`.
        mask_id: int. Id of `[MASK]`.
        cls_id, sep_id: ints (or None). Ids that are never caption pieces.
        gate_ratio: float. The `0.3` in `floor(0.3 * n)`.
        mask_probability, random_probability: floats, 0.8 and 0.1.

    Returns:
        `(masked_token_ids, labels, weights)`: int32, int32, float32, each
        shaped as `token_ids`.

    Examples:
    ```python
    ids = tf.constant([101, 1037, 2158, 12271, 1037, 3586, 1012, 102, 0, 0])
    mask = tf.cast(ids != 0, tf.int32)
    masked, labels, weights = mask_segment_span(
        ids, mask, seed=tf.constant([1, 2]), vocabulary_size=30522,
        mask_id=103)
    ```
    """
    _check_text(vocabulary_size, mask_probability, random_probability)
    token_ids, unbatched = _as_batch(token_ids, "token_ids", 1, tf.int32)
    text_mask, _ = _as_batch(text_mask, "text_mask", 1, tf.int32)
    _check_rows(seed, token_ids, unbatched)
    start_seed, length_seed, replace_seed = _seeds(seed, 3)
    is_caption = _caption_positions(token_ids, text_mask, (cls_id, sep_id))
    # k-th caption piece of the row -> k (0-based); -1 elsewhere.
    caption_index = tf.cumsum(tf.cast(is_caption, tf.int32), axis=1) - 1
    n = tf.reduce_sum(tf.cast(is_caption, tf.int32), axis=1)
    batch = tf.shape(token_ids)[:1]
    n_float = tf.cast(n, tf.float64)
    # floor(u * m) with u ~ U[0, 1) in float64 is UniformInt[0, m - 1].
    start = tf.cast(tf.floor(_uniform(batch, start_seed) * (n_float + 1)),
                    tf.int32)
    length = 1 + tf.cast(tf.floor(_uniform(batch, length_seed) * n_float),
                         tf.int32)
    gate = tf.floor(gate_ratio * n_float) > 0
    start = tf.minimum(start, n)[:, tf.newaxis]
    end = (start + length[:, tf.newaxis])
    targets = (
        is_caption
        & gate[:, tf.newaxis]
        & (caption_index >= start)
        & (caption_index < end)
    )
    outputs = _replace_targets(
        token_ids, targets, replace_seed, vocabulary_size, mask_id,
        mask_probability, random_probability,
    )
    if unbatched:
        outputs = tuple(x[0] for x in outputs)
    return outputs


def mask_tokens_bert(
    token_ids,
    text_mask,
    seed,
    vocabulary_size,
    mask_id,
    cls_id=101,
    sep_id=102,
    probability=0.15,
    mask_probability=0.8,
    random_probability=0.1,
):
    """BERT token masking, the fallback without `--span_mask` (docs/architecture.md §3.2).

    Each caption word piece independently becomes a prediction target with
    `probability`, then is replaced 80/10/10 as in `mask_segment_span`.
    Arguments and outputs are those of `mask_segment_span`.

    Examples:
    ```python
    ids = tf.constant([[101, 1037, 2158, 102, 0]])
    masked, labels, weights = mask_tokens_bert(
        ids, tf.cast(ids != 0, tf.int32), tf.constant([0, 7]), 30522, 103)
    ```
    """
    _check_text(vocabulary_size, mask_probability, random_probability)
    if not 0 <= probability <= 1:
        raise ValueError(
            f"`probability` must be in [0, 1]. Received {probability}.")
    token_ids, unbatched = _as_batch(token_ids, "token_ids", 1, tf.int32)
    text_mask, _ = _as_batch(text_mask, "text_mask", 1, tf.int32)
    _check_rows(seed, token_ids, unbatched)
    target_seed, replace_seed = _seeds(seed, 2)
    is_caption = _caption_positions(token_ids, text_mask, (cls_id, sep_id))
    u = _uniform(tf.shape(token_ids), target_seed)
    targets = is_caption & (u < probability)
    outputs = _replace_targets(
        token_ids, targets, replace_seed, vocabulary_size, mask_id,
        mask_probability, random_probability,
    )
    if unbatched:
        outputs = tuple(x[0] for x in outputs)
    return outputs


def region_iou(boxes_normalized, image_h, image_w):
    """Pairwise IoU of boxes with the one-pixel inclusive offset (docs/architecture.md §3.3).

    Boxes are `(x1, y1, x2, y2)` divided by the image width/height; widths
    and heights get `+1/W` and `+1/H` (a pixel box `[x1, x2]` covers
    `x2 - x1 + 1` pixels), so this equals the classic pixel-space IoU with
    `+1`. Computed in float64.

    Args:
        boxes_normalized: float `[N, 4]` or `[B, N, 4]`.
        image_h, image_w: image size in pixels, scalars or `[B]`.

    Returns:
        float64 `[N, N]` or `[B, N, N]`.
    """
    boxes, unbatched = _as_batch(boxes_normalized, "boxes_normalized", 2,
                                 tf.float64)
    if boxes.shape[-1] is not None and boxes.shape[-1] != 4:
        raise ValueError(
            "`boxes_normalized` must end in 4 coordinates (x1, y1, x2, y2). "
            f"Received shape {boxes.shape}."
        )
    pixel_w = 1.0 / tf.reshape(tf.cast(image_w, tf.float64), [-1, 1, 1])
    pixel_h = 1.0 / tf.reshape(tf.cast(image_h, tf.float64), [-1, 1, 1])
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    area = (x2 - x1 + pixel_w[:, 0]) * (y2 - y1 + pixel_h[:, 0])  # [B, N]
    inter_w = (tf.minimum(x2[:, :, None], x2[:, None, :])
               - tf.maximum(x1[:, :, None], x1[:, None, :]) + pixel_w)
    inter_h = (tf.minimum(y2[:, :, None], y2[:, None, :])
               - tf.maximum(y1[:, :, None], y1[:, None, :]) + pixel_h)
    inter = tf.maximum(inter_w, 0.0) * tf.maximum(inter_h, 0.0)
    union = area[:, :, None] + area[:, None, :] - inter
    iou = tf.math.divide_no_nan(inter, union)
    return iou[0] if unbatched else iou


def expand_region_groups(boxes_normalized, region_mask, seed_regions,
                         image_h, image_w, iou_threshold=0.4):
    """The deterministic half of group masking: seeds -> masked regions.

    Every real region j with `IoU(i, j) >= iou_threshold` for some real seed
    region i (`seed_regions[i] == 1`) is masked; a seed region always masks
    itself. Padded slots neither seed nor get masked.

    Returns:
        float32 `[N]` or `[B, N]`, 1.0 where a real region is masked.
    """
    region_mask, unbatched = _as_batch(region_mask, "region_mask", 1, tf.bool)
    seed_regions, _ = _as_batch(seed_regions, "seed_regions", 1, tf.bool)
    iou = region_iou(boxes_normalized, image_h, image_w)
    if unbatched:
        iou = iou[tf.newaxis]
    num = tf.shape(iou)[-1]
    overlaps = (iou >= iou_threshold) | tf.eye(num, dtype=tf.bool)[None]
    seeds = seed_regions & region_mask
    # masked[j] = any_i seeds[i] & overlaps[i, j]
    hit = tf.reduce_any(seeds[:, :, None] & overlaps, axis=1)
    masked = tf.cast(hit & region_mask, tf.float32)
    return masked[0] if unbatched else masked


def mask_region_groups(boxes_normalized, region_mask, seed, image_h, image_w,
                       probability=0.1, iou_threshold=0.4):
    """Masked region modelling by overlapping groups (docs/architecture.md §3.3).

    Each real region is drawn as a seed with `probability`; every real region
    whose IoU with a seed is `>= iou_threshold` (see `region_iou`; the seed
    itself included) has its features zeroed and becomes an MRM target.
    Location vectors are untouched and there is no 80/10/10 scheme. Padded
    slots are never seeds and never masked.

    Args:
        boxes_normalized: float `[N, 4]` or `[B, N, 4]`, `(x1/W, y1/H, x2/W,
            y2/H)` of the real regions (no global slot).
        region_mask: int/bool `[N]` or `[B, N]`, 1 for a real region.
        seed: int tensor `[2]`, or `[B, 2]` (one per row of a batch).
        image_h, image_w: image size in pixels, scalars or `[B]`.
        probability: float. Chance that a real region seeds a group.
        iou_threshold: float. Grouping threshold (inclusive).

    Returns:
        `region_masked`: float32 `[N]` or `[B, N]`, 1.0 for a real region
        whose features are zeroed (= an MRM target), 0.0 elsewhere (always
        0.0 on padded slots). Apply it with `apply_region_masking`.

    Examples:
    ```python
    boxes = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.45],
                         [0.6, 0.6, 1.0, 1.0]])
    masked = mask_region_groups(boxes, tf.constant([1, 1, 1]),
                                tf.constant([3, 4]), image_h=480, image_w=640)
    features = apply_region_masking(tf.ones([3, 2048]), masked)
    ```
    """
    if not 0 <= probability <= 1:
        raise ValueError(
            f"`probability` must be in [0, 1]. Received {probability}.")
    mask, unbatched = _as_batch(region_mask, "region_mask", 1, tf.bool)
    _check_rows(seed, mask, unbatched)
    (choice_seed,) = _seeds(seed, 1)
    u = _uniform(tf.shape(mask), choice_seed)
    seed_regions = (u < probability) & mask
    if tf.convert_to_tensor(region_mask).shape.rank == 1:
        seed_regions = seed_regions[0]
    return expand_region_groups(boxes_normalized, region_mask, seed_regions,
                                image_h, image_w, iou_threshold)


def mask_regions_random(region_mask, seed, probability=0.15,
                        zero_probability=0.9):
    """Per-region MRM masking, the fallback without `--span_mask` (§3.3).

    Each real region is a target with `probability`; a target's features are
    zeroed with `zero_probability` and kept otherwise. Padded slots are never
    targets.

    Args:
        region_mask: int/bool `[N]` or `[B, N]`, 1 for a real region.
        seed: int tensor `[2]`, or `[B, 2]` (one per row of a batch).
        probability: float, 0.15.
        zero_probability: float, 0.9.

    Returns:
        `(region_targets, region_masked)`, float32 each shaped as
        `region_mask`: 1.0 for an MRM target, and 1.0 where the features are
        to be zeroed (a subset of the targets).
    """
    for name, value in (("probability", probability),
                        ("zero_probability", zero_probability)):
        if not 0 <= value <= 1:
            raise ValueError(f"`{name}` must be in [0, 1]. Received {value}.")
    mask, unbatched = _as_batch(region_mask, "region_mask", 1, tf.bool)
    _check_rows(seed, mask, unbatched)
    target_seed, zero_seed = _seeds(seed, 2)
    shape = tf.shape(mask)
    targets = mask & (_uniform(shape, target_seed) < probability)
    zeroed = targets & (_uniform(shape, zero_seed) < zero_probability)
    outputs = (tf.cast(targets, tf.float32), tf.cast(zeroed, tf.float32))
    if unbatched:
        outputs = tuple(x[0] for x in outputs)
    return outputs


def apply_region_masking(features, region_masked):
    """Zeroes the feature vectors of masked regions.

    Args:
        features: float `[N, D]` or `[B, N, D]`.
        region_masked: `[N]` or `[B, N]`, 1 where the region is masked.

    Returns:
        `features` with masked rows set to 0, same dtype.
    """
    features = tf.convert_to_tensor(features)
    keep = 1 - tf.cast(region_masked, features.dtype)
    return features * keep[..., tf.newaxis]
