"""Pretraining input-pipeline throughput at the published shapes.

Writes a canonical region folder of random images with 36 regions x 2048
features and 1601-way class distributions (the published layout), captions
of 8-30 words, then times `pretraining_dataset` (span MSM + group MRM, ITM
negatives, batch 64, 36 text tokens, 37 image slots) in image-text pairs per
second after a warm-up. Target (issue 3): at least 2,000 pairs/s on the 2-core
development machine.

    .venv/bin/python benchmarks/pipeline_throughput.py [--images 600] [--seconds 20]
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np


def write_published_layout(directory, num_images, seed=0):
    from keras_interbert.data.region_features import RegionFeatureWriter
    from keras_interbert.data.region_features import write_captions
    from keras_interbert.presets import preset_vocabulary

    rng = np.random.default_rng(seed)
    with open(preset_vocabulary("interbert_base_en"), encoding="utf-8") as f:
        words = [w for w in f.read().split("\n")[1999:12000] if w.isalpha()]
    captions = []
    with RegionFeatureWriter(os.path.join(directory, "regions"), "train",
                             examples_per_shard=200, feature_dim=2048,
                             num_classes=1601) as writer:
        for i in range(num_images):
            h, w = 480, 640
            xy = rng.random((36, 2)) * [w - 40, h - 40]
            size = 20 + rng.random((36, 2)) * 200
            boxes = np.concatenate([xy, np.minimum(xy + size, [w, h])], 1)
            logits = rng.normal(size=(36, 1601)) * 2
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            writer.write(f"img{i:06d}", h, w, boxes.astype("float32"),
                         rng.random((36, 2048)).astype("float32"), probs)
            captions.append({"image_id": f"img{i:06d}", "split": "train",
                             "caption": " ".join(rng.choice(words, rng.integers(8, 31)))})
    write_captions(os.path.join(directory, "captions.jsonl"), captions)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="Write the figures here.")
    args = parser.parse_args(argv)

    from keras_interbert.data.pretraining_pipeline import PretrainingDataConfig
    from keras_interbert.data.pretraining_pipeline import pretraining_dataset
    from keras_interbert.preprocessing import InterBERTTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        write_published_layout(tmp, args.images)
        print(f"wrote {args.images} images (36 x 2048 features, 1601 classes) "
              f"in {time.time() - start:.1f} s")
        config = PretrainingDataConfig(batch_size=args.batch_size, repeat=True,
                                       shuffle_buffer=256)
        tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")
        ds = pretraining_dataset(os.path.join(tmp, "regions"),
                                 os.path.join(tmp, "captions.jsonl"),
                                 tokenizer, config, split="train")
        iterator = iter(ds)
        for _ in range(5):
            next(iterator)  # warm-up: tracing, file opening, prefetch
        pairs, start = 0, time.time()
        while time.time() - start < args.seconds:
            x, y = next(iterator)
            pairs += int(x["token_ids"].shape[0])
        elapsed = time.time() - start
        rate = pairs / elapsed
        print(f"pretraining pipeline: {pairs} pairs in {elapsed:.1f} s = "
              f"{rate:,.0f} pairs/s (target >= 2,000) on {os.cpu_count()} cores")
        shapes = {k: tuple(v.shape) for k, v in {**x, **y}.items()}
        print("batch shapes:", shapes)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"pairs_per_second": rate, "batch_size": args.batch_size,
                           "shapes": shapes}, f, indent=2)
    return rate


if __name__ == "__main__":
    main()
