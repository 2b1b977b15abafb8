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
from keras_interbert.data.hard_negatives import HardNegativePool
from keras_interbert.data.hard_negatives import nearest_neighbour_pool
from keras_interbert.data.region_features import check_captions_against_images
from keras_interbert.data.region_features import read_captions
# RegionTable and batched_epochs stay importable from here.
from keras_interbert.data.region_table import RegionTable  # noqa: F401
from keras_interbert.data.region_table import as_region_table
from keras_interbert.data.sampling import _uniform
from keras_interbert.data.sampling import batched_epochs  # noqa: F401
from keras_interbert.data.sampling import epoch_order
from keras_interbert.data.tracing import plain
from keras_interbert.preprocessing import InterBERTTextPacker


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
    ds = ds.map(plain(per_caption), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    info = {"table": table, "captions": captions,
            "caption_owner": owners.owner, "hard_pool": pool,
            "texts": owners.texts}
    return ds, info


def _hard_pool(hard_negatives, table):
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
    ds = ds.map(plain(to_pairs), num_parallel_calls=tf.data.AUTOTUNE,
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
            [c["caption"] for c in self.captions]).batch(4096).map(plain(pack))
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
        return ds.map(plain(inputs), num_parallel_calls=tf.data.AUTOTUNE,
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
            plain(self._inputs), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True).prefetch(tf.data.AUTOTUNE)

    def score_matrix(self, scores, start=0):
        """Scores of consecutive grid pairs from `start` as `[captions, images]`.

        Pairs not given are NaN; useful to assemble resumed runs.
        """
        matrix = np.full(self.num_pairs, np.nan, np.float64)
        scores = np.asarray(scores, np.float64).reshape(-1)
        matrix[int(start):int(start) + len(scores)] = scores
        return matrix.reshape(self.num_captions, self.num_images)
