"""Latency and throughput of the serving export against Keras `predict`.

    KERAS_BACKEND=tensorflow python benchmarks/serving_latency.py \
        [--presets interbert_tiny_en interbert_small_en interbert_base_en] \
        [--repeats 30] [--batches 3] [--json out.json]

For each configuration (random weights: the timing does not depend on
them) a retriever is exported with the matching defaults (30 tokens, 101
region slots) and loaded the way TensorFlow Serving loads it: a TF1
session over the `serve` meta graph, run on the `serving_default`
signature's tensor names. One pair (one caption, one image with 36
regions) measures latency (p50, p99 over `--repeats` requests after a
warm-up); batches of 32 pairs measure throughput. The SavedModel does its
own tokenization and region layout; Keras `predict` gets the already
packed backbone inputs of the same pairs.
"""
import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401

from keras_interbert import InterBERTRetriever  # noqa: E402
from keras_interbert.export import export_for_serving  # noqa: E402
from keras_interbert.export.validate import pipeline_inputs  # noqa: E402
from keras_interbert.export.warmup import example_inputs  # noqa: E402

NUM_REGIONS = 36


def server_session(export_dir):
    """A session and the serving_default feed/fetch names, as the server."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(
            session, ["serve"], export_dir)
    signature = meta_graph.signature_def["serving_default"]
    feeds = {k: v.name for k, v in signature.inputs.items()}
    fetches = {k: v.name for k, v in signature.outputs.items()}
    return session, feeds, fetches


def requests(metadata, batch_size, seed):
    x = example_inputs(metadata, "score", batch_size, seed=seed,
                       num_given_regions=NUM_REGIONS)
    x["num_regions"][:] = NUM_REGIONS
    return x


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


def bench(preset, repeats, batches, work):
    keras.utils.set_random_seed(0)
    model = InterBERTRetriever.from_preset(preset)
    export_dir = os.path.join(work, preset, "1")
    start = time.perf_counter()
    metadata = export_for_serving(model, export_dir)
    export_s = time.perf_counter() - start
    session, feeds, fetches = server_session(export_dir)

    def serve(x):
        feed = {feeds[k]: (v.astype(str).astype(object) if v.dtype == object
                           else v) for k, v in x.items()}
        return session.run(fetches["match_probability"], feed)

    one = requests(metadata, 1, seed=1)
    big = requests(metadata, 32, seed=2)
    keras_one = pipeline_inputs(export_dir, metadata, one)
    keras_big = pipeline_inputs(export_dir, metadata, big)
    row = {"preset": preset, "parameters": model.count_params(),
           "export_s": export_s}
    for name, fn_one, fn_big in [
            ("savedmodel", lambda: serve(one), lambda: serve(big)),
            ("keras_predict",
             lambda: model.predict(keras_one, batch_size=1, verbose=0),
             lambda: model.predict(keras_big, batch_size=32, verbose=0))]:
        latency = timed(fn_one, repeats)
        throughput = timed(fn_big, batches)
        row[name] = {"p50_ms": 1e3 * float(np.percentile(latency, 50)),
                     "p99_ms": 1e3 * float(np.percentile(latency, 99)),
                     "pairs_per_s": 32 / float(np.median(throughput))}
    session.close()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=[
        "interbert_tiny_en", "interbert_small_en", "interbert_base_en"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for preset in args.presets:
            repeats = args.repeats if "base" not in preset else max(
                5, args.repeats // 3)
            rows.append(bench(preset, repeats, args.batches, work))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
          f"{NUM_REGIONS} regions per image, 30 tokens, 102 slots\n")
    print("| configuration | params | SavedModel p50 / p99 (1 pair) | "
          "Keras predict p50 / p99 (1 pair) | SavedModel pairs/s (batch 32) "
          "| Keras predict pairs/s (batch 32) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        s, k = r["savedmodel"], r["keras_predict"]
        print(f"| {r['preset']} | {r['parameters'] / 1e6:.1f}M | "
              f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} ms | "
              f"{k['p50_ms']:.1f} / {k['p99_ms']:.1f} ms | "
              f"{s['pairs_per_s']:.1f} | {k['pairs_per_s']:.1f} |")
    if args.json:
        from keras_interbert.utils.atomic import write_json_atomically

        write_json_atomically(args.json, rows)


if __name__ == "__main__":
    main()
