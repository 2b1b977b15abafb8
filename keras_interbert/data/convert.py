"""Convert region features from common layouts into the canonical TFRecords.

Usage:

    python -m keras_interbert.data.convert tsv  FILE.tsv ... --output-dir OUT
    python -m keras_interbert.data.convert npz  DIR_OR_FILES ... --output-dir OUT
    python -m keras_interbert.data.convert lmdb FEATURES.lmdb --output-dir OUT

Supported inputs (see `docs/data.md`):

* `tsv`: bottom-up-attention TSV, one image per line, tab-separated, no
  quoting, base64 for the arrays. Default column order (LXMERT/Oscar):
  `img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf,
  num_boxes, boxes, features`; `--fields butd` is the older
  `image_id, image_w, image_h, num_boxes, boxes, features` (note W before
  H); `--fields a,b,c` names the columns of any other file.
* `npz`: one `.npz` per image (BUTD-caffe / UNITER style).
* `lmdb`: the ViLBERT/InterBERT downstream LMDB (pickled dicts keyed by
  image id plus a pickled `keys` list); needs the `lmdb` package.

Bad records raise a `RegionDataError` naming the file, the record and the
problem, or with `--on-error skip` are left out and listed in the report.
"""

import argparse
import base64
import binascii
import glob
import io
import json
import os
import pickle
import sys
import zipfile

import numpy as np
from tqdm.auto import tqdm

from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import PolicyHandler
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.errors import check_policy
from keras_interbert.data.region_features import RegionFeatureWriter
from keras_interbert.utils.atomic import write_json_atomically

LXMERT_FIELDS = (
    "img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id",
    "attrs_conf", "num_boxes", "boxes", "features",
)
BUTD_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes",
               "features")
TSV_LAYOUTS = {"lxmert": LXMERT_FIELDS, "butd": BUTD_FIELDS}

# Column role -> accepted column names (first match wins).
_TSV_ROLES = {
    "image_id": ("img_id", "image_id"),
    "image_h": ("img_h", "image_h"),
    "image_w": ("img_w", "image_w"),
    "num_boxes": ("num_boxes",),
    "boxes": ("boxes",),
    "features": ("features",),
}
_TSV_CLASS_PROBS = ("cls_prob", "class_probs")
# Per-box side columns of the LXMERT layout (int64 ids, float32 confidences):
# checked to be base64 with one value per box, not stored.
_TSV_SIDE_COLUMNS = ("objects_id", "objects_conf", "attrs_id", "attrs_conf")

NPZ_KEYS = {
    "features": ("features", "x"),
    "boxes": ("boxes", "bbox"),
    "image_h": ("image_h", "image_height"),
    "image_w": ("image_w", "image_width"),
    "num_boxes": ("num_boxes", "num_bbox"),
    "class_probs": ("cls_prob", "class_probs", "soft_labels", "conf"),
}

LMDB_INSTALL_HINT = (
    "the 'lmdb' converter needs the Python package 'lmdb', which is not "
    "installed; install it with `pip install lmdb` (e.g. "
    "`.venv/bin/pip install 'lmdb>=1.4'`)."
)


def tsv_fields(spec):
    """Column names from a layout name (`lxmert`, `butd`) or `a,b,c`."""
    if isinstance(spec, (list, tuple)):
        fields = tuple(spec)
    elif spec in TSV_LAYOUTS:
        fields = TSV_LAYOUTS[spec]
    else:
        fields = tuple(f.strip() for f in str(spec).split(","))
    if len(set(fields)) != len(fields) or not all(fields):
        raise ValueError(f"TSV fields must be distinct names; got {fields}.")
    roles = {}
    for role, names in _TSV_ROLES.items():
        found = [n for n in names if n in fields]
        if not found:
            raise ValueError(
                f"TSV fields {list(fields)} lack a {role} column (one of "
                f"{list(names)})."
            )
        roles[role] = found[0]
    probs = [n for n in _TSV_CLASS_PROBS if n in fields]
    roles["class_probs"] = probs[0] if probs else None
    return fields, roles


def _to_int(text, name, path, record):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RegionDataError(
            f"{name} must be an integer; received {text!r}.", path, record,
            kind="malformed_row",
        ) from None
    if not np.isfinite(value) or value != int(value):
        raise RegionDataError(
            f"{name} must be an integer; received {text!r}.", path, record,
            kind="malformed_row",
        )
    return int(value)


