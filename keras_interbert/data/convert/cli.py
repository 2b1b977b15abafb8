"""The converter command line: `python -m keras_interbert.data.convert`."""
import argparse
import json
import os
import re
import sys

from keras_interbert.data.caption_converters import KARPATHY_IMAGE_IDS
from keras_interbert.data.caption_converters import check_cc_image_id_rule
from keras_interbert.data.caption_converters import convert_cc
from keras_interbert.data.caption_converters import convert_karpathy
from keras_interbert.data.convert.npy import convert_npy
from keras_interbert.data.convert.npz import convert_npz
from keras_interbert.data.convert.tsv import convert_tsv
from keras_interbert.data.convert.tsv import tsv_fields
from keras_interbert.data.convert.uniter import convert_uniter
from keras_interbert.data.convert.vilbert_lmdb import convert_lmdb
from keras_interbert.data.errors import RegionDataError
from keras_interbert.utils.atomic import write_json_atomically


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
