"""What made a data folder's region features, as a model carries it.

A model trained on one kind of region features (bottom-up-attention
detector features converted from files, features from
`recipes/extract_regions.py` with one image backbone, the bundled synthetic
features) gives meaningless scores on another kind. `feature_source_of`
reads what a data folder says about its features; the recipes store it as
the preprocessor's `region_feature_source`, so it travels inside the
`.keras` file, and the exporter compares it with the image extractor a
`score_image` signature would use (`keras_interbert.export`).

The record is a dict of JSON values:

- `{"kind": "extracted", ...}` for a folder written by
  `recipes/extract_regions.py` (it has `regions/extraction.json`): the
  extractor as the recipe named it (`extractor`), its `fingerprint`
  (`keras_interbert.vision.feature_fingerprint`: weights and settings),
  `image_size`, `feature_stride`, `roi_align`, `boxes` and `feature_dim`.
  Folders extracted before the fingerprint was recorded have
  `fingerprint: None`.
- `{"kind": "synthetic", ...}` for the bundled synthetic data set
  (`keras_interbert.data.synthetic`): its `name`, `seed`,
  `projection_seed` and `feature_dim`. No image extractor makes these.
- `{"kind": "converted", ...}` for features converted from a detector's
  files (BUTD/LXMERT TSV, npz, UNITER npz, ViLBERT `.npy` or LMDB) by
  `python -m keras_interbert.data.convert`, which records the input
  `format`, the number of input files and the first three names in the
  manifest (`splits.<split>.source`): `format`, `num_inputs` (over the
  splits), `example_inputs` (at most three names) and `feature_dim`. No image extractor of this project makes these.
- `None` when the folder does not say (a folder converted before the
  converters recorded it): nothing is known, and the exporter warns.
"""
import json
import os

from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import MANIFEST_NAME
from keras_interbert.data.region_features import read_manifest

EXTRACTION_FILE = "extraction.json"
SYNTHETIC_METADATA = "metadata.json"
SYNTHETIC_NAME_PREFIX = "keras_interbert synthetic"


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RegionDataError(f"cannot read it ({e}).", path,
                              kind="bad_provenance") from None
    if not isinstance(value, dict):
        raise RegionDataError(
            f"expected a JSON object; found {type(value).__name__}.", path,
            kind="bad_provenance")
    return value


def feature_source_of(data_dir):
    """The `region_feature_source` of a data folder's region features.

    Args:
        data_dir: a data folder holding `regions/` (what `recipes/pretrain.py
            --data` and `recipes/finetune_retrieval.py --data` take), or the
            region folder itself.

    Returns:
        A dict (see the module docstring) or `None` when the folder does
        not say what made its features.

    Raises:
        RegionDataError: naming the file, when the folder has no region
            manifest or its `extraction.json` cannot be read.
    """
    data_dir = os.fspath(data_dir)
    regions = os.path.join(data_dir, "regions")
    if not os.path.isdir(regions):
        regions, data_dir = data_dir, os.path.dirname(
            os.path.abspath(data_dir))
    manifest = read_manifest(regions)
    if manifest is None:
        raise RegionDataError(
            f"no {MANIFEST_NAME}: not a region folder written by `python -m "
            "keras_interbert.data.convert` or recipes/extract_regions.py.",
            regions, kind="bad_manifest")
    feature_dim = manifest.get("feature_dim")
    extraction = os.path.join(regions, EXTRACTION_FILE)
    if os.path.exists(extraction):
        made = _read_json(extraction)
        if "extractor" not in made:
            raise RegionDataError(
                "no 'extractor' entry: not an extraction record written by "
                "recipes/extract_regions.py.", extraction,
                kind="bad_provenance")
        return {
            "kind": "extracted",
            "extractor": made["extractor"],
            "fingerprint": made.get("fingerprint"),
            "feature_dim": made.get("feature_dim", feature_dim),
            "image_size": made.get("image_size"),
            "feature_stride": made.get("feature_stride"),
            "roi_align": made.get("roi_align"),
            "boxes": made.get("boxes"),
        }
    converted = [split.get("source") for split in
                 (manifest.get("splits") or {}).values()
                 if isinstance(split, dict)
                 and isinstance(split.get("source"), dict)
                 and split["source"].get("kind") == "converted"]
    if converted:
        formats = sorted({str(c.get("format")) for c in converted})
        examples = []
        for c in converted:
            examples.extend(i for i in c.get("example_inputs") or []
                            if i not in examples)
        return {"kind": "converted", "format": "+".join(formats),
                "num_inputs": sum(int(c.get("num_inputs") or 0)
                                  for c in converted),
                "example_inputs": examples[:3], "feature_dim": feature_dim}
    metadata = os.path.join(data_dir, SYNTHETIC_METADATA)
    if os.path.exists(metadata):
        made = _read_json(metadata)
        name = str(made.get("name", ""))
        if name.startswith(SYNTHETIC_NAME_PREFIX):
            return {"kind": "synthetic", "name": name,
                    "seed": made.get("seed"),
                    "projection_seed": made.get("projection_seed"),
                    "feature_dim": made.get("feature_dim", feature_dim)}
    return None


def describe_feature_source(source):
    """One phrase naming a `region_feature_source` (for messages)."""
    if source is None:
        return "features of unrecorded origin"
    kind = source.get("kind")
    dim = source.get("feature_dim")
    if kind == "synthetic":
        return (f"the synthetic data set's {dim}-d features "
                f"({source.get('name')}, seed {source.get('seed')}); no "
                "image extractor makes these")
    if kind == "converted":
        count = source.get("num_inputs")
        examples = ", ".join(source.get("example_inputs") or [])
        return (f"{dim}-d detector features converted from "
                f"{source.get('format')} files ({count} files"
                f"{': ' + examples if examples else ''}"
                f"{', ...' if examples and count and count > 3 else ''}); "
                "no image extractor of this project makes these")
    if kind == "extracted":
        named = source.get("extractor") or {}
        if isinstance(named, dict):
            named = ", ".join(f"{k} {v}" for k, v in named.items()
                              if v is not None)
        fingerprint = source.get("fingerprint")
        return (f"{dim}-d features extracted with {named or 'an extractor'} "
                f"(image_size {source.get('image_size')}, fingerprint "
                f"{short_fingerprint(fingerprint)})")
    return f"features of kind {kind!r} ({json.dumps(source, sort_keys=True)})"


def short_fingerprint(fingerprint):
    """`sha256:` and the first 12 hex digits, or `'not recorded'`."""
    if not fingerprint:
        return "not recorded"
    algorithm, _, digest = str(fingerprint).partition(":")
    return f"{algorithm}:{digest[:12]}" if digest else str(fingerprint)[:19]