def _decode_b64(value, name, path, record):
    if isinstance(value, str):
        value = value.encode("ascii", errors="replace")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RegionDataError(
            f"{name}: not valid base64 ({e}); the field is damaged or "
            "truncated.", path, record, kind="bad_base64",
        ) from None


def _b64_rows(value, name, dtype, num_boxes, width, path, record):
    """A `[num_boxes, width]` array from base64 (width None: inferred)."""
    data = _decode_b64(value, name, path, record)
    itemsize = np.dtype(dtype).itemsize
    return _bytes_rows(data, name, dtype, itemsize, num_boxes, width, path,
                       record)


def _bytes_rows(data, name, dtype, itemsize, num_boxes, width, path, record):
    type_name = np.dtype(dtype).name
    if width is not None:
        expected = num_boxes * width * itemsize
        if len(data) != expected:
            kind = "bad_base64"
            hint = ""
            if len(data) % (num_boxes * itemsize) == 0 and name in (
                    "features", "cls_prob", "class_probs"):
                kind = "feature_dim" if name == "features" else "num_classes"
                hint = (f" (that is width {len(data) // (num_boxes * itemsize)}"
                        f" instead of {width})")
            raise RegionDataError(
                f"{name}: decoded {len(data)} bytes, expected num_boxes "
                f"{num_boxes} x {width} x {itemsize} = {expected} "
                f"({type_name}){hint}.", path, record, kind=kind,
            )
    else:
        row_bytes = num_boxes * itemsize
        if len(data) == 0 or len(data) % row_bytes:
            raise RegionDataError(
                f"{name}: decoded {len(data)} bytes, not a whole number of "
                f"num_boxes {num_boxes} x {itemsize}-byte ({type_name}) rows; "
                "the field is damaged or num_boxes is wrong.", path, record,
                kind="bad_base64",
            )
        width = len(data) // row_bytes
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(
        num_boxes, width)


def parse_tsv_row(line, fields, roles, feature_dim=None, path=None,
                  record=None):
    """Parse one TSV line into the keyword arguments of `writer.write`."""
    cells = line.rstrip("\r\n").split("\t")
    id_index = fields.index(roles["image_id"])
    if len(cells) != len(fields) and id_index < len(cells) and cells[
            id_index].strip():
        # Name the image where the row still has its id column.
        image_id = cells[id_index]
        record = f"{record} (image {image_id!r})" if record else (
            f"image {image_id!r}")
    if len(cells) != len(fields):
        raise RegionDataError(
            f"expected {len(fields)} tab-separated columns ({', '.join(fields)})"
            f", found {len(cells)}: a truncated or malformed row.", path,
            record, kind="malformed_row",
        )
    row = dict(zip(fields, cells))
    image_id = row[roles["image_id"]]
    if image_id.strip():
        record = f"{record} (image {image_id!r})" if record else (
            f"image {image_id!r}")
    num_boxes = _to_int(row[roles["num_boxes"]], "num_boxes", path, record)
    if num_boxes <= 0:
        raise RegionDataError(
            f"the image has zero regions (num_boxes={num_boxes}).", path,
            record, kind="no_regions",
        )
    for column in _TSV_SIDE_COLUMNS:
        if column in row:
            data = _decode_b64(row[column], column, path, record)
            if len(data) % num_boxes:
                raise RegionDataError(
                    f"{column}: decoded {len(data)} bytes, not a whole number "
                    f"of values for each of the num_boxes={num_boxes} boxes.",
                    path, record, kind="bad_base64",
                )
    kwargs = {
        "image_id": image_id,
        "image_h": _to_int(row[roles["image_h"]], "image_h", path, record),
        "image_w": _to_int(row[roles["image_w"]], "image_w", path, record),
        "boxes": _b64_rows(row[roles["boxes"]], "boxes", np.float32,
                           num_boxes, 4, path, record),
        "features": _b64_rows(row[roles["features"]], "features", np.float32,
                              num_boxes, feature_dim, path, record),
    }
    if roles.get("class_probs"):
        kwargs["class_probs"] = _b64_rows(
            row[roles["class_probs"]], roles["class_probs"], np.float32,
            num_boxes, None, path, record)
    return kwargs


