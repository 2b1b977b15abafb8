"""Hard-negative pools for retrieval training (docs/architecture.md §4.1, §7 #7).

The original code reads a precomputed `hard_negative.pkl` whose construction
is not published. This module builds the recommended replacement: for every
image of a split, its `k` nearest images by cosine similarity of the mean
region feature (the global image slot). Rank 0 is always the image itself;
ranks `1 .. k-1` are the `k-1` most similar other images, most similar first
(ties: lower image index first). The retrieval pipeline samples from ranks
`1 .. k-1`.

Pool files are `.npz` (no pickles) with

- `image_ids`: unicode `[N]`, the images of the pool, row `n` is image `n`;
- `neighbours`: int32 `[N, k]`, indices into `image_ids`, column 0 = `n`;
- `scores`: float32 `[N, k]`, the cosine similarities;
- `metadata`: a JSON string (`format`, `version`, `method`, `k`, `split`,
  `source`).

Command line:
`python -m keras_interbert.data.hard_negatives --regions DIR --split train
--k 100 --out FILE.npz [--block-size 1024] [--no-progress]`; prints a JSON
summary. `k` larger than the number of images is reduced to it.
"""
import argparse
import json
import os
import sys

import numpy as np

from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_table import RegionTable

FORMAT_NAME = "keras_interbert.hard_negatives"
FORMAT_VERSION = 1


class HardNegativePool:
    """Per-image lists of confusable images, rank 0 being the image itself.

    Args:
        image_ids: `N` image id strings.
        neighbours: int `[N, k]` indices into `image_ids`; `neighbours[n, 0]`
            must be `n` and no later rank may be `n`.
        scores: optional float `[N, k]` similarities (for inspection).
        metadata: optional dict saved with the pool.
        path: where the pool was read from (for error messages).

    Examples:
    ```python
    pool = build_hard_negative_pool("shapes/regions", split="train", k=100)
    pool.save("hard_negatives_train.npz")
    pool = HardNegativePool.load("hard_negatives_train.npz")
    pool.neighbours[0, 1:]   # the 99 images most similar to image 0
    ```
    """

    def __init__(self, image_ids, neighbours, scores=None, metadata=None,
                 path=None):
        self.image_ids = [str(i) for i in image_ids]
        self.neighbours = np.asarray(neighbours, np.int64)
        self.scores = None if scores is None else np.asarray(scores, np.float32)
        self.metadata = dict(metadata or {})
        self.path = path
        n = len(self.image_ids)
        if self.neighbours.ndim != 2 or self.neighbours.shape[0] != n:
            raise RegionDataError(
                f"neighbours must have shape [num_images={n}, k]; received "
                f"{self.neighbours.shape}.", path, kind="bad_pool")
        if self.neighbours.shape[1] < 2:
            raise RegionDataError(
                "a pool needs k >= 2 (rank 0 is the image itself); received "
                f"k={self.neighbours.shape[1]}.", path, kind="bad_pool")
        if len(set(self.image_ids)) != n:
            raise RegionDataError("the pool's image ids are not unique.", path,
                                  kind="bad_pool")
        if self.neighbours.size and (self.neighbours.min() < 0
                                     or self.neighbours.max() >= n):
            raise RegionDataError(
                f"neighbour indices must be in [0, {n}).", path,
                kind="bad_pool")
        rows = np.arange(n)
        if (self.neighbours[:, 0] != rows).any():
            bad = int(np.flatnonzero(self.neighbours[:, 0] != rows)[0])
            raise RegionDataError(
                "rank 0 of every row must be the image itself; row "
                f"{bad} (image {self.image_ids[bad]!r}) starts with "
                f"{self.neighbours[bad, 0]}.", path, f"row {bad}",
                kind="bad_pool")
        self_later = (self.neighbours[:, 1:] == rows[:, None]).any(axis=1)
        if self_later.any():
            bad = int(np.flatnonzero(self_later)[0])
            raise RegionDataError(
                f"image {self.image_ids[bad]!r} is its own neighbour at a rank "
                "> 0; it would be paired with its own caption as a negative.",
                path, f"row {bad}", kind="bad_pool")

    @property
    def k(self):
        return int(self.neighbours.shape[1])

    def save(self, path):
        """Write the pool as `.npz` (see the module docstring)."""
        path = os.fspath(path)
        metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                    **self.metadata, "k": self.k}
        scores = (self.scores if self.scores is not None
                  else np.full(self.neighbours.shape, np.nan, np.float32))
        from keras_interbert.utils.atomic import atomic_path

        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, image_ids=np.array(self.image_ids, dtype=str),
                     neighbours=self.neighbours.astype(np.int32),
                     scores=scores.astype(np.float32),
                     metadata=np.array(json.dumps(metadata)))
        return path

    @classmethod
    def load(cls, path):
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise RegionDataError(f"cannot read the pool ({e}).", path,
                                  kind="bad_pool") from None
        missing = {"image_ids", "neighbours", "metadata"} - set(arrays)
        if missing:
            raise RegionDataError(
                f"not a hard-negative pool: missing {sorted(missing)}.", path,
                kind="bad_pool")
        metadata = json.loads(str(arrays["metadata"]))
        if metadata.get("format") != FORMAT_NAME:
            raise RegionDataError(
                f"not a hard-negative pool (format {metadata.get('format')!r}).",
                path, kind="bad_pool")
        return cls(arrays["image_ids"].tolist(), arrays["neighbours"],
                   arrays.get("scores"), metadata, path=path)

    def table_indices(self, image_ids):
        """The pool re-indexed to `image_ids`: int64 `[len(image_ids), k]`.

        Row `n` is the pool row of `image_ids[n]`, its entries are indices
        into `image_ids`. Every image must have a row, and every neighbour
        must be among `image_ids`.
        """
        image_ids = [str(i) for i in image_ids]
        position = {image_id: n for n, image_id in enumerate(image_ids)}
        own_row = {image_id: n for n, image_id in enumerate(self.image_ids)}
        missing = [i for i in image_ids if i not in own_row]
        if missing:
            raise RegionDataError(
                f"{len(missing)} images have no row in the hard-negative pool, "
                f"e.g. {missing[:3]}; build the pool on the same split.",
                self.path, kind="bad_pool")
        mapping = np.array([position.get(i, -1) for i in self.image_ids],
                           np.int64)
        rows = self.neighbours[[own_row[i] for i in image_ids]]
        out = mapping[rows]
        if (out < 0).any():
            r, c = (int(v[0]) for v in np.nonzero(out < 0))
            raise RegionDataError(
                f"neighbour {self.image_ids[rows[r, c]]!r} (rank {c}) of image "
                f"{image_ids[r]!r} is not among the images of this split.",
                self.path, kind="bad_pool")
        return out


