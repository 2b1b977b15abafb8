"""Region-feature extraction throughput and `score_image` latency.

Extraction: a `RegionFeatureExtractor` with a ResNet-50 (random weights,
the published 2048-d width) on 448-pixel letterboxed images, 36 grid
regions each, `predict_on_batch` on batches of `--batch-size`, after one
warm-up batch; images/s over `--batches` batches (the letterboxing and
decoding are not timed: they run on tf.data's side).

`score_image` (TensorFlow only, `--serving`): a tiny retriever exported
with the same extractor; the latency of one request (one PNG photograph,
one caption), p50/p99 over `--requests` calls after a warm-up.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/extraction_throughput.py
    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/extraction_throughput.py --serving
"""
import argparse
import json
import os
import tempfile
import time

import keras
import numpy as np


def extraction(args, extractor):
    rng = np.random.default_rng(0)
    size = args.image_size
    images = rng.uniform(0, 255, (args.batch_size, size, size, 3)).astype(
        "float32")
    from keras_interbert.vision import grid_boxes

    boxes = keras.ops.convert_to_numpy(grid_boxes(
        [size] * args.batch_size, [size] * args.batch_size, (6,)))
    batch = {"images": images, "boxes": boxes}
    extractor.predict_on_batch(batch)  # compile / warm up
    start = time.perf_counter()
    for _ in range(args.batches):
        out = extractor.predict_on_batch(batch)
    seconds = time.perf_counter() - start
    assert out["region_features"].shape == (args.batch_size, 36, 2048)
    return args.batch_size * args.batches / seconds


def serving(args, extractor):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    import skimage.data

    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTRetriever
    from keras_interbert.export import ExportOptions
    from keras_interbert.export import export_for_serving
    from keras_interbert.presets import preset_backbone_config

    config = preset_backbone_config("interbert_tiny_en")
    config["image_feature_dim"] = 2048
    model = InterBERTRetriever(InterBERTBackbone(**config))
    photo = os.path.join(os.path.dirname(skimage.data.__file__),
                         "astronaut.png")
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = os.path.join(tmp, "m", "1")
        export_for_serving(model, export_dir, ExportOptions(warmup=False),
                           image_extractor=extractor)
        fn = tf.saved_model.load(export_dir).signatures["score_image"]
        request = {"image_bytes": tf.constant([open(photo, "rb").read()]),
                   "text": tf.constant(["an astronaut in front of a flag"])}
        fn(**request)
        times = []
        for _ in range(args.requests):
            start = time.perf_counter()
            fn(**request)["match_probability"].numpy()
            times.append(time.perf_counter() - start)
    return (float(np.percentile(times, 50)) * 1000,
            float(np.percentile(times, 99)) * 1000)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--serving", action="store_true")
    p.add_argument("--requests", type=int, default=10)
    args = p.parse_args()
    from keras_interbert.vision import RegionFeatureExtractor
    from keras_interbert.vision import resnet_backbone

    keras.utils.set_random_seed(0)
    extractor = RegionFeatureExtractor(resnet_backbone(),
                                       image_size=args.image_size)
    result = {"backend": keras.config.backend(),
              "image_size": args.image_size, "batch_size": args.batch_size,
              "images_per_second": round(extraction(args, extractor), 2)}
    if args.serving:
        p50, p99 = serving(args, extractor)
        result["score_image_ms_p50"] = round(p50, 1)
        result["score_image_ms_p99"] = round(p99, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