def _expand_inputs(inputs, suffix):
    paths = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(glob.escape(item),
                                                  f"*{suffix}")))
            if not found:
                raise RegionDataError(
                    f"no *{suffix} files in this folder.", item,
                    kind="no_files")
            paths.extend(found)
        elif glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise RegionDataError(
                    "no files match this pattern.", item, kind="no_files")
            paths.extend(found)
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise RegionDataError("no such file.", item, kind="no_files")
    return paths


def _run(records, output_dir, split, examples_per_shard, feature_dim,
         num_classes, policy, overwrite, box_tolerance, inputs, source_format):
    """Feed `(source, kwargs-or-error)` pairs into a writer; returns a report."""
    check_policy(policy)
    report = ErrorReport()
    handler = PolicyHandler(policy, report)
    with RegionFeatureWriter(
        output_dir, split=split, examples_per_shard=examples_per_shard,
        feature_dim=feature_dim, num_classes=num_classes, policy=policy,
        report=report, overwrite=overwrite, box_tolerance=box_tolerance,
    ) as writer:
        for source, item in records:
            if isinstance(item, RegionDataError):
                handler.handle(item)
            else:
                writer.write(source=source, **item)
        if writer.num_written == 0:
            # An empty split (a TSV with only its header, every record
            # skipped) would enter the manifest without a feature width.
            skipped = (f"; all {report.num_skipped} records were bad"
                       if report.num_skipped else "")
            raise RegionDataError(
                f"no images to convert{skipped}; split {split!r} was not "
                "written.", ", ".join(os.fspath(p) for p in inputs),
                kind="no_images")
    shards = writer.close()
    result = {
        "source_format": source_format,
        "inputs": [os.fspath(p) for p in inputs],
        "output_dir": os.fspath(output_dir),
        "split": split,
        "num_written": writer.num_written,
        "feature_dim": writer.feature_dim,
        "num_classes": writer.num_classes,
        "shards": shards,
    }
    result.update(report.to_dict())
    return result


def convert_tsv(inputs, output_dir, split="train", fields="lxmert",
                feature_dim=None, num_classes=None, policy="raise",
                examples_per_shard=1000, overwrite=False, box_tolerance=0.0,
                progress=True):
    """Convert bottom-up-attention TSV files into canonical TFRecords.

    Args:
        inputs: TSV paths, folders (their `*.tsv`) or glob patterns.
        fields: `"lxmert"` (default), `"butd"`, or a list / comma-separated
            string of column names. Columns used: `img_id`/`image_id`,
            `img_h`/`image_h`, `img_w`/`image_w`, `num_boxes`, `boxes`
            (base64 float32 [N,4] pixels), `features` (base64 float32
            [N,D]), optional `cls_prob`/`class_probs` (base64 float32
            [N,C]). The LXMERT per-box columns `objects_id`, `attrs_id`
            (int64) and `objects_conf`, `attrs_conf` (float32) are checked
            to be base64 holding a whole number of bytes per box, but not
            stored; other columns are ignored. A first
            line equal to the column names is taken as a header.
        feature_dim: expected D; `None` takes the first row's width.
        policy: `"raise"` or `"skip"`.

    Returns:
        A report dict: `num_written`, `num_skipped`, `skipped_by_kind`,
        `skipped` (file, record, kind, problem), `shards`, ...
    """
    fields, roles = tsv_fields(fields)
    paths = _expand_inputs(inputs, ".tsv")

    def records():
        for path in paths:
            with open(path, "rb") as f, tqdm(
                total=os.path.getsize(path), unit="B", unit_scale=True,
                desc=os.path.basename(path), disable=not progress,
            ) as bar:
                for line_no, raw in enumerate(f, start=1):
                    bar.update(len(raw))
                    record = f"line {line_no}"
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield (path, record), RegionDataError(
                            f"not UTF-8 text ({e}).", path, record,
                            kind="malformed_row")
                        continue
                    if not line.strip():
                        continue
                    if line_no == 1 and tuple(
                            line.rstrip("\r\n").split("\t")) == fields:
                        continue
                    try:
                        item = parse_tsv_row(line, fields, roles, feature_dim,
                                             path, record)
                        image_id = item["image_id"]
                        if image_id.strip():
                            record = f"{record} (image {image_id!r})"
                        yield (path, record), item
                    except RegionDataError as e:
                        yield (path, record), e

    return _run(records(), output_dir, split, examples_per_shard, feature_dim,
                num_classes, policy, overwrite, box_tolerance, paths, "tsv")


