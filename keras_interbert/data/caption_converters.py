"""Caption files from the formats data sets publish, into captions JSON Lines.

Two sources (see `docs/data.md` §3.7 and `docs/your-data.md`):

* Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`,
  `dataset_flickr8k.json`): a JSON object whose `images` list holds, per
  image, `filename`, `split` (`train`, `restval`, `val` or `test`),
  `sentences` (each with `raw`, the caption as written) and the ids `imgid`
  (and `cocoid` for COCO). `restval` images go to `train`.
* Conceptual Captions' TSV files: one `caption<TAB>url` line per image, no
  header. The file names no image: the image id follows a rule the user
  gives (the line's position, a hash of the URL, ...).

Both write `<output-dir>/captions_<language>.jsonl` (the project's captions
format, `read_captions`) with `image_id`, `caption` and `split` on every
line. Records of other splits already in that file are kept; a split that is
already there is replaced only with `overwrite=True`. With `features` (a
converted region folder) every caption's image must have region features in
the caption's split: a missing one is a `RegionDataError` naming the
source file and record under `policy="raise"` (nothing is written), or
under `policy="skip"` the image's captions are left out and listed.
"""
import hashlib
import json
import os
import string

from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import PolicyHandler
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.errors import check_policy
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import read_manifest
from keras_interbert.data.region_features import region_image_ids
from keras_interbert.data.region_features import write_captions

# Karpathy's split names -> the split written.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val",
                   "test": "test"}
KARPATHY_IMAGE_IDS = ("stem", "filename", "imgid", "cocoid")
# Fields of a Conceptual Captions image-id rule.
CC_ID_FIELDS = ("index", "line", "url_md5", "url_sha1", "url_sha256")


def captions_path(output_dir, language="en"):
    """Where the converters write: `<output_dir>/captions_<language>.jsonl`."""
    return os.path.join(os.fspath(output_dir), f"captions_{language}.jsonl")


# --------------------------------------------------------------- Karpathy --

def _karpathy_image_id(image, rule, path, record):
    if rule in ("stem", "filename"):
        filename = image.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            raise RegionDataError(
                f"no 'filename' (a non-empty string) to take the image id "
                f"from; found {filename!r}.", path, record,
                kind="bad_image_id")
        return os.path.splitext(filename)[0] if rule == "stem" else filename
    value = image.get(rule)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not value.strip()):
        raise RegionDataError(
            f"no {rule!r} (an integer or string) to take the image id from; "
            f"found {value!r}.", path, record, kind="bad_image_id")
    return str(value)


