"""Convert region features and captions from common layouts.

Usage:

    python -m keras_interbert.data.convert tsv    FILE.tsv ... --output-dir OUT
    python -m keras_interbert.data.convert npz    DIR_OR_FILES ... --output-dir OUT
    python -m keras_interbert.data.convert lmdb   FEATURES.lmdb --output-dir OUT
    python -m keras_interbert.data.convert uniter DIR_OR_FILES ... --output-dir OUT --image-sizes SIZES.json
    python -m keras_interbert.data.convert npy    DIR_OR_FILES ... --output-dir OUT
    python -m keras_interbert.data.convert karpathy dataset_flickr30k.json --output-dir DATA
    python -m keras_interbert.data.convert cc     Train_GCC-training.tsv --output-dir DATA --image-id '{index}'

Supported inputs (see `docs/data.md`):

* `tsv`: bottom-up-attention TSV, one image per line, tab-separated, no
  quoting, base64 for the arrays. Default column order (LXMERT/Oscar):
  `img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf,
  num_boxes, boxes, features`; `--fields butd` is the older
  `image_id, image_w, image_h, num_boxes, boxes, features` (note W before
  H); `--fields a,b,c` names the columns of any other file.
* `npz`: one `.npz` per image (BUTD-caffe style, pixel boxes).
* `lmdb`: the ViLBERT/InterBERT downstream LMDB (pickled dicts keyed by
  image id plus a pickled `keys` list); needs the `lmdb` package.
* `uniter`: UNITER's `.npz` per image (`norm_bb`, normalised boxes, and no
  image size: sizes from a JSON side file or one stated size).
* `npy`: vilbert-multi-task's per-image `.npy` dictionaries.
* `karpathy`, `cc`: captions (see `caption_converters`), written as
  `<output-dir>/captions_<language>.jsonl`.

Feature converters take `--splits-from CAPTIONS` to put each image into the
split its captions name. Bad records raise a `RegionDataError` naming the
file, the record and the problem, or with `--on-error skip` are left out and
listed in the report.
"""

import argparse
import base64
import binascii
import glob
import io
import json
import os
import pickle
import re
import sys
import zipfile

import numpy as np
from tqdm.auto import tqdm

from keras_interbert.data.caption_converters import KARPATHY_IMAGE_IDS
from keras_interbert.data.caption_converters import check_cc_image_id_rule
from keras_interbert.data.caption_converters import convert_cc
from keras_interbert.data.caption_converters import convert_karpathy
from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import PolicyHandler
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.errors import check_policy
from keras_interbert.data.region_features import RegionFeatureWriter
from keras_interbert.data.region_features import _validate_caption
from keras_interbert.data.region_features import read_json_lines
from keras_interbert.utils.atomic import write_json_atomically
from keras_interbert.utils.paths import check_plain_name

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
# The detector's class id (int64) and confidence (float32) of each box:
# stored as `object_ids` / `object_confs` (masked-region targets).
_TSV_OBJECT_IDS = ("objects_id", "object_ids")
_TSV_OBJECT_CONFS = ("objects_conf", "object_confs")
# Per-box attribute columns of the LXMERT layout (int64 ids, float32
# confidences): checked to be base64 with one value per box, not stored.
_TSV_SIDE_COLUMNS = ("attrs_id", "attrs_conf")

