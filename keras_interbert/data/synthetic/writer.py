"""Writing the synthetic data set: images, region shards, captions."""
import argparse
import json
import os
import time

import numpy as np

from keras_interbert.data.synthetic.features import _attach_features
from keras_interbert.data.synthetic.scenes import assign_splits
from keras_interbert.data.synthetic.scenes import generate_scene
from keras_interbert.data.synthetic.vocabulary import CLASS_NAMES
from keras_interbert.data.synthetic.vocabulary import DEFAULT_FEATURE_DIM
from keras_interbert.data.synthetic.vocabulary import DEFAULT_IMAGE_SIZE
from keras_interbert.data.synthetic.vocabulary import NUM_CLASSES
from keras_interbert.data.synthetic.vocabulary import PROJECTION_SEED
from keras_interbert.data.synthetic.vocabulary import SPLITS


def encode_png(image):
    """Encode a `uint8[H, W, 3]` (or `[H, W]`) array as PNG bytes.

    TensorFlow's encoder (`tf.io.encode_png`); the checks here name what is
    wrong with the array first.
    """
    import tensorflow as tf

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError("`image` must be uint8 [H, W, 3] or [H, W]. "
                         f"Received: {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = image[..., None]
    return tf.io.encode_png(image).numpy()


def save_png(path, image):
    with open(path, "wb") as f:
        f.write(encode_png(image))


def _scene_record(scene):
    regions = scene["regions"]
    return {
        "image_id": scene["image_id"],
        "split": scene["split"],
        "height": int(scene["image"].shape[0]),
        "width": int(scene["image"].shape[1]),
        "background": scene["background"],
        "objects": [{k: o[k] for k in ("shape", "colour", "size", "box",
                                       "visible_fraction", "centroid")}
                    for o in scene["objects"]],
        "region_object_index": [int(v) for v in regions["object_index"]],
    }


def write_dataset(out_dir, num_images=2000, seed=0,
                  feature_dim=DEFAULT_FEATURE_DIM, languages=("en", "zh"),
                  image_size=DEFAULT_IMAGE_SIZE, examples_per_shard=1000,
                  save_images=True, overwrite=False, chunk_size=256,
                  progress=True, **scene_kwargs):
    """Generate the data set and write it under `out_dir`.

    Writes region features per split through `RegionFeatureWriter` under
    `out_dir/regions`, `captions_<language>.jsonl`, `scenes.jsonl`, the PNG
    images under `out_dir/images` (with `save_images`) and `metadata.json`.
    Returns the metadata dict (with the shard paths, relative to
    `out_dir`, in `"shards"`). With
    `overwrite=False`, a folder that already holds region shards raises
    `FileExistsError`; if generation fails, the shards written so far are
    deleted.

    Examples:
    ```python
    metadata = write_dataset("/tmp/shapes", num_images=100, feature_dim=64)
    ds = region_dataset("/tmp/shapes/regions", split="train")
    ```
    """
    from keras_interbert.data.region_features import RegionFeatureWriter
    from keras_interbert.data.region_features import write_captions

    languages = tuple(languages)
    for language in languages:
        if language not in ("en", "zh"):
            raise ValueError("`languages` must contain only 'en' and 'zh'. "
                             f"Received: {languages}")
    if num_images < 1:
        raise ValueError(f"`num_images` must be positive. Received: {num_images}")
    start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    image_dir = os.path.join(out_dir, "images")
    if save_images:
        os.makedirs(image_dir, exist_ok=True)
    splits = assign_splits(num_images, seed)
    region_dir = os.path.join(out_dir, "regions")
    writers = {
        split: RegionFeatureWriter(region_dir, split=split,
                                   examples_per_shard=examples_per_shard,
                                   feature_dim=feature_dim,
                                   num_classes=NUM_CLASSES,
                                   overwrite=overwrite)
        for split in SPLITS if split in splits
    }
    # metadata.json marks a finished data set: an overwrite in progress is
    # not one.
    if os.path.exists(os.path.join(out_dir, "metadata.json")):
        os.remove(os.path.join(out_dir, "metadata.json"))
    captions = {language: [] for language in languages}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_images, desc="synthetic images", unit="img")
    num_regions = 0
    shards = []
    try:
        with open(os.path.join(out_dir, "scenes.jsonl"), "w",
                  encoding="utf-8") as scene_file:
            for chunk_start in range(0, num_images, chunk_size):
                chunk = []
                for index in range(chunk_start,
                                   min(num_images, chunk_start + chunk_size)):
                    scene = generate_scene(index, seed=seed,
                                           image_size=image_size, **scene_kwargs)
                    scene["split"] = splits[index]
                    chunk.append(scene)
                _attach_features(chunk, feature_dim)
                for scene in chunk:
                    regions = scene["regions"]
                    writers[scene["split"]].write(
                        scene["image_id"], image_size, image_size,
                        regions["boxes"], regions["features"],
                        class_probs=regions["class_probs"])
                    num_regions += len(regions["boxes"])
                    scene_file.write(json.dumps(_scene_record(scene)) + "\n")
                    for language in languages:
                        captions[language].extend(
                            {"image_id": scene["image_id"], "caption": c[language],
                             "split": scene["split"]}
                            for c in scene["captions"])
                    if save_images:
                        save_png(os.path.join(image_dir,
                                              scene["image_id"] + ".png"),
                                 scene["image"])
                if bar is not None:
                    bar.update(len(chunk))
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    for writer in writers.values():
        shards.extend(os.path.relpath(p, out_dir) for p in writer.close())
    for language in languages:
        write_captions(os.path.join(out_dir, f"captions_{language}.jsonl"),
                       captions[language])
    metadata = {
        "name": "keras_interbert synthetic shapes",
        "num_images": num_images,
        "seed": seed,
        "feature_dim": feature_dim,
        "image_size": image_size,
        "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "projection_seed": PROJECTION_SEED,
        "languages": list(languages),
        "num_regions": num_regions,
        "num_captions": {lang: len(c) for lang, c in captions.items()},
        "split_sizes": {s: splits.count(s) for s in SPLITS},
        "shards": shards,
        "seconds": round(time.time() - start, 3),
    }
    # Written last and atomically: its presence means a complete data set.
    from keras_interbert.utils.atomic import write_json_atomically

    write_json_atomically(os.path.join(out_dir, "metadata.json"), metadata,
                          ensure_ascii=False)
    return metadata


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.data.synthetic",
        description="Write the synthetic shapes image-caption data set.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feature-dim", type=int, default=DEFAULT_FEATURE_DIM)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--language", choices=("en", "zh", "both"), default="both")
    parser.add_argument("--examples-per-shard", type=int, default=1000)
    parser.add_argument("--no-images", action="store_true",
                        help="do not write the PNG images")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace region shards already in --out")
    args = parser.parse_args(argv)
    languages = ("en", "zh") if args.language == "both" else (args.language,)
    metadata = write_dataset(
        args.out, num_images=args.num_images, seed=args.seed,
        feature_dim=args.feature_dim, languages=languages,
        image_size=args.image_size, examples_per_shard=args.examples_per_shard,
        save_images=not args.no_images, overwrite=args.overwrite)
    print(f"Wrote {metadata['num_images']} images, {metadata['num_regions']} "
          f"regions and {metadata['num_captions']} captions to {args.out} in "
          f"{metadata['seconds']:.1f} s.")
