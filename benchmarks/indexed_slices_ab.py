"""What the TensorFlow embedding-gradient fix in `GroupedAdamW` costs.

Under TensorFlow, `GroupedAdamW` sums the rows of an embedding's
`tf.IndexedSlices` gradient into a dense gradient before clipping and Adam
(docs/distributed.md, "The optimizer"); stock Keras passes the slices on,
which computes Adam's second moment and the clipping norm from the
undeduplicated rows. This script trains two identical pretrainers on one
fixed batch, one with the fix and one with the stock conversion, and times
them in alternating rounds in one process, so that both see the same machine
noise. It reports the median seconds per step of each and their ratio.

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/indexed_slices_ab.py
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="interbert_tiny_en")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="Steps per round.")
    p.add_argument("--rounds", type=int, default=4)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras
    from keras import ops

    if keras.config.backend() != "tensorflow":
        raise SystemExit("The fix concerns tf.IndexedSlices: run with "
                         "KERAS_BACKEND=tensorflow.")
    from helpers.distributed_common import NUM_CLASSES
    from helpers.distributed_common import pretraining_batch

    import keras_interbert
    from keras_interbert.optimizers import grouped_adamw
    from keras_interbert.optimizers import pretraining_optimizer
    from keras_interbert.presets import preset_backbone_config

    def stock(gradient):
        return ops.convert_to_tensor(gradient)  # IndexedSlices stay slices

    # The test batch: 36 tokens, 8 regions + the global slot, 24-d features.
    x, y = pretraining_batch(batch=args.batch_size, text_len=36, regions=9)
    config = dict(preset_backbone_config(args.preset), image_feature_dim=24)
    fixed = grouped_adamw._dense
    models = {}
    for name, dense in (("fixed", fixed), ("stock", stock)):
        grouped_adamw._dense = dense  # read when the train step is traced
        keras.utils.set_random_seed(0)
        model = keras_interbert.InterBERTPretrainer(
            keras_interbert.InterBERTBackbone(**config),
            num_region_classes=NUM_CLASSES)
        model.compile(optimizer=pretraining_optimizer(
            total_steps=10_000, learning_rate=5e-4, bert_variable_patterns=()))
        model.fit(x, y, batch_size=args.batch_size, epochs=3, verbose=0)
        models[name] = model
    grouped_adamw._dense = fixed

    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=args.batch_size, epochs=args.steps,
                      verbose=0)
            seconds[name].append((time.perf_counter() - start) / args.steps)
    print(f"{args.preset}, batch {args.batch_size}, {args.rounds} rounds of "
          f"{args.steps} steps")
    for name, values in seconds.items():
        print(f"{name:>6}: median {np.median(values):.4f} s/step "
              f"(rounds: {', '.join(f'{v:.4f}' for v in values)})")
    ratio = np.median(seconds["fixed"]) / np.median(seconds["stock"])
    print(f"fixed / stock: {ratio:.3f}")
    return seconds


if __name__ == "__main__":
    main()
