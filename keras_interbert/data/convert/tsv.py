"""Bottom-up-attention TSV files (LXMERT/Oscar and BUTD column orders)."""
import os

import numpy as np
from tqdm.auto import tqdm

from keras_interbert.data.convert.common import _b64_rows
from keras_interbert.data.convert.common import _decode_b64
from keras_interbert.data.convert.common import _expand_inputs
from keras_interbert.data.convert.common import _run
from keras_interbert.data.convert.common import _to_int
from keras_interbert.data.errors import RegionDataError


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