def read_karpathy(path, image_id="stem", policy="raise", report=None):
    """Caption records from a Karpathy split file.

    Args:
        path: the JSON file.
        image_id: how an image's id is made: `"stem"` (its `filename`
            without the extension, default), `"filename"`, `"imgid"` or
            `"cocoid"`.
        policy: `"raise"`: the first bad image or sentence raises a
            `RegionDataError` naming the file and the record
            (`images[i] ('name.jpg'), sentences[j]`); `"skip"`: a bad sentence
            is left out, an image without a usable one too, and both are
            listed in `report`.

    Returns:
        `(records, sources, stats)`: the caption dicts (`image_id`,
        `caption` = the sentence's `raw` text unchanged, `split`), the record
        name of each in the file, and counts per Karpathy split.
    """
    if image_id not in KARPATHY_IMAGE_IDS:
        raise ValueError(f"image_id must be one of {list(KARPATHY_IMAGE_IDS)}"
                         f"; received {image_id!r}.")
    handler = PolicyHandler(policy, report, what="captions")
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise RegionDataError(f"cannot read the file ({e}).", path,
                              kind="no_files") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegionDataError(f"not a JSON file ({e}).", path,
                              kind="malformed_file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        found = (f"keys {sorted(data)}" if isinstance(data, dict) else
                 f"a JSON {type(data).__name__}")
        raise RegionDataError(
            "no 'images' list: a Karpathy split file is a JSON object "
            "{\"images\": [{\"filename\", \"split\", \"sentences\": "
            f"[{{\"raw\"}}]}}, ...]}}; found {found}.", path,
            kind="malformed_file")
    records, sources = [], []
    stats = {name: {"images": 0, "captions": 0} for name in KARPATHY_SPLITS}
    seen = {}
    for i, image in enumerate(data["images"]):
        record = f"images[{i}]"
        try:
            if not isinstance(image, dict):
                raise RegionDataError(
                    f"an image entry must be a JSON object; found "
                    f"{type(image).__name__}.", path, record,
                    kind="bad_caption")
            filename = image.get("filename")
            if isinstance(filename, str):
                record = f"images[{i}] ({filename!r})"
            key = _karpathy_image_id(image, image_id, path, record)
            split = image.get("split")
            if split not in KARPATHY_SPLITS:
                raise RegionDataError(
                    f"split {split!r} is not one of "
                    f"{list(KARPATHY_SPLITS)}.", path, record,
                    kind="bad_split")
            if key in seen:
                raise RegionDataError(
                    f"image id {key!r} (rule {image_id!r}) was already given "
                    f"to {seen[key]}.", path, record,
                    kind="duplicate_image_id")
            sentences = image.get("sentences")
            if not isinstance(sentences, list):
                raise RegionDataError(
                    f"no 'sentences' list (found {sentences!r}).", path,
                    record, kind="bad_caption")
        except RegionDataError as e:
            handler.handle(e)
            continue
        seen[key] = record
        kept = []
        for j, sentence in enumerate(sentences):
            where = f"{record}, sentences[{j}]"
            try:
                if not isinstance(sentence, dict) or "raw" not in sentence:
                    has = (sorted(sentence) if isinstance(sentence, dict)
                           else type(sentence).__name__)
                    raise RegionDataError(
                        f"the sentence has no 'raw' text (has {has}).", path,
                        where, kind="bad_caption")
                raw = sentence["raw"]
                if not isinstance(raw, str):
                    raise RegionDataError(
                        f"'raw' must be a string; found {raw!r}.", path,
                        where, kind="bad_caption")
                if not raw.strip():
                    raise RegionDataError(
                        f"empty caption for image {key!r}.", path, where,
                        kind="empty_caption")
            except RegionDataError as e:
                handler.handle(e)
                continue
            kept.append((raw, where))
        if not kept:
            handler.handle(RegionDataError(
                f"image {key!r} has no usable sentence.", path, record,
                kind="no_captions"))
            continue
        stats[split]["images"] += 1
        stats[split]["captions"] += len(kept)
        for raw, where in kept:
            records.append({"image_id": key, "caption": raw,
                            "split": KARPATHY_SPLITS[split]})
            sources.append(where)
    handler.finish()
    return records, sources, stats


def convert_karpathy(path, output_dir, language="en", image_id="stem",
                     features=None, policy="raise", overwrite=False):
    """Write `<output_dir>/captions_<language>.jsonl` from a Karpathy file.

    Returns:
        A report dict: `output`, `num_images`, `num_captions`, `splits`
        (images and captions per split written), `restval` (what went to
        `train`), `notes`, `num_skipped`, `skipped`, ...
    """
    check_policy(policy)
    report = ErrorReport()
    records, sources, stats = read_karpathy(path, image_id, policy, report)
    restval = dict(stats.pop("restval"), written_to="train")
    notes = []
    if restval["images"]:
        notes.append(
            f"restval: {restval['images']} images ({restval['captions']} "
            "captions) are written to split 'train', as the usual Karpathy "
            "training set (train + restval).")
    return _finish(records, sources, output_dir, language, features, policy,
                   overwrite, report, {
                       "source_format": "karpathy",
                       "input": os.fspath(path),
                       "image_id": image_id,
                       "restval": restval,
                       "notes": notes,
                   })


# ----------------------------------------------------- Conceptual Captions --