def _npz_get(data, role, path, record, required=True):
    for key in NPZ_KEYS[role]:
        if key in data.files:
            try:
                value = data[key]
            except ValueError:
                raise RegionDataError(
                    f"key {key!r} holds pickled Python objects, which are not "
                    "loaded (unsafe); store a numeric array.", path, record,
                    kind="malformed_file",
                ) from None
            if role == "class_probs" and key == "conf" and value.ndim != 2:
                continue  # a per-box confidence [N], not a distribution
            return key, value
    if required:
        raise RegionDataError(
            f"no {role} array: expected one of the keys "
            f"{list(NPZ_KEYS[role])}; the file has {sorted(data.files)}.",
            path, record, kind="malformed_file",
        )
    return None, None


def read_npz_record(path):
    """The `writer.write` keyword arguments for one per-image `.npz` file."""
    stem = os.path.splitext(os.path.basename(path))[0]
    record = f"image {stem!r}"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise RegionDataError(
            f"cannot read the .npz file ({e}).", path, record,
            kind="malformed_file",
        ) from None
    try:
        with data:
            image_id = stem
            if "image_id" in data.files:
                try:
                    raw_id = data["image_id"]
                except ValueError:
                    raw_id = None
                if raw_id is not None and raw_id.ndim == 0:
                    image_id = str(raw_id.item())
                    if isinstance(raw_id.item(), bytes):
                        image_id = raw_id.item().decode("utf-8", "replace")
                    record = f"image {image_id!r}"
            _, features = _npz_get(data, "features", path, record)
            _, boxes = _npz_get(data, "boxes", path, record)
            _, image_h = _npz_get(data, "image_h", path, record)
            _, image_w = _npz_get(data, "image_w", path, record)
            key, num_boxes = _npz_get(data, "num_boxes", path, record,
                                      required=False)
            _, probs = _npz_get(data, "class_probs", path, record,
                                required=False)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise RegionDataError(
            f"cannot read the .npz file ({e}).", path, record,
            kind="malformed_file",
        ) from None
    if num_boxes is not None:
        n = _to_int(np.asarray(num_boxes).reshape(-1)[0]
                    if np.size(num_boxes) == 1 else None, key, path, record)
        rows = boxes.shape[0] if boxes.ndim >= 1 else -1
        if n != rows:
            raise RegionDataError(
                f"{key}={n} but boxes has {rows} rows.", path, record,
                kind="shape_mismatch",
            )
    out = {
        "image_id": image_id,
        "image_h": image_h,
        "image_w": image_w,
        "boxes": boxes,
        "features": features,
    }
    if probs is not None:
        out["class_probs"] = probs
    return out, record


def convert_npz(inputs, output_dir, split="train", feature_dim=None,
                num_classes=None, policy="raise", examples_per_shard=1000,
                overwrite=False, box_tolerance=0.0, progress=True):
    """Convert per-image `.npz` files into canonical TFRecords.

    Accepted keys (first present wins): features `features` or `x` [N,D];
    boxes `boxes` or `bbox` [N,4] pixels x1,y1,x2,y2; `image_h` or
    `image_height`; `image_w` or `image_width`; optional `num_boxes` or
    `num_bbox` (must equal N); optional class probabilities `cls_prob`,
    `class_probs`, `soft_labels`, or `conf` when it is 2-D [N,C] (a 1-D
    `conf` is a per-box confidence and is ignored). The image id is the
    scalar `image_id` key if present, else the file name without `.npz`.
    Pickled object arrays (e.g. BUTD's `info`) are never loaded.

    Args:
        inputs: `.npz` paths, folders (their `*.npz`, sorted) or globs.

    Returns:
        A report dict (see `convert_tsv`).
    """
    paths = _expand_inputs(inputs, ".npz")

    def records():
        for path in tqdm(paths, unit="img", disable=not progress):
            try:
                item, record = read_npz_record(path)
                yield (path, record), item
            except RegionDataError as e:
                yield (path, e.record), e

    return _run(records(), output_dir, split, examples_per_shard, feature_dim,
                num_classes, policy, overwrite, box_tolerance, paths, "npz")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: only containers and numpy "
            "arrays are allowed in feature LMDBs."
        )


