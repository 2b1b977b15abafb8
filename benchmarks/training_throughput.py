"""Pretraining throughput, model FLOPs utilisation and peak memory.

For each backend (TensorFlow with and without XLA, JAX, PyTorch) and each
configuration (tiny, small, published) this runs `fit` steps of
`InterBERTPretrainer` on a fixed batch at the published input shapes (batch
8, 36 text tokens, 37 image slots, 2048-d features, 1601 region classes) in a
fresh process, and reports image-text pairs per second, achieved FLOP/s, the
model FLOPs utilisation against a float32 matrix-product peak measured in the
same process, and the process's peak resident memory.

Reference (docs/architecture.md §9): the original PyTorch code trains the
published configuration at about 2.5 pairs/s on this class of machine (2
cores, fp32); a ratio is only exact when a checkout of the authors' code is
timed in the same run on the same machine. Targets: fastest backend >= 3.8 pairs/s, TensorFlow >= 2.5.

    .venv/bin/python benchmarks/training_throughput.py                 # everything
    .venv/bin/python benchmarks/training_throughput.py --configs tiny --variants jax
"""
import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "tensorflow": {"KERAS_BACKEND": "tensorflow", "jit": "false"},
    "tensorflow_xla": {"KERAS_BACKEND": "tensorflow", "jit": "true"},
    "jax": {"KERAS_BACKEND": "jax", "jit": "true"},
    "torch": {"KERAS_BACKEND": "torch", "jit": "false"},
}
CONFIGS = {
    "tiny": "interbert_tiny_en",
    "small": "interbert_small_en",
    "published": "interbert_base_en",
}


def model_flops_per_pair(config, text_len=36, slots=37, num_classes=1601):
    """Forward FLOPs of one pair (multiply-adds x 2), the dense and attention parts."""
    H, V = config["hidden_dim"], config["vocabulary_size"]
    F, Fi = config["intermediate_dim"], config["image_intermediate_dim"]
    D, P = config["image_feature_dim"], config["pooled_dim"]
    L = text_len + slots

    def layer(tokens, ffn, keys):
        dense = 2 * tokens * (4 * H * H + 2 * H * ffn)
        attention = 2 * 2 * tokens * keys * H
        return dense + attention

    flops = 2 * slots * (D * H + 5 * H)
    flops += config["num_single_stream_layers"] * layer(L, F, L)
    flops += config["num_text_layers"] * layer(text_len, F, text_len)
    flops += config["num_image_layers"] * layer(slots, Fi, slots)
    flops += 2 * 2 * H * P + 2 * P * 2
    flops += 2 * text_len * (H * H + H * V)  # MSM head, every position
    flops += 2 * slots * (H * H + H * num_classes)  # MRM head
    return flops


def worker(args):
    """Runs in the child process: one backend variant, one configuration."""
    import resource

    import keras
    import numpy as np

    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTPretrainer
    from keras_interbert.optimizers import pretraining_optimizer
    from keras_interbert.presets import preset_backbone_config

    keras.config.set_dtype_policy(args.dtype)
    keras.utils.set_random_seed(0)
    config = preset_backbone_config(CONFIGS[args.config])
    model = InterBERTPretrainer(InterBERTBackbone(**config), num_region_classes=1601)
    model.compile(optimizer=pretraining_optimizer(bert_variable_patterns=()),
                  jit_compile=args.jit == "true")
    rng = np.random.default_rng(0)
    B, T, S = args.batch_size, 36, 37
    text_mask = np.ones((B, T), "int32")
    text_mask[:, 20:] = 0
    region_mask = np.ones((B, S), "int32")
    x = {
        "token_ids": (rng.integers(1000, 30000, (B, T)) * text_mask).astype("int32"),
        "segment_ids": np.zeros((B, T), "int32"),
        "text_mask": text_mask,
        "region_features": rng.random((B, S, 2048)).astype("float32"),
        "region_locations": rng.random((B, S, 5)).astype("float32"),
        "region_mask": region_mask,
    }
    msm_weights = np.zeros((B, T), "float32")
    msm_weights[:, 3:9] = 1
    probs = rng.random((B, S, 1601)).astype("float32")
    probs /= probs.sum(-1, keepdims=True)
    mrm_weights = np.zeros((B, S), "float32")
    mrm_weights[:, 1:5] = 1
    y = {
        "msm_labels": (x["token_ids"] * msm_weights).astype("int32"),
        "msm_weights": msm_weights,
        "mrm_targets": probs * mrm_weights[..., None],
        "mrm_weights": mrm_weights,
        "itm_labels": rng.integers(0, 2, (B,)).astype("int32"),
    }
    steps = args.steps

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    import tensorflow as tf

    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    timer = Timer()
    model.fit(ds, steps_per_epoch=args.warmup + steps, epochs=1, verbose=0,
              shuffle=False,
              callbacks=[timer])
    times = np.diff(np.array(timer.times[args.warmup - 1:]))
    step = float(np.median(times))

    # A float32 matrix-product peak on the same cores, same process.
    n = 2048
    a = keras.ops.convert_to_tensor(rng.random((n, n)).astype("float32"))
    b = keras.ops.convert_to_tensor(rng.random((n, n)).astype("float32"))
    matmul = keras.ops.matmul
    keras.ops.convert_to_numpy(matmul(a, b))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(matmul(a, b))
        best = min(best, time.perf_counter() - start)
    peak = 2 * n ** 3 / best
    flops = 3 * model_flops_per_pair(config) * B  # forward + backward
    result = {
        "variant": args.variant, "config": args.config, "dtype": args.dtype,
        "batch_size": B, "step_seconds": step, "pairs_per_second": B / step,
        "achieved_gflops": flops / step / 1e9, "peak_gflops": peak / 1e9,
        "mfu": flops / step / peak,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "parameters": model.count_params(),
    }
    print("RESULT " + json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--jit", default="false", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    results = []
    for config in args.configs:
        for dtype in args.dtypes:
            for variant in args.variants:
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                           KERAS_BACKEND=VARIANTS[variant]["KERAS_BACKEND"])
                cmd = [sys.executable, __file__, "--worker", "--variant", variant,
                       "--config", config, "--dtype", dtype,
                       "--jit", VARIANTS[variant]["jit"],
                       "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
                if out.returncode or not line:
                    print(f"{config:9} {dtype:14} {variant:15} FAILED: "
                          f"{out.stderr.strip().splitlines()[-1:] }")
                    continue
                r = json.loads(line[0][len("RESULT "):])
                results.append(r)
                print(f"{config:9} {dtype:14} {variant:15} "
                      f"{r['pairs_per_second']:8.2f} pairs/s  "
                      f"{r['achieved_gflops']:7.1f} GFLOP/s  "
                      f"MFU {100 * r['mfu']:5.1f}% of {r['peak_gflops']:.0f}  "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
