"""What it costs TensorFlow to build graphs before they run (issue 17).

A profile of the TensorFlow test session (docs/benchmarks.md, "Seventh
pass") found 44% of its busy Python time in tracing: training steps, the
pipelines' `tf.data` functions and SavedModel exports. This script times the
three pieces that were changed because of it, each next to what it replaced.
Each measurement runs in a fresh process, as a recipe or a test's first
trace does (AutoGraph, for one, caches what it has converted), after a
small warm-up of TensorFlow; the rounds alternate the two sides, so that a
load change on a shared machine hits both:

- `fit`'s first call (one batch of 4 pairs) of the tiny pretrainer (the
  `interbert_tiny_en` configuration), with
  the optimizer built before the step is traced (what `BackboneTask.fit`
  now does under TensorFlow) and inside the trace (Keras's own `fit`);
- building the text-classification and multiple-choice datasets (the
  text and VCR recipes) with the pipelines' functions traced as written
  (`keras_interbert.data.tracing.plain`) and through AutoGraph;
- tracing the text packer on pairs, with `_keep_first` on the flat values
  and with `tf.ragged.boolean_mask`.

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/trace_costs.py [--rounds 3]
        [--pieces fit datasets packer]

Prints the median seconds of each side and their ratio.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_interbert import InterBERTBackbone  # noqa: E402
from keras_interbert import InterBERTPretrainer  # noqa: E402
from keras_interbert.optimizers import pretraining_optimizer  # noqa: E402
from keras_interbert.preprocessing import text_packer  # noqa: E402
from keras_interbert.presets import preset_backbone_config  # noqa: E402

FEATURE_DIM = 24


def one_batch(seed=0, batch=4, length=12, regions=5, classes=7):
    rng = np.random.default_rng(seed)
    dim = FEATURE_DIM
    x = {"token_ids": rng.integers(5, 100, (batch, length)).astype("int32"),
         "segment_ids": np.zeros((batch, length), "int32"),
         "text_mask": np.ones((batch, length), "int32"),
         "region_features": rng.normal(size=(batch, regions, dim)).astype(
             "float32"),
         "region_locations": rng.uniform(size=(batch, regions, 5)).astype(
             "float32"),
         "region_mask": np.ones((batch, regions), "int32")}
    y = {"msm_labels": rng.integers(5, 100, (batch, length)).astype("int32"),
         "msm_weights": (rng.uniform(size=(batch, length)) < 0.2).astype(
             "float32"),
         "mrm_targets": np.full((batch, regions, classes), 1 / classes,
                                "float32"),
         "mrm_weights": (rng.uniform(size=(batch, regions)) < 0.3).astype(
             "float32"),
         "itm_labels": rng.integers(0, 2, (batch,)).astype("int32")}
    return x, y


def first_fit(eager_optimizer):
    """Seconds of the first `fit` call on one batch (the optimizer's build
    included when it is eager)."""
    keras.utils.set_random_seed(0)
    backbone = InterBERTBackbone(**dict(
        preset_backbone_config("interbert_tiny_en"),
        image_feature_dim=FEATURE_DIM))
    model = InterBERTPretrainer(backbone, num_region_classes=7)
    model.compile(optimizer=pretraining_optimizer(
        total_steps=10, learning_rate=1e-3, bert_variable_patterns=()))
    x, y = one_batch()
    start = time.perf_counter()
    if eager_optimizer:
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    else:
        # keras.Model.fit itself, without the task's eager build.
        keras.Model.fit(model, x, y, batch_size=4, epochs=1, verbose=0)
    return time.perf_counter() - start


def finetuning_datasets(root, plain_functions):
    """Seconds to build the text recipe's and the VCR recipe's training
    datasets."""
    from keras_interbert.data import sampling
    from keras_interbert.data.multiple_choice_pipeline import (
        MultipleChoiceDataConfig)
    from keras_interbert.data.multiple_choice_pipeline import (
        multiple_choice_dataset)
    from keras_interbert.data.multiple_choice_pipeline import (
        read_multiple_choice)
    from keras_interbert.data.retrieval_pipeline import RegionTable
    from keras_interbert.data.text_classification_pipeline import (
        TextClassificationDataConfig)
    from keras_interbert.data.text_classification_pipeline import read_tsv
    from keras_interbert.data.text_classification_pipeline import (
        text_classification_dataset)
    from keras_interbert.data.tracing import plain
    from keras_interbert.preprocessing import InterBERTTokenizer

    tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")
    records = [r for r in read_multiple_choice(os.path.join(root, "mc.jsonl"))
               if r.get("split", "train") == "train"]
    table = RegionTable.from_files(os.path.join(root, "data", "regions"),
                                   split="train", max_regions=4)
    texts = read_tsv(os.path.join(root, "text", "mentions_circle",
                                  "train.tsv"), "sentence", "label")
    sampling.plain = plain if plain_functions else (lambda fn: fn)
    try:
        start = time.perf_counter()
        text_classification_dataset(texts, tokenizer,
                                    TextClassificationDataConfig(
                                        sequence_length=16, batch_size=8,
                                        repeat=True))
        for task in ("q_a", "qa_r"):
            multiple_choice_dataset(table, records, tokenizer,
                                    MultipleChoiceDataConfig(
                                        task=task, max_regions=4,
                                        sequence_length=16, batch_size=16,
                                        repeat=True))
        return time.perf_counter() - start
    finally:
        sampling.plain = plain


def packer_trace(flat_values):
    """Seconds to trace the text packer on a pair of ragged batches."""
    def boolean_mask_keep_first(ids, lengths):
        positions = tf.ragged.range(ids.row_lengths(), dtype=lengths.dtype)
        return tf.ragged.boolean_mask(ids, positions < lengths[:, tf.newaxis])

    packer = text_packer.InterBERTTextPacker(sequence_length=16)
    spec = tf.RaggedTensorSpec([None, None], tf.int32)
    kept = text_packer._keep_first
    text_packer._keep_first = kept if flat_values else boolean_mask_keep_first
    try:
        start = time.perf_counter()
        tf.function(lambda a, b: packer(a, b), autograph=False
                    ).get_concrete_function(spec, spec)
        return time.perf_counter() - start
    finally:
        text_packer._keep_first = kept


def write_inputs(root):
    from keras_interbert.data.multiple_choice_synthetic import (
        write_multiple_choice)
    from keras_interbert.data.synthetic import write_dataset
    from keras_interbert.data.text_classification_pipeline import (
        write_caption_tasks)

    data = os.path.join(root, "data")
    write_dataset(data, num_images=40, seed=2, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    write_caption_tasks(os.path.join(data, "captions_en.jsonl"),
                        os.path.join(root, "text"))
    write_multiple_choice(os.path.join(data, "scenes.jsonl"),
                          os.path.join(root, "mc.jsonl"),
                          questions_per_image=1)


PIECES = {
    "fit": ("first fit of the tiny pretrainer", "optimizer built eagerly",
            "built in the trace"),
    "datasets": ("text + multiple-choice datasets", "functions as written",
                 "through AutoGraph"),
    "packer": ("text packer trace (pairs)", "cut on flat values",
               "tf.ragged.boolean_mask"),
}


def measure_one(piece, new, root):
    """One measurement in this (fresh) process."""
    tf.data.Dataset.range(4).map(lambda i: i + 1).reduce(
        tf.constant(0, tf.int64), lambda a, b: a + b)
    if piece == "fit":
        return first_fit(new)
    if piece == "datasets":
        return finetuning_datasets(root, new)
    return packer_trace(new)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pieces", nargs="+", choices=tuple(PIECES),
                   default=list(PIECES))
    p.add_argument("--one", nargs=3, metavar=("PIECE", "SIDE", "ROOT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if keras.config.backend() != "tensorflow":
        sys.exit("trace_costs.py measures TensorFlow's tracing: run it with "
                 "KERAS_BACKEND=tensorflow.")
    if args.one:
        piece, side, root = args.one
        print(f"SECONDS {measure_one(piece, side == 'new', root):.4f}")
        return
    times = {piece: {"new": [], "old": []} for piece in args.pieces}
    with tempfile.TemporaryDirectory() as root:
        write_inputs(root)
        for r in range(args.rounds):
            for piece in args.pieces:
                for side in ("new", "old"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--one", piece, side, root],
                        capture_output=True, text=True, check=True,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
                    seconds = float(out.stdout.split("SECONDS")[-1])
                    times[piece][side].append(seconds)
            print(f"round {r + 1} of {args.rounds} done", flush=True)
    print(f"median of {args.rounds} rounds (fresh processes), seconds")
    for piece in args.pieces:
        name, new, old = PIECES[piece]
        a = statistics.median(times[piece]["new"])
        b = statistics.median(times[piece]["old"])
        print(f"{name:34s} {new} {a:6.2f} | {old} {b:6.2f} | {b / a:4.1f}x")


if __name__ == "__main__":
    main()
