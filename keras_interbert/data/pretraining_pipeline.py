"""The pretraining input pipeline: pairs, ITM negatives, MSM and MRM (docs/architecture.md §3).

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
   (`mrm="random"`); targets are the stored class distributions, or, for
   files that hold only the detector's class ids (LXMERT's `objects_id`),
   one-hot (optionally confidence-weighted) distributions built from them,
   or none (see `resolve_mrm_targets`);
5. the global image slot is the mean of the (masked) region features, as the
   original pretraining code does (`global_feature="masked_mean"`), or of the
   unmasked ones (`"unmasked_mean"`, the finetuning rule).

The serialized records are batched before anything else: parsing and the
reader's checks (`parse_region_batch`), pairing, tokenization, the region
layout and both masks then run as one function of vectorised ops per batch,
not a few dozen small ops per example. The pairing (step 1, over the whole
corpus) is drawn here; steps 2 to 5 are `InterBERTPretrainerPreprocessor`'s
(`pretrainer_preprocessor(tokenizer, config)`), the layer a pretrainer
holding it applies to raw pairs.

All randomness is stateless and keyed on `(seed, example index)` (per-row
seeds, see `masking`), so a seed gives the same batches every time, an
example draws the same whichever batch it lands in, and each epoch (with
`repeat`) gets new masks. Batches are `(x, y)`: `x` the six backbone inputs, `y` a dict of
`msm_labels`, `msm_weights`, `mrm_targets`, `mrm_weights`, `itm_labels`.
`mrm_targets` holds every slot's stored class distribution (float16, as
stored; the loss works in float32); only the slots with `mrm_weights` 1.0
(the zeroed regions) are targets. Without targets (`mrm_targets="none"`)
the regions are masked all the same and `y` holds no `mrm_targets` or
`mrm_weights` (train with `mrm_weight=0`).
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import check_captions_against_images
from keras_interbert.data.region_features import parse_region_batch
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import region_dims
from keras_interbert.data.region_features import region_files
from keras_interbert.data.region_features import region_image_ids
from keras_interbert.data.region_features import region_object_classes
from keras_interbert.data.tracing import plain
from keras_interbert.preprocessing import masking
from keras_interbert.preprocessing.pretrainer_preprocessor import (
    InterBERTPretrainerPreprocessor)

MRM_TARGETS = ("auto", "class_probs", "one_hot", "confidence", "none")


@dataclasses.dataclass
class PretrainingDataConfig:
    """Settings of the pretraining pipeline (defaults: the published run).

    Attributes:
        sequence_length: packed caption length (36: 34 word pieces + 2).
        max_regions: region slots after the global one (36, so 37 slots).
        batch_size: pairs per batch (per worker when sharded).
        negative_probability: chance of a mismatched caption (ITM label 1).
        msm: `"span"` (docs/architecture.md §3.2) or `"token"` (BERT 15%).
        msm_token_probability: the per-token rate of `msm="token"`.
        mrm: `"group"` (docs/architecture.md §3.3) or `"random"` (15% per region).
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
        itc: add `x["itc_token_ids"]`, the captions before text masking
            (same shape and `text_mask` as `token_ids`), which the optional
            image-text contrastive task encodes alone.
        repeat: repeat the data indefinitely (new masks every pass).
        drop_remainder: drop a final partial batch (fixed shapes).
        mrm_targets: where the masked-region targets come from (see
            `resolve_mrm_targets`): `"auto"` (the stored `class_probs`, else
            one-hot distributions from the detector's class ids, else none),
            `"class_probs"`, `"one_hot"`, `"confidence"` (the one-hot
            distribution scaled by the detector's confidence in that class)
            or `"none"`.
        num_object_classes: the detector's class count for targets built
            from class ids, when the region manifest does not state it.
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
    itc: bool = False
    repeat: bool = False
    drop_remainder: bool = True
    mrm_targets: str = "auto"
    num_object_classes: int = None

    def validate(self):
        choices = {"msm": ("span", "token"), "mrm": ("group", "random"),
                   "global_feature": ("masked_mean", "unmasked_mean"),
                   "captions_per_image": ("one", "all"),
                   "mrm_targets": MRM_TARGETS}
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


def _row_uniform(seed, positions, salt):
    """One float64 in [0, 1) per example, keyed on (seed, salt, index)."""
    keys = masking.row_keys(masking.example_seeds(seed, positions, salt))
    return masking.row_uniform(tf.shape(positions), keys)


def _uniform_below(u, limit):
    """`floor(u * limit)`: UniformInt[0, limit - 1] from u ~ U[0, 1)."""
    return tf.cast(tf.floor(u * tf.cast(limit, tf.float64)), tf.int64)


@dataclasses.dataclass(frozen=True)
class MRMTargets:
    """Where masked-region targets come from, as `resolve_mrm_targets` found.

    Attributes:
        kind: `"class_probs"`, `"one_hot"`, `"confidence"` or `"none"`.
        num_classes: the targets' width C (the model's `num_region_classes`),
            None for `"none"`.
        description: what the targets are, or why there are none (a
            phrase, e.g. for "MRM targets: ..." or "MRM is off: ...").
    """

    kind: str
    num_classes: int
    description: str

    @property
    def enabled(self):
        return self.kind != "none"


def resolve_mrm_targets(regions, split=None, targets="auto",
                        num_object_classes=None, required=True):
    """Which masked-region targets the region files can give.

    In order of preference (`targets="auto"`): the stored `class_probs`
    (the detector's class distributions, e.g. 1601-way for bottom-up
    features); one-hot distributions over `num_object_classes` classes
    built from the detector's class ids (`object_ids`, LXMERT's
    `objects_id`); none, and masked region modelling is off.

    Args:
        regions: a canonical region folder, glob or shard paths.
        split: the split of a folder.
        targets: `"auto"`, `"class_probs"`, `"one_hot"`, `"confidence"`
            (one-hot scaled by the detector's confidence, `object_confs`) or
            `"none"`.
        num_object_classes: the class count of the ids; needed when the
            manifest does not state it, checked against it when it does.
        required: with `targets="auto"`, raise when the files hold class ids
            but no class count is known (False: give `"none"` instead, for a
            run that does not train masked region modelling).

    Returns:
        An `MRMTargets`.

    Raises:
        RegionDataError: naming the region files and what they lack, when
            the targets asked for cannot be built.
    """
    if targets not in MRM_TARGETS:
        raise ValueError(f"targets must be one of {list(MRM_TARGETS)}; "
                         f"received {targets!r}.")
    where = os.fspath(regions) if isinstance(regions, (str, os.PathLike)) \
        else f"{len(regions)} region files"
    if targets == "none":
        return MRMTargets("none", None, "no targets asked for")
    paths = region_files(regions, split)
    _, num_classes = region_dims(paths)
    objects = region_object_classes(paths)
    stated = objects["num_object_classes"]
    if num_object_classes is not None:
        num_object_classes = int(num_object_classes)
        if stated is not None and stated != num_object_classes:
            raise RegionDataError(
                f"num_object_classes {num_object_classes} was given, but the "
                f"region manifest states {stated}.", where,
                kind="num_object_classes")
    count = num_object_classes if num_object_classes is not None else stated
    holds = ("class_probs" if num_classes is not None else
             "detector class ids (object_ids) but no class_probs"
             if objects["object_ids"] else
             "neither class_probs nor detector class ids (object_ids)")
    no_count = (
        "the files hold detector class ids (object_ids) but no class count: "
        "state it with --num-object-classes (1600 for Visual Genome "
        "bottom-up-attention features) when converting or pretraining")

    if targets == "auto":
        if num_classes is not None:
            targets = "class_probs"
        elif objects["object_ids"] and (count is not None or required):
            targets = "one_hot"
        else:
            reason = (no_count if objects["object_ids"] else
                      f"the region files hold {holds}")
            return MRMTargets("none", None, f"{reason} ({where})")
    if targets == "class_probs":
        if num_classes is None:
            raise RegionDataError(
                f"masked region targets from class_probs were asked for, but "
                f"the region files hold {holds}.", where,
                kind="no_class_probs")
        return MRMTargets("class_probs", int(num_classes),
                          f"the stored {num_classes}-way class distributions "
                          "(class_probs)")
    if not objects["object_ids"]:
        raise RegionDataError(
            f"masked region targets from detector class ids ({targets}) were "
            f"asked for, but the region files hold {holds}.", where,
            kind="no_object_ids")
    if count is None:
        raise RegionDataError(no_count + ".", where,
                              kind="no_num_object_classes")
    if targets == "confidence":
        if not objects["object_confs"]:
            raise RegionDataError(
                "confidence-weighted masked region targets need the "
                "detector's confidences (object_confs, LXMERT's objects_conf); "
                "the region files hold class ids without them.", where,
                kind="no_object_confs")
        return MRMTargets("confidence", count, (
            f"one-hot over {count} detector classes from object_ids, scaled "
            "by object_confs"))
    return MRMTargets("one_hot", count, (
        f"one-hot over {count} detector classes from object_ids"))


class _Source:
    """What `_prepare` found: shard paths, caption index, widths, targets."""

    def __init__(self, paths, index, feature_dim, targets, uncaptioned):
        self.paths = paths
        self.index = index
        self.feature_dim = feature_dim
        self.targets = targets
        self.num_classes = targets.num_classes
        # Some images have no caption (of this split): drop their records.
        self.uncaptioned = uncaptioned


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
    source = _prepare(regions, captions, split, config)
    preprocessor = pretrainer_preprocessor(tokenizer, config)
    if config.bucket_lengths:
        ds = _bucketed(_example_batches(source, preprocessor, config,
                                        config.batch_size, False).unbatch(),
                       config)
        ds = ds.map(plain(lambda e: _finish_batch(e, preprocessor, config)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        # Serialized records are batched first: parsing, checks, layout and
        # every mask then run as a few vectorised ops per batch.
        ds = _pairs(source, config).batch(
            config.batch_size, drop_remainder=config.drop_remainder).map(
            plain(lambda position, item: _finish_batch(
                _example_batch(position, item, source, preprocessor, config),
                preprocessor, config)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def pretrainer_preprocessor(tokenizer, config=None,
                            region_feature_source=None):
    """The `InterBERTPretrainerPreprocessor` that applies `config`'s rules.

    The pipeline draws the pairs (and their ITM labels) over the whole
    corpus, then hands each batch to this layer's `example_fields` and
    `finish_batch`; a pretrainer holding it masks raw pairs the same way.
    `region_feature_source` (`feature_source_of(data_dir)`) is recorded
    in the layer's config.
    """
    config = config or PretrainingDataConfig()
    return InterBERTPretrainerPreprocessor(
        tokenizer, sequence_length=config.sequence_length,
        max_regions=config.max_regions,
        negative_probability=config.negative_probability, msm=config.msm,
        msm_token_probability=config.msm_token_probability, mrm=config.mrm,
        mrm_probability=config.mrm_probability,
        mrm_iou_threshold=config.mrm_iou_threshold,
        global_feature=config.global_feature,
        msm_positions=config.msm_positions, mrm_positions=config.mrm_positions,
        itc=config.itc, seed=config.seed,
        region_feature_source=region_feature_source)


def pretraining_examples(regions, captions, tokenizer, config=None, split=None):
    """The unbatched examples behind `pretraining_dataset`, and their index.

    Each element holds `position` (its example number), `image_index`,
    `caption_index` (into `index.texts`; a caption of another image when
    `itm_labels` is 1), `itm_labels`, the packed caption before text masking
    (`token_ids` `[T]`, `length`), the region slots after region masking
    (`region_features`, `region_locations`, `region_mask`, `[R+1, ...]`) and
    the region targets over all slots: `mrm_weights` `[R+1]` (1.0 at a
    zeroed region) and `mrm_targets` `[R+1, C]` (the target distributions,
    zero at slot 0 and padding; absent without targets). An example gets the
    same draws here as in `pretraining_dataset` with the same config. For
    inspection and tests.
    """
    config = config or PretrainingDataConfig()
    config.validate()
    source = _prepare(regions, captions, split, config)
    R = config.max_regions

    def dense_targets(batch):
        batch = dict(batch)
        if "class_probs" not in batch:
            return batch
        probs = batch.pop("class_probs")
        batch["mrm_targets"] = tf.pad(
            probs, [[0, 0], [1, R - tf.shape(probs)[1]], [0, 0]])
        return batch

    ds = _example_batches(source, pretrainer_preprocessor(tokenizer, config),
                          config, config.batch_size, False)
    return ds.map(plain(dense_targets)).unbatch(), source.index


def _prepare(regions, captions, split, config):
    caption_path = None
    if isinstance(captions, (str, os.PathLike)):
        caption_path = os.fspath(captions)
        captions = read_captions(captions)
    if split is not None:
        captions = [c for c in captions if c.get("split", split) == split]
    paths = region_files(regions, split)
    image_ids = region_image_ids(paths)
    check_captions_against_images(captions, set(image_ids), path=caption_path)
    feature_dim, _ = region_dims(paths)
    targets = resolve_mrm_targets(paths, targets=config.mrm_targets,
                                  num_object_classes=config.num_object_classes)
    index = CaptionIndex(captions, image_ids)
    uncaptioned = bool(set(image_ids) - set(index.image_ids))
    return _Source(paths, index, feature_dim, targets, uncaptioned)


def _image_id(serialized):
    spec = {"image_id": tf.io.FixedLenFeature([], tf.string)}
    return tf.io.parse_single_example(serialized, spec)["image_id"]


def _pairs(source, config):
    """`(position, serialized)` or `(position, (serialized, caption_index))`."""
    index = source.index
    paths = source.paths
    if len(paths) >= config.num_workers:
        records = tf.data.TFRecordDataset(
            paths[config.worker_index::config.num_workers])
    else:
        records = tf.data.TFRecordDataset(paths).shard(config.num_workers,
                                                       config.worker_index)
    if config.shuffle_buffer:
        records = records.shuffle(config.shuffle_buffer, seed=config.seed,
                                  reshuffle_each_iteration=True)
    if config.repeat:
        records = records.repeat()
    if config.captions_per_image == "all":
        def with_captions(serialized):
            k = index.lookup(_image_id(serialized))
            count = tf.where(k >= 0, index.count[tf.maximum(k, 0)], 0)
            start = index.start[tf.maximum(k, 0)]
            return tf.data.Dataset.range(count).map(
                plain(lambda j: (serialized, start + j)))

        return records.flat_map(plain(with_captions)).enumerate()
    if source.uncaptioned:
        records = records.filter(
            plain(lambda serialized: index.lookup(_image_id(serialized)) >= 0))
    return records.enumerate()


def _example_batches(source, preprocessor, config, size, drop_remainder):
    return _pairs(source, config).batch(size, drop_remainder=drop_remainder).map(
        plain(lambda position, item: _example_batch(position, item, source,
                                                    preprocessor, config)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _example_batch(position, item, source, preprocessor, config):
    """Per-example fields of a batch of records: pairing, caption, regions.

    The pairing is drawn here (over the whole corpus); the packed caption,
    the region layout and masking come from the preprocessor. Every draw is
    keyed on `(seed, example index)`, so it does not depend on which batch
    an example falls in.
    """
    index = source.index
    seed = config.seed
    if isinstance(item, tuple):
        serialized, caption_index = item
    else:  # one example per image per pass, with one of its captions
        serialized, caption_index = item, tf.fill(tf.shape(position),
                                                  tf.constant(-1, tf.int64))
    kind = source.targets.kind
    from_ids = kind in ("one_hot", "confidence")
    parsed = parse_region_batch(
        serialized, source.feature_dim,
        source.num_classes if kind == "class_probs" else None,
        max_regions=config.max_regions, features_dtype=tf.float32,
        class_probs_dtype=tf.float16, object_ids=from_ids,
        object_confs=kind == "confidence",
        num_object_classes=source.num_classes if from_ids else None)
    if from_ids:
        # Padding rows have id -1, whose one-hot row is zero.
        probs = tf.one_hot(parsed.pop("object_ids"), source.num_classes,
                           dtype=tf.float16)
        if kind == "confidence":
            probs *= tf.cast(parsed.pop("object_confs"),
                             tf.float16)[..., tf.newaxis]
        parsed["class_probs"] = probs
    image_index = index.lookup(parsed["image_id"])
    count = tf.gather(index.count, image_index)
    drawn = tf.gather(index.start, image_index) + _uniform_below(
        _row_uniform(seed, position, 5), count)
    caption_index = tf.where(caption_index < 0, drawn, caption_index)
    # A caption of a uniformly drawn image other than this one.
    other = _uniform_below(_row_uniform(seed, position, 11),
                           index.num_images - 1)
    other = tf.where(other >= image_index, other + 1, other)
    other_caption = tf.gather(index.start, other) + _uniform_below(
        _row_uniform(seed, position, 13), tf.gather(index.count, other))
    negative = _row_uniform(seed, position, 1) < config.negative_probability
    caption_index = tf.where(negative, other_caption, caption_index)

    fields = preprocessor.example_fields(
        tf.gather(index.texts, caption_index), parsed["features"],
        parsed["boxes"], tf.stack([parsed["image_h"], parsed["image_w"]],
                                  axis=1),
        parsed["num_boxes"], position, parsed.get("class_probs"))
    out = {
        "position": position,
        "image_index": image_index,
        "caption_index": caption_index,
        "itm_labels": tf.cast(negative, tf.int32),
        "token_ids": fields["token_ids"],
        "length": tf.reduce_sum(fields["text_mask"], axis=1),
    }
    for name in ("region_features", "region_locations", "region_mask",
                 "mrm_weights", "class_probs"):
        if name in fields:
            out[name] = fields[name]
    return out


def _bucketed(ds, config):
    lengths = tf.constant(config.bucket_lengths, tf.int32)

    def bucket(e):
        return tf.cast(tf.argmax(tf.cast(lengths >= e["length"], tf.int32)),
                       tf.int64)

    # Padding only changes `class_probs`, whose row count varies by batch.
    return ds.group_by_window(
        key_func=bucket,
        reduce_func=lambda key, window: window.padded_batch(
            config.batch_size, drop_remainder=config.drop_remainder),
        window_size=config.batch_size)


def _finish_batch(batch, preprocessor, config):
    """Text masking and the model's `(x, y)` from a batch of examples."""
    T = config.sequence_length
    if config.bucket_lengths:
        lengths = tf.constant(config.bucket_lengths, tf.int32)
        longest = tf.reduce_max(batch["length"])
        T = tf.gather(lengths, tf.argmax(tf.cast(lengths >= longest, tf.int32)))
    fields = dict(batch, token_ids=batch["token_ids"][:, :T],
                  text_mask=tf.sequence_mask(batch["length"], T,
                                             dtype=tf.int32))
    return preprocessor.finish_batch(fields, batch["itm_labels"],
                                     batch["position"])


def numpy_batches(dataset, count):
    """The first `count` batches as numpy (for inspection and tests)."""
    return [tf.nest.map_structure(np.asarray, b)
            for b in dataset.take(count).as_numpy_iterator()]