NPZ_KEYS = {
    "features": ("features", "x"),
    "boxes": ("boxes", "bbox"),
    "image_h": ("image_h", "image_height"),
    "image_w": ("image_w", "image_width"),
    "num_boxes": ("num_boxes", "num_bbox"),
    "class_probs": ("cls_prob", "class_probs", "soft_labels", "conf"),
    "object_ids": ("objects_id", "object_ids", "objects"),
    "object_confs": ("objects_conf", "object_confs", "conf"),
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
    for role, names in (("class_probs", _TSV_CLASS_PROBS),
                        ("object_ids", _TSV_OBJECT_IDS),
                        ("object_confs", _TSV_OBJECT_CONFS)):
        found = [n for n in names if n in fields]
        roles[role] = found[0] if found else None
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
            if width == 1:
                raise RegionDataError(
                    f"{name}: decoded {len(data)} bytes ({len(data) / itemsize:g}"
                    f" {type_name} values), expected one per box: num_boxes "
                    f"{num_boxes} x {itemsize} = {expected} bytes.", path,
                    record, kind="bad_object_classes")
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
    for role, dtype in (("object_ids", np.int64), ("object_confs",
                                                   np.float32)):
        if roles.get(role):
            kwargs[role] = _b64_rows(row[roles[role]], roles[role], dtype,
                                     num_boxes, 1, path, record).reshape(-1)
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


class CaptionSplits:
    """Which split each image's captions name, for `--splits-from`.

    Reads a captions JSON Lines file (see `read_captions`). Every caption
    must name its split, and all captions of an image the same one; a file
    that breaks either rule raises a `RegionDataError` naming the file and
    line.

    Attributes:
        path: the captions file.
        split_of: image id -> split, in the file's order of first mention.
        line_of: image id -> the line of its first caption.
        split_names: the splits, in order of first mention.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.split_of = {}
        self.line_of = {}

        def validate(obj, path, record, line_no):
            return line_no, _validate_caption(obj, path, record)

        for line_no, caption in read_json_lines(
                self.path, validate, what="captions", kind="bad_caption"):
            image_id = caption["image_id"]
            split = caption.get("split")
            record = f"line {line_no} (image {image_id!r})"
            if split is None:
                raise RegionDataError(
                    "the caption names no split; --splits-from needs a "
                    "'split' on every caption.", self.path, record,
                    kind="no_split")
            try:
                check_plain_name(split, "split")
            except ValueError as e:
                raise RegionDataError(str(e), self.path, record,
                                      kind="bad_split") from None
            first = self.split_of.setdefault(image_id, split)
            self.line_of.setdefault(image_id, line_no)
            if first != split:
                raise RegionDataError(
                    f"split {split!r}, but the image's caption at line "
                    f"{self.line_of[image_id]} names split {first!r}; an "
                    "image belongs to one split.", self.path, record,
                    kind="split_conflict")
        if not self.split_of:
            raise RegionDataError("no captions.", self.path,
                                  kind="no_captions")
        self.split_names = list(dict.fromkeys(self.split_of.values()))


def _run(records, output_dir, split, examples_per_shard, feature_dim,
         num_classes, policy, overwrite, box_tolerance, inputs, source_format,
         num_object_classes=None, splits_from=None):
    """Feed `(source, kwargs-or-error)` pairs into writers; returns a report.

    One writer for `split`, or with `splits_from` (a captions path or a
    `CaptionSplits`) one per split its captions name, each image going to
    its captions' split. Nothing is written unless every split is complete:
    a failure aborts all writers.
    """
    check_policy(policy)
    report = ErrorReport()
    handler = PolicyHandler(policy, report)
    splits = splits_from
    if splits is not None and not isinstance(splits, CaptionSplits):
        splits = CaptionSplits(splits)
    names = [split] if splits is None else splits.split_names
    source_names = ", ".join(os.fspath(p) for p in inputs)
    writers = {}
    written_ids = set()
    uncaptioned = []
    num_uncaptioned = 0
    try:
        for name in names:
            writers[name] = RegionFeatureWriter(
                output_dir, split=name, examples_per_shard=examples_per_shard,
                feature_dim=feature_dim, num_classes=num_classes,
                policy=policy, report=report, overwrite=overwrite,
                box_tolerance=box_tolerance,
                num_object_classes=num_object_classes)
        for source, item in records:
            if isinstance(item, RegionDataError):
                handler.handle(item)
                continue
            image_id = item["image_id"]
            if splits is None:
                writer = writers[split]
            else:
                name = splits.split_of.get(str(image_id))
                if name is None:  # features of an image without captions
                    num_uncaptioned += 1
                    if len(uncaptioned) < 20:
                        uncaptioned.append(str(image_id))
                    continue
                writer = writers[name]
            if writer.write(source=source, **item):
                written_ids.add(str(image_id))
                if writer.num_written == 1:
                    for other in writers.values():
                        other.match_layout(writer)
        if splits is not None:
            missing = [i for i in splits.split_of if i not in written_ids]
            if missing and policy == "raise":
                first = missing[0]
                more = (f"; {len(missing)} captioned images lack them, e.g. "
                        f"{missing[:5]}" if len(missing) > 1 else "")
                raise RegionDataError(
                    f"image {first!r} has captions (split "
                    f"{splits.split_of[first]!r}) but no region features in "
                    f"{source_names}{more}. Convert its features too, or "
                    "drop its captions (the caption converters' --features "
                    "with --on-error skip).", splits.path,
                    f"line {splits.line_of[first]}", kind="missing_image")
            for image_id in missing:
                handler.handle(RegionDataError(
                    f"image {image_id!r} has captions (split "
                    f"{splits.split_of[image_id]!r}) but no region features "
                    f"in {source_names}.", splits.path,
                    f"line {splits.line_of[image_id]}", kind="missing_image"))
        empty = [name for name, w in writers.items() if w.num_written == 0]
        if len(empty) == len(writers):
            # An empty split (a TSV with only its header, every record
            # skipped) would enter the manifest without a feature width.
            skipped = (f"; all {report.num_skipped} records were bad"
                       if report.num_skipped else "")
            what = (f"split {split!r} was" if splits is None else
                    f"splits {names} were")
            raise RegionDataError(
                f"no images to convert{skipped}; {what} not written.",
                source_names, kind="no_images")
        for name in empty:  # (skip policy) every image of the split was bad
            writers.pop(name).abort()
        shards = []
        for writer in writers.values():
            shards.extend(writer.close())
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    some = next(iter(writers.values()))
    result = {
        "source_format": source_format,
        "inputs": [os.fspath(p) for p in inputs],
        "output_dir": os.fspath(output_dir),
        "split": split if splits is None else None,
        "num_written": sum(w.num_written for w in writers.values()),
        "feature_dim": some.feature_dim,
        "num_classes": some.num_classes,
        "object_ids": bool(some.has_object_ids),
        "num_object_classes": some.num_object_classes,
        "shards": shards,
    }
    if splits is not None:
        result.update({
            "splits_from": splits.path,
            "splits": {name: w.num_written for name, w in writers.items()},
            "empty_splits": empty,
            "num_uncaptioned": num_uncaptioned,
            "uncaptioned": uncaptioned,
        })
    result.update(report.to_dict())
    return result


def convert_tsv(inputs, output_dir, split="train", fields="lxmert",
                feature_dim=None, num_classes=None, policy="raise",
                examples_per_shard=1000, overwrite=False, box_tolerance=0.0,
                progress=True, num_object_classes=None, splits_from=None):
    """Convert bottom-up-attention TSV files into canonical TFRecords.

    Args:
        inputs: TSV paths, folders (their `*.tsv`) or glob patterns.
        fields: `"lxmert"` (default), `"butd"`, or a list / comma-separated
            string of column names. Columns used: `img_id`/`image_id`,
            `img_h`/`image_h`, `img_w`/`image_w`, `num_boxes`, `boxes`
            (base64 float32 [N,4] pixels), `features` (base64 float32
            [N,D]), optional `cls_prob`/`class_probs` (base64 float32
            [N,C]). The LXMERT per-box columns `objects_id` (int64, the
            detector's class of each box) and `objects_conf` (float32, its
            confidence) are stored as `object_ids` / `object_confs` (one
            value per box, else an error); `attrs_id` (int64) and
            `attrs_conf` (float32) are checked to be base64 holding a whole
            number of bytes per box, but not stored; other columns are
            ignored. A first line equal to the column names is taken as a
            header.
        feature_dim: expected D; `None` takes the first row's width.
        policy: `"raise"` or `"skip"`.
        num_object_classes: the detector's class count (1600 for Visual
            Genome bottom-up features): each `objects_id` must lie below it,
            and the manifest records it (see `RegionFeatureWriter`).
        splits_from: a captions JSON Lines path: each image goes into the
            split its captions name (instead of `split`); see `_run`.

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
                num_classes, policy, overwrite, box_tolerance, paths, "tsv",
                num_object_classes, splits_from)


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
            if role == "object_confs" and key == "conf" and value.ndim != 1:
                continue  # class distributions [N, C], not a confidence
            return key, value
    if required:
        raise RegionDataError(
            f"no {role} array: expected one of the keys "
            f"{list(NPZ_KEYS[role])}; the file has {sorted(data.files)}.",
            path, record, kind="malformed_file",
        )
    return None, None


