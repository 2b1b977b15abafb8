import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import REPO_ROOT
from conftest import random_backbone_inputs
from conftest import to_numpy

from keras_interbert import InterBERTPretrainer

OTHERS = [b for b in ("tensorflow", "jax", "torch") if b != BACKEND]


@pytest.mark.parametrize("source_backend", OTHERS)
def test_keras_file_from_another_backend(tmp_path, source_backend):
    env = dict(os.environ, KERAS_BACKEND=source_backend,
               TF_CPP_MIN_LOG_LEVEL="3")
    script = os.path.join(REPO_ROOT, "tests", "cross_backend_save.py")
    result = subprocess.run(
        [sys.executable, script, str(tmp_path)], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"saved under {source_backend}" in result.stdout
    model = keras.saving.load_model(str(tmp_path / "model.keras"))
    assert isinstance(model, InterBERTPretrainer)
    expected = np.load(tmp_path / "outputs.npz")
    got = to_numpy(model(random_backbone_inputs(seed=4)))
    for name in ("msm_logits", "mrm_logits", "itm_logits"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5,
                                   err_msg=f"{name} saved under {source_backend}")
