import keras
import numpy as np
import pytest
from conftest import WRITER_BACKEND as SOURCE
from conftest import random_backbone_inputs
from conftest import to_numpy
from helpers.cross_backend_save import compile_for_training
from helpers.cross_backend_save import train
from helpers.cross_backend_save import TRAIN_EPOCHS

from keras_interbert import InterBERTPretrainer


@pytest.fixture
def saved(saved_by_other_backend):
    """Files written under another backend, in a ring (conftest.py)."""
    return saved_by_other_backend


def test_keras_file_from_another_backend(saved):
    model = keras.saving.load_model(str(saved / "model.keras"))
    assert isinstance(model, InterBERTPretrainer)
    expected = np.load(saved / "outputs.npz")
    got = to_numpy(model(random_backbone_inputs(seed=4)))
    for name in ("msm_logits", "mrm_logits", "itm_logits"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5,
                                   err_msg=f"{name} saved under {SOURCE}")


def test_training_replays_the_other_backends_steps(saved):
    """The same file, batches and optimizer: the same weights after training.

    Forward, loss, gradients (each backend's own autodiff), clipping, the
    two learning-rate groups, weight decay and the schedule all take part.
    """
    model = keras.saving.load_model(str(saved / "trainer.keras"))
    compile_for_training(model)
    before = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    logs = train(model)
    expected = np.load(saved / "trained.npz")
    updates = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert updates == 2 * TRAIN_EPOCHS
    for key, value in logs.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-4,
                                   err_msg=f"{key} (trained under {SOURCE})")
    paths = {v.path for v in model.weights}
    assert {k[len("weights/"):] for k in expected.files
            if k.startswith("weights/")} == paths
    # Each variable's end point, relative to how far training moved it:
    # correct backends agree to about 2e-5. (Before the IndexedSlices fix in
    # GroupedAdamW, TensorFlow's segment embedding was 13% off.) Variables
    # without a gradient in exact arithmetic (the attention key biases, whose
    # shift the softmax cancels) move by rounding noise only, below 1e-9.
    differences, steps, moved = [], [], 0
    for variable in model.weights:
        want = expected[f"weights/{variable.path}"]
        step = (want - before[variable.path]).ravel()
        difference = (keras.ops.convert_to_numpy(variable) - want).ravel()
        differences.append(difference)
        steps.append(step)
        moved += bool(np.linalg.norm(step) > 1e-6)
        assert np.linalg.norm(difference) <= (
            1e-3 * np.linalg.norm(step) + 1e-8), (
            f"{variable.path}: differs by {np.linalg.norm(difference):.3g} "
            f"after a training step of {np.linalg.norm(step):.3g} "
            f"(trained under {SOURCE})")
    total = np.linalg.norm(np.concatenate(differences))
    assert total <= 1e-4 * np.linalg.norm(np.concatenate(steps)), total
    assert moved > 0.9 * len(model.trainable_weights)
