"""Extract region features from a folder of images into canonical shards.

Reads the images named by a captions file (JSON Lines `image_id`, `caption`,
optional `split`; the image of `image_id` is the file in `--images` whose name
without extension is the id), runs a `RegionFeatureExtractor` on them in
batches (on the accelerator when Keras sees one) and writes, under `--out`:

  regions/                 canonical shards and manifest.json (docs/data.md)
  regions/extraction.json  how the features were made (backbone, boxes,
                           where class_probs come from, the extractor's
                           fingerprint, the extractor file to serve with)
  regions/extractor.keras  the extractor, when it was built here (from a
                           classifier or a backbone; not with --extractor):
                           what `python -m keras_interbert.export
                           --image-extractor` takes to serve the same features
  captions_en.jsonl        the captions of the images that were written
  extraction_report.json   images that could not be decoded or were missing

This is the layout `recipes/pretrain.py --data` reads. Work is done in chunks
of `--examples-per-shard` images, each committed under `<out>/.partial/`; a
restarted run skips the committed chunks. Undecodable images are listed in
the report and do not stop the run.

    KERAS_BACKEND=jax .venv/bin/python recipes/extract_regions.py \
        --images photos/ --captions captions.jsonl --out data/photos
"""
import argparse
import json
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="Folder of image files.")
    p.add_argument("--captions", required=True, help="Captions JSON Lines.")
    p.add_argument("--out", required=True, help="Output data folder.")
    p.add_argument("--language", default="en",
                   help="Suffix of the captions file written (captions_<language>.jsonl).")
    m = p.add_argument_group("extractor")
    m.add_argument("--extractor", default=None,
                   help="A saved RegionFeatureExtractor (.keras); overrides "
                   "--backbone/--classifier.")
    m.add_argument("--classifier", default="resnet_50_imagenet",
                   help="keras-hub image classifier preset or .keras file whose "
                   "backbone and class head are used (per-region ImageNet "
                   "class distributions). 'none' to use --backbone alone.")
    m.add_argument("--backbone", default="resnet50",
                   help="With --classifier none: a keras-hub backbone preset, a "
                   ".keras backbone, or 'resnet50' (random weights unless --weights).")
    m.add_argument("--weights", default=None, help="A .weights.h5 for --backbone.")
    m.add_argument("--image-size", type=int, default=448)
    b = p.add_argument_group("boxes")
    b.add_argument("--boxes", choices=("grid", "file", "detector"), default="grid")
    b.add_argument("--grid", default="6",
                   help="Comma-separated grid levels for --boxes grid (6: 36 cells).")
    b.add_argument("--boxes-file", default=None,
                   help="For --boxes file: JSON Lines with image_id and boxes "
                   "([[x1,y1,x2,y2], ...] in pixels of the original image).")
    b.add_argument("--detector", default=None,
                   help="For --boxes detector: a keras-hub RetinaNet preset or .keras file.")
    b.add_argument("--max-regions", type=int, default=36)
    b.add_argument("--min-regions", type=int, default=10)
    b.add_argument("--score-threshold", type=float, default=0.2)
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--examples-per-shard", type=int, default=1000)
    r.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_extractor(args):
    import keras

    from keras_interbert.vision import RegionFeatureExtractor
    from keras_interbert.vision import load_image_backbone

    if args.extractor:
        extractor = keras.saving.load_model(args.extractor, compile=False)
        return extractor, {"extractor": os.path.abspath(args.extractor)}
    if args.classifier and args.classifier != "none":
        import keras_hub

        if args.classifier.endswith(".keras"):
            classifier = keras.saving.load_model(args.classifier, compile=False)
        else:
            classifier = _from_preset(
                keras_hub.models.ImageClassifier, args.classifier,
                "--classifier",
                "a saved image classifier (--classifier FILE.keras), a local "
                "keras-hub preset folder (--classifier DIR), a saved "
                "extractor (--extractor FILE.keras), or --classifier none "
                "--backbone resnet50 --weights FILE.weights.h5 (a local "
                "backbone, no class distributions)")
        extractor = RegionFeatureExtractor.from_image_classifier(
            classifier, image_size=args.image_size)
        return extractor, {"classifier": args.classifier}
    backbone = load_image_backbone(args.backbone, args.weights)
    extractor = RegionFeatureExtractor(backbone, image_size=args.image_size)
    return extractor, {"backbone": args.backbone, "weights": args.weights}


def _from_preset(cls, name, flag, local_choices):
    """`cls.from_preset(name)`; when it cannot be loaded (offline, a wrong
    name) the error says which flags take a local file instead."""
    try:
        return cls.from_preset(name)
    except Exception as e:  # network, registry and format errors alike
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SystemExit(
            f"{flag} {name}: cannot load this keras-hub preset "
            f"({type(e).__name__}: {reason[:200]}). A preset name is "
            f"downloaded on first use; without the network pass "
            f"{local_choices}.") from None


