"""A split's region slots in memory, gathered by image index in the graph.

Shared by the finetuning pipelines (retrieval, multiple choice) and the
hard-negative pools: any caption can be paired with any image of the split.
"""
import os

import numpy as np
import tensorflow as tf

from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import read_manifest
from keras_interbert.data.region_features import region_dataset
from keras_interbert.data.region_features import region_files
from keras_interbert.data.tracing import plain
from keras_interbert.preprocessing.region_packer import mean_of_first
from keras_interbert.preprocessing.region_packer import region_locations
from keras_interbert.preprocessing.region_packer import region_slots


class RegionTable:
    """The backbone region slots of every image of a split, held in memory.

    Each image gets the layout of `InterBERTRegionPacker` (its functions
    `mean_of_first` and `region_slots`): slot 0 the global token (mean of
    the image's region features, location `[0, 0, 1, 1, 1]`), then its
    first `max_regions` regions, then padding. The table keeps the
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
            # What `InterBERTRegionPacker` puts in the slots, without the
            # padding (`gather` adds it): its global mean and locations.
            feats = example["features"]
            num = tf.shape(feats)[0]
            kept = tf.minimum(num, max_regions)
            mean = mean_of_first(
                feats, num if global_feature == "all_regions" else kept)
            locs = region_locations(example["boxes"], example["image_h"],
                                    example["image_w"])
            return {"image_id": example["image_id"], "global": mean,
                    "features": tf.cast(feats[:kept], tf.float16),
                    "locations": locs[:kept]}

        ds = region_dataset(paths).map(plain(slots), num_parallel_calls=4,
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
        # Rows past an image's regions read row 0; `region_slots` zeroes them.
        rows = tf.where(offsets < kept[..., tf.newaxis],
                        starts[..., tf.newaxis] + offsets, 0)
        return region_slots(
            tf.gather(self._global, index),
            tf.cast(tf.gather(self._features, rows), tf.float32),
            tf.gather(self._locations, rows), kept, R)


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
