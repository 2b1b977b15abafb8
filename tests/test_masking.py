"""Masking rules of the data pipeline (docs/architecture.md §3.2, §3.3).

Expected values are derived in this file from the written rules (exact sums
over the span distribution, hand-computed IoUs), never from the code under
test. Statistical checks use tolerances of about five standard errors.
"""
import numpy as np
import pytest
import tensorflow as tf

from keras_interbert.data import masking

# tf.data, numpy and files only: the same under every KERAS_BACKEND
# (conftest.py).
pytestmark = pytest.mark.once

VOCAB = 30522
MASK, CLS, SEP = 103, 101, 102


def packed_captions(lengths, sequence_length=36, seed=0):
    """`[CLS] w1..wn [SEP] 0...` rows with word ids in [1000, 30000)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), sequence_length), np.int32)
    for row, n in enumerate(lengths):
        ids[row, 0] = CLS
        ids[row, 1:n + 1] = rng.integers(1000, 30000, n)
        ids[row, n + 1] = SEP
    return ids, (ids != 0).astype(np.int32)


def span(ids, mask, seed, **kwargs):
    out = masking.mask_segment_span(
        tf.constant(ids), tf.constant(mask), tf.constant(seed), VOCAB, MASK,
        **kwargs)
    return tuple(x.numpy() for x in out)


def span_length_distribution(n):
    """P(#targets = k) from the rule: s ~ U{0..n}, l ~ U{1..n},
    positions s .. min(s + l - 1, n - 1)."""
    counts = np.zeros(n + 1)
    for s in range(n + 1):
        for length in range(1, n + 1):
            counts[min(length, n - s)] += 1
    return counts / counts.sum()


# ------------------------------------------------------------ text: span

def test_span_targets_are_one_contiguous_run_inside_the_caption():
    lengths = np.random.default_rng(1).integers(0, 35, 3000)
    ids, mask = packed_captions(lengths)
    masked, labels, weights = span(ids, mask, [3, 4])
    assert masked.dtype == np.int32 and labels.dtype == np.int32
    assert weights.dtype == np.float32
    targets = weights == 1.0
    assert set(np.unique(weights)) <= {0.0, 1.0}
    for row, n in enumerate(lengths):
        where = np.flatnonzero(targets[row])
        if where.size:
            # One run, inside positions 1..n (never [CLS], [SEP], padding).
            assert np.all(np.diff(where) == 1)
            assert where[0] >= 1 and where[-1] <= n
    np.testing.assert_array_equal(labels, np.where(targets, ids, 0))
    # Outside targets nothing changes.
    np.testing.assert_array_equal(masked[~targets], ids[~targets])


def test_span_length_distribution_and_masked_fraction_for_34_pieces():
    n, draws = 34, 20000
    ids, mask = packed_captions([n] * draws)
    _, _, weights = span(ids, mask, [11, 12])
    counts = weights.sum(axis=1).astype(int)
    expected = span_length_distribution(n)
    expected_fraction = (expected * np.arange(n + 1)).sum() / n
    # docs/architecture.md §3.2: 34-37% of tokens masked on average, no
    # target in 2.9% of captions at n=34.
    assert 0.33 < expected_fraction < 0.37
    assert abs(expected[0] - 0.029) < 0.001
    assert abs(counts.mean() / n - expected_fraction) < 0.01
    assert abs((counts == 0).mean() - expected[0]) < 0.006
    observed = np.bincount(counts, minlength=n + 1) / draws
    # Total variation distance of the whole length distribution.
    assert 0.5 * np.abs(observed - expected).sum() < 0.03


def test_span_start_is_uniform_over_the_caption():
    # With the rule, a caption position k is a target with probability
    # P(s <= k < s + l) = sum_{s<=k} P(l > k - s) / (n + 1).
    n, draws = 8, 40000
    ids, mask = packed_captions([n] * draws)
    _, _, weights = span(ids, mask, [5, 6])
    observed = weights[:, 1:n + 1].mean(axis=0)
    expected = np.array([
        sum((n - (k - s)) / n for s in range(k + 1)) / (n + 1)
        for k in range(n)
    ])
    np.testing.assert_allclose(observed, expected, atol=0.012)
    assert abs((weights.sum(axis=1) == 0).mean() - 1 / 9) < 0.01  # architecture.md §3.2: 11%


def test_short_captions_are_never_masked():
    lengths = [0, 1, 2, 3] * 500
    ids, mask = packed_captions(lengths)
    masked, labels, weights = span(ids, mask, [1, 1])
    assert weights.sum() == 0 and labels.sum() == 0
    np.testing.assert_array_equal(masked, ids)
    # n = 4 is the first length with floor(0.3 n) > 0.
    ids, mask = packed_captions([4] * 500)
    assert span(ids, mask, [1, 1])[2].sum() > 0
    # The gate is a knob: with 0.5, n = 2 already qualifies.
    ids, mask = packed_captions([2] * 500)
    assert span(ids, mask, [1, 1], gate_ratio=0.5)[2].sum() > 0


def check_replacements(ids, masked, targets, mask_probability=0.8,
                       random_probability=0.1):
    original = ids[targets]
    replaced = masked[targets]
    total = original.size
    as_mask = (replaced == MASK).mean()
    kept = (replaced == original).mean()
    other = 1 - as_mask - kept
    # A random draw hits [MASK] or the original id with chance 1/VOCAB each.
    keep_probability = 1 - mask_probability - random_probability
    sigma = np.sqrt(0.25 / total)
    assert abs(as_mask - mask_probability) < 5 * sigma
    assert abs(kept - keep_probability) < 5 * sigma
    assert abs(other - random_probability) < 5 * sigma
    randoms = replaced[(replaced != MASK) & (replaced != original)]
    assert randoms.min() >= 0 and randoms.max() < VOCAB
    # Uniform over the whole vocabulary, not only over word ids.
    assert abs(randoms.mean() / (VOCAB - 1) - 0.5) < 0.03
    assert (randoms < 1000).mean() > 0.01


def test_span_replacement_is_80_10_10():
    ids, mask = packed_captions([34] * 4000)
    masked, _, weights = span(ids, mask, [7, 8])
    targets = weights == 1
    assert targets.sum() > 40000
    check_replacements(ids, masked, targets)


def test_span_seeds_are_deterministic_and_rows_independent():
    ids, mask = packed_captions([20] * 64)
    first = span(ids, mask, [1, 2])
    again = span(ids, mask, [1, 2])
    other = span(ids, mask, [1, 3])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])
    # Identical rows in one batch draw different spans.
    assert len({tuple(row) for row in first[2]}) > 10


def test_span_one_example_matches_the_batch_convention_and_tf_data():
    ids, mask = packed_captions([12])
    single = masking.mask_segment_span(ids[0], mask[0], tf.constant([4, 2]),
                                       VOCAB, MASK)
    assert single[0].shape == (36,)
    assert set(np.flatnonzero(single[2].numpy())) <= set(range(1, 13))

    def pipeline():
        seeds = tf.data.Dataset.range(50).map(lambda i: tf.stack([i, i + 1]))
        texts = tf.data.Dataset.from_tensors(
            (tf.constant(ids[0]), tf.constant(mask[0]))).repeat(50)
        return tf.data.Dataset.zip((texts, seeds)).map(
            lambda text, seed: masking.mask_segment_span(
                text[0], text[1], seed, VOCAB, MASK))

    run1 = [w.numpy() for _, _, w in pipeline()]
    run2 = [w.numpy() for _, _, w in pipeline()]
    np.testing.assert_array_equal(run1, run2)
    assert len({tuple(w) for w in run1}) > 5


def test_caption_positions_follow_the_mask_not_the_layout():
    # No [CLS]/[SEP] given as special: every real token is caption.
    ids = np.array([[5, 6, 7, 8, 9, 0, 0]] * 2000, np.int32)
    mask = (ids != 0).astype(np.int32)
    _, _, weights = span(ids, mask, [9, 9], cls_id=None, sep_id=None)
    assert weights[:, :5].sum() > 0 and weights[:, 5:].sum() == 0
    assert weights[:, 0].sum() > 0  # position 0 is caption coordinate 0


def test_span_rejects_bad_arguments():
    ids, mask = packed_captions([5])
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        masking.mask_segment_span(ids, mask, tf.constant([1, 2, 3]), VOCAB,
                                  MASK)
    with pytest.raises(ValueError, match="rank 1"):
        masking.mask_segment_span(ids[None], mask[None], tf.constant([1, 2]),
                                  VOCAB, MASK)
    with pytest.raises(ValueError, match="sum <= 1"):
        masking.mask_segment_span(ids, mask, tf.constant([1, 2]), VOCAB,
                                  MASK, mask_probability=0.95)


# ------------------------------------------------------------ text: BERT

def test_bert_token_masking_rate_and_replacements():
    ids, mask = packed_captions([30] * 4000)
    out = masking.mask_tokens_bert(tf.constant(ids), tf.constant(mask),
                                   tf.constant([2, 9]), VOCAB, MASK)
    masked, labels, weights = (x.numpy() for x in out)
    targets = weights == 1
    rate = targets[:, 1:31].mean()
    assert abs(rate - 0.15) < 5 * np.sqrt(0.15 * 0.85 / targets[:, 1:31].size)
    # Never [CLS], [SEP] or padding.
    assert not targets[:, 0].any() and not targets[:, 31:].any()
    np.testing.assert_array_equal(labels, np.where(targets, ids, 0))
    check_replacements(ids, masked, targets)
    # Targets are independent positions, not spans: many rows have gaps.
    gaps = [np.any(np.diff(np.flatnonzero(r)) > 1) for r in targets]
    assert np.mean(gaps) > 0.5
    again = masking.mask_tokens_bert(tf.constant(ids), tf.constant(mask),
                                     tf.constant([2, 9]), VOCAB, MASK)
    np.testing.assert_array_equal(again[0].numpy(), masked)
    other = masking.mask_tokens_bert(tf.constant(ids), tf.constant(mask),
                                     tf.constant([2, 10]), VOCAB, MASK)
    assert not np.array_equal(other[2].numpy(), weights)
    half = masking.mask_tokens_bert(tf.constant(ids), tf.constant(mask),
                                    tf.constant([2, 9]), VOCAB, MASK,
                                    probability=0.5)[2].numpy()
    assert abs(half[:, 1:31].mean() - 0.5) < 0.01


# ------------------------------------------------------------ regions

def hand_iou(a, b):
    """IoU of two pixel boxes (x1, y1, x2, y2), both ends inclusive."""
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(ix, 0) * max(iy, 0)

    def area(box):
        return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)

    return inter / (area(a) + area(b) - inter)


# A 64 x 32 image (powers of two: normalised coordinates are exact).
W, H = 64, 32
PIXEL_BOXES = [
    (0, 0, 9, 9),      # 0: 10x10
    (0, 0, 9, 3),      # 1: 10x4, IoU with 0 exactly 40/100 = 0.4
    (0, 0, 9, 2),      # 2: 10x3, IoU with 0 = 0.3, with 1 = 0.75
    (40, 20, 59, 29),  # 3: far away
    (40, 20, 59, 28),  # 4: IoU with 3 = 0.9
    (20, 0, 29, 9),    # 5: alone
]


def normalised(boxes, w=W, h=H):
    return np.array([[x1 / w, y1 / h, x2 / w, y2 / h]
                     for x1, y1, x2, y2 in boxes], np.float32)


def test_region_iou_matches_hand_computed_pixel_iou():
    iou = masking.region_iou(normalised(PIXEL_BOXES), H, W).numpy()
    for i, a in enumerate(PIXEL_BOXES):
        for j, b in enumerate(PIXEL_BOXES):
            assert iou[i, j] == pytest.approx(hand_iou(a, b), abs=1e-6)
    assert iou[0, 1] == pytest.approx(0.4) and iou[0, 2] == pytest.approx(0.3)
    assert iou[0, 3] == 0.0
    # A different image size scales the boxes; the IoU is the same.
    other = masking.region_iou(normalised(PIXEL_BOXES, 640, 480), 480, 640)
    np.testing.assert_allclose(other.numpy(), iou, atol=1e-6)


def test_groups_pick_exactly_the_overlapping_slots():
    boxes = normalised(PIXEL_BOXES)
    real = np.ones(6, np.int32)
    expected_by_seed = {
        # seed region -> slots with IoU >= 0.4 (0.4 itself included)
        0: {0, 1},
        1: {0, 1, 2},
        2: {1, 2},
        3: {3, 4},
        5: {5},
    }
    for seed_region, expected in expected_by_seed.items():
        # The expected slots, recomputed from the hand IoU as a cross-check.
        assert expected == {j for j, b in enumerate(PIXEL_BOXES)
                            if hand_iou(PIXEL_BOXES[seed_region], b) >= 0.4}
        seeds = np.eye(6, dtype=np.int32)[seed_region]
        masked = masking.expand_region_groups(boxes, real, seeds, H, W)
        assert set(np.flatnonzero(masked.numpy())) == expected
    both = masking.expand_region_groups(boxes, real, [0, 0, 1, 0, 0, 1], H, W)
    assert set(np.flatnonzero(both.numpy())) == {1, 2, 5}
    higher = masking.expand_region_groups(boxes, real, [1, 0, 0, 0, 0, 0],
                                          H, W, iou_threshold=0.41)
    assert set(np.flatnonzero(higher.numpy())) == {0}


def test_padded_slots_never_seed_and_are_never_masked():
    # Slot 6 is padding with the same box as region 5; slot 7 is padding
    # with a zero box.
    boxes = np.concatenate([normalised(PIXEL_BOXES),
                            normalised([PIXEL_BOXES[5]]),
                            np.zeros((1, 4), np.float32)])
    real = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.int32)
    masked = masking.expand_region_groups(boxes, real, np.ones(8), H, W)
    np.testing.assert_array_equal(masked.numpy(), [1, 1, 1, 1, 1, 1, 0, 0])
    masked = masking.expand_region_groups(boxes, real, [0] * 6 + [1, 1], H, W)
    assert masked.numpy().sum() == 0
    for probability in (1.0, 0.0):
        out = masking.mask_region_groups(boxes, real, tf.constant([1, 2]),
                                         H, W, probability=probability)
        np.testing.assert_array_equal(out.numpy(),
                                      [probability] * 6 + [0, 0])


def test_group_masking_frequencies():
    draws = 30000
    boxes = np.concatenate([normalised(PIXEL_BOXES),
                            normalised([PIXEL_BOXES[5]])])
    real = np.array([1, 1, 1, 1, 1, 1, 0], np.int32)
    masked = masking.mask_region_groups(
        np.broadcast_to(boxes, (draws, 7, 4)),
        np.broadcast_to(real, (draws, 7)),
        tf.constant([8, 9]), tf.fill([draws], H), tf.fill([draws], W),
    ).numpy()
    assert masked.dtype == np.float32 and masked.shape == (draws, 7)
    frequency = masked.mean(axis=0)
    # Region k is masked unless no member of its group seeds:
    # 1 - 0.9^|{i : IoU(i, k) >= 0.4}|.
    group_sizes = [2, 3, 2, 2, 2, 1]
    expected = [1 - 0.9 ** g for g in group_sizes] + [0.0]
    sigma = np.sqrt(0.25 / draws)
    np.testing.assert_allclose(frequency, expected, atol=5 * sigma)
    # Regions 3 and 4 form a closed group: masked together or not at all.
    np.testing.assert_array_equal(masked[:, 3], masked[:, 4])
    # Region 5 overlaps only the padded copy of itself: 0.1, not 0.19.
    assert abs(frequency[5] - 0.1) < 5 * sigma
    # The result is always the union of the groups of some seed set.
    iou = np.array([[hand_iou(a, b) for b in PIXEL_BOXES]
                    for a in PIXEL_BOXES]) >= 0.4
    unions = {tuple((iou[list(s)].any(axis=0)).astype(int)) if s else
              (0,) * 6 for s in _subsets(6)}
    patterns = {tuple(row[:6].astype(int)) for row in masked[:2000]}
    assert patterns <= unions


def _subsets(n):
    for bits in range(2 ** n):
        yield [i for i in range(n) if bits >> i & 1]


def test_group_masking_is_deterministic_per_seed():
    boxes = normalised(PIXEL_BOXES)
    batch = np.broadcast_to(boxes, (200, 6, 4))
    real = np.ones((200, 6), np.int32)
    a = masking.mask_region_groups(batch, real, tf.constant([1, 5]), H, W)
    b = masking.mask_region_groups(batch, real, tf.constant([1, 5]), H, W)
    c = masking.mask_region_groups(batch, real, tf.constant([1, 6]), H, W)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())


def test_apply_region_masking_zeroes_exactly_the_masked_rows():
    features = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(
        np.float32) + 3.0
    region_masked = np.array([[1, 0, 0, 1, 0], [0, 0, 0, 0, 1]], np.float32)
    out = masking.apply_region_masking(features, region_masked).numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[region_masked == 1], 0.0)
    np.testing.assert_array_equal(out[region_masked == 0],
                                  features[region_masked == 0])


def test_random_region_masking_15_percent_then_90_percent_zeroed():
    draws = 20000
    real = np.zeros((draws, 10), np.int32)
    real[:, :7] = 1
    targets, zeroed = masking.mask_regions_random(real, tf.constant([3, 3]))
    targets, zeroed = targets.numpy(), zeroed.numpy()
    assert targets.dtype == np.float32 and zeroed.dtype == np.float32
    assert targets[:, 7:].sum() == 0 and zeroed[:, 7:].sum() == 0
    assert np.all(zeroed <= targets)
    total = targets[:, :7].size
    assert abs(targets[:, :7].mean() - 0.15) < 5 * np.sqrt(0.13 / total)
    ratio = zeroed.sum() / targets.sum()
    assert abs(ratio - 0.9) < 5 * np.sqrt(0.09 / targets.sum())
    single = masking.mask_regions_random(real[0], tf.constant([3, 3]))
    assert single[0].shape == (10,)
    again = masking.mask_regions_random(real, tf.constant([3, 3]))
    np.testing.assert_array_equal(again[0].numpy(), targets)
    other = masking.mask_regions_random(real, tf.constant([3, 4]))
    assert not np.array_equal(other[0].numpy(), targets)


def test_region_functions_reject_bad_shapes():
    with pytest.raises(ValueError, match="4 coordinates"):
        masking.region_iou(np.zeros((3, 5), np.float32), H, W)
    with pytest.raises(ValueError, match="rank 1"):
        masking.mask_regions_random(np.ones((2, 3, 4)), tf.constant([1, 2]))
    with pytest.raises(ValueError, match="probability"):
        masking.mask_region_groups(normalised(PIXEL_BOXES), np.ones(6),
                                   tf.constant([1, 2]), H, W, probability=2)


# ------------------------------------------------------- per-row seeds --

def row_seeds(*rows):
    return tf.constant([[7, r] for r in rows], tf.int64)


def test_row_uniform_is_uniform_and_rows_are_independent():
    keys = masking.row_keys(row_seeds(*range(20000)))
    u = masking.row_uniform([20000, 4], keys).numpy()
    assert u.dtype == np.float64 and u.min() >= 0 and u.max() < 1
    sigma = np.sqrt(1 / 12 / 20000)
    np.testing.assert_allclose(u.mean(axis=0), 0.5, atol=5 * sigma)
    np.testing.assert_allclose(u.var(axis=0), 1 / 12, rtol=0.05)
    # Deciles of each column, and no correlation between columns or rows.
    for column in u.T:
        counts = np.bincount((column * 10).astype(int), minlength=10)
        assert np.abs(counts - 2000).max() < 5 * np.sqrt(2000 * 0.9)
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 5 / np.sqrt(20000)
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 5 / np.sqrt(20000)


def test_per_row_seeds_make_a_row_independent_of_its_batch():
    ids, mask = packed_captions([20] * 6)
    boxes = np.broadcast_to(normalised(PIXEL_BOXES), (6, 6, 4))
    real = np.ones((6, 6), np.int32)
    for fn in (
        lambda rows, seeds: masking.mask_segment_span(
            ids[rows], mask[rows], seeds, VOCAB, MASK),
        lambda rows, seeds: masking.mask_tokens_bert(
            ids[rows], mask[rows], seeds, VOCAB, MASK, probability=0.5),
        lambda rows, seeds: (masking.mask_region_groups(
            boxes[rows], real[rows], seeds, H, W, probability=0.3),),
        lambda rows, seeds: masking.mask_regions_random(
            real[rows], seeds, probability=0.5),
    ):
        whole = [x.numpy() for x in fn(list(range(6)), row_seeds(*range(6)))]
        # Rows 4 and 1 alone, in another order, keep their masks.
        part = [x.numpy() for x in fn([4, 1], row_seeds(4, 1))]
        for a, b in zip(whole, part):
            np.testing.assert_array_equal(a[[4, 1]], b)
        # Identical inputs with different row seeds draw differently.
        again = [x.numpy() for x in fn(list(range(6)), row_seeds(*range(6, 12)))]
        assert any(not np.array_equal(a, b) for a, b in zip(whole, again))


def test_per_row_seeds_keep_the_span_and_group_statistics():
    n, draws = 34, 20000
    ids, mask = packed_captions([n] * draws)
    _, _, weights = span(ids, mask, row_seeds(*range(draws)))
    counts = weights.sum(axis=1).astype(int)
    expected = span_length_distribution(n)
    observed = np.bincount(counts, minlength=n + 1) / draws
    assert 0.5 * np.abs(observed - expected).sum() < 0.03
    boxes = np.concatenate([normalised(PIXEL_BOXES),
                            normalised([PIXEL_BOXES[5]])])
    real = np.array([1, 1, 1, 1, 1, 1, 0], np.int32)
    masked = masking.mask_region_groups(
        np.broadcast_to(boxes, (draws, 7, 4)), np.broadcast_to(real, (draws, 7)),
        row_seeds(*range(draws)), H, W).numpy()
    expected = [1 - 0.9 ** g for g in [2, 3, 2, 2, 2, 1]] + [0.0]
    np.testing.assert_allclose(masked.mean(axis=0), expected,
                               atol=5 * np.sqrt(0.25 / draws))


def test_per_row_seeds_need_a_batch_of_as_many_rows():
    ids, mask = packed_captions([10, 10])
    with pytest.raises(ValueError, match="batched"):
        masking.mask_segment_span(ids[0], mask[0], row_seeds(1), VOCAB, MASK)
    with pytest.raises(ValueError, match="rows"):
        masking.mask_segment_span(ids, mask, row_seeds(1, 2, 3), VOCAB, MASK)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        masking.mask_regions_random(np.ones((2, 3)), tf.constant([[1, 2, 3]]))
