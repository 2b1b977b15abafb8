"""Captions in JSON Lines: validate, write, read, check against the images."""
import json
import os

from keras_interbert.data.errors import PolicyHandler
from keras_interbert.data.errors import RegionDataError
from keras_interbert.utils.atomic import atomic_path


def _validate_caption(obj, path, record):
    if not isinstance(obj, dict):
        raise RegionDataError(
            f"a caption record must be a JSON object; received "
            f"{type(obj).__name__}.", path, record, kind="bad_caption",
        )
    missing = [k for k in ("image_id", "caption") if k not in obj]
    if missing:
        raise RegionDataError(
            f"caption record lacks {missing} (has {sorted(obj)}).", path,
            record, kind="bad_caption",
        )
    image_id = obj["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        raise RegionDataError(
            f"image_id must be a string or an integer; received "
            f"{image_id!r}.", path, record, kind="bad_image_id",
        )
    image_id = str(image_id)
    if not image_id.strip():
        raise RegionDataError(
            "image_id is empty.", path, record, kind="bad_image_id"
        )
    caption = obj["caption"]
    if not isinstance(caption, str):
        raise RegionDataError(
            f"caption must be a string; received {caption!r}.", path, record,
            kind="bad_caption",
        )
    if not caption.strip():
        raise RegionDataError(
            f"empty caption for image {image_id!r}.", path, record,
            kind="empty_caption",
        )
    out = dict(obj)
    out["image_id"] = image_id
    if "split" in out and not (isinstance(out["split"], str) and out["split"]):
        raise RegionDataError(
            f"split must be a non-empty string; received {out['split']!r}.",
            path, record, kind="bad_caption",
        )
    return out


def write_captions(path, records, policy="raise", report=None):
    """Write caption records as JSON Lines (UTF-8, one object per line).

    Each record is a dict with `image_id` (string; an int is written as its
    decimal string), a non-empty `caption` and optionally `split`; other keys
    are kept. Invalid records raise a `RegionDataError`, or are left out and
    reported under `policy="skip"`.

    Returns:
        The number of records written.

    Examples:

    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "captions.jsonl")
    >>> write_captions(p, [{"image_id": "a", "caption": "a dog"}])
    1
    >>> read_captions(p)
    [{'image_id': 'a', 'caption': 'a dog'}]
    """
    handler = PolicyHandler(policy, report, what="captions")
    count = 0
    with atomic_path(path, suffix=".tmp") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for index, obj in enumerate(records):
                try:
                    obj = _validate_caption(obj, str(path), f"record {index}")
                except RegionDataError as e:
                    handler.handle(e)
                    continue
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                count += 1
    handler.finish()
    return count


def read_captions(path, policy="raise", report=None):
    """Read and validate a JSON Lines caption file.

    Blank lines are ignored. A line that is not a JSON object, lacks
    `image_id` or `caption`, or has an empty caption raises a
    `RegionDataError` naming the file and the line number (or, under
    `policy="skip"`, is dropped and added to `report`). `image_id` comes back
    as a string.

    Returns:
        A list of dicts, in file order.
    """
    return read_json_lines(
        path, lambda obj, path, record, line_no: _validate_caption(
            obj, path, record),
        what="captions", kind="bad_caption", policy=policy, report=report)


def read_json_lines(path, validate, what, kind, policy="raise", report=None):
    """Read a JSON Lines file, one validated record per non-blank line.

    `validate(obj, path, record, line_no)` returns the record to keep or
    raises a `RegionDataError`; a line that is not UTF-8 or not JSON raises
    one of `kind` naming the file and the line. Under `policy="skip"` bad
    lines are dropped and added to `report`. Returns the records in file
    order.
    """
    handler = PolicyHandler(policy, report, what=what)
    path = os.fspath(path)
    out = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            record = f"line {line_no}"
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RegionDataError(f"not UTF-8 ({e}).", path, record,
                                          kind=kind) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RegionDataError(
                        f"not valid JSON ({e.msg} at column {e.colno}).",
                        path, record, kind=kind) from None
                out.append(validate(obj, path, record, line_no))
            except RegionDataError as e:
                handler.handle(e)
    handler.finish()
    return out


def check_captions_against_images(captions, image_ids, policy="raise",
                                  report=None, path=None):
    """Keep the captions whose `image_id` is among `image_ids`.

    A caption whose image has no region features raises a `RegionDataError`
    naming the caption (its position in `captions`, 1-based) and the image
    id, or under `policy="skip"` is dropped and added to `report`.

    Args:
        captions: list of caption dicts (as from `read_captions`).
        image_ids: iterable of the image ids that have region features, e.g.
            `region_image_ids(...)`.
        path: the caption file name, for messages.

    Returns:
        The list of captions that have an image.
    """
    handler = PolicyHandler(policy, report, what="captions")
    known = {str(i.decode("utf-8") if isinstance(i, bytes) else i)
             for i in image_ids}
    kept = []
    for index, caption in enumerate(captions, start=1):
        image_id = str(caption["image_id"])
        if image_id in known:
            kept.append(caption)
            continue
        handler.handle(RegionDataError(
            f"caption {caption.get('caption', '')[:60]!r} refers to image "
            f"{image_id!r}, which has no region features.", path,
            f"caption {index}", kind="missing_image",
        ))
    handler.finish()
    return kept