def image_id_from_name(path, pattern=None):
    """The image id a per-image file's name gives.

    The file name without its extension, or with `pattern` (a regular
    expression searched in that name) its first group, else its whole match:
    `r"(\d+)$"` takes `1000092795` from `flickr30k_1000092795.npz`.
    """
    stem = os.path.basename(os.fspath(path))
    stem = os.path.splitext(stem)[0]
    if pattern is None:
        return stem
    match = re.search(pattern, stem)
    if match is None:
        raise RegionDataError(
            f"the file name {stem!r} does not match the image-id pattern "
            f"{pattern!r}.", path, kind="bad_image_id")
    return match.group(1) if match.groups() else match.group(0)


def _load_npz(path, record, read):
    """`read(data)` on an opened `.npz`; unreadable files raise, named."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise RegionDataError(
            f"cannot read the .npz file ({e}).", path, record,
            kind="malformed_file",
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise RegionDataError(
            "not an .npz archive (a single array, saved with np.save?).",
            path, record, kind="malformed_file")
    try:
        with data:
            return read(data)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise RegionDataError(
            f"cannot read the .npz file ({e}).", path, record,
            kind="malformed_file",
        ) from None


def _check_num_boxes(key, num_boxes, boxes, path, record):
    if num_boxes is None:
        return
    n = _to_int(np.asarray(num_boxes).reshape(-1)[0]
                if np.size(num_boxes) == 1 else None, key, path, record)
    rows = boxes.shape[0] if np.ndim(boxes) >= 1 else -1
    if n != rows:
        raise RegionDataError(
            f"{key}={n} but boxes has {rows} rows.", path, record,
            kind="shape_mismatch",
        )


def _object_fields(data_get, path, record):
    """`object_ids` / `object_confs` of a per-image file, when it has them."""
    out = {}
    _, ids = data_get("object_ids")
    if ids is not None:
        out["object_ids"] = ids
        _, confs = data_get("object_confs")
        if confs is not None:
            out["object_confs"] = confs
    return out


def read_npz_record(path, id_pattern=None):
    """The `writer.write` keyword arguments for one per-image `.npz` file."""
    stem = image_id_from_name(path, id_pattern)
    record = f"image {stem!r}"

    def read(data):
        image_id, where = stem, record
        if "image_id" in data.files and id_pattern is None:
            try:
                raw_id = data["image_id"]
            except ValueError:
                raw_id = None
            if raw_id is not None and raw_id.ndim == 0:
                image_id = str(raw_id.item())
                if isinstance(raw_id.item(), bytes):
                    image_id = raw_id.item().decode("utf-8", "replace")
                where = f"image {image_id!r}"

        def get(role, required=False):
            return _npz_get(data, role, path, where, required=required)

        out = {
            "image_id": image_id,
            "features": get("features", True)[1],
            "boxes": get("boxes", True)[1],
            "image_h": get("image_h", True)[1],
            "image_w": get("image_w", True)[1],
        }
        key, num_boxes = get("num_boxes")
        _check_num_boxes(key, num_boxes, out["boxes"], path, where)
        _, probs = get("class_probs")
        if probs is not None:
            out["class_probs"] = probs
        out.update(_object_fields(get, path, where))
        return out, where

    return _load_npz(path, record, read)


def read_image_sizes(path):
    """Image sizes from a JSON side file: `{image_id: [height, width]}`.

    Each value is `[height, width]` or `{"height": H, "width": W}` (also
    `"h"`/`"w"`, `"image_h"`/`"image_w"`). Returns `{id: (h, w)}`.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise RegionDataError(f"cannot read the image sizes ({e}).", path,
                              kind="no_files") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegionDataError(f"not valid JSON ({e}).", path,
                              kind="bad_image_sizes") from None
    if not isinstance(data, dict):
        raise RegionDataError(
            "expected a JSON object mapping each image id to [height, width]"
            f"; found a {type(data).__name__}.", path, kind="bad_image_sizes")
    sizes = {}
    for image_id, value in data.items():
        record = f"image {image_id!r}"
        if isinstance(value, dict):
            h = next((value[k] for k in ("height", "h", "image_h")
                      if k in value), None)
            w = next((value[k] for k in ("width", "w", "image_w")
                      if k in value), None)
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            h, w = value
        else:
            h = w = None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   and v > 0 and v == int(v) for v in (h, w)):
            raise RegionDataError(
                f"expected [height, width] (or {{'height': H, 'width': W}}) "
                f"in whole pixels > 0; found {value!r}.", path, record,
                kind="bad_image_sizes")
        sizes[str(image_id)] = (int(h), int(w))
    return sizes


