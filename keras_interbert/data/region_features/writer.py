"""`RegionFeatureWriter`: images' region features into canonical shards."""
import os
import re

import tensorflow as tf

from keras_interbert.data.errors import PolicyHandler
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features.record_format import FORMAT_NAME
from keras_interbert.data.region_features.record_format import FORMAT_VERSION
from keras_interbert.data.region_features.record_format import MANIFEST_NAME
from keras_interbert.data.region_features.record_format import _manifest_binding
from keras_interbert.data.region_features.record_format import _object_class_binding
from keras_interbert.data.region_features.record_format import _record_name
from keras_interbert.data.region_features.record_format import _write_json_atomic
from keras_interbert.data.region_features.record_format import manifest_shard_names
from keras_interbert.data.region_features.record_format import read_manifest
from keras_interbert.data.region_features.record_format import serialize_region_example
from keras_interbert.data.region_features.record_format import shard_name
from keras_interbert.data.region_features.record_format import validate_object_classes
from keras_interbert.data.region_features.record_format import validate_region_record
from keras_interbert.utils.atomic import fsync_directory
from keras_interbert.utils.atomic import fsync_path


class RegionFeatureWriter:
    """Writes images' region features into the canonical sharded TFRecords.

    One `tf.train.Example` per image goes into `{directory}/{split}-NNNNN.tfrecord`
    (`examples_per_shard` images per shard); `close()` writes or updates
    `{directory}/manifest.json` with the feature width, the class count and
    the shard list. Every record is validated first (see
    `validate_region_record`), so nothing invalid enters the files: a bad
    record raises a `RegionDataError`, or under `policy="skip"` is left out
    and listed in `report`. Shards are written under a `.tmp` name and get
    their final names in `close()`; leaving the `with` block by an exception
    (or calling `abort()`) deletes this run's files and leaves the manifest
    and any earlier shards untouched. Replacing a split (`overwrite=True`)
    never writes over a file the manifest lists: the new shards get fresh
    names (`{split}-NNNNN.gG.tfrecord`), the manifest is replaced atomically
    to list them, the old shards are deleted, and then (by hard links, where
    the file system has them, and a second manifest update) the new shards
    take the ordinary names. A kill at any point leaves the old split or the
    new one whole; leftover unlisted files with this split's own names are
    deleted by the next conversion of the split.

    Args:
        directory: output folder (created if missing).
        split: split name used in the file names and the manifest.
        examples_per_shard: images per shard file.
        feature_dim: expected feature width D; `None` takes it from the
            manifest already in `directory`, else from the first image.
        num_classes: class-probability width C; `None` takes it from the
            manifest, else from the first image (no `class_probs` there means
            the data set stores none). Either all images have `class_probs`
            or none.
        policy: `"raise"` or `"skip"` (see above).
        report: an `ErrorReport` that collects skipped records.
        overwrite: replace this split's shards if they already exist;
            otherwise existing shards for `split` raise `FileExistsError`.
        box_tolerance: how many pixels a box may stick out of the image.
        num_object_classes: the detector's class count, when images come
            with `object_ids` (e.g. 1600 for Visual Genome bottom-up
            features): every id must lie below it, and the manifest records
            it, which lets pretraining build masked-region targets from the
            ids. `None` takes it from the manifest's other splits, else
            leaves it unstated. Either all images of a split have
            `object_ids` (and `object_confs`) or none.
        source: optional dict of JSON values saying what made the features
            (the converters give `{"kind": "converted", "format": ...,
            "inputs": [...]}`), kept in the manifest's entry for the split;
            `keras_interbert.data.feature_source_of` reads it.

    Examples:

    >>> import tempfile, numpy as np
    >>> out = tempfile.mkdtemp()
    >>> with RegionFeatureWriter(out, split="val") as writer:
    ...     _ = writer.write("img1", 480, 640,
    ...                      boxes=np.array([[0, 0, 10, 20]], "float32"),
    ...                      features=np.ones((1, 8), "float32"))
    >>> [os.path.basename(p) for p in writer.close()]
    ['val-00000.tfrecord']
    """

    def __init__(
        self,
        directory,
        split="train",
        examples_per_shard=1000,
        feature_dim=None,
        num_classes=None,
        policy="raise",
        report=None,
        overwrite=False,
        box_tolerance=0.0,
        num_object_classes=None,
        source=None,
    ):
        if source is not None and not isinstance(source, dict):
            raise ValueError(
                "source must be a dict of JSON values saying what made the "
                f"features (or None); received {type(source).__name__}.")
        self.source = source
        if not split or not isinstance(split, str) or os.sep in split:
            raise ValueError(
                f"split must be a non-empty name without '{os.sep}'; "
                f"received {split!r}."
            )
        if int(examples_per_shard) < 1:
            raise ValueError(
                "examples_per_shard must be >= 1; received "
                f"{examples_per_shard!r}."
            )
        self.directory = str(directory)
        self.split = split
        self.examples_per_shard = int(examples_per_shard)
        self.box_tolerance = float(box_tolerance)
        self._handler = PolicyHandler(policy, report, what="images")
        self.report = self._handler.report
        os.makedirs(self.directory, exist_ok=True)

        self._manifest = read_manifest(self.directory)
        binding = _manifest_binding(self._manifest, split)
        if binding is not None:
            m_dim, m_classes, others = binding
            manifest_path = os.path.join(self.directory, MANIFEST_NAME)
            if feature_dim is not None and feature_dim != m_dim:
                raise RegionDataError(
                    f"feature_dim {feature_dim} differs from the manifest's "
                    f"feature_dim {m_dim} (splits {others}); write to another "
                    "folder.", manifest_path, kind="feature_dim",
                )
            if num_classes is not None and num_classes != m_classes:
                raise RegionDataError(
                    f"num_classes {num_classes} differs from the manifest's "
                    f"num_classes {m_classes} (splits {others}); write to "
                    "another folder.", manifest_path, kind="num_classes",
                )
            feature_dim, num_classes = m_dim, m_classes
            self._expect_probs = m_classes is not None
        else:
            self._expect_probs = True if num_classes is not None else None
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.num_object_classes = _object_class_binding(
            self._manifest, split, num_object_classes, self.directory)
        # Whether the images carry object_ids / object_confs: set by the
        # first image written, then required of every other one.
        self._expect_ids = None
        self._expect_confs = None

        # This split's shards are exactly those its manifest entry lists
        # (`train-*.tfrecord` would also match `train-extra`'s), plus any
        # unlisted file with one of the names this writer would use.
        listed = manifest_shard_names(self._manifest, split, self.directory)
        own_name = re.compile(rf"^{re.escape(split)}-\d{{5}}\.tfrecord$")
        unlisted = sorted(n for n in os.listdir(self.directory)
                          if own_name.match(n) and n not in (listed or ()))
        if (listed is not None or unlisted) and not overwrite:
            raise FileExistsError(
                f"{self.directory} already holds split {split!r} "
                f"({len(listed or ()) + len(unlisted)} shard files); pass "
                "overwrite=True to replace it."
            )
        # Any file with this split's own names (`train-NNNNN.tfrecord`, the
        # fresh names of a replacement `train-NNNNN.gG.tfrecord`, their
        # `.tmp`) that no manifest entry lists is a leftover of an
        # interrupted conversion, deleted once this one is recorded.
        self._own_file = re.compile(
            rf"^{re.escape(split)}-\d{{5}}(\.g\d+)?\.tfrecord(\.tmp)?$")

        self._shards = []  # finished: dicts with path/num_examples/num_boxes
        self._writer = None
        self._tmp_path = None
        self._shard_examples = 0
        self._shard_boxes = 0
        self._shard_ids = []
        self._ids = set()
        self._closed = False
        self.num_written = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def write(self, image_id, image_h, image_w, boxes, features,
              class_probs=None, source=None, object_ids=None,
              object_confs=None):
        """Validate and append one image; returns `False` if it was skipped.

        Args:
            image_id: unique (per split) id, a string (ints are turned into
                their decimal string).
            image_h, image_w: image size in pixels.
            boxes: float `[N, 4]`, pixel `x1, y1, x2, y2`.
            features: `[N, D]`; stored as float16.
            class_probs: optional `[N, C]` float, stored as float16.
            source: `(path, record)` of the input this image comes from, used
                in error messages.
            object_ids: optional `[N]` detector class ids (whole numbers >= 0,
                below `num_object_classes` when stated).
            object_confs: optional `[N]` detector confidences in [0, 1].
        """
        if self._closed:
            raise RuntimeError("write() on a closed RegionFeatureWriter.")
        path, record = source if source is not None else (None, None)
        try:
            values = validate_region_record(
                image_id, image_h, image_w, boxes, features, class_probs,
                feature_dim=self.feature_dim,
                num_classes=self.num_classes,
                expect_class_probs=self._expect_probs,
                box_tolerance=self.box_tolerance,
                path=path, record=record,
            )
            if values[0] in self._ids:
                raise RegionDataError(
                    f"image_id {values[0]!r} was already written to split "
                    f"{self.split!r}.", path, _record_name(values[0], record),
                    kind="duplicate_image_id",
                )
            where = _record_name(values[0], record)
            ids, confs = validate_object_classes(
                object_ids, object_confs, values[3].shape[0],
                self.num_object_classes, path, where)
            for name, given, expected in (
                    ("object_ids", ids, self._expect_ids),
                    ("object_confs", confs, self._expect_confs)):
                if expected is not None and (given is not None) != expected:
                    raise RegionDataError(
                        f"{name} {'missing' if expected else 'given'}: the "
                        f"first image of split {self.split!r} "
                        f"{'had' if expected else 'had no'} {name}; all "
                        "images must agree.", path, where,
                        kind="object_classes_mismatch")
        except RegionDataError as e:
            self._handler.handle(e)
            return False
        image_id, image_h, image_w, boxes, features, probs = values
        if self._expect_ids is None:
            self._expect_ids = ids is not None
            self._expect_confs = confs is not None
        if self.feature_dim is None:
            self.feature_dim = int(features.shape[1])
        if self._expect_probs is None:
            self._expect_probs = probs is not None
            self.num_classes = None if probs is None else int(probs.shape[1])
        self._ids.add(image_id)
        if self._writer is None:
            self._open_shard()
        self._writer.write(serialize_region_example(
            image_id, image_h, image_w, boxes, features, probs, ids, confs
        ))
        self._shard_examples += 1
        self._shard_boxes += int(boxes.shape[0])
        self._shard_ids.append(image_id)
        self.num_written += 1
        if self._shard_examples >= self.examples_per_shard:
            self._finish_shard()
        return True

    @property
    def has_object_ids(self):
        """Whether this split's images carry `object_ids` (None: no image yet)."""
        return self._expect_ids

    def match_layout(self, other):
        """Require of the next images the layout `other` has written.

        For writers of several splits of one folder fed from one source:
        once one of them has seen an image, the others take its feature
        width, class count and optional fields, so a disagreement fails at
        the image instead of at `close()`, when other splits are written.
        """
        if other is self or other.num_written == 0 or self.num_written:
            return
        self.feature_dim = other.feature_dim
        self.num_classes = other.num_classes
        self._expect_probs = other._expect_probs
        self._expect_ids = other._expect_ids
        self._expect_confs = other._expect_confs

    def _open_shard(self):
        name = shard_name(self.split, len(self._shards))
        self._tmp_path = os.path.join(self.directory, name + ".tmp")
        self._writer = tf.io.TFRecordWriter(self._tmp_path)
        self._shard_examples = 0
        self._shard_boxes = 0
        self._shard_ids = []

    def _finish_shard(self):
        # Shards keep their .tmp name until close(), so that an aborted run
        # (or one that overwrites a split) never leaves a mix of old and new.
        self._writer.close()
        self._writer = None
        self._shards.append({
            "path": os.path.basename(self._tmp_path)[: -len(".tmp")],
            "num_examples": self._shard_examples,
            "num_boxes": self._shard_boxes,
            # Readers take a split's image ids from here instead of a pass
            # over every record (`region_image_ids`).
            "image_ids": self._shard_ids,
        })
        self._tmp_path = None

    def _listed_names(self, manifest):
        """Every shard name `manifest` lists, for any split."""
        names = set()
        for split in (manifest or {}).get("splits") or {}:
            names.update(manifest_shard_names(manifest, split,
                                              self.directory) or ())
        return names

    def _fresh_generation(self, listed):
        """A generation `G` whose names `{split}-NNNNN.gG.tfrecord` are
        neither listed nor on the disk."""
        pattern = re.compile(
            rf"^{re.escape(self.split)}-\d{{5}}\.g(\d+)\.tfrecord")
        used = [int(m.group(1)) for n in set(os.listdir(self.directory)) | listed
                for m in [pattern.match(n)] if m]
        return max(used, default=0) + 1

    def _remove_leftovers(self, manifest):
        """Deletes this split's unlisted files (own names only)."""
        listed = self._listed_names(manifest)
        for name in sorted(os.listdir(self.directory)):
            if self._own_file.match(name) and name not in listed:
                try:
                    os.remove(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass

    def _record(self, manifest, shards):
        manifest["splits"][self.split] = {
            "shards": shards,
            "num_examples": sum(s["num_examples"] for s in shards),
            "num_boxes": sum(s["num_boxes"] for s in shards),
            "num_skipped": self.report.num_skipped,
            "object_ids": bool(self._expect_ids),
            "object_confs": bool(self._expect_confs),
        }
        if self.source is not None:
            # What made these features (a converter's input format):
            # `keras_interbert.data.feature_source_of` reads it.
            manifest["splits"][self.split]["source"] = self.source
        _write_json_atomic(
            os.path.join(self.directory, MANIFEST_NAME), manifest
        )

    def close(self):
        """Finish the last shard, write the manifest; returns the shard paths."""
        if self._closed:
            return [os.path.join(self.directory, s["path"])
                    for s in self._shards]
        if self._writer is not None:
            self._finish_shard()
        manifest = read_manifest(self.directory) or {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "splits": {},
        }
        # Another writer (e.g. one per split) may have closed in the meantime.
        binding = _manifest_binding(manifest, self.split)
        if binding is not None:
            m_dim, m_classes, others = binding
            if self.feature_dim is None:
                self.feature_dim = m_dim
            if self._expect_probs is None:
                self.num_classes = m_classes
            if (self.feature_dim, self.num_classes) != (m_dim, m_classes):
                self.abort()
                raise RegionDataError(
                    f"split {self.split!r} has (feature_dim, num_classes) = "
                    f"({self.feature_dim}, {self.num_classes}) but the splits "
                    f"{others} in the same folder have ({m_dim}, {m_classes}); "
                    "nothing was written for this split.",
                    os.path.join(self.directory, MANIFEST_NAME),
                    kind="feature_dim",
                )
        for shard in self._shards:  # on the disk before they count
            fsync_path(os.path.join(self.directory, shard["path"] + ".tmp"))
        manifest.update({
            "feature_dim": self.feature_dim,
            "feature_dtype": "float16",
            "num_classes": self.num_classes,
            "class_probs_dtype": "float16",
            "box_format": "x1,y1,x2,y2 in pixels (float32)",
        })
        if self.num_object_classes is not None:
            manifest["num_object_classes"] = self.num_object_classes
        else:
            manifest.setdefault("num_object_classes", None)
        # The manifest is the commit point: it only ever lists complete
        # shards that exist. New shards never take a name it lists, so a
        # replaced split's old shards stay whole until the manifest names the
        # new ones; only then are the old ones deleted. A kill at any step
        # leaves the old split or the new one, plus unlisted leftovers with
        # this split's own names, which the next conversion deletes.
        old = manifest_shard_names(manifest, self.split, self.directory) or []
        listed = self._listed_names(manifest)
        if not listed.intersection(s["path"] for s in self._shards):
            for shard in self._shards:
                final = os.path.join(self.directory, shard["path"])
                os.replace(final + ".tmp", final)
            fsync_directory(self.directory)
            self._record(manifest, self._shards)
        else:
            # Replacing a split under the same names: first under fresh
            # names, then (hard links, where the file system has them) back
            # under the ordinary ones.
            generation = self._fresh_generation(listed)
            fresh = [dict(s, path=f"{s['path'][:-len('.tfrecord')]}"
                                  f".g{generation}.tfrecord")
                     for s in self._shards]
            for shard, new in zip(self._shards, fresh):
                os.replace(
                    os.path.join(self.directory, shard["path"] + ".tmp"),
                    os.path.join(self.directory, new["path"]))
            fsync_directory(self.directory)
            self._record(manifest, fresh)
            self._remove_old(old, fresh)
            try:
                for shard, new in zip(self._shards, fresh):
                    final = os.path.join(self.directory, shard["path"])
                    if os.path.lexists(final):  # an unlisted leftover
                        os.remove(final)
                    os.link(os.path.join(self.directory, new["path"]), final)
                fsync_directory(self.directory)
                self._record(manifest, self._shards)
                self._remove_old([s["path"] for s in fresh], self._shards)
            except OSError:  # e.g. no hard links here: the fresh names stay
                manifest = read_manifest(self.directory)
                names = manifest_shard_names(manifest, self.split,
                                             self.directory)
                if names != [s["path"] for s in self._shards]:
                    self._shards = fresh
        self._remove_old(old, self._shards)
        self._remove_leftovers(manifest)
        self._closed = True
        self._handler.finish()
        return [os.path.join(self.directory, s["path"]) for s in self._shards]

    def _remove_old(self, names, keep):
        keep = {s["path"] for s in keep}
        for name in names:
            path = os.path.join(self.directory, name)
            if name not in keep and os.path.lexists(path):
                os.remove(path)

    def abort(self):
        """Delete what this writer wrote; the manifest is left as it was."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp_path and os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)
        for shard in self._shards:
            path = os.path.join(self.directory, shard["path"] + ".tmp")
            if os.path.exists(path):
                os.remove(path)
        self._shards = []
        self._closed = True
