"""The ViLBERT/InterBERT downstream feature LMDB (pickled dicts by image id)."""
import os

import numpy as np
from tqdm.auto import tqdm

from keras_interbert.data.convert.common import _b64_rows
from keras_interbert.data.convert.common import _run
from keras_interbert.data.convert.common import _to_int
from keras_interbert.data.convert.common import safe_unpickle
from keras_interbert.data.errors import RegionDataError


LMDB_INSTALL_HINT = (
    "the 'lmdb' converter needs the Python package 'lmdb', which is not "
    "installed; install it with `pip install lmdb` (e.g. "
    "`.venv/bin/pip install 'lmdb>=1.4'`)."
)


def _import_lmdb():
    try:
        import lmdb
    except ImportError:
        raise ImportError(LMDB_INSTALL_HINT) from None
    return lmdb


def _lmdb_array(item, names, dtype, num_boxes, width, path, record):
    for name in names:
        if name in item:
            value = item[name]
            if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
                if value.ndim == 2 and value.shape[0] == num_boxes:
                    return value
                raise RegionDataError(
                    f"{name}: array of shape {value.shape}, expected "
                    f"[num_boxes={num_boxes}, {width or 'C'}].", path, record,
                    kind="shape_mismatch",
                )
            return _b64_rows(value, name, dtype, num_boxes, width, path,
                             record)
    return None


def parse_lmdb_item(item, key, feature_dim=None, path=None):
    """The `writer.write` keyword arguments for one ViLBERT LMDB entry."""
    record = f"key {key!r}"
    if not isinstance(item, dict):
        raise RegionDataError(
            f"entry is a {type(item).__name__}, not a dict.", path, record,
            kind="malformed_record",
        )
    image_id = item.get("image_id", key)
    if isinstance(image_id, bytes):
        image_id = image_id.decode("utf-8", "replace")
    image_id = str(image_id)
    record = f"key {key!r} (image {image_id!r})"

    def get(*names):
        for name in names:
            if name in item:
                return item[name]
        raise RegionDataError(
            f"entry lacks {names[0]!r} (has {sorted(map(str, item))}).", path,
            record, kind="malformed_record",
        )

    num_boxes = _to_int(get("num_boxes", "num_bbox"), "num_boxes", path,
                        record)
    if num_boxes <= 0:
        raise RegionDataError(
            f"the image has zero regions (num_boxes={num_boxes}).", path,
            record, kind="no_regions",
        )
    out = {
        "image_id": image_id,
        "image_h": get("image_h", "image_height"),
        "image_w": get("image_w", "image_width"),
        "boxes": _lmdb_array(item, ("boxes", "bbox"), np.float32, num_boxes,
                             4, path, record),
        "features": _lmdb_array(item, ("features",), np.float32, num_boxes,
                                feature_dim, path, record),
    }
    for name in ("boxes", "features"):
        if out[name] is None:
            get(name)  # raises the "lacks" error
    probs = _lmdb_array(item, ("cls_prob", "class_probs"), np.float32,
                        num_boxes, None, path, record)
    if probs is not None:
        out["class_probs"] = probs
    return out, record


def convert_lmdb(input_path, output_dir, split="train", feature_dim=None,
                 num_classes=None, policy="raise", examples_per_shard=1000,
                 overwrite=False, box_tolerance=0.0, progress=True,
                 num_object_classes=None, splits_from=None):
    """Convert a ViLBERT/InterBERT downstream feature LMDB.

    The LMDB holds, under each image id (UTF-8 bytes), a pickled dict with
    `image_id`, `image_h`, `image_w`, `num_boxes`, `boxes` and `features`
    (base64 of float32 arrays [N,4] and [N,D], or numpy arrays), optionally
    `cls_prob` [N,C]; the entry `keys` is a pickled list of the image ids
    (without it every other entry is read, in key order).

    Unpickling untrusted data can run arbitrary code. The entries are read
    with a restricted unpickler that only accepts containers, strings,
    numbers and numpy arrays, but convert only files you trust.

    Requires the `lmdb` package; raises `ImportError` saying how to install
    it when it is missing.
    """
    lmdb = _import_lmdb()
    path = os.fspath(input_path)
    if not os.path.exists(path):
        raise RegionDataError("no such file or folder.", path,
                              kind="no_files")
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False,
                        meminit=False, subdir=os.path.isdir(path))
    except lmdb.Error as e:
        raise RegionDataError(
            f"cannot open the LMDB ({e}).", path, kind="malformed_file",
        ) from None

    def records():
        with env.begin(write=False) as txn:
            raw_keys = txn.get(b"keys")
            if raw_keys is None:
                keys = [k for k in txn.cursor().iternext(values=False)
                        if k != b"keys"]
            else:
                try:
                    keys = safe_unpickle(raw_keys)
                except Exception as e:
                    raise RegionDataError(
                        f"cannot unpickle the 'keys' entry ({e}).", path,
                        "key 'keys'", kind="malformed_file",
                    ) from None
                if not isinstance(keys, (list, tuple)):
                    raise RegionDataError(
                        f"the 'keys' entry is a {type(keys).__name__}, not a "
                        "list.", path, "key 'keys'", kind="malformed_file")
            for key in tqdm(keys, unit="img", disable=not progress):
                key_bytes = key if isinstance(key, bytes) else str(
                    key).encode("utf-8")
                key_text = key_bytes.decode("utf-8", "replace")
                record = f"key {key_text!r}"
                value = txn.get(key_bytes)
                if value is None:
                    yield (path, record), RegionDataError(
                        "listed in 'keys' but not stored.", path, record,
                        kind="missing_entry")
                    continue
                try:
                    item = safe_unpickle(value)
                except Exception as e:
                    yield (path, record), RegionDataError(
                        f"cannot unpickle the entry ({e}).", path, record,
                        kind="malformed_record")
                    continue
                try:
                    kwargs, record = parse_lmdb_item(item, key_text,
                                                     feature_dim, path)
                    yield (path, record), kwargs
                except RegionDataError as e:
                    yield (path, e.record), e

    try:
        return _run(records(), output_dir, split, examples_per_shard,
                    feature_dim, num_classes, policy, overwrite,
                    box_tolerance, [path], "lmdb", num_object_classes,
                    splits_from)
    finally:
        env.close()
