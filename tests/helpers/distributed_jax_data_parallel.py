"""Worker for `test_distributed.py`: JAX `DataParallel` on two host devices.

Forces two XLA host devices (before JAX is imported), then runs the same
`fit` (two steps of a global batch of 4, clipping active) on one device and
under `keras.distribution.DataParallel` over both, and writes the final
weights, the epoch logs and the number of devices holding the variables and
the batch to OUTPUT.npz.

Usage: python tests/helpers/distributed_jax_data_parallel.py OUTPUT.npz
"""
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=2").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))  # tests/

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from helpers.distributed_common import build_pretrainer  # noqa: E402
from helpers.distributed_common import pretraining_batch  # noqa: E402

from keras_interbert.optimizers import pretraining_optimizer  # noqa: E402


class Shardings(keras.callbacks.Callback):
    """Records on how many devices the variables live after a step."""

    def on_train_batch_end(self, batch, logs=None):
        self.devices = min(len(v.value.sharding.device_set)
                           for v in self.model.trainable_variables)


def batches():
    x1, y1 = pretraining_batch(batch=4, seed=0, itm_labels=[0, 1, 0, 0])
    x2, y2 = pretraining_batch(batch=4, seed=1, itm_labels=[1, 0, 0, 1])
    return {k: np.concatenate([x1[k], x2[k]]) for k in x1}, {
        k: np.concatenate([y1[k], y2[k]]) for k in y1}


def run(distribution, initial_weights):
    keras.distribution.set_distribution(distribution)
    model = build_pretrainer()
    model.set_weights(initial_weights)
    model.compile(optimizer=pretraining_optimizer(
        total_steps=4, learning_rate=1e-2, bert_learning_rate=2e-3,
        clipnorm=0.05))
    x, y = batches()
    shardings = Shardings()
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False,
                        verbose=0, callbacks=[shardings])
    epoch = {k: float(v[-1]) for k, v in history.history.items()}
    return model.get_weights(), epoch, shardings.devices


def main(output):
    devices = jax.devices("cpu")
    assert len(devices) == 2, devices
    initial = build_pretrainer(seed=3).get_weights()
    results = {}
    for tag, distribution in (
            ("one", None),
            ("two", keras.distribution.DataParallel(devices=devices))):
        weights, epoch, used = run(distribution, initial)
        results.update({f"{tag}/weight_{i}": w for i, w in enumerate(weights)})
        results.update({f"{tag}/epoch/{k}": np.float64(v)
                        for k, v in epoch.items()})
        results[f"{tag}/devices"] = np.int64(used)
    results.update({f"initial/weight_{i}": w for i, w in enumerate(initial)})
    np.savez(output, **results)


if __name__ == "__main__":
    main(sys.argv[1])
