import os

import keras
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO_ROOT), "shared")
FIXTURE = os.path.join(SHARED, "fixtures", "original_interbert_tiny.npz")
BACKEND = keras.config.backend()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tensorflow_only" in item.keywords and BACKEND != "tensorflow":
            item.add_marker(pytest.mark.skip(
                reason="tensorflow_only: needs the TensorFlow backend"))


@pytest.fixture(autouse=True)
def _reset_policy():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def fixture_npz():
    if not os.path.exists(FIXTURE):
        pytest.fail(f"The golden fixture is missing: {FIXTURE}")
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}