def check_cc_image_id_rule(rule):
    """The fields a Conceptual Captions image-id rule uses; bad rules raise.

    The rule is a Python format string over `index` (the line's 0-based
    position in the file), `line` (its 1-based number), `url_md5`,
    `url_sha1` and `url_sha256` (hex digests of the URL's UTF-8 bytes),
    e.g. `"{index}"`, `"cc_{index:08d}"` or `"{url_sha1}"`.
    """
    if not isinstance(rule, str) or not rule:
        raise ValueError("the image-id rule must be a non-empty format "
                         f"string; received {rule!r}.")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(rule)
                  if name is not None]
    except ValueError as e:
        raise ValueError(f"image-id rule {rule!r}: {e}.") from None
    unknown = [f for f in fields if f not in CC_ID_FIELDS]
    if unknown or not fields:
        raise ValueError(
            f"image-id rule {rule!r} must use at least one of the fields "
            f"{['{' + f + '}' for f in CC_ID_FIELDS]}"
            + (f"; unknown: {unknown}" if unknown else "") + ".")
    try:
        rule.format(index=0, line=1, url_md5="0", url_sha1="0",
                    url_sha256="0")
    except (ValueError, IndexError, KeyError) as e:
        raise ValueError(f"image-id rule {rule!r}: {e}.") from None
    return fields


def cc_image_id(rule, index, url):
    """The image id `rule` gives the line at 0-based `index` with `url`."""
    data = url.encode("utf-8")
    return rule.format(
        index=index, line=index + 1,
        url_md5=hashlib.md5(data).hexdigest(),
        url_sha1=hashlib.sha1(data).hexdigest(),
        url_sha256=hashlib.sha256(data).hexdigest())


def read_cc(path, image_id, split="train", policy="raise", report=None):
    """Caption records from a Conceptual Captions TSV (`caption<TAB>url`).

    Args:
        image_id: the image-id rule (see `check_cc_image_id_rule`).
        split: the split of every record.
        policy: `"raise"` or `"skip"` for bad lines (not two tab-separated
            columns, an empty caption, an empty URL the rule needs).

    Returns:
        `(records, sources, stats)` as `read_karpathy`.
    """
    fields = check_cc_image_id_rule(image_id)
    handler = PolicyHandler(policy, report, what="captions")
    path = os.fspath(path)
    records, sources = [], []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RegionDataError(f"cannot read the file ({e}).", path,
                              kind="no_files") from None
    with f:
        for index, raw in enumerate(f):
            record = f"line {index + 1}"
            try:
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise RegionDataError(f"not UTF-8 ({e}).", path, record,
                                          kind="malformed_row") from None
                if not line.strip():
                    continue
                cells = line.split("\t")
                if len(cells) != 2:
                    raise RegionDataError(
                        f"expected 2 tab-separated columns (caption, url), "
                        f"found {len(cells)}.", path, record,
                        kind="malformed_row")
                caption, url = cells
                if not caption.strip():
                    raise RegionDataError("empty caption.", path, record,
                                          kind="empty_caption")
                if any(f.startswith("url") for f in fields) and not (
                        url.strip()):
                    raise RegionDataError(
                        f"empty URL, which the image-id rule {image_id!r} "
                        "needs.", path, record, kind="malformed_row")
                key = cc_image_id(image_id, index, url.strip())
            except RegionDataError as e:
                handler.handle(e)
                continue
            records.append({"image_id": key, "caption": caption,
                            "split": split})
            sources.append(f"{record} (image {key!r})")
    handler.finish()
    return records, sources, None


def convert_cc(path, output_dir, image_id, split="train", language="en",
               features=None, policy="raise", overwrite=False):
    """Write `<output_dir>/captions_<language>.jsonl` from a CC TSV file.

    Captions of other splits already in the output are kept, so a training
    and a validation file go into one captions file with two runs (give the
    second an image-id rule that cannot repeat the first's ids, e.g.
    `"val_{index}"`).

    Returns:
        A report dict (see `convert_karpathy`).
    """
    check_policy(policy)
    report = ErrorReport()
    records, sources, _ = read_cc(path, image_id, split, policy, report)
    return _finish(records, sources, output_dir, language, features, policy,
                   overwrite, report, {
                       "source_format": "cc",
                       "input": os.fspath(path),
                       "image_id": image_id,
                       "notes": [],
                   })


