"""What the feature converters share.

Decoding arrays, expanding the input files, the splits captions name
(`CaptionSplits`), per-image file helpers, a restricted unpickler, and the
loop that feeds records into the writers (`_run`).
"""
import base64
import binascii
import glob
import io
import os
import pickle
import re
import zipfile

import numpy as np
from tqdm.auto import tqdm

from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import PolicyHandler
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.errors import check_policy
from keras_interbert.data.region_features import RegionFeatureWriter
from keras_interbert.data.region_features import read_json_lines
from keras_interbert.data.region_features.captions import _validate_caption
from keras_interbert.utils.paths import check_plain_name


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
                num_object_classes=num_object_classes,
                source={"kind": "converted", "format": source_format,
                        "num_inputs": len(inputs),
                        "example_inputs": [os.path.basename(os.fspath(p))
                                           for p in inputs[:3]]})
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
