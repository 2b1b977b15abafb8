"""Caption-based image retrieval: training pairs and evaluation grids (docs/architecture.md §4.1).

Retrieval pairs any caption with any image, so the region slots of a whole
split are held in memory by a `RegionTable` and gathered by image index inside
the graph. Everything else follows the pretraining pipeline: TensorFlow graph
ops only (no `py_function`), randomness stateless and keyed on
`(seed, example position)`, batches `(x, y)` with `x` the six backbone inputs.

Training (`retrieval_training_dataset`): each caption `c` of image `i` gives
four pairs, laid out caption-major (pair `4 * b + k` of a batch is pair `k`
of caption `b`):

| k | image | caption | label |
|---|---|---|---|
| 0 | `i` | `c` | 0 (match) |
| 1 | `i` | a random caption of a random other image | 1 |
| 2 | a random other image | `c` | 1 |
| 3 | `i` | a random caption of a *hard* image `h` | 1 |

`h` is drawn uniformly from ranks `1 .. k-1` of image `i`'s row of a
hard-negative pool (rank 0 is skipped: it is the image itself). This is the
original loader's fourth pair: the image stays, the text comes from a
confusable image (ViLBERT's `features4 = features1`, `caption4` of the hard
image), so the model learns to reject near-miss captions.

Evaluation (`RetrievalEvaluationSet`): every caption of a split against every
image of the split, in a fixed caption-major order, resumable at any pair
offset; plus scoring of an arbitrary subset of pairs (two-stage reranking).
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import check_captions_against_images
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import read_manifest
from keras_interbert.data.region_features import region_dataset
from keras_interbert.data.region_features import region_files
from keras_interbert.data.region_features import region_locations
from keras_interbert.preprocessing import InterBERTTextPacker
from keras_interbert.preprocessing.region_packer import GLOBAL_LOCATION


class RegionTable:
    """The backbone region slots of every image of a split, held in memory.

    Each image gets the layout of `to_backbone_regions`: slot 0 the global
    token (mean of the image's region features, location `[0, 0, 1, 1, 1]`),
    then its first `max_regions` regions, then padding. The table keeps the
    kept regions packed (no padding) and pads only when gathering, inside the
    graph, so any image can be paired with any caption.

    Memory: `num_images * D * 4` bytes for the global features plus
    `num_kept_regions * (D * 2 + 20)` bytes for the kept regions (features as
    float16, as stored on disk, so nothing is lost; locations float32). For
    Flickr30K train (29,000 images, D = 2048, at most 101 regions) with 50
    regions an image on average that is about 0.24 GB + 6 GB. Loading peaks
    at about twice that (the numpy arrays and their TensorFlow copy). The
    arrays are eager tensors in host memory that the data set captures by
    reference: tables beyond 2 GB work for ordinary iteration (and
    `model.fit`), but not where TensorFlow serialises the data set's graph
    (tf.data service, multi-worker auto-sharding: shard with the pipeline's
    `num_workers`/`worker_index` and turn auto-sharding off).

    Args:
        image_ids: list of `N` image id strings (table index = position).
        global_features: float `[N, D]`, the global slot's feature.
        features: float `[K, D]`, the kept regions of all images, packed.
        locations: float `[K, 5]`, their 5-d locations.
        row_starts: int `[N]`, image `n`'s regions start at this row.
        num_kept: int `[N]`, how many regions image `n` keeps (>= 1).
        max_regions: R; the gathered slots are `R + 1`.

    Examples:
    ```python
    table = RegionTable.from_files("shapes/regions", split="test",
                                   max_regions=101)
    slots = table.gather(tf.constant([0, 3]))
    slots["region_features"].shape  # (2, 102, D)
    ```
    """

    def __init__(self, image_ids, global_features, features, locations,
                 row_starts, num_kept, max_regions):
        self.image_ids = [str(i) for i in image_ids]
        self.max_regions = int(max_regions)
        num = len(self.image_ids)
        if num == 0:
            raise RegionDataError("a RegionTable needs at least one image.",
                                  kind="no_images")
        if len(set(self.image_ids)) != num:
            raise RegionDataError("image ids in a RegionTable must be unique.",
                                  kind="duplicate_image_id")
        global_features = np.asarray(global_features, np.float32)
        num_kept = np.asarray(num_kept, np.int64)
        row_starts = np.asarray(row_starts, np.int64)
        if global_features.shape[0] != num or num_kept.shape != (num,) or (
                row_starts.shape != (num,)):
            raise ValueError(
                f"global_features [N, D], row_starts [N] and num_kept [N] must "
                f"have N = {num} rows; received {global_features.shape}, "
                f"{row_starts.shape}, {num_kept.shape}.")
        if (num_kept < 1).any() or (num_kept > self.max_regions).any():
            raise ValueError(
                f"num_kept must be in [1, max_regions={self.max_regions}].")
        self.feature_dim = int(global_features.shape[1])
        self.num_images = num
        self.num_kept = num_kept
        self._position = {image_id: n for n, image_id in
                          enumerate(self.image_ids)}
        features = np.asarray(features, np.float16)
        locations = np.asarray(locations, np.float32)
        self.nbytes = (global_features.nbytes + features.nbytes
                       + locations.nbytes + 16 * num)
        if len(features) != len(locations) or (
                row_starts + num_kept).max() > len(features):
            raise ValueError(
                f"features [K, D] and locations [K, 5] must hold every kept "
                f"region; received {features.shape} and {locations.shape} "
                f"for {int(num_kept.sum())} kept regions.")
        # Eager tensors on the host. The data set's functions capture them
        # by reference (they are not serialised into its graph, which would
        # cap them at 2 GB); unlike `tf.Variable`s they are never mirrored
        # onto accelerators by a distribution strategy's scope.
        with tf.device("/CPU:0"):
            self._global = tf.constant(global_features)
            self._features = tf.constant(features)
            self._locations = tf.constant(locations)
            self._starts = tf.constant(row_starts, tf.int64)
            self._kept = tf.constant(num_kept, tf.int64)

    @property
    def num_slots(self):
        return self.max_regions + 1

    @classmethod
    def from_files(cls, regions, split=None, max_regions=101,
                   global_feature="all_regions", progress=False):
        """Read a split of canonical region files into a table.

        Args:
            regions: a canonical folder, a glob or shard paths (see
                `region_dataset`).
            split: the split to read from a folder.
            max_regions: R, regions kept per image after the global slot
                (101 gives Flickr30K's 102 slots).
            global_feature: `"all_regions"` (mean over every stored region,
                the finetuning rule) or `"kept_regions"` (as in
                `to_backbone_regions`).
            progress: show a tqdm bar.
        """
        if global_feature not in ("all_regions", "kept_regions"):
            raise ValueError(
                "global_feature must be 'all_regions' or 'kept_regions'; "
                f"received {global_feature!r}.")
        max_regions = int(max_regions)
        if max_regions < 1:
            raise ValueError(f"max_regions must be >= 1; received {max_regions}.")
        paths = region_files(regions, split)

        def slots(example):
            # The same arithmetic as `to_backbone_regions`, without the
            # padding, so the table's slots equal its output.
            feats = example["features"]
            num = tf.shape(feats)[0]
            kept = tf.minimum(num, max_regions)
            if global_feature == "all_regions":
                mean = tf.reduce_sum(feats, axis=0) / tf.cast(
                    tf.maximum(num, 1), tf.float32)
            else:
                mean = tf.reduce_sum(feats[:kept], axis=0) / tf.cast(
                    tf.maximum(kept, 1), tf.float32)
            locs = region_locations(example["boxes"], example["image_h"],
                                    example["image_w"])
            return {"image_id": example["image_id"], "global": mean,
                    "features": tf.cast(feats[:kept], tf.float16),
                    "locations": locs[:kept]}

        ds = region_dataset(paths).map(slots, num_parallel_calls=4,
                                       deterministic=True)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=_count_images(paths), desc="loading region slots",
                       unit="img")
        ids, means, feats, locs = [], [], [], []
        for item in ds.as_numpy_iterator():
            ids.append(item["image_id"].decode("utf-8"))
            means.append(item["global"])
            feats.append(item["features"])
            locs.append(item["locations"])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if not ids:
            raise RegionDataError("the split holds no images.", str(regions),
                                  kind="no_images")
        counts = np.array([len(f) for f in feats], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        features = np.concatenate(feats)
        del feats
        return cls(ids, np.stack(means), features, np.concatenate(locs),
                   starts, counts, max_regions)

    def index(self, image_id):
        """The table index of `image_id` (`KeyError` if it is not here)."""
        return self._position[str(image_id)]

    def __contains__(self, image_id):
        return str(image_id) in self._position

    def global_features(self):
        """The global slots' features `[N, D]` float32, as numpy."""
        return self._global.numpy()

    def gather(self, image_index):
        """Region slots of the images `image_index` (any int shape `S`).

        Returns `region_features` `S + [R+1, D]` float32,
        `region_locations` `S + [R+1, 5]` float32 and `region_mask`
        `S + [R+1]` int32, as `to_backbone_regions` lays them out.
        """
        index = tf.cast(image_index, tf.int64)
        R = self.max_regions
        starts = tf.gather(self._starts, index)
        kept = tf.gather(self._kept, index)
        offsets = tf.range(R, dtype=tf.int64)
        valid = offsets < kept[..., tf.newaxis]
        rows = tf.where(valid, starts[..., tf.newaxis] + offsets, 0)
        weight = tf.cast(valid, tf.float32)[..., tf.newaxis]
        feats = tf.cast(tf.gather(self._features, rows), tf.float32) * weight
        locs = tf.gather(self._locations, rows) * weight
        first = tf.gather(self._global, index)[..., tf.newaxis, :]
        shape = tf.concat([tf.shape(index), [1, 5]], axis=0)
        first_loc = tf.broadcast_to(tf.constant(GLOBAL_LOCATION), shape)
        mask = tf.concat([tf.ones_like(kept[..., tf.newaxis], tf.int32),
                          tf.cast(valid, tf.int32)], axis=-1)
        return {
            "region_features": tf.concat([first, feats], axis=-2),
            "region_locations": tf.concat([first_loc, locs], axis=-2),
            "region_mask": mask,
        }


def _count_images(paths):
    """Images in the shards according to their manifests, or None."""
    total = 0
    for path in paths:
        manifest = read_manifest(os.path.dirname(os.path.abspath(path))) or {}
        counts = {shard["path"]: shard["num_examples"]
                  for split in manifest.get("splits", {}).values()
                  for shard in split.get("shards", [])}
        if os.path.basename(path) not in counts:
            return None
        total += counts[os.path.basename(path)]
    return total


def as_region_table(regions, split=None, max_regions=None, progress=False):
    """`regions` if it is a `RegionTable`, else the table read from files.

    A table whose `max_regions` differs from a given `max_regions` is an
    error; reading files without `max_regions` keeps 101 regions.
    """
    if isinstance(regions, RegionTable):
        if max_regions is not None and regions.max_regions != max_regions:
            raise ValueError(
                f"the RegionTable keeps max_regions={regions.max_regions}, but "
                f"max_regions={max_regions} was asked for.")
        return regions
    return RegionTable.from_files(
        regions, split=split, max_regions=101 if max_regions is None
        else max_regions, progress=progress)


def load_split_captions(captions, table, split=None, path=None):
    """Captions of `split` whose image is in `table` (others are an error).

    Records without a `split` key are kept. A caption whose image has no
    region features raises a `RegionDataError` naming the file, the caption
    and the image id.
    """
    if isinstance(captions, (str, os.PathLike)):
        path = os.fspath(captions)
        captions = read_captions(path)
    if split is not None:
        captions = [c for c in captions if c.get("split", split) == split]
    captions = check_captions_against_images(captions, table.image_ids,
                                             path=path)
    if not captions:
        raise RegionDataError(
            f"no captions of split {split!r} for these images.", path,
            kind="no_captions")
    return captions


class _CaptionOwners:
    """Which table image owns each caption, and each image's captions."""

    def __init__(self, captions, table):
        owner = np.array([table.index(c["image_id"]) for c in captions],
                         np.int64)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=table.num_images)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        captioned = np.flatnonzero(counts > 0)
        rank_in_captioned = np.full(table.num_images, -1, np.int64)
        rank_in_captioned[captioned] = np.arange(len(captioned))
        self.owner = owner
        self.num_captions = len(captions)
        self.num_images = table.num_images
        self.num_captioned = len(captioned)
        self.by_image = order
        self.starts = starts
        self.counts = counts
        self.texts = tf.constant([c["caption"] for c in captions], tf.string)
        self.t_owner = tf.constant(owner, tf.int64)
        self.t_by_image = tf.constant(order, tf.int64)
        self.t_starts = tf.constant(starts, tf.int64)
        self.t_counts = tf.constant(counts, tf.int64)
        self.t_captioned = tf.constant(captioned, tf.int64)
        self.t_rank = tf.constant(rank_in_captioned, tf.int64)


@dataclasses.dataclass
class RetrievalDataConfig:
    """Settings of the retrieval training pipeline (defaults: docs/architecture.md §4.1).

    Attributes:
        sequence_length: packed caption length (30), cut after packing so an
            over-long caption loses its `[SEP]` (docs/architecture.md §6 quirk 5).
        max_regions: region slots after the global one (101: 102 slots).
        batch_size: captions per batch; a batch holds `4 * batch_size` pairs.
        shuffle: visit the captions in a new seeded permutation each epoch
            (otherwise in file order).
        seed: the seed of every random choice.
        repeat: repeat indefinitely (each epoch new pairs and order).
        drop_remainder: drop a final partial batch.
        num_workers, worker_index: multi-worker sharding of the caption
            stream (example positions, hence the pairs, do not depend on it).
    """

    sequence_length: int = 30
    max_regions: int = 101
    batch_size: int = 64
    shuffle: bool = True
    seed: int = 42
    repeat: bool = False
    drop_remainder: bool = True
    num_workers: int = 1
    worker_index: int = 0

    def validate(self):
        if self.sequence_length < 3:
            raise ValueError("sequence_length must be >= 3; received "
                             f"{self.sequence_length}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; received {self.batch_size}.")
        if not 0 <= self.worker_index < self.num_workers:
            raise ValueError(
                f"worker_index must be in [0, num_workers={self.num_workers}); "
                f"received {self.worker_index}.")


def _key(seed, position, salt):
    return tf.stack([tf.cast(seed, tf.int64) * 1000003 + salt,
                     tf.cast(position, tf.int64)])


def _uniform(seed, position, salt, low, high):
    return tf.random.stateless_uniform(
        [], _key(seed, position, salt), low, high, dtype=tf.int64)


def epoch_order(num_items, seed, shuffle, repeat):
    """`(position, item)` pairs: items in a seeded permutation per epoch.

    Epoch `e` visits every item once, in the permutation drawn from
    `(seed, e)` (or in order without `shuffle`); `position` counts examples
    from the first epoch on, and keys the example's random choices.
    """
    epochs = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
    n = int(num_items)

    def one_epoch(epoch):
        items = tf.range(n, dtype=tf.int64)
        if shuffle:
            items = tf.random.experimental.stateless_shuffle(
                items, _key(seed, epoch, 17))
        positions = epoch * n + tf.range(n, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((positions, items))

    return epochs.flat_map(one_epoch)


def batched_epochs(num_items, config, to_inputs):
    """Item indices in seeded epochs, sharded, batched, then `to_inputs`.

    `config` supplies `seed`, `shuffle`, `repeat`, `num_workers`,
    `worker_index`, `batch_size` and `drop_remainder`; `to_inputs` maps a
    batch of item indices to the model's `(x, y)`.
    """
    ds = epoch_order(num_items, config.seed, config.shuffle, config.repeat)
    if config.num_workers > 1:
        ds = ds.shard(config.num_workers, config.worker_index)
    ds = ds.map(lambda position, item: item)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    ds = ds.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _pack_captions(tokenizer, sequence_length):
    packer = InterBERTTextPacker(
        sequence_length, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
        pad_id=tokenizer.pad_id, truncate_after_packing=True)

    def pack(texts):
        return packer(tokenizer(texts))

    return pack


def retrieval_training_examples(regions, captions, config=None,
                                hard_negatives=None, split="train"):
    """The unbatched caption examples behind `retrieval_training_dataset`.

    Each element holds `position`, `caption` (the caption's index) and the
    four pairs as `image_index` [4], `caption_index` [4] (indices into the
    table and the caption list) and `labels` [4] int32 `[0, 1, 1, 1]`.

    Returns:
        `(dataset, info)`, `info` a dict with `table`, `captions` (the
        records used, in index order), `caption_owner` (table index of each
        caption, numpy) and `hard_pool` (table indices `[N, k]`, numpy).
    """
    config = config or RetrievalDataConfig()
    config.validate()
    table = as_region_table(regions, split, config.max_regions)
    captions = load_split_captions(captions, table, split)
    owners = _CaptionOwners(captions, table)
    if table.num_images < 2 or owners.num_captioned < 2:
        raise RegionDataError(
            "retrieval negatives need at least two images with captions; "
            f"found {owners.num_captioned} of {table.num_images} images.",
            kind="too_few_images")
    pool = _hard_pool(hard_negatives, table)
    t_pool = tf.constant(pool, tf.int64)
    pool_k = pool.shape[1]
    seed = config.seed

    def random_caption_of(image, position, salt):
        count = tf.gather(owners.t_counts, image)
        pick = _uniform(seed, position, salt, 0, tf.maximum(count, 1))
        # An image without captions (count 0) may start past the end; the
        # caller does not use its result, but the gather must stay in range.
        row = tf.minimum(tf.gather(owners.t_starts, image) + pick,
                         owners.num_captions - 1)
        return tf.gather(owners.t_by_image, row)

    def per_caption(position, caption):
        image = owners.t_owner[caption]
        # (i, caption of another captioned image): draw among the others.
        u = _uniform(seed, position, 1, 0, owners.num_captioned - 1)
        u = tf.where(u >= owners.t_rank[image], u + 1, u)
        other_caption = random_caption_of(owners.t_captioned[u], position, 2)
        # (another image, c): any image of the table but `i`.
        v = _uniform(seed, position, 3, 0, owners.num_images - 1)
        other_image = tf.where(v >= image, v + 1, v)
        # (i, caption of a hard image): pool ranks 1..k-1, rank 0 skipped.
        hard = t_pool[image, _uniform(seed, position, 4, 1, pool_k)]
        hard_caption = tf.where(owners.t_counts[hard] > 0,
                                random_caption_of(hard, position, 5),
                                other_caption)
        return {
            "position": position,
            "caption": caption,
            "image_index": tf.stack([image, image, other_image, image]),
            "caption_index": tf.stack(
                [caption, other_caption, caption, hard_caption]),
            "labels": tf.constant([0, 1, 1, 1], tf.int32),
        }

    ds = epoch_order(owners.num_captions, seed, config.shuffle, config.repeat)
    if config.num_workers > 1:
        ds = ds.shard(config.num_workers, config.worker_index)
    ds = ds.map(per_caption, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    info = {"table": table, "captions": captions,
            "caption_owner": owners.owner, "hard_pool": pool,
            "texts": owners.texts}
    return ds, info


def _hard_pool(hard_negatives, table):
    from keras_interbert.data.hard_negatives import HardNegativePool
    from keras_interbert.data.hard_negatives import nearest_neighbour_pool

    if hard_negatives is None:
        pool = nearest_neighbour_pool(table.global_features(), table.image_ids,
                                      k=100)
    elif isinstance(hard_negatives, HardNegativePool):
        pool = hard_negatives
    else:
        pool = HardNegativePool.load(hard_negatives)
    return pool.table_indices(table.image_ids)


def retrieval_training_dataset(regions, captions, tokenizer, config=None,
                               hard_negatives=None, split="train"):
    """Batches `(x, labels)` of retrieval training pairs (docs/architecture.md §4.1).

    Args:
        regions: a `RegionTable` of the split, or region files (a canonical
            folder, a glob or shard paths) to load one from.
        captions: a captions JSON Lines path or a list of caption records;
            records of other splits are dropped, and a caption whose image
            has no region features raises a `RegionDataError`.
        tokenizer: an `InterBERTTokenizer`.
        config: a `RetrievalDataConfig`.
        hard_negatives: a `HardNegativePool`, the path of one (see
            `keras_interbert.data.hard_negatives`), or `None` to build the
            nearest-neighbour pool (k = 100) of the table's images now.
        split: the split to read and to keep among the captions.

    Returns:
        A `tf.data.Dataset` of `(x, labels)`: for `B = batch_size` captions,
        `x` holds `token_ids`, `segment_ids` (zeros), `text_mask` `[4B, T]`
        int32, `region_features` `[4B, R+1, D]` float32, `region_locations`
        `[4B, R+1, 5]` float32, `region_mask` `[4B, R+1]` int32; `labels`
        `[4B]` int32 (0 = matched), caption-major: pairs `4b .. 4b+3` come
        from caption `b`, labels `[0, 1, 1, 1]`.
    """
    config = config or RetrievalDataConfig()
    ds, info = retrieval_training_examples(regions, captions, config,
                                           hard_negatives, split)
    table, texts = info["table"], info["texts"]
    pack = _pack_captions(tokenizer, config.sequence_length)

    def to_pairs(batch):
        images = tf.reshape(batch["image_index"], [-1])
        text = pack(tf.gather(texts, tf.reshape(batch["caption_index"], [-1])))
        x = {
            "token_ids": text["token_ids"],
            "segment_ids": text["segment_ids"],
            "text_mask": text["text_mask"],
            **table.gather(images),
        }
        return x, tf.reshape(batch["labels"], [-1])

    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    ds = ds.map(to_pairs, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


class RetrievalEvaluationSet:
    """Every caption of a split against every image of the split (docs/architecture.md §4.1).

    Pairs are numbered caption-major: pair `p` is caption `p // num_images`
    against image `p % num_images`, so the grid is covered exactly once and
    scoring can stop and resume at any pair offset. `caption_image_index`
    is the ground truth, the image index of each caption. Captions are
    packed as in training (`[CLS] caption [SEP]` cut to `sequence_length`).

    Args:
        regions: a `RegionTable`, or region files to load the split from.
        captions: a captions JSON Lines path or list of records.
        tokenizer: an `InterBERTTokenizer`.
        split: the split to read and to keep among the captions.
        sequence_length: packed caption length (30).
        max_regions: region slots after the global one (101).

    Examples:
    ```python
    evaluation = RetrievalEvaluationSet("flickr/regions", "flickr/captions.jsonl",
                                        tokenizer, split="test")
    for x, pairs in evaluation.grid_dataset(batch_size=1000, start=0):
        probabilities = retriever.predict_on_batch(x)
        # pairs["caption_index"], pairs["image_index"]: which pair each row is
    ```
    """

    def __init__(self, regions, captions, tokenizer, split="test",
                 sequence_length=30, max_regions=None):
        self.table = as_region_table(regions, split, max_regions)
        self.captions = load_split_captions(captions, self.table, split)
        self.num_captions = len(self.captions)
        self.num_images = self.table.num_images
        self.num_pairs = self.num_captions * self.num_images
        self.image_ids = list(self.table.image_ids)
        self.caption_image_index = np.array(
            [self.table.index(c["image_id"]) for c in self.captions], np.int64)
        pack = _pack_captions(tokenizer, sequence_length)
        texts = tf.data.Dataset.from_tensor_slices(
            [c["caption"] for c in self.captions]).batch(4096).map(pack)
        parts = list(texts.as_numpy_iterator())
        self.text = {k: np.concatenate([p[k] for p in parts])
                     for k in parts[0]}
        self._text = {k: tf.constant(v) for k, v in self.text.items()}

    def pair_indices(self, start=0, stop=None):
        """`(caption_index, image_index)` numpy int64 of pairs `start..stop-1`."""
        stop = self.num_pairs if stop is None else min(int(stop), self.num_pairs)
        pairs = np.arange(int(start), stop, dtype=np.int64)
        return pairs // self.num_images, pairs % self.num_images

    def _inputs(self, caption_index, image_index):
        x = {k: tf.gather(v, caption_index) for k, v in self._text.items()}
        x.update(self.table.gather(image_index))
        return x, {"caption_index": caption_index, "image_index": image_index}

    def grid_dataset(self, batch_size=1000, start=0):
        """Batches of the caption x image grid from pair `start` on.

        Elements are `(x, pairs)`: `x` the six backbone inputs `[P, ...]`
        (the last batch may be smaller), `pairs` a dict of `caption_index`
        and `image_index` `[P]` int64. Resuming at `start = k * batch_size`
        gives the same batches as batches `k, k+1, ...` of a run from 0.
        """
        start = int(start)
        if not 0 <= start <= self.num_pairs:
            raise ValueError(f"start must be in [0, {self.num_pairs}]; "
                             f"received {start}.")
        n = self.num_images

        def inputs(pairs):
            return self._inputs(pairs // n, pairs % n)

        ds = tf.data.Dataset.range(start, self.num_pairs).batch(batch_size)
        return ds.map(inputs, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True).prefetch(tf.data.AUTOTUNE)

    def pairs_dataset(self, caption_index, image_index, batch_size=1000):
        """Batches `(x, pairs)` of the given pairs only, in the given order.

        For two-stage reranking: score the grid with a cheap model, then the
        top candidates of each caption with the full one.
        """
        caption_index = np.asarray(caption_index, np.int64).reshape(-1)
        image_index = np.asarray(image_index, np.int64).reshape(-1)
        if caption_index.shape != image_index.shape:
            raise ValueError(
                "caption_index and image_index must have the same length; "
                f"received {caption_index.shape} and {image_index.shape}.")
        for name, values, limit in (("caption_index", caption_index,
                                     self.num_captions),
                                    ("image_index", image_index,
                                     self.num_images)):
            if values.size and (values.min() < 0 or values.max() >= limit):
                raise ValueError(f"{name} must be in [0, {limit}); received "
                                 f"values in [{values.min()}, {values.max()}].")
        ds = tf.data.Dataset.from_tensor_slices((caption_index, image_index))
        return ds.batch(batch_size).map(
            self._inputs, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True).prefetch(tf.data.AUTOTUNE)

    def score_matrix(self, scores, start=0):
        """Scores of consecutive grid pairs from `start` as `[captions, images]`.

        Pairs not given are NaN; useful to assemble resumed runs.
        """
        matrix = np.full(self.num_pairs, np.nan, np.float64)
        scores = np.asarray(scores, np.float64).reshape(-1)
        matrix[int(start):int(start) + len(scores)] = scores
        return matrix.reshape(self.num_captions, self.num_images)