def read_uniter_record(path, image_size, id_pattern=None):
    """The `writer.write` keyword arguments for one UNITER `.npz` file.

    UNITER's extraction stores per image `features` [N,D], `norm_bb`
    [N,4|6|7] (x1, y1, x2, y2 divided by the image width and height; 6-d
    adds the normalised width and height, 7-d also their product, the
    area), `conf` [N] (the top class's confidence, not stored) and
    `soft_labels` [N,C] (the class distributions, stored as `class_probs`).
    The image size, which the file lacks, comes from `image_size`: a
    `(height, width)` pair or a dict `{image_id: (height, width)}`; boxes are
    stored in pixels, `norm_bb[:, :4]` times the size.
    """
    image_id = image_id_from_name(path, id_pattern)
    record = f"image {image_id!r}"

    def read(data):
        def get(key):
            if key not in data.files:
                return None
            try:
                return data[key]
            except ValueError:
                raise RegionDataError(
                    f"key {key!r} holds pickled Python objects, which are not "
                    "loaded (unsafe); store a numeric array.", path, record,
                    kind="malformed_file") from None

        norm_bb = get("norm_bb")
        if norm_bb is None:
            raise RegionDataError(
                "no norm_bb: a UNITER .npz holds its normalised boxes under "
                f"'norm_bb' [N, 4, 6 or 7]; the file has {sorted(data.files)}"
                " (for pixel boxes use the npz converter).", path, record,
                kind="malformed_file")
        features = get("features")
        if features is None:
            raise RegionDataError(
                f"no features array; the file has {sorted(data.files)}.",
                path, record, kind="malformed_file")
        return norm_bb, features, get("soft_labels")

    norm_bb, features, soft_labels = _load_npz(path, record, read)
    if isinstance(image_size, dict):
        if image_id not in image_size:
            raise RegionDataError(
                "no image size for this image in the sizes file (UNITER's "
                ".npz files store none).", path, record, kind="no_image_size")
        image_h, image_w = image_size[image_id]
    else:
        image_h, image_w = image_size
    norm_bb = np.asarray(norm_bb, np.float64)
    if norm_bb.ndim != 2 or norm_bb.shape[1] not in (4, 6, 7):
        raise RegionDataError(
            f"norm_bb must have shape [N, 4], [N, 6] or [N, 7]; found "
            f"{norm_bb.shape}.", path, record, kind="shape_mismatch")
    if norm_bb.shape[1] >= 6 and np.all(np.isfinite(norm_bb)):
        # Columns 4 and 5 are the normalised width and height.
        gap = np.abs(norm_bb[:, 4:6] - (norm_bb[:, 2:4] - norm_bb[:, 0:2]))
        if gap.max(initial=0.0) > 5e-3:
            row = int(np.argmax(gap.max(axis=1)))
            raise RegionDataError(
                f"norm_bb columns 4 and 5 should be the box's normalised "
                f"width and height (x2 - x1, y2 - y1); row {row} is "
                f"{norm_bb[row].tolist()}: not x1,y1,x2,y2,w,h.", path,
                record, kind="box_order")
    scale = np.array([image_w, image_h, image_w, image_h], np.float64)
    out = {
        "image_id": image_id,
        "image_h": image_h,
        "image_w": image_w,
        "boxes": (norm_bb[:, :4] * scale).astype(np.float32),
        "features": features,
    }
    if soft_labels is not None:
        out["class_probs"] = soft_labels
    return out, record


