"""Run under some KERAS_BACKEND: saves a tiny pretrainer and its outputs.

Usage: python tests/cross_backend_save.py OUT_DIR
"""
import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import TINY_BACKBONE  # noqa: E402
from conftest import random_backbone_inputs  # noqa: E402

from keras_interbert import InterBERTBackbone  # noqa: E402
from keras_interbert import InterBERTPretrainer  # noqa: E402

out = sys.argv[1]
keras.utils.set_random_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
model = InterBERTPretrainer(InterBERTBackbone(**TINY_BACKBONE), 11)
inputs = random_backbone_inputs(seed=4)
outputs = {k: keras.ops.convert_to_numpy(v) for k, v in model(inputs).items()}
model.save(os.path.join(out, "model.keras"))
np.savez(os.path.join(out, "outputs.npz"), **outputs)
print("saved under", keras.config.backend())
