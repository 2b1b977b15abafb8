"""Run under some KERAS_BACKEND: saves a tiny pretrainer and its outputs.

Usage: python tests/helpers/cross_backend_save.py OUT_DIR [SEED] [--train] [--round-trip]

With `--train`, also saves a pretrainer without dropout (`trainer.keras`),
then the weights and losses after `TRAIN_EPOCHS` passes over
`train_batches()` with the pretraining optimizer (`trained.npz`), so that a
process under another backend can replay the same training from the same
file and compare. With `--round-trip`, also runs the "pretrain" stage of
`task_round_trip.py` (`pretrained.keras` and its outputs), so that the
session's one writer process serves tests/test_tasks.py too.
"""
import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))  # tests/
from conftest import TINY_BACKBONE  # noqa: E402
from conftest import random_backbone_inputs  # noqa: E402

from keras_interbert import InterBERTBackbone  # noqa: E402
from keras_interbert import InterBERTPretrainer  # noqa: E402

TRAIN_EPOCHS = 3


def train_batches():
    """Two batches of 4 pairs (masked inputs and targets) as one (x, y)."""
    from helpers.distributed_common import pretraining_batch

    halves = [pretraining_batch(batch=4, seed=s, itm_labels=labels)
              for s, labels in ((1, [0, 1, 0, 1]), (2, [1, 0, 0, 0]))]
    return tuple({k: np.concatenate([h[i][k] for h in halves])
                  for k in halves[0][i]} for i in (0, 1))


def compile_for_training(model):
    from keras_interbert.optimizers import pretraining_optimizer

    # Warmup and decay, two learning-rate groups, weight decay and per-variable
    # clipping at 0.5, which the first gradients exceed: the whole optimizer,
    # with Adam's own epsilon.
    model.compile(optimizer=pretraining_optimizer(
        total_steps=2 * TRAIN_EPOCHS, learning_rate=1e-2,
        bert_learning_rate=1e-3, clipnorm=0.5))


def train(model):
    """Fits `train_batches()` in order; returns the per-epoch losses."""
    x, y = train_batches()
    history = model.fit(x, y, batch_size=4, epochs=TRAIN_EPOCHS,
                        shuffle=False, verbose=0).history
    return {f"history/{k}": np.asarray(v) for k, v in history.items()}


if __name__ == "__main__":
    out = sys.argv[1]
    positional = [a for a in sys.argv[2:] if not a.startswith("--")]
    keras.utils.set_random_seed(int(positional[0]) if positional else 0)
    model = InterBERTPretrainer(InterBERTBackbone(**TINY_BACKBONE), 11)
    inputs = random_backbone_inputs(seed=4)
    outputs = {k: keras.ops.convert_to_numpy(v)
               for k, v in model(inputs).items()}
    model.save(os.path.join(out, "model.keras"))
    np.savez(os.path.join(out, "outputs.npz"), **outputs)
    if "--train" in sys.argv[2:]:
        from helpers.distributed_common import build_pretrainer

        trainer = build_pretrainer(seed=7)
        trainer.save(os.path.join(out, "trainer.keras"))
        compile_for_training(trainer)
        logs = train(trainer)
        weights = {f"weights/{v.path}": keras.ops.convert_to_numpy(v)
                   for v in trainer.weights}
        np.savez(os.path.join(out, "trained.npz"), **weights, **logs)
    if "--round-trip" in sys.argv[2:]:
        from helpers import task_round_trip

        task_round_trip.main("pretrain", out)
    print("saved under", keras.config.backend())