def safe_unpickle(data):
    """`pickle.loads` restricted to containers, strings, numbers and arrays."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


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
                 overwrite=False, box_tolerance=0.0, progress=True):
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
                    box_tolerance, [path], "lmdb")
    finally:
        env.close()


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.data.convert",
        description="Convert region features into the canonical sharded "
                    "TFRecord format (see docs/data.md).",
    )
    sub = parser.add_subparsers(dest="format", required=True,
                                metavar="{tsv,npz,lmdb}")

    def common(p):
        p.add_argument("--output-dir", required=True,
                       help="folder for the shards and manifest.json")
        p.add_argument("--split", default="train",
                       help="split name used in file names (default: train)")
        p.add_argument("--examples-per-shard", type=int, default=1000)
        p.add_argument("--feature-dim", type=int, default=None,
                       help="expected feature width D (default: from the "
                            "first image)")
        p.add_argument("--num-classes", type=int, default=None,
                       help="expected class_probs width C")
        p.add_argument("--on-error", choices=("raise", "skip"),
                       default="raise",
                       help="stop at the first bad record (raise, default) "
                            "or leave it out and report it (skip)")
        p.add_argument("--report", default=None,
                       help="also write the full report to this JSON file")
        p.add_argument("--box-tolerance", type=float, default=0.0,
                       help="pixels a box may stick out of the image")
        p.add_argument("--overwrite", action="store_true",
                       help="replace the split if it already exists")
        p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("tsv", help="bottom-up-attention TSV (base64 fields)")
    p.add_argument("inputs", nargs="+", help="TSV files, folders or globs")
    p.add_argument("--fields", default="lxmert",
                   help="column layout: lxmert (img_id,img_h,img_w,objects_id,"
                        "objects_conf,attrs_id,attrs_conf,num_boxes,boxes,"
                        "features; default), butd (image_id,image_w,image_h,"
                        "num_boxes,boxes,features) or a comma-separated list")
    common(p)
    p = sub.add_parser("npz", help="one .npz per image")
    p.add_argument("inputs", nargs="+", help=".npz files, folders or globs")
    common(p)
    p = sub.add_parser("lmdb", help="ViLBERT/InterBERT feature LMDB "
                                    "(needs the lmdb package)")
    p.add_argument("input", help="the .lmdb folder or file")
    common(p)
    return parser


def main(argv=None):
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.report:
        # Checked before any work: a report that cannot be written must not
        # fail after the data was converted.
        folder = os.path.dirname(os.path.abspath(args.report))
        if not os.path.isdir(folder):
            parser.error(f"--report {args.report}: the folder {folder} does "
                         "not exist.")
        if os.path.isdir(args.report):
            parser.error(f"--report {args.report} is a folder; give a file "
                         "name.")
    kwargs = dict(
        split=args.split, feature_dim=args.feature_dim,
        num_classes=args.num_classes, policy=args.on_error,
        examples_per_shard=args.examples_per_shard, overwrite=args.overwrite,
        box_tolerance=args.box_tolerance, progress=not args.no_progress,
    )
    try:
        if args.format == "tsv":
            try:
                tsv_fields(args.fields)
            except ValueError as e:
                parser.error(str(e))
            result = convert_tsv(args.inputs, args.output_dir,
                                 fields=args.fields, **kwargs)
        elif args.format == "npz":
            result = convert_npz(args.inputs, args.output_dir, **kwargs)
        else:
            result = convert_lmdb(args.input, args.output_dir, **kwargs)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RegionDataError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, RegionDataError):
            print("nothing was written; rerun with --on-error skip to leave "
                  "bad records out and list them.", file=sys.stderr)
        return 1
    if args.report:
        write_json_atomically(args.report, result, ensure_ascii=False)
    shown = dict(result)
    if len(shown["skipped"]) > 20:
        shown["skipped"] = shown["skipped"][:20] + [
            f"... {len(result['skipped']) - 20} more (see --report)"]
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