def _per_file_records(paths, read, progress):
    """`((path, record), item)` for formats with one image per file;
    `read(path)` gives `(item, record)`, and a `RegionDataError` is passed
    on in the item's place (the caller's policy decides)."""
    for path in tqdm(paths, unit="img", disable=not progress):
        try:
            item, record = read(path)
            yield (path, record), item
        except RegionDataError as e:
            yield (path, e.record), e


def convert_npz(inputs, output_dir, split="train", feature_dim=None,
                num_classes=None, policy="raise", examples_per_shard=1000,
                overwrite=False, box_tolerance=0.0, progress=True,
                num_object_classes=None, splits_from=None, id_pattern=None):
    """Convert per-image `.npz` files into canonical TFRecords.

    Accepted keys (first present wins): features `features` or `x` [N,D];
    boxes `boxes` or `bbox` [N,4] pixels x1,y1,x2,y2; `image_h` or
    `image_height`; `image_w` or `image_width`; optional `num_boxes` or
    `num_bbox` (must equal N); optional class probabilities `cls_prob`,
    `class_probs`, `soft_labels`, or `conf` when it is 2-D [N,C] (a 1-D
    `conf` is a per-box confidence); optional detector class ids
    `objects_id`, `object_ids` or `objects` [N] with confidences
    `objects_conf`, `object_confs` or a 1-D `conf` [N], stored as
    `object_ids` / `object_confs`. The image id is the scalar `image_id` key
    if present, else the file name without `.npz`. Pickled object arrays
    (e.g. BUTD's `info`) are never loaded.

    Args:
        inputs: `.npz` paths, folders (their `*.npz`, sorted) or globs.
        id_pattern: take the image id from the file name with this regular
            expression (see `image_id_from_name`) instead.
        num_object_classes, splits_from: see `convert_tsv`.

    Returns:
        A report dict (see `convert_tsv`).
    """
    paths = _expand_inputs(inputs, ".npz")

    records = _per_file_records(
        paths, lambda path: read_npz_record(path, id_pattern), progress)
    return _run(records, output_dir, split, examples_per_shard, feature_dim,
                num_classes, policy, overwrite, box_tolerance, paths, "npz",
                num_object_classes, splits_from)


