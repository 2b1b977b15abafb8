"""Worker for `test_distributed.py`: one device against two replicas.

Splits the CPU into two logical devices (before TensorFlow starts), runs the
same `fit` (two steps of a global batch of 4, uneven target counts across the
two halves, clipping active) on one device and under `MirroredStrategy`, and
writes the final weights and the logged values of both runs to an `.npz`.
A third run repeats the two-replica one under `mixed_float16`, where the
`LossScaleOptimizer` must agree across replicas on taking each step.

Usage: python tests/helpers/distributed_mirrored.py OUTPUT.npz
"""
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))  # tests/

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from helpers.distributed_common import build_pretrainer  # noqa: E402
from helpers.distributed_common import pretraining_batch  # noqa: E402

from keras_interbert.optimizers import pretraining_optimizer  # noqa: E402


class BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({k: float(v) for k, v in logs.items()})


def batches():
    x1, y1 = pretraining_batch(batch=4, seed=0, itm_labels=[0, 1, 0, 0])
    x2, y2 = pretraining_batch(batch=4, seed=1, itm_labels=[1, 0, 0, 1])
    return {k: np.concatenate([x1[k], x2[k]]) for k in x1}, {
        k: np.concatenate([y1[k], y2[k]]) for k in y1}


def run(strategy, initial_weights):
    x, y = batches()
    with strategy.scope():
        model = build_pretrainer()
        model.set_weights(initial_weights)
        # A small clipnorm so that clipping is active on most variables:
        # clipping a replica's share instead of the sum would show.
        model.compile(optimizer=pretraining_optimizer(
            total_steps=4, learning_rate=1e-2, bert_learning_rate=2e-3,
            clipnorm=0.05))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    logs = BatchLogs()
    history = model.fit(dataset, epochs=1, verbose=0, callbacks=[logs])
    epoch = {k: float(v[-1]) for k, v in history.history.items()}
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        epoch["applied_steps"] = float(model.optimizer.step_counter.numpy())
    return model.get_weights(), logs.steps, epoch


def main(output):
    initial = build_pretrainer(seed=3).get_weights()
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    one = tf.distribute.OneDeviceStrategy(devices[0])
    two = tf.distribute.MirroredStrategy(devices)
    assert two.num_replicas_in_sync == 2
    results = {}
    for tag, strategy in (("one", one), ("two", two), ("f16", two)):
        if tag == "f16":
            keras.config.set_dtype_policy("mixed_float16")
        weights, steps, epoch = run(strategy, initial)
        for i, w in enumerate(weights):
            results[f"{tag}/weight_{i}"] = w
        for i, step in enumerate(steps):
            for k, v in step.items():
                results[f"{tag}/step_{i}/{k}"] = np.float64(v)
        for k, v in epoch.items():
            results[f"{tag}/epoch/{k}"] = np.float64(v)
    for i, w in enumerate(initial):
        results[f"initial/weight_{i}"] = w
    np.savez(output, **results)


if __name__ == "__main__":
    main(sys.argv[1])