# ----------------------------------------------------------------- shared --

def check_against_features(records, sources, features, path, policy="raise",
                           report=None):
    """Keep the captions whose image has region features in their split.

    `features` is a converted region folder. A caption of an image that the
    folder lacks in the caption's split raises a `RegionDataError` naming
    `path` and the caption's source record (`kind="missing_image"`), or
    under `policy="skip"` is left out; each image is reported once.

    Returns:
        `(records, sources)` kept.
    """
    handler = PolicyHandler(policy, report, what="captions")
    manifest = read_manifest(features)
    if manifest is None:
        raise RegionDataError(
            "no manifest.json: --features must be a region folder written by "
            "`python -m keras_interbert.data.convert`.", features,
            kind="bad_manifest")
    stored = manifest.get("splits") or {}
    ids = {split: set(region_image_ids(features, split=split))
           for split in stored}
    elsewhere = {}
    for split, found in ids.items():
        for image_id in found:
            elsewhere.setdefault(image_id, split)
    kept, kept_sources, reported = [], [], set()
    for caption, source in zip(records, sources):
        split = caption.get("split")
        image_id = caption["image_id"]
        if image_id in ids.get(split, ()):
            kept.append(caption)
            kept_sources.append(source)
            continue
        if image_id in reported:
            continue
        reported.add(image_id)
        other = elsewhere.get(image_id)
        where = (f"; it is in split {other!r}" if other is not None else "")
        handler.handle(RegionDataError(
            f"image {image_id!r} (split {split!r}) has no region features in "
            f"split {split!r} of {features}{where}.", path, source,
            kind="missing_image"))
    handler.finish()
    return kept, kept_sources


def _split_order(item):
    order = ("train", "val", "test")
    name = item[0]
    return (order.index(name) if name in order else len(order), name)


def _finish(records, sources, output_dir, language, features, policy,
            overwrite, report, result):
    """Check against features, merge with the existing file, write, report."""
    if features is not None:
        records, sources = check_against_features(
            records, sources, features, result["input"], policy, report)
    if not records:
        raise RegionDataError("no captions to write.", result["input"],
                              kind="no_captions")
    out = captions_path(output_dir, language)
    new_splits = sorted({r["split"] for r in records})
    kept = []
    if os.path.exists(out):
        existing = read_captions(out)
        clash = sorted({r.get("split") for r in existing} & set(new_splits))
        if clash and not overwrite:
            raise FileExistsError(
                f"{out} already holds captions of split(s) {clash}; pass "
                "--overwrite (overwrite=True) to replace them (captions of "
                "other splits are kept).")
        kept = [r for r in existing if r.get("split") not in new_splits]
        kept_split = {}
        for r in kept:
            kept_split.setdefault(r["image_id"], r.get("split"))
        for caption, source in zip(records, sources):
            other = kept_split.get(caption["image_id"])
            if other is not None:
                raise RegionDataError(
                    f"image id {caption['image_id']!r} (split "
                    f"{caption['split']!r}) is already in split {other!r} of "
                    f"{out}; an image belongs to one split (choose an "
                    "image-id rule that keeps the splits apart).",
                    result["input"], source, kind="split_conflict")
    os.makedirs(os.fspath(output_dir), exist_ok=True)
    write_captions(out, kept + records)
    splits = {}
    for r in records:
        entry = splits.setdefault(r["split"], {"images": set(),
                                               "captions": 0})
        entry["images"].add(r["image_id"])
        entry["captions"] += 1
    result.update({
        "output": out,
        "num_images": len({r["image_id"] for r in records}),
        "num_captions": len(records),
        "splits": {name: {"images": len(v["images"]),
                          "captions": v["captions"]}
                   for name, v in sorted(splits.items(), key=_split_order)},
        "kept_from_existing": len(kept),
        "features": None if features is None else os.fspath(features),
    })
    result.update(report.to_dict())
    return result
