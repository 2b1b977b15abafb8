import csv
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT

from keras_interbert.data.synthetic import write_dataset
from keras_interbert.training.resumable_tensorboard import read_scalars

RECIPE = os.path.join(REPO_ROOT, "recipes", "pretrain.py")


def run_recipe(out, data, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    cmd = [sys.executable, RECIPE, "--out", out, "--data", data,
           "--steps", "6", "--steps-per-epoch", "2", "--batch-size", "4",
           "--max-regions", "6", "--validation-steps", "1", "--verbose", "0",
           "--learning-rate", "1e-3", "--run-eagerly", *extra]
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)


def read_history(out):
    with open(os.path.join(out, "history.csv")) as f:
        return list(csv.DictReader(f))


# The resume logic is backend-independent Python: the recipe runs under
# TensorFlow in its own processes, whichever session starts them (conftest.py).
@pytest.mark.once
def test_killed_run_resumes_without_repeating_or_losing_steps(tmp_path):
    data = str(tmp_path / "data")
    write_dataset(data, num_images=60, seed=1, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    straight = str(tmp_path / "straight")
    result = run_recipe(straight, data)
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = str(tmp_path / "resumed")
    # Killed in the middle of the second epoch (step 3 of 6).
    killed = run_recipe(resumed, data, "--crash-after-steps", "3")
    assert killed.returncode == 3, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(resumed, "pretrained.keras"))
    assert [r["epoch"] for r in read_history(resumed)] == ["0"]
    again = run_recipe(resumed, data)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming after epoch 1 (step 2)" in again.stdout

    # One row per epoch, none repeated, none missing...
    assert [r["epoch"] for r in read_history(resumed)] == ["0", "1", "2"]
    # ...the same logged values as the run that was never interrupted...
    for a, b in zip(read_history(straight), read_history(resumed)):
        for key in ("loss", "msm_loss", "mrm_loss", "itm_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), key
    # ...and the same final weights: the resumed run saw exactly the same
    # batches after the backed-up state, and the optimizer state came back.
    # The weights only (compile=False): this session's backend may differ
    # from the recipe's, and the weights are what is compared.
    a = keras.saving.load_model(os.path.join(straight, "pretrained.keras"),
                                compile=False)
    b = keras.saving.load_model(os.path.join(resumed, "pretrained.keras"),
                                compile=False)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(wa),
                                   keras.ops.convert_to_numpy(wb), atol=1e-5,
                                   err_msg=wa.path)
    for name in ("metrics.json", "training_curves.png"):
        assert os.path.getsize(os.path.join(resumed, name)) > 0
    assert os.listdir(os.path.join(resumed, "checkpoints"))
    # The TensorBoard logs continue at the resumed step: every step once,
    # the same steps and values as the uninterrupted run's.
    logged = read_scalars(os.path.join(resumed, "tensorboard"))
    reference = read_scalars(os.path.join(straight, "tensorboard"))
    assert sorted(logged) == sorted(reference) and logged
    for key, points in logged.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), (key, steps)
        assert sorted(steps) == sorted(s for s, _ in reference[key]), key
        np.testing.assert_allclose(
            [v for _, v in sorted(points)],
            [v for _, v in sorted(reference[key])], rtol=1e-4, atol=1e-5,
            err_msg=str(key))
