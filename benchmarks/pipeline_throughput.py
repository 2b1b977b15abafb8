"""Pretraining input-pipeline throughput at the published shapes.

Writes a canonical region folder of random images with 36 regions x 2048
features and 1601-way class distributions (the published layout), captions
of 8-30 words, then times `pretraining_dataset` (span MSM + group MRM, ITM
negatives, batch 64, 36 text tokens, 37 image slots) in image-text pairs per
second after a warm-up. Target (issue 3): at least 2,000 pairs/s on the 2-core
development machine.

Also timed, in the same rounds so that the figures share one time window:
the region reader alone (`region_dataset`, one record at a time, and
`parse_region_batch`, 64 records at a time; parse, checks and decode, no
pairing or masking) and, with `--baseline REV`, the pipeline module as it was
at git revision REV (e.g. the per-example implementation before the batched
one: `--baseline eb58a5b`). Each measurement gets a fresh iterator; rounds
alternate the pipelines, so a load change on a shared machine hits them all.

    .venv/bin/python benchmarks/pipeline_throughput.py [--images 600] [--seconds 20]
        [--rounds 3] [--baseline REV] [--no-reader] [--json out.json]
"""
import argparse
import gc
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

PIPELINE_PATH = "keras_interbert/data/pretraining_pipeline.py"


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


def pipeline_at_revision(revision, directory):
    """The pretraining pipeline module as committed at `revision`.

    Written to a file under `directory` first: autograph reads a function's
    source to convert it.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(
        ["git", "show", f"{revision}:{PIPELINE_PATH}"], cwd=root, check=True,
        capture_output=True, text=True).stdout
    path = os.path.join(directory, "pretraining_pipeline_baseline.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(
        "pretraining_pipeline_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def batch_size_of(batch):
    if isinstance(batch, tuple):  # (x, y)
        return int(batch[0]["token_ids"].shape[0])
    return int(batch["image_h"].shape[0])


def process_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_dataset(make_dataset, seconds, warmup=5):
    """Pairs per second of a fresh iterator after `warmup` batches, and the
    process CPU milliseconds per pair (less sensitive to other people's load
    on a shared machine than the rate)."""
    iterator = iter(make_dataset())
    for _ in range(warmup):
        batch = next(iterator)  # tracing, file opening, prefetch
    pairs, start, cpu = 0, time.time(), process_cpu_seconds()
    while time.time() - start < seconds:
        batch = next(iterator)
        pairs += batch_size_of(batch)
    rate = pairs / (time.time() - start)
    cpu_ms = 1000 * (process_cpu_seconds() - cpu) / pairs
    del iterator
    gc.collect()
    return rate, cpu_ms, batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="Timed seconds per pipeline per round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="Also time the pipeline module of this git revision.")
    parser.add_argument("--no-reader", action="store_true",
                        help="Skip the reader-alone figures.")
    parser.add_argument("--json", default=None, help="Write the figures here.")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from keras_interbert.data import pretraining_pipeline
    from keras_interbert.data.region_features import parse_region_batch
    from keras_interbert.data.region_features import region_dataset
    from keras_interbert.data.region_features import region_dims
    from keras_interbert.data.region_features import region_files
    from keras_interbert.preprocessing import InterBERTTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        write_published_layout(tmp, args.images)
        print(f"wrote {args.images} images (36 x 2048 features, 1601 classes) "
              f"in {time.time() - start:.1f} s")
        regions = os.path.join(tmp, "regions")
        captions = os.path.join(tmp, "captions.jsonl")
        tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")

        def pipeline(module):
            config = module.PretrainingDataConfig(
                batch_size=args.batch_size, repeat=True, shuffle_buffer=256)
            return lambda: module.pretraining_dataset(
                regions, captions, tokenizer, config, split="train")

        paths = region_files(regions, "train")
        dims = region_dims(paths)

        def reader_per_record():
            return (region_dataset(paths, class_probs_dtype=tf.float16)
                    .shuffle(256, seed=1).repeat()
                    .padded_batch(args.batch_size).prefetch(tf.data.AUTOTUNE))

        def reader_batched():
            return (tf.data.TFRecordDataset(paths).shuffle(256, seed=1).repeat()
                    .batch(args.batch_size)
                    .map(lambda s: parse_region_batch(
                        s, *dims, class_probs_dtype=tf.float16),
                        num_parallel_calls=tf.data.AUTOTUNE)
                    .prefetch(tf.data.AUTOTUNE))

        candidates = {"pretraining pipeline": pipeline(pretraining_pipeline)}
        if args.baseline:
            candidates[f"pretraining pipeline at {args.baseline}"] = pipeline(
                pipeline_at_revision(args.baseline, tmp))
        if not args.no_reader:
            candidates["reader alone, per record (region_dataset)"] = reader_per_record
            candidates["reader alone, batched (parse_region_batch)"] = reader_batched

        rates = {name: [] for name in candidates}
        cpu = {name: [] for name in candidates}
        for round_index in range(args.rounds):
            for name, make in candidates.items():
                rate, cpu_ms, batch = time_dataset(make, args.seconds)
                rates[name].append(rate)
                cpu[name].append(cpu_ms)
                print(f"round {round_index + 1}: {name}: {rate:,.0f} pairs/s, "
                      f"{cpu_ms:.2f} CPU ms/pair", flush=True)
                if name == "pretraining pipeline":
                    x, y = batch
        load = os.getloadavg()[0]
        print(f"\n{os.cpu_count()} cores, load average (1 min) at the end "
              f"{load:.1f}; {args.rounds} round(s) of {args.seconds:g} s each")
        for name, values in rates.items():
            spread = ", ".join(f"{v:,.0f}" for v in values)
            print(f"{name}: median {statistics.median(values):,.0f} pairs/s "
                  f"(rounds: {spread}), "
                  f"{statistics.median(cpu[name]):.2f} CPU ms/pair")
        main_rate = statistics.median(rates["pretraining pipeline"])
        print(f"target >= 2,000 pairs/s: "
              f"{'met' if main_rate >= 2000 else 'not met'}")
        shapes = {k: tuple(v.shape) for k, v in {**x, **y}.items()}
        print("batch shapes:", shapes)
        if args.json:
            from keras_interbert.utils.atomic import write_json_atomically

            write_json_atomically(args.json, {
                "pairs_per_second": main_rate, "rounds": rates,
                "cpu_ms_per_pair": cpu, "batch_size": args.batch_size,
                "load_average": load, "shapes": shapes})
    return main_rate


if __name__ == "__main__":
    main()
