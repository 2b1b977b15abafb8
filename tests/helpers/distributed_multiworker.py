"""Worker for `test_distributed.py`: `MultiWorkerMirroredStrategy` on localhost.

Run with `TF_CONFIG` set (one process per worker) it trains the tiny
pretrainer for a few steps under `MultiWorkerMirroredStrategy`; run without
it, it does the same on one device as the reference. Either way it writes
the final weights and the epoch logs to OUTPUT.npz.

Usage: python tests/helpers/distributed_multiworker.py OUTPUT.npz
"""
import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))  # tests/

import tensorflow as tf  # noqa: E402

# The strategy must exist before any other TensorFlow operation runs.
if "TF_CONFIG" in os.environ:
    STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
else:
    STRATEGY = tf.distribute.get_strategy()

import numpy as np  # noqa: E402
from helpers.distributed_common import build_pretrainer  # noqa: E402
from helpers.distributed_common import pretraining_batch  # noqa: E402

from keras_interbert.optimizers import pretraining_optimizer  # noqa: E402

STEPS = 3
GLOBAL_BATCH = 4


def dataset():
    parts = [pretraining_batch(batch=GLOBAL_BATCH, seed=s,
                               itm_labels=[s % 2, 1, 0, 0])
             for s in range(STEPS)]
    x = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    y = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    # Every worker reads the same global batches and keeps its slice of each.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return data.with_options(options)


def main(output):
    with STRATEGY.scope():
        model = build_pretrainer(seed=5)
        model.compile(optimizer=pretraining_optimizer(
            total_steps=STEPS, learning_rate=1e-2, bert_learning_rate=2e-3,
            clipnorm=0.05))
    history = model.fit(dataset(), epochs=1, verbose=0)
    results = {f"weight_{i}": w for i, w in enumerate(model.get_weights())}
    results.update({f"epoch/{k}": np.float64(v[-1])
                    for k, v in history.history.items()})
    results["replicas"] = np.int64(STRATEGY.num_replicas_in_sync)
    if "TF_CONFIG" in os.environ:
        results["task"] = np.int64(json.loads(os.environ["TF_CONFIG"])
                                   ["task"]["index"])
    np.savez(output, **results)


if __name__ == "__main__":
    main(sys.argv[1])
