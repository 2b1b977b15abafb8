"""UNITER's per-image `.npz` files: normalised boxes, sizes from a side file."""
import json
import os

import numpy as np

from keras_interbert.data.convert.common import _expand_inputs
from keras_interbert.data.convert.common import _load_npz
from keras_interbert.data.convert.common import _per_file_records
from keras_interbert.data.convert.common import _run
from keras_interbert.data.convert.common import image_id_from_name
from keras_interbert.data.errors import RegionDataError


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
