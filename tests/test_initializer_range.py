"""The backbone's `initializer_range`: presets, heads, config, bad values."""
import math

import numpy as np
import pytest

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer
from keras_interbert import InterBERTTextClassifier
from keras_interbert.presets import preset_backbone_config


def _std(variable):
    return float(np.std(np.asarray(variable.numpy(), "float64")))


def test_presets_keep_the_published_gain():
    for preset, hidden in [("interbert_base_en", 768),
                           ("interbert_small_en", 256),
                           ("interbert_tiny_en", 64),
                           ("interbert_tiny_zh", 64)]:
        config = preset_backbone_config(preset)
        assert config["hidden_dim"] == hidden
        gain = config.get("initializer_range", 0.02) * math.sqrt(hidden)
        # The presets round the range to 4 decimals.
        assert gain == pytest.approx(0.02 * math.sqrt(768), rel=2e-3), preset


def test_every_kernel_and_head_draws_from_the_range():
    backbone = InterBERTBackbone(**dict(
        preset_backbone_config("interbert_tiny_en"), image_feature_dim=64,
        initializer_range=0.1))
    model = InterBERTPretrainer(backbone, num_region_classes=49)
    kernels = {v.path: v for v in model.weights
               if v.path.endswith(("kernel", "embeddings"))}
    for path in ["text_pooler/kernel", "itm_head/dense/kernel",
                 "mrm_head/decoder/kernel", "token_embedding/embeddings"]:
        matches = [v for p, v in kernels.items() if path.split("/")[0] in p
                   and p.endswith(path.split("/")[-1])]
        assert matches, (path, sorted(kernels))
        # 6,000+ draws for most; the ITM head has pooled_dim x 2 = 192.
        assert _std(matches[0]) == pytest.approx(0.1, rel=0.2), path
    classifier = InterBERTTextClassifier(backbone, num_classes=3)
    dense = [v for v in classifier.weights
             if "classifier_dense" in v.path and v.path.endswith("kernel")]
    assert _std(dense[0]) == pytest.approx(0.1, rel=0.3)


def test_config_round_trip_and_old_configs():
    backbone = InterBERTBackbone.from_preset(
        "interbert_tiny_en", image_feature_dim=16)
    config = backbone.get_config()
    assert config["initializer_range"] == pytest.approx(0.0693)
    assert InterBERTBackbone.from_config(config).initializer_range == (
        config["initializer_range"])
    del config["initializer_range"]  # saved before the setting existed
    assert InterBERTBackbone.from_config(config).initializer_range == 0.02


@pytest.mark.parametrize("value", [0, -0.02, float("nan")])
def test_bad_range_is_named(value):
    with pytest.raises(ValueError, match="initializer_range"):
        InterBERTBackbone(**dict(preset_backbone_config("interbert_tiny_en"),
                                 image_feature_dim=16,
                                 initializer_range=value))
