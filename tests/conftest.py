import os

import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)
import keras
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The original code's golden record, kept in the repository (see
# tests/fixtures/README.md for how it was made and what it holds).
FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures",
                       "original_interbert_tiny.npz")
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


TINY_BACKBONE = dict(
    vocabulary_size=120,
    num_single_stream_layers=1,
    num_text_layers=1,
    num_image_layers=1,
    hidden_dim=32,
    num_heads=2,
    intermediate_dim=64,
    num_image_heads=4,
    image_intermediate_dim=48,
    pooled_dim=40,
    image_feature_dim=24,
    max_sequence_length=32,
)


def random_backbone_inputs(batch=2, text_len=7, regions=5, feature_dim=24,
                           vocabulary_size=120, seed=0):
    """Backbone inputs with some padding on both sides."""
    rng = np.random.default_rng(seed)
    text_mask = np.ones((batch, text_len), "int32")
    region_mask = np.ones((batch, regions), "int32")
    if batch > 1:
        text_mask[1, text_len - 2:] = 0
        region_mask[1, regions - 2:] = 0
    token_ids = rng.integers(1, vocabulary_size, (batch, text_len)).astype("int32")
    token_ids[text_mask == 0] = 0
    boxes = np.sort(rng.random((batch, regions, 2, 2)), axis=2)
    x1, y1 = boxes[..., 0, 0], boxes[..., 0, 1]
    x2, y2 = boxes[..., 1, 0], boxes[..., 1, 1]
    locations = np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], -1)
    locations[:, 0] = [0, 0, 1, 1, 1]
    features = rng.normal(size=(batch, regions, feature_dim))
    features[region_mask == 0] = 0
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros((batch, text_len), "int32"),
        "text_mask": text_mask,
        "region_features": features.astype("float32"),
        "region_locations": locations.astype("float32"),
        "region_mask": region_mask,
    }


def to_numpy(tree):
    return {k: keras.ops.convert_to_numpy(v) for k, v in tree.items()}
