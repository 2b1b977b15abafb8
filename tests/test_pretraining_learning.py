"""Pretraining learns on the bundled data set, under every backend.

The tiny configuration is trained with `fit` on the real pipeline (span MSM,
group MRM, ITM negatives); held-out batches (images of the validation split)
are evaluated before and after.

- All three tasks, 60 steps: MSM accuracy must rise far above the untrained
  model's and the MRM loss must fall clearly.
- Image-text matching, 600 steps of batch 128 with the MSM and MRM weights
  at 0 (the ablation switch) and dropout off: held-out ITM accuracy and loss
  must move clearly away from chance. Matching starts only after a plateau of about
  300 steps (docs/pretraining.md, "Image-text matching from scratch"), and a
  step of all three tasks at batch 128 costs about five ITM-only steps on
  two CPU cores, so the long run uses the ITM switch.

The MSM/MRM test runs under every backend. The ITM run runs in the default
suite under TensorFlow; under JAX and PyTorch it needs
`INTERBERT_LONG_TESTS=1` (`make test-long`): its step costs 3x (JAX) and 6x
(PyTorch) a TensorFlow step on two CPU cores, and `tests/test_cross_backend.py`
already shows on every backend that `fit` with the pretraining optimizer
takes the same steps as under another backend (every variable within 1e-3
of its own step after six updates). The opt-in results are in the skip
reason.
"""
import os

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

# 60 steps (100 before 2026-12-01): every threshold below holds with room.
# Measured at 60 steps (seeds 11/5 and 12/6): MSM accuracy 0.164 on every
# backend (threshold 0.08), MSM loss down 5.8 to 6.0 (3.0), MRM loss down
# 0.47 and 0.62 under PyTorch, 0.89 and 0.88 under JAX, 0.87 and 0.76 under
# TensorFlow (0.3); under TensorFlow at 50 steps over four seeds 0.164, 4.8
# to 5.1 and 0.62 to 0.88.
STEPS = 60


def held_out_metrics(model, held_out):
    """The objective's metrics, averaged over equal-sized held-out batches."""
    totals = {}
    for x, y in held_out:
        for k, v in model.pretraining_losses(
                y, model(x, training=False)).items():
            totals.setdefault(k, []).append(
                float(keras.ops.convert_to_numpy(v)))
    return {k: float(np.mean(v)) for k, v in totals.items()}


def _bundled(tmp_path_factory, num_images):
    out = str(tmp_path_factory.mktemp(f"learning_data_{num_images}"))
    write_dataset(out, num_images=num_images, seed=3, feature_dim=64,
                  languages=("en",), save_images=False, progress=False)
    return out


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    return _bundled(tmp_path_factory, 300)


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
        # XLA under JAX: 111 s for this test alone against 158 s eager
        # (2026-11-27). TensorFlow stays in graph mode without XLA.
        jit_compile=keras.config.backend() == "jax")

    before = held_out_metrics(model, held_out)
    model.fit(train, steps_per_epoch=STEPS, epochs=1, verbose=0, shuffle=False)
    after = held_out_metrics(model, held_out)
    print("before", before, "\nafter", after)
    assert before["msm_accuracy"] < 0.02
    assert after["msm_accuracy"] > 0.08, after
    assert after["msm_loss"] < before["msm_loss"] - 3.0
    assert after["mrm_loss"] < before["mrm_loss"] - 0.3, (before, after)
    assert np.isfinite(after["itm_loss"])


ITM_STEPS = 600


@pytest.fixture(scope="module")
def bundled_large(tmp_path_factory):
    return _bundled(tmp_path_factory, 1000)


@pytest.mark.skipif(
    keras.config.backend() != "tensorflow"
    and os.environ.get("INTERBERT_LONG_TESTS") != "1",
    reason="600 steps of 128 pairs: in the default suite under TensorFlow "
    "only, here with INTERBERT_LONG_TESTS=1 (module docstring). Passed on "
    "2026-11-27: JAX accuracy 0.490 -> 0.668, loss 0.696 -> 0.605 (140 s); "
    "PyTorch 0.514 -> 0.648, 0.694 -> 0.615 (about 7 minutes, 0.7 s a step "
    "against 0.11 under TensorFlow and 0.37 under JAX).")
def test_itm_learns_from_scratch(bundled_large):
    keras.utils.set_random_seed(11)
    tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")
    config = dict(sequence_length=24, max_regions=6, seed=5)
    data = f"{bundled_large}/regions", f"{bundled_large}/captions_en.jsonl"
    train = pretraining_dataset(
        *data, tokenizer,
        PretrainingDataConfig(repeat=True, batch_size=128, **config),
        split="train")
    held_out = list(pretraining_dataset(
        *data, tokenizer,
        PretrainingDataConfig(repeat=True, shuffle_buffer=0, batch_size=64,
                              **dict(config, seed=9)),
        split="val").take(8).as_numpy_iterator())
    # Without dropout the plateau is shorter (dropout adds gradient noise
    # while the matching signal is still weak): 600 steps instead of 800+.
    no_dropout = dict(dropout=0.0, attention_dropout=0.0, image_dropout=0.0,
                      image_attention_dropout=0.0)
    backbone = InterBERTBackbone(**dict(
        preset_backbone_config("interbert_tiny_en"), image_feature_dim=64,
        **no_dropout))
    model = InterBERTPretrainer(backbone, num_region_classes=49,
                                itm_dropout=0.0)
    model.compile(
        optimizer=pretraining_optimizer(
            total_steps=ITM_STEPS, learning_rate=5e-4,
            bert_variable_patterns=()),
        msm_weight=0.0, mrm_weight=0.0)

    before = held_out_metrics(model, held_out)
    model.fit(train, steps_per_epoch=ITM_STEPS, epochs=1, verbose=0,
              shuffle=False)
    after = held_out_metrics(model, held_out)
    loss_before, accuracy_before = before["itm_loss"], before["itm_accuracy"]
    loss_after, accuracy_after = after["itm_loss"], after["itm_accuracy"]
    print(f"ITM held-out loss {loss_before:.4f} -> {loss_after:.4f}, "
          f"accuracy {accuracy_before:.3f} -> {accuracy_after:.3f} "
          f"({count_label_share(held_out):.3f} of labels are 1)")
    # 512 held-out pairs: chance accuracy has a standard deviation of 0.022.
    assert abs(loss_before - np.log(2)) < 0.02
    assert accuracy_after > 0.6, (accuracy_before, accuracy_after)
    assert loss_after < np.log(2) - 0.04, (loss_before, loss_after)


def count_label_share(batches):
    return float(np.mean(np.concatenate([y["itm_labels"] for _, y in batches])))
