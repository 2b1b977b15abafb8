"""The quickstart: what the project can do today, end to end, on this machine.

1. Builds the tiny preset, runs a forward pass of the backbone and of the
   pretraining heads on a batch of random inputs at the published input
   shapes (36 text tokens, 37 image slots), and prints the output shapes and
   the parameter counts.
2. Generates the bundled data set (rendered scenes, English captions, region
   features from the pixels) and pretrains the tiny model on it for a few
   hundred steps with `recipes/pretrain.py` (MSM + MRM + ITM), printing the
   first and last epoch's metrics and where the `.keras` file and the
   training curves are.

Later stages (retrieval finetuning and evaluation, export) join this script as
they land.
"""
import argparse
import time

import numpy as np


def random_batch(batch, text_len, slots, feature_dim, vocabulary_size, seed):
    rng = np.random.default_rng(seed)
    text_mask = (np.arange(text_len)[None] < rng.integers(5, text_len + 1, (batch, 1))).astype("int32")
    region_mask = (np.arange(slots)[None] < rng.integers(2, slots + 1, (batch, 1))).astype("int32")
    boxes = np.sort(rng.random((batch, slots, 2, 2)), axis=2)
    x1, y1, x2, y2 = boxes[..., 0, 0], boxes[..., 0, 1], boxes[..., 1, 0], boxes[..., 1, 1]
    locations = np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], -1)
    locations[:, 0] = [0, 0, 1, 1, 1]
    return {
        "token_ids": (rng.integers(1000, vocabulary_size, (batch, text_len)) * text_mask).astype("int32"),
        "segment_ids": np.zeros((batch, text_len), "int32"),
        "text_mask": text_mask,
        "region_features": (rng.random((batch, slots, feature_dim)) * region_mask[..., None]).astype("float32"),
        "region_locations": locations.astype("float32"),
        "region_mask": region_mask,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="interbert_tiny_en")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--skip-pretraining", action="store_true")
    args = parser.parse_args(argv)

    import keras

    import keras_interbert

    print(f"keras {keras.__version__}, backend {keras.config.backend()}")
    start = time.time()
    pretrainer = keras_interbert.InterBERTPretrainer.from_preset(args.preset)
    backbone = pretrainer.backbone
    inputs = random_batch(args.batch_size, 36, 37, backbone.image_feature_dim,
                          backbone.vocabulary_size, seed=0)
    features = backbone(inputs, training=False)
    logits = pretrainer(inputs, training=False)
    print(f"\npreset {args.preset} (built and run in {time.time() - start:.1f} s)")
    print(f"{'input':<18} shape")
    for name, value in inputs.items():
        print(f"  {name:<16} {tuple(value.shape)}")
    print(f"{'output':<18} shape")
    for name, value in list(features.items()) + list(logits.items()):
        print(f"  {name:<16} {tuple(value.shape)}")
    print(f"\nbackbone parameters:   {backbone.count_params():,}")
    print(f"pretrainer parameters: {pretrainer.count_params():,}")
    print("(the published configuration, interbert_base_en: 154,573,568 / "
          "157,021,565)")
    if args.skip_pretraining:
        return
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pretrain

    print(f"\n== Pretraining the tiny model on the bundled data set "
          f"({args.pretrain_steps} steps) ==")
    summary = pretrain.main([
        "--out", os.path.join(args.out, "pretrain"),
        "--num-images", "1000", "--feature-dim", "256",
        "--steps", str(args.pretrain_steps), "--steps-per-epoch", "50",
        "--batch-size", "32", "--max-regions", "8", "--learning-rate", "2e-3",
        "--validation-steps", "4", "--verbose", "2",
    ])
    print(f"\n{'metric':<16} {'first epoch':>12} {'last epoch':>12}")
    for name in ("msm_accuracy", "msm_loss", "mrm_loss", "itm_accuracy",
                 "itm_loss"):
        print(f"{name:<16} {summary['first'][name]:>12.4f} "
              f"{summary['final'][name]:>12.4f}")
    print(f"\npretrained model: {summary['model']}")
    print(f"training curves:  {os.path.join(args.out, 'pretrain', 'training_curves.png')}")


if __name__ == "__main__":
    main()