def convert_uniter(inputs, output_dir, image_sizes=None, image_size=None,
                   split="train", feature_dim=None, num_classes=None,
                   policy="raise", examples_per_shard=1000, overwrite=False,
                   box_tolerance=0.0, progress=True, splits_from=None,
                   id_pattern=None):
    """Convert UNITER's per-image `.npz` files (normalised boxes, no size).

    See `read_uniter_record` for the keys. The files store no image size;
    give one of:

    * `image_sizes`: a JSON file `{image_id: [height, width]}` (see
      `read_image_sizes`), the images' real sizes;
    * `image_size`: one `(height, width)` for every image. The model reads
      boxes divided by the image size, so any stated size gives the same
      model inputs; only the stored pixel boxes are nominal.

    Returns:
        A report dict (see `convert_tsv`).
    """
    if (image_sizes is None) == (image_size is None):
        raise ValueError("convert_uniter needs exactly one of image_sizes (a "
                         "JSON file of each image's size) or image_size "
                         "(height, width) for all images: UNITER's .npz "
                         "files store no image size.")
    sizes = read_image_sizes(image_sizes) if image_sizes is not None else (
        tuple(int(v) for v in image_size))
    paths = _expand_inputs(inputs, ".npz")

    records = _per_file_records(
        paths, lambda path: read_uniter_record(path, sizes, id_pattern),
        progress)
    return _run(records, output_dir, split, examples_per_shard, feature_dim,
                num_classes, policy, overwrite, box_tolerance, paths,
                "uniter", None, splits_from)


NPY_KEYS = {
    "image_h": ("image_h", "image_height"),
    "image_w": ("image_w", "image_width"),
    "boxes": ("boxes", "bbox"),
    "features": ("features",),
}


def read_npy_record(path, id_pattern=None):
    """The `writer.write` keyword arguments for one vilbert `.npy` file.

    vilbert-multi-task's `extract_features.py` saves one dictionary per
    image with `np.save`: `image_id`, `image_h`/`image_height`,
    `image_w`/`image_width`, `num_boxes`, `boxes`/`bbox` [N,4] pixels,
    `features` [N,D], and `cls_prob` [N,C] (stored as `class_probs`) or
    `objects` [N] (the detector's class ids, stored as `object_ids`). The
    dictionary is a pickle; it is read with a restricted unpickler that
    only builds containers, strings, numbers and numpy arrays.
    """
    stem = image_id_from_name(path, id_pattern)
    record = f"image {stem!r}"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if not dtype.hasobject:
                raise RegionDataError(
                    f"holds a plain {dtype} array of shape {shape}, not a "
                    "feature dictionary (np.save of a dict).", path, record,
                    kind="malformed_file")
            payload = f.read()
    except (OSError, ValueError) as e:
        raise RegionDataError(f"cannot read the .npy file ({e}).", path,
                              record, kind="malformed_file") from None
    try:
        item = safe_unpickle(payload)
    except Exception as e:
        raise RegionDataError(f"cannot unpickle the dictionary ({e}).", path,
                              record, kind="malformed_file") from None
    if isinstance(item, np.ndarray) and item.shape == ():
        item = item.item()
    if not isinstance(item, dict):
        raise RegionDataError(
            f"holds a {type(item).__name__}, not a feature dictionary.",
            path, record, kind="malformed_file")
    image_id = stem
    if "image_id" in item and id_pattern is None:
        image_id = item["image_id"]
        if isinstance(image_id, np.ndarray) and image_id.shape == ():
            image_id = image_id.item()
        if isinstance(image_id, bytes):
            image_id = image_id.decode("utf-8", "replace")
        image_id = str(image_id)
        record = f"image {image_id!r}"

    def get(role, required=True):
        names = NPY_KEYS.get(role, (role,))
        for name in names:
            if name in item:
                return name, item[name]
        if required:
            raise RegionDataError(
                f"the dictionary lacks {names[0]!r} (has "
                f"{sorted(map(str, item))}).", path, record,
                kind="malformed_record")
        return None, None

    out = {"image_id": image_id}
    for role in ("image_h", "image_w", "boxes", "features"):
        out[role] = get(role)[1]
    for role in ("boxes", "features"):
        value = out[role]
        if not (isinstance(value, np.ndarray) and value.dtype.kind in "fiu"):
            raise RegionDataError(
                f"{role} is a {type(value).__name__}, not a numeric array.",
                path, record, kind="malformed_record")
    key, num_boxes = get("num_boxes", required=False)
    _check_num_boxes(key, num_boxes, out["boxes"], path, record)
    _, probs = get("cls_prob", required=False)
    if probs is not None:
        out["class_probs"] = probs
    _, objects = get("objects", required=False)
    if objects is not None:
        out["object_ids"] = objects
    return out, record


