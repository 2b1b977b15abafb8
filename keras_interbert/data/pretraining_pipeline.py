"""The pretraining input pipeline: pairs, ITM negatives, MSM and MRM (spec §3).

Files on disk (canonical region shards + captions JSON Lines) become batches
`(x, y)` for `InterBERTPretrainer.fit`, built only from TensorFlow graph ops
(no `py_function`), so the same pipeline feeds TensorFlow, JAX and PyTorch.

Per image record read from the shards (in shard order, optionally shuffled),
one example with one of its captions (or one example per caption):

1. image-text matching: with probability `negative_probability` the caption
   is replaced by a caption of a uniformly drawn *other* image (label 1),
   otherwise the true caption is kept (label 0);
2. the caption is tokenized in the graph, cut to `sequence_length - 2` word
   pieces and packed as `[CLS] caption [SEP]`, padded with 0;
3. masked segment modelling: one contiguous span (`msm="span"`, the
   original's `--span_mask`) or BERT's 15% token masking (`msm="token"`),
   80/10/10 replacement;
4. masked region modelling: overlapping groups (`mrm="group"`: each real
   region w.p. 0.1 zeroes every region with IoU >= 0.4) or per region
   (`mrm="random"`); targets are the stored class distributions;
5. the global image slot is the mean of the (masked) region features, as the
   original pretraining code does (`global_feature="masked_mean"`), or of the
   unmasked ones (`"unmasked_mean"`, the finetuning rule).

All randomness is stateless and keyed on `(seed, example index)`, so a seed
gives the same batches every time; each epoch (with `repeat`) gets new
masks. Batches are `(x, y)`: `x` the six backbone inputs, `y` a dict of
`msm_labels`, `msm_weights`, `mrm_targets`, `mrm_weights`, `itm_labels`.
`mrm_targets` holds every slot's stored class distribution (float16, as
stored; the loss works in float32); only the slots with `mrm_weights` 1.0
(the zeroed regions) are targets.
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_interbert.data import masking
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import check_captions_against_images
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import read_manifest
from keras_interbert.data.region_features import region_dataset
from keras_interbert.data.region_features import region_files
from keras_interbert.data.region_features import region_image_ids
from keras_interbert.data.region_features import to_backbone_regions


@dataclasses.dataclass
class PretrainingDataConfig:
    """Settings of the pretraining pipeline (defaults: the published run).

    Attributes:
        sequence_length: packed caption length (36: 34 word pieces + 2).
        max_regions: region slots after the global one (36, so 37 slots).
        batch_size: pairs per batch (per worker when sharded).
        negative_probability: chance of a mismatched caption (ITM label 1).
        msm: `"span"` (spec §3.2) or `"token"` (BERT 15%).
        msm_token_probability: the per-token rate of `msm="token"`.
        mrm: `"group"` (spec §3.3) or `"random"` (15% per region).
        mrm_probability: seed probability of `mrm="group"` (0.1).
        mrm_iou_threshold: grouping threshold (0.4).
        global_feature: `"masked_mean"` (original pretraining code) or
            `"unmasked_mean"`.
        shuffle_buffer: images held for shuffling (0 = no shuffling).
        seed: the seed of every random choice.
        num_workers, worker_index: multi-worker sharding (by shard file when
            there are at least as many files as workers, else by record).
        bucket_lengths: optional ascending caption lengths (the last must be
            `sequence_length`); captions are grouped by the smallest length
            that holds them and each batch is cut to it, so XLA sees only
            `len(bucket_lengths)` text shapes.
        captions_per_image: `"one"` (one example per image per pass, with a
            caption drawn from the image's captions; Conceptual Captions has
            one caption per image) or `"all"` (one example per caption).
        msm_positions: add `x["msm_positions"]` [B, M] (the target
            positions, M = the batch's largest target count rounded up to a
            multiple of 8) and give `msm_labels`/`msm_weights` at those
            positions, so the model computes vocabulary logits only there.
            Off: labels and weights over all T positions.
        mrm_positions: likewise for regions: `x["mrm_positions"]` [B, K]
            (the zeroed regions' slots, K = the batch's largest count rounded
            up to a multiple of 4) with `mrm_targets` [B, K, C] and
            `mrm_weights` [B, K]. Off: targets and weights over all R+1 slots.
        repeat: repeat the data indefinitely (new masks every pass).
        drop_remainder: drop a final partial batch (fixed shapes).
    """

    sequence_length: int = 36
    max_regions: int = 36
    batch_size: int = 64
    negative_probability: float = 0.5
    msm: str = "span"
    msm_token_probability: float = 0.15
    mrm: str = "group"
    mrm_probability: float = 0.1
    mrm_iou_threshold: float = 0.4
    global_feature: str = "masked_mean"
    shuffle_buffer: int = 1024
    seed: int = 42
    num_workers: int = 1
    worker_index: int = 0
    bucket_lengths: tuple = ()
    captions_per_image: str = "one"
    msm_positions: bool = True
    mrm_positions: bool = True
    repeat: bool = False
    drop_remainder: bool = True

    def validate(self):
        choices = {"msm": ("span", "token"), "mrm": ("group", "random"),
                   "global_feature": ("masked_mean", "unmasked_mean"),
                   "captions_per_image": ("one", "all")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"PretrainingDataConfig.{name}: expected one of "
                    f"{list(allowed)}, received {getattr(self, name)!r}.")
        if not 0 <= self.negative_probability <= 1:
            raise ValueError("negative_probability must be in [0, 1]; "
                             f"received {self.negative_probability}.")
        if not 0 <= self.worker_index < self.num_workers:
            raise ValueError(
                f"worker_index must be in [0, num_workers={self.num_workers}); "
                f"received {self.worker_index}.")
        if self.bucket_lengths:
            lengths = list(self.bucket_lengths)
            if lengths != sorted(set(lengths)) or lengths[-1] != self.sequence_length:
                raise ValueError(
                    "bucket_lengths must be strictly ascending and end with "
                    f"sequence_length={self.sequence_length}; received {lengths}.")
            if lengths[0] < 3:
                raise ValueError("bucket lengths must be at least 3 "
                                 f"([CLS] x [SEP]); received {lengths}.")


class CaptionIndex:
    """Captions grouped by image, as tensors the graph can index.

    Captions are sorted by image; image `k` owns captions
    `start[k] .. start[k] + count[k] - 1`. `lookup(image_id)` gives `k` or -1.
    """

    def __init__(self, captions, image_ids):
        by_image = {}
        for record in captions:
            by_image.setdefault(record["image_id"], []).append(record["caption"])
        ids = [i for i in dict.fromkeys(image_ids) if i in by_image]
        if len(ids) < 2:
            raise RegionDataError(
                "pretraining needs captions for at least two images (negatives "
                f"pair an image with another image's caption); found {len(ids)}.",
                kind="too_few_images")
        texts, starts, counts = [], [], []
        for image_id in ids:
            starts.append(len(texts))
            counts.append(len(by_image[image_id]))
            texts.extend(by_image[image_id])
        self.image_ids = ids
        self.num_images = len(ids)
        self.num_captions = len(texts)
        self.texts = tf.constant(texts, tf.string)
        self.start = tf.constant(starts, tf.int64)
        self.count = tf.constant(counts, tf.int64)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(ids, tf.string),
                tf.range(len(ids), dtype=tf.int64)),
            default_value=-1)

    def lookup(self, image_id):
        return self.table.lookup(image_id)


def _example_seed(seed, index, salt):
    return tf.stack([tf.cast(seed, tf.int64) * 1000003 + salt,
                     tf.cast(index, tf.int64)])


def _draw_negative_caption(index, image_index, seed, position):
    """A caption of a uniformly drawn image other than `image_index`."""
    other = tf.random.stateless_uniform(
        [], _example_seed(seed, position, 11), 0, index.num_images - 1,
        dtype=tf.int64)
    other = tf.where(other >= image_index, other + 1, other)
    pick = tf.random.stateless_uniform(
        [], _example_seed(seed, position, 13), 0, index.count[other],
        dtype=tf.int64)
    return index.start[other] + pick


def pretraining_dataset(regions, captions, tokenizer, config=None, split=None):
    """Batches `(x, y)` for `InterBERTPretrainer.fit`.

    Args:
        regions: a canonical region folder, a glob pattern or a list of shard
            paths (see `region_dataset`).
        captions: a captions JSON Lines path, or a list of caption records.
        tokenizer: an `InterBERTTokenizer`.
        config: a `PretrainingDataConfig`.
        split: the split to read from a canonical folder and to keep among
            the captions (records without a split are kept).

    Returns:
        A `tf.data.Dataset` of `(x, y)` batches.
    """
    config = config or PretrainingDataConfig()
    config.validate()
    paths, index = _prepare(regions, captions, split)
    return _batches(_examples(paths, index, tokenizer, config), index,
                    tokenizer, config)


def pretraining_examples(regions, captions, tokenizer, config=None, split=None):
    """The unbatched examples behind `pretraining_dataset`, and their index.

    Each element holds `position` (its example number), `image_index`,
    `caption_index` (into `index.texts`; a caption of another image when
    `itm_labels` is 1), `itm_labels` and the masked region slots. For
    inspection and tests.
    """
    config = config or PretrainingDataConfig()
    config.validate()
    paths, index = _prepare(regions, captions, split)
    return _examples(paths, index, tokenizer, config), index


def _prepare(regions, captions, split):
    if isinstance(captions, str):
        captions = read_captions(captions)
    if split is not None:
        captions = [c for c in captions if c.get("split", split) == split]
    paths = region_files(regions, split)
    image_ids = region_image_ids(paths)
    check_captions_against_images(captions, set(image_ids))
    manifest = read_manifest(os.path.dirname(paths[0])) or {}
    if manifest.get("num_classes") is None:
        raise RegionDataError(
            "pretraining needs per-region class distributions (class_probs) "
            "as masked-region targets; the region files have none.",
            path=str(regions), kind="no_class_probs")
    return paths, CaptionIndex(captions, image_ids)


def _examples(paths, index, tokenizer, config):
    seed = config.seed
    T = config.sequence_length
    if len(paths) >= config.num_workers:
        paths = paths[config.worker_index::config.num_workers]
        records = region_dataset(paths, class_probs_dtype=tf.float16)
    else:
        records = region_dataset(
            paths, class_probs_dtype=tf.float16).shard(config.num_workers,
                                                       config.worker_index)
    if config.shuffle_buffer:
        records = records.shuffle(config.shuffle_buffer, seed=seed,
                                  reshuffle_each_iteration=True)
    if config.repeat:
        records = records.repeat()

    if config.captions_per_image == "all":
        def with_captions(example):
            k = index.lookup(example["image_id"])
            count = tf.where(k >= 0, index.count[tf.maximum(k, 0)], 0)
            start = index.start[tf.maximum(k, 0)]
            return tf.data.Dataset.range(count).map(
                lambda j: (example, k, start + j))

        pairs = records.flat_map(with_captions).enumerate()
    else:
        def with_image_index(example):
            return example, index.lookup(example["image_id"])

        pairs = (records.map(with_image_index)
                 .filter(lambda example, k: k >= 0)
                 .enumerate()
                 .map(lambda position, item: (
                     position, (*item, tf.constant(-1, tf.int64)))))

    def per_example(position, item):
        example, image_index, caption_index = item
        # -1: one example per image per pass, with one of its captions.
        drawn = index.start[image_index] + tf.random.stateless_uniform(
            [], _example_seed(seed, position, 5), 0, index.count[image_index],
            dtype=tf.int64)
        caption_index = tf.where(caption_index < 0, drawn, caption_index)
        regions = _mask_regions(example, _example_seed(seed, position, 4),
                                config)
        negative = tf.random.stateless_uniform(
            [], _example_seed(seed, position, 1)) < config.negative_probability
        other = _draw_negative_caption(index, image_index, seed, position)
        element = {
            "position": position,
            "image_index": image_index,
            "caption_index": tf.where(negative, other, caption_index),
            "itm_labels": tf.cast(negative, tf.int32),
            **regions,
        }
        if config.bucket_lengths:
            pieces = tokenizer(index.texts[element["caption_index"]][tf.newaxis])
            element["length"] = tf.minimum(
                tf.cast(pieces.row_lengths()[0], tf.int32) + 2, T)
        return element

    return pairs.map(per_example, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)


def _batches(ds, index, tokenizer, config):
    if config.bucket_lengths:
        lengths = tf.constant(config.bucket_lengths, tf.int32)

        def bucket(e):
            return tf.cast(tf.argmax(tf.cast(lengths >= e["length"], tf.int32)),
                           tf.int64)

        ds = ds.group_by_window(
            key_func=bucket,
            reduce_func=lambda key, window: window.padded_batch(
                config.batch_size, drop_remainder=config.drop_remainder),
            window_size=config.batch_size)
    else:
        # Padding only changes the variable-length MRM target lists.
        ds = ds.padded_batch(config.batch_size,
                             drop_remainder=config.drop_remainder)
    ds = ds.map(lambda b: _mask_batch(b, index, tokenizer, config),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # Fewer, larger steps: the reader's parse/decode/check maps and ours run
    # as one function per element.
    options.experimental_optimization.map_fusion = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _mask_regions(example, seed, config):
    """The region slots of one image with masked region modelling applied.

    Masking runs on the kept regions before the slots are laid out, so the
    global slot is computed once, from the masked features (the original
    pretraining code: zeroed regions count in the denominator) or from the
    unmasked ones.
    """
    R = config.max_regions
    boxes = example["boxes"][:R]
    kept = tf.shape(boxes)[0]
    real = tf.ones([kept], tf.int32)
    if config.mrm == "group":
        scale = tf.cast(tf.stack([example["image_w"], example["image_h"]] * 2),
                        tf.float32)
        zeroed = masking.mask_region_groups(
            boxes / scale, real, seed, example["image_h"], example["image_w"],
            probability=config.mrm_probability,
            iou_threshold=config.mrm_iou_threshold)
        targets = zeroed
    else:
        targets, zeroed = masking.mask_regions_random(real, seed)
    # Regions past the R kept ones are dropped by `to_backbone_regions`.
    keep = tf.pad(1.0 - zeroed, [[0, tf.shape(example["boxes"])[0] - kept]],
                  constant_values=1.0)
    masked = example["features"] * keep[:, tf.newaxis]
    regions = to_backbone_regions(example, max_regions=R, features=masked,
                                  global_feature="kept_regions",
                                  include_class_probs=False)
    features = regions["region_features"]
    if config.global_feature == "unmasked_mean":
        unmasked = tf.reduce_mean(example["features"][:R], axis=0, keepdims=True)
        features = tf.concat([unmasked, features[1:]], axis=0)
    regions = {
        "region_features": features,
        "region_locations": regions["region_locations"],
        "region_mask": regions["region_mask"],
    }
    if config.mrm_positions:
        # Only the targets travel: their slots and stored distributions.
        chosen = tf.cast(tf.where(targets > 0)[:, 0], tf.int32)
        regions["mrm_positions"] = chosen + 1  # slot 0 is the global token
        regions["mrm_targets"] = tf.gather(example["class_probs"], chosen)
        regions["mrm_weights"] = tf.ones_like(chosen, tf.float32)
    else:
        regions["mrm_targets"] = tf.pad(
            example["class_probs"][:R], [[1, R - kept], [0, 0]])
        regions["mrm_weights"] = tf.pad(tf.cast(targets, tf.float32),
                                        [[1, R - kept]])
    return regions


def _mask_batch(batch, index, tokenizer, config):
    seed = config.seed
    vocabulary_size = int(tokenizer.vocabulary_size())
    first = batch["position"][0]
    pieces = tokenizer(tf.gather(index.texts, batch["caption_index"]))
    pieces = pieces[:, : config.sequence_length - 2]
    size = tf.shape(batch["caption_index"])[0]
    cls = tf.fill([size, 1], tokenizer.cls_id)
    sep = tf.fill([size, 1], tokenizer.sep_id)
    packed = tf.concat([cls, tf.cast(pieces, tf.int32), sep], axis=1)
    T = config.sequence_length
    if config.bucket_lengths:
        lengths = tf.constant(config.bucket_lengths, tf.int32)
        longest = tf.cast(tf.reduce_max(packed.row_lengths()), tf.int32)
        T = tf.gather(lengths, tf.argmax(tf.cast(lengths >= longest, tf.int32)))
    token_ids = packed.to_tensor(default_value=tokenizer.pad_id,
                                 shape=[None, config.sequence_length])[:, :T]
    text_mask = tf.sequence_mask(packed.row_lengths(), T, dtype=tf.int32)
    msm_seed = _example_seed(seed, first, 3)
    if config.msm == "span":
        masked_ids, msm_labels, msm_weights = masking.mask_segment_span(
            token_ids, text_mask, msm_seed, vocabulary_size,
            tokenizer.mask_id, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id)
    else:
        masked_ids, msm_labels, msm_weights = masking.mask_tokens_bert(
            token_ids, text_mask, msm_seed, vocabulary_size,
            tokenizer.mask_id, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
            probability=config.msm_token_probability)

    x = {}
    if config.msm_positions:
        # Target positions first (in order), padded with weight-0 entries to
        # a multiple of 8: exact, and only a handful of shapes to compile.
        counts = tf.reduce_sum(tf.cast(msm_weights > 0, tf.int32), axis=1)
        width = tf.minimum(tf.shape(token_ids)[1],
                           8 * ((tf.maximum(tf.reduce_max(counts), 1) + 7) // 8))
        order = tf.argsort(tf.cast(msm_weights > 0, tf.int32), axis=1,
                           direction="DESCENDING", stable=True)[:, :width]
        x["msm_positions"] = order
        msm_labels = tf.gather(msm_labels, order, batch_dims=1)
        msm_weights = tf.gather(msm_weights, order, batch_dims=1)
    mrm = {k: batch[k] for k in ("mrm_targets", "mrm_weights")}
    if config.mrm_positions:
        # The batch's largest target count, rounded up to a multiple of 4
        # (at least 4): few shapes to compile. Padding has weight 0.
        count = tf.shape(batch["mrm_positions"])[1]
        pad = 4 * ((tf.maximum(count, 1) + 3) // 4) - count
        x["mrm_positions"] = tf.pad(batch["mrm_positions"], [[0, 0], [0, pad]])
        mrm["mrm_weights"] = tf.pad(mrm["mrm_weights"], [[0, 0], [0, pad]])
        mrm["mrm_targets"] = tf.pad(mrm["mrm_targets"],
                                    [[0, 0], [0, pad], [0, 0]])
    x.update({
        "token_ids": masked_ids,
        "segment_ids": tf.zeros_like(masked_ids),
        "text_mask": text_mask,
        "region_features": batch["region_features"],
        "region_locations": batch["region_locations"],
        "region_mask": batch["region_mask"],
    })
    y = {
        "msm_labels": msm_labels,
        "msm_weights": msm_weights,
        "mrm_targets": mrm["mrm_targets"],
        "mrm_weights": mrm["mrm_weights"],
        "itm_labels": batch["itm_labels"],
    }
    return x, y


def numpy_batches(dataset, count):
    """The first `count` batches as numpy (for inspection and tests)."""
    return [tf.nest.map_structure(np.asarray, b)
            for b in dataset.take(count).as_numpy_iterator()]
