"""Pretraining learns on the bundled data set, under every backend.

The tiny configuration is trained with `fit` on the real pipeline (span MSM,
group MRM, ITM negatives) for a couple of hundred steps; held-out batches are
evaluated before and after. MSM accuracy must rise far above the untrained
model's and the MRM loss must fall clearly.

Not asserted, because it does not happen yet at this scale: ITM accuracy
stays at chance (0.5) for the tiny model trained from scratch, in this test
and in runs of 1,000+ steps; see docs/pretraining.md, "Known gap: ITM from
scratch". The test records the ITM accuracy so that a fix shows up here.
"""
import numpy as np
import pytest

import keras

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer
from keras_interbert.data.pretraining_pipeline import PretrainingDataConfig
from keras_interbert.data.pretraining_pipeline import pretraining_dataset
from keras_interbert.data.synthetic import write_dataset
from keras_interbert.optimizers import pretraining_optimizer
from keras_interbert.preprocessing import InterBERTTokenizer
from keras_interbert.presets import preset_backbone_config

STEPS = 100


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("learning_data"))
    write_dataset(out, num_images=300, seed=3, feature_dim=64,
                  languages=("en",), save_images=False, progress=False)
    return out


def test_msm_and_mrm_improve_over_a_few_hundred_steps(bundled):
    keras.utils.set_random_seed(11)
    tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")
    config = dict(sequence_length=24, max_regions=6, batch_size=32, seed=5)
    train = pretraining_dataset(
        f"{bundled}/regions", f"{bundled}/captions_en.jsonl", tokenizer,
        PretrainingDataConfig(repeat=True, **config), split="train")
    held_out = list(pretraining_dataset(
        f"{bundled}/regions", f"{bundled}/captions_en.jsonl", tokenizer,
        PretrainingDataConfig(repeat=True, shuffle_buffer=0,
                              **dict(config, seed=9)),
        split="val").take(6).as_numpy_iterator())
    backbone = InterBERTBackbone(**dict(
        preset_backbone_config("interbert_tiny_en"), image_feature_dim=64))
    model = InterBERTPretrainer(backbone, num_region_classes=49)
    model.compile(optimizer=pretraining_optimizer(
        total_steps=STEPS, learning_rate=2e-3, bert_variable_patterns=()),
        jit_compile=False)

    def evaluate():
        totals = {}
        for x, y in held_out:
            for k, v in model.pretraining_losses(
                    y, model(x, training=False)).items():
                totals.setdefault(k, []).append(float(v))
        return {k: float(np.mean(v)) for k, v in totals.items()}

    before = evaluate()
    model.fit(train, steps_per_epoch=STEPS, epochs=1, verbose=0)
    after = evaluate()
    print("before", before, "\nafter", after)
    assert before["msm_accuracy"] < 0.02
    assert after["msm_accuracy"] > 0.08, after
    assert after["msm_loss"] < before["msm_loss"] - 3.0
    assert after["mrm_loss"] < before["mrm_loss"] - 0.3, (before, after)
    assert np.isfinite(after["itm_loss"])