def convert_npy(inputs, output_dir, split="train", feature_dim=None,
                num_classes=None, policy="raise", examples_per_shard=1000,
                overwrite=False, box_tolerance=0.0, progress=True,
                num_object_classes=None, splits_from=None, id_pattern=None):
    """Convert vilbert-multi-task's per-image `.npy` dictionaries.

    See `read_npy_record` for the keys. A file with both `cls_prob` and
    `objects` stores both.

    Unpickling untrusted data can run arbitrary code. The dictionaries are
    read with a restricted unpickler, but convert only files you trust.

    Returns:
        A report dict (see `convert_tsv`).
    """
    paths = _expand_inputs(inputs, ".npy")

    records = _per_file_records(
        paths, lambda path: read_npy_record(path, id_pattern), progress)
    return _run(records, output_dir, split, examples_per_shard, feature_dim,
                num_classes, policy, overwrite, box_tolerance, paths, "npy",
                num_object_classes, splits_from)


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


FEATURE_FORMATS = ("tsv", "npz", "lmdb", "uniter", "npy")
CAPTION_FORMATS = ("karpathy", "cc")


def _image_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h > 0 and w > 0:
            return h, w
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"expected HEIGHTxWIDTH in pixels, e.g. 600x800; received {text!r}.")


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.data.convert",
        description="Convert region features into the canonical sharded "
                    "TFRecord format, or captions into captions JSON Lines "
                    "(see docs/data.md and docs/your-data.md).",
    )
    sub = parser.add_subparsers(
        dest="format", required=True,
        metavar="{" + ",".join(FEATURE_FORMATS + CAPTION_FORMATS) + "}")

    def policy_options(p):
        p.add_argument("--on-error", choices=("raise", "skip"),
                       default="raise",
                       help="stop at the first bad record (raise, default) "
                            "or leave it out and report it (skip)")
        p.add_argument("--report", default=None,
                       help="also write the full report to this JSON file")

    def common(p, object_ids=True, id_pattern=False):
        p.add_argument("--output-dir", required=True,
                       help="folder for the shards and manifest.json")
        p.add_argument("--split", default=None,
                       help="split name used in file names (default: train)")
        p.add_argument("--splits-from", default=None, metavar="CAPTIONS",
                       help="a captions JSON Lines file: each image goes into "
                            "the split its captions name (instead of "
                            "--split); captioned images without features are "
                            "reported, features without captions left out")
        p.add_argument("--examples-per-shard", type=int, default=1000)
        p.add_argument("--feature-dim", type=int, default=None,
                       help="expected feature width D (default: from the "
                            "first image)")
        p.add_argument("--num-classes", type=int, default=None,
                       help="expected class_probs width C")
        if object_ids:
            p.add_argument("--num-object-classes", type=int, default=None,
                           help="the detector's class count (1600 for Visual "
                                "Genome bottom-up-attention features): every "
                                "class id must lie below it; the manifest "
                                "records it for masked-region targets")
        if id_pattern:
            p.add_argument("--id-pattern", default=None, metavar="REGEX",
                           help="take the image id from the file name with "
                                "this regular expression (its first group), "
                                r"e.g. '(\d+)$' (default: the name without "
                                "its extension)")
        policy_options(p)
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
    common(p, id_pattern=True)
    p = sub.add_parser("lmdb", help="ViLBERT/InterBERT feature LMDB "
                                    "(needs the lmdb package)")
    p.add_argument("input", help="the .lmdb folder or file")
    common(p)
    p = sub.add_parser("uniter", help="UNITER's .npz per image (norm_bb, "
                                      "features, soft_labels; no image size)")
    p.add_argument("inputs", nargs="+", help=".npz files, folders or globs")
    sizes = p.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--image-sizes", default=None, metavar="JSON",
                       help="a JSON file {image_id: [height, width]} with "
                            "each image's size")
    sizes.add_argument("--image-size", type=_image_size, default=None,
                       metavar="HxW",
                       help="one size for every image, e.g. 600x800 (the "
                            "model sees boxes divided by the size, so any "
                            "size gives the same inputs)")
    common(p, object_ids=False, id_pattern=True)
    p = sub.add_parser("npy", help="vilbert-multi-task's .npy dictionary per "
                                   "image")
    p.add_argument("inputs", nargs="+", help=".npy files, folders or globs")
    common(p, id_pattern=True)

    p = sub.add_parser("karpathy", help="captions from a Karpathy split file "
                                        "(dataset_flickr30k.json, ...)")
    p.add_argument("input", help="the JSON file")
    p.add_argument("--output-dir", required=True,
                   help="writes <output-dir>/captions_<language>.jsonl")
    p.add_argument("--language", default="en")
    p.add_argument("--image-id", choices=KARPATHY_IMAGE_IDS, default="stem",
                   help="image ids: the file name without extension (stem, "
                        "default), the file name, or the imgid/cocoid field")
    p.add_argument("--features", default=None, metavar="REGIONS",
                   help="a converted region folder: every caption's image "
                        "must have features in the caption's split")
    policy_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace splits the captions file already holds")
    p = sub.add_parser("cc", help="captions from a Conceptual Captions TSV "
                                  "(caption<TAB>url)")
    p.add_argument("input", help="the TSV file")
    p.add_argument("--output-dir", required=True,
                   help="writes <output-dir>/captions_<language>.jsonl")
    p.add_argument("--image-id", required=True, metavar="RULE",
                   help="image id of each line, a format string over "
                        "{index} (0-based line position), {line} (1-based), "
                        "{url_md5}, {url_sha1}, {url_sha256}; e.g. "
                        "'{index:08d}' or '{url_sha1}'")
    p.add_argument("--split", default="train")
    p.add_argument("--language", default="en")
    p.add_argument("--features", default=None, metavar="REGIONS",
                   help="a converted region folder: every caption's image "
                        "must have features in the caption's split")
    policy_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the split if the captions file holds it")
    return parser