def build_detector(args):
    import keras

    from keras_interbert.vision import DetectorBoxes

    if not args.detector:
        raise SystemExit("--boxes detector needs --detector.")
    if args.detector.endswith(".keras"):
        detector = keras.saving.load_model(args.detector, compile=False)
    else:
        import keras_hub

        detector = _from_preset(
            keras_hub.models.ObjectDetector, args.detector, "--detector",
            "a saved detector (--detector FILE.keras), a local keras-hub "
            "preset folder (--detector DIR), or other boxes (--boxes grid, "
            "--boxes file --boxes-file FILE)")
    return DetectorBoxes(detector, max_regions=args.max_regions,
                         min_regions=min(args.min_regions, args.max_regions),
                         score_threshold=args.score_threshold)


def find_images(folder):
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS or ext == "":
            found.setdefault(stem, os.path.join(folder, name))
    return found


def plan(args):
    """Images per split, in a fixed order, and the problems found on the way."""
    from keras_interbert.data.region_features import read_captions

    captions = read_captions(args.captions)
    files = find_images(args.images)
    splits, seen, missing, conflicts = {}, {}, [], []
    for c in captions:
        image_id, split = c["image_id"], c.get("split", "train")
        if image_id in seen:
            if seen[image_id] != split:
                conflicts.append(image_id)
            continue
        seen[image_id] = split
        if image_id not in files:
            missing.append(image_id)
            continue
        splits.setdefault(split, []).append(image_id)
    if conflicts:
        raise SystemExit(f"images with captions in several splits: {conflicts[:10]}")
    return captions, files, splits, missing


def read_boxes_file(path):
    import numpy as np

    boxes = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                boxes[str(obj["image_id"])] = np.asarray(
                    obj["boxes"], "float32").reshape(-1, 4)
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"{path}, line {line_no}: expected "
                                 "{\"image_id\": ..., \"boxes\": [[x1, y1, x2, "
                                 f"y2], ...]}} ({e!r}).") from None
    return boxes


def decode(path):
    import tensorflow as tf

    from keras_interbert.vision.image_decoding import decode_image

    try:
        return decode_image(tf.io.read_file(path)).numpy(), None
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        message = re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", e.message or str(e))
        return None, message.strip().splitlines()[0]


def extract_chunk(args, chunk_dir, split, image_ids, files, extractor,
                  detector, user_boxes, progress):
    """Extract one chunk into `chunk_dir` and commit it (report.json last)."""
    from keras_interbert.data.region_features import RegionFeatureWriter
    from keras_interbert.vision import extract_regions

    tmp = chunk_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    failed = []
    levels = tuple(int(k) for k in args.grid.split(","))
    with ThreadPoolExecutor(2) as pool, RegionFeatureWriter(
            tmp, split=split, examples_per_shard=len(image_ids) + 1,
            box_tolerance=1e-3) as writer:
        for start in range(0, len(image_ids), args.batch_size):
            ids = image_ids[start:start + args.batch_size]
            decoded = list(pool.map(decode, [files[i] for i in ids]))
            good = []
            for image_id, (image, problem) in zip(ids, decoded):
                if image is None:
                    failed.append({"image_id": image_id, "file": files[image_id],
                                   "problem": problem})
                else:
                    good.append((image_id, image))
            if good:
                boxes = None
                if user_boxes is not None:
                    boxes = [user_boxes[i] for i, _ in good]
                results = extract_regions(
                    extractor, [im for _, im in good], boxes=boxes,
                    grid_levels=levels, detector=detector)
                for (image_id, _), r in zip(good, results):
                    writer.write(image_id, r["image_h"], r["image_w"],
                                 r["boxes"], r["features"], r["class_probs"],
                                 source=(files[image_id], None))
            progress.update(len(ids))
    with open(os.path.join(tmp, "report.json"), "w") as f:
        json.dump({"failed": failed, "num_written": writer.num_written}, f)
    os.replace(tmp, chunk_dir)
    return failed


def assemble(out_regions, partial, split, chunk_dirs, examples_per_shard):
    """Copy the committed chunks of `split` into the canonical folder."""
    from keras_interbert.data.region_features import RegionFeatureWriter
    from keras_interbert.data.region_features import region_dataset

    with RegionFeatureWriter(out_regions, split=split,
                             examples_per_shard=examples_per_shard,
                             overwrite=True, box_tolerance=1e-3) as writer:
        for chunk in chunk_dirs:
            with open(os.path.join(chunk, "report.json")) as f:
                if json.load(f)["num_written"] == 0:
                    continue  # every image of the chunk failed
            for ex in region_dataset(chunk, split=split).as_numpy_iterator():
                writer.write(ex["image_id"].decode("utf-8"), ex["image_h"],
                             ex["image_w"], ex["boxes"], ex["features"],
                             ex.get("class_probs"))
    return writer.num_written