def nearest_neighbour_pool(features, image_ids, k=100, block_size=1024,
                           progress=False, metadata=None):
    """The `k` nearest images of every image by cosine similarity.

    Args:
        features: float `[N, D]`, one vector per image (the mean region
            feature). A zero vector has similarity 0 to everything.
        image_ids: `N` ids.
        k: pool width, rank 0 included (reduced to `N` if larger).
        block_size: rows compared at once (memory `block_size * N` floats).
        progress: show a tqdm bar.

    Returns:
        A `HardNegativePool`.
    """
    features = np.asarray(features, np.float32)
    n = features.shape[0]
    if n < 2:
        raise RegionDataError(
            f"hard negatives need at least two images; received {n}.",
            kind="too_few_images")
    if len(image_ids) != n:
        raise ValueError(f"{len(image_ids)} image ids for {n} feature rows.")
    k = min(int(k), n)
    if k < 2:
        raise ValueError(f"k must be >= 2; received {k}.")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.where(norms > 0, norms, 1.0)
    neighbours = np.empty((n, k), np.int64)
    scores = np.empty((n, k), np.float32)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="nearest images", unit="img")
    columns = np.arange(n)
    for begin in range(0, n, int(block_size)):
        end = min(n, begin + int(block_size))
        sims = unit[begin:end] @ unit.T
        rows = np.arange(end - begin)
        own = sims[rows, begin + rows].copy()
        # Rank 0 is the image itself, whatever its similarity to duplicates.
        sims[rows, begin + rows] = np.inf
        if k < n:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(columns, sims.shape)
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -top_sims), axis=1)
        chosen = np.take_along_axis(top, order, axis=1)
        chosen_sims = np.take_along_axis(top_sims, order, axis=1)
        chosen_sims[:, 0] = own
        neighbours[begin:end] = chosen
        scores[begin:end] = chosen_sims
        if bar is not None:
            bar.update(end - begin)
    if bar is not None:
        bar.close()
    info = {"method": "cosine of mean region features", "k": k}
    info.update(metadata or {})
    return HardNegativePool(image_ids, neighbours, scores, info)


def contrastive_image_embeddings(model, table, batch_size=256):
    """`[N, E]` contrastive embeddings of every image of a `RegionTable`.

    Each image goes through `model.backbone` alone (one empty text token)
    and `model.itc_head.embed_image`: the space the contrastive task ranks
    in, where nearby images are the ones their captions confuse.
    """
    import keras

    from keras_interbert.evaluation.two_stage import image_pooled_vectors

    head = getattr(model, "itc_head", None)
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no contrastive head (`itc_head`); "
            "contrastive hard negatives need a model pretrained with the "
            "image-text contrastive task.")
    pooled = image_pooled_vectors(model.backbone, table, batch_size)
    return keras.ops.convert_to_numpy(
        head.embed_image(pooled)).astype(np.float32)


def contrastive_pool(model, table, k=16, batch_size=256, progress=False):
    """The `k` nearest images of every image in the model's contrastive space.

    Harder than the mean-feature pool: the neighbours are the images whose
    content the pretrained model already finds alike, so their captions are
    the mistakes finetuning has to learn not to make.
    """
    return nearest_neighbour_pool(
        contrastive_image_embeddings(model, table, batch_size),
        table.image_ids, k=k, progress=progress,
        metadata={"method": "cosine of the model's contrastive image "
                  "embeddings"})


def build_hard_negative_pool(regions, split="train", k=100, block_size=1024,
                             progress=True):
    """The nearest-neighbour pool of a split of canonical region files.

    Each image is represented by the mean of all its stored region features
    (the global slot of finetuning).
    """
    table = RegionTable.from_files(regions, split=split, max_regions=1,
                                   progress=progress)
    return nearest_neighbour_pool(
        table.global_features(), table.image_ids, k=k, block_size=block_size,
        progress=progress,
        metadata={"split": split, "source": os.fspath(regions)
                  if isinstance(regions, (str, os.PathLike)) else None})


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.data.hard_negatives",
        description="Build a hard-negative pool: per image the k nearest "
                    "images by cosine similarity of mean region features.")
    parser.add_argument("--regions", required=True,
                        help="canonical region folder, glob or shard file")
    parser.add_argument("--split", default="train")
    parser.add_argument("--k", type=int, default=100,
                        help="pool width including rank 0 (the image itself)")
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        pool = build_hard_negative_pool(
            args.regions, split=args.split, k=args.k,
            block_size=args.block_size, progress=not args.no_progress)
    except (RegionDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = pool.save(args.out)
    print(json.dumps({"out": out, "num_images": len(pool.image_ids),
                      "k": pool.k, "split": args.split}))
    return 0


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