def _run_features(args, parser):
    if args.splits_from is not None and args.split is not None:
        parser.error("give --split or --splits-from, not both.")
    kwargs = dict(
        split=args.split or "train", feature_dim=args.feature_dim,
        num_classes=args.num_classes, policy=args.on_error,
        examples_per_shard=args.examples_per_shard, overwrite=args.overwrite,
        box_tolerance=args.box_tolerance, progress=not args.no_progress,
        splits_from=args.splits_from,
    )
    if args.format != "uniter":
        kwargs["num_object_classes"] = args.num_object_classes
    if args.format in ("npz", "uniter", "npy") and args.id_pattern:
        try:
            re.compile(args.id_pattern)
        except re.error as e:
            parser.error(f"--id-pattern {args.id_pattern!r}: {e}.")
        kwargs["id_pattern"] = args.id_pattern
    if args.format == "tsv":
        try:
            tsv_fields(args.fields)
        except ValueError as e:
            parser.error(str(e))
        return convert_tsv(args.inputs, args.output_dir, fields=args.fields,
                           **kwargs)
    if args.format == "npz":
        return convert_npz(args.inputs, args.output_dir, **kwargs)
    if args.format == "uniter":
        return convert_uniter(args.inputs, args.output_dir,
                              image_sizes=args.image_sizes,
                              image_size=args.image_size, **kwargs)
    if args.format == "npy":
        return convert_npy(args.inputs, args.output_dir, **kwargs)
    return convert_lmdb(args.input, args.output_dir, **kwargs)


def _run_captions(args, parser):
    if args.format == "karpathy":
        return convert_karpathy(
            args.input, args.output_dir, language=args.language,
            image_id=args.image_id, features=args.features,
            policy=args.on_error, overwrite=args.overwrite)
    try:
        check_cc_image_id_rule(args.image_id)
    except ValueError as e:
        parser.error(f"--image-id: {e}")
    return convert_cc(args.input, args.output_dir, image_id=args.image_id,
                      split=args.split, language=args.language,
                      features=args.features, policy=args.on_error,
                      overwrite=args.overwrite)


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
    try:
        if args.format in CAPTION_FORMATS:
            result = _run_captions(args, parser)
        else:
            result = _run_features(args, parser)
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
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