def main(argv=None):
    args = parse_args(argv)
    from tqdm import tqdm

    from keras_interbert.data.region_features import write_captions

    captions, files, splits, missing = plan(args)
    if not splits:
        raise SystemExit(f"no image of {args.captions} was found in {args.images}.")
    user_boxes = None
    if args.boxes == "file":
        if not args.boxes_file:
            raise SystemExit("--boxes file needs --boxes-file.")
        user_boxes = read_boxes_file(args.boxes_file)
        for split, ids in splits.items():
            lost = [i for i in ids if i not in user_boxes]
            missing += lost
            splits[split] = [i for i in ids if i in user_boxes]
    extractor, source = build_extractor(args)
    detector = build_detector(args) if args.boxes == "detector" else None

    out_regions = os.path.join(args.out, "regions")
    partial = os.path.join(args.out, ".partial")
    os.makedirs(partial, exist_ok=True)
    k = args.examples_per_shard
    chunks = [(split, i, ids[i * k:(i + 1) * k]) for split, ids in
              sorted(splits.items()) for i in range((len(ids) + k - 1) // k)]
    done = {c for c in os.listdir(partial) if not c.endswith(".tmp")}
    total = sum(len(ids) for _, _, ids in chunks)
    skipped = sum(len(ids) for s, i, ids in chunks if f"{s}-{i:05d}" in done)
    if skipped:
        print(f"Resuming: {skipped} of {total} images already extracted.")
    failed = []
    with tqdm(total=total, initial=skipped, disable=args.no_progress,
              unit="img", desc="extract") as progress:
        for split, index, ids in chunks:
            chunk_dir = os.path.join(partial, f"{split}-{index:05d}")
            if os.path.basename(chunk_dir) in done:
                with open(os.path.join(chunk_dir, "report.json")) as f:
                    failed += json.load(f)["failed"]
                continue
            failed += extract_chunk(args, chunk_dir, split, ids, files,
                                    extractor, detector, user_boxes, progress)

    written = {}
    for split in sorted(splits):
        dirs = [os.path.join(partial, f"{s}-{i:05d}") for s, i, _ in chunks
                if s == split]
        written[split] = assemble(out_regions, partial, split, dirs, k)
    from keras_interbert.data.region_features import read_manifest
    from keras_interbert.utils.atomic import save_model_atomically
    from keras_interbert.utils.atomic import write_json_atomically
    from keras_interbert.vision import feature_fingerprint

    # The extractor that made the features, for the exporter's
    # --image-extractor: the file given, or this run's, saved next to them.
    if args.extractor:
        extractor_file = os.path.abspath(args.extractor)
    else:
        extractor_file = save_model_atomically(
            extractor, os.path.join(out_regions, "extractor.keras"))

    manifest = read_manifest(out_regions)
    if detector is not None:
        probs_source = (f"detector {args.detector}: per-class sigmoid scores "
                        "of the kept anchor, divided by their sum")
    elif manifest.get("num_classes") is not None:
        probs_source = ("the extractor's class head (softmax) on each "
                        "region's pooled feature" + (
                            f", from the image classifier {args.classifier}"
                            if "classifier" in source else ""))
    else:
        probs_source = None
    provenance = {
        "extractor": source,
        # What decides the features (weights and settings): the exporter
        # compares it with the extractor a model is served with.
        "fingerprint": feature_fingerprint(extractor),
        "extractor_file": extractor_file,
        "image_size": extractor.image_size,
        "feature_dim": extractor.feature_dim,
        "feature_stride": extractor.feature_stride,
        "roi_align": {"output_size": extractor.output_size,
                      "sampling_ratio": extractor.sampling_ratio,
                      "pooling": "mean over bins"},
        "boxes": {"grid": f"grid levels {args.grid}",
                  "file": f"user boxes from {args.boxes_file}",
                  "detector": f"detector {args.detector}"}[args.boxes],
        "class_probs": probs_source,
    }
    write_json_atomically(os.path.join(out_regions, "extraction.json"),
                          provenance)
    kept = {i for s in splits for i in splits[s]} - {f["image_id"] for f in failed}
    captions_path = os.path.join(args.out, f"captions_{args.language}.jsonl")
    num_captions = write_captions(
        captions_path, [c for c in captions if c["image_id"] in kept])
    report = {"num_written": written, "num_captions": num_captions,
              "failed": failed, "missing": missing,
              "feature_dim": manifest["feature_dim"],
              "num_classes": manifest.get("num_classes")}
    write_json_atomically(os.path.join(args.out, "extraction_report.json"),
                          report)
    shutil.rmtree(partial)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
