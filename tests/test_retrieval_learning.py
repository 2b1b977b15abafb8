"""The improved recipe learns, through the recipes, against a dual encoder.

On 1,000 bundled images (64-d features) the quickstart's model
(`interbert_mini_en`) is pretrained with `recipes/pretrain.py` and the
quickstart's improved settings (MSM + MRM + ITM + image-text contrastive,
mean pooling, zero-initialised matching classifier at 20x the rate, no
dropout) for 300 steps of 32 pairs (the quickstart: 600 of 64), evaluated
zero-shot on the test split, finetuned with `recipes/finetune_retrieval.py`
(600 steps of 32 captions, four pairs each, the quickstart's learning rate
1e-3, contrastive weight 0.1) and evaluated again. A dual encoder
(`benchmarks/dual_encoder_baseline.py`) is trained in the same test on the
same split for as many steps of as many captions as the finetuning (600
steps of 32 captions) and scored by the same code. (At the quickstart's
scale, where the dual encoder gets 600 steps of 128 captions, the
cross-encoder is 2.7-7.7 points above it: docs/results.md.)

Asserted: held-out matching accuracy after pretraining, zero-shot text ->
image R@1 at least 10x random ranking, finetuned R@1 (full cross-encoder)
at or above the dual encoder's (at seed 42, the suite's, 4.2 points
above; over seeds 42 / 43 / 44 +4.2 / +3.0 / -0.9: at this scale the margin
is within the spread over seeds, see below), and the two-stage mode within
a point and a half of full scoring.

TensorFlow only: about 330 CPU seconds (pretraining 77-86 since the
TensorFlow step computes the vocabulary head at the targets alone,
zero-shot scoring 16-18, finetuning and its evaluation 170-189, the dual
encoder 53-60), 204 s alone on an idle two-core machine, several times
that under JAX and PyTorch. Pretraining at 64 pairs a step took 269 CPU
seconds and reached a wider margin at seed 42 (56.8 against 49.1, zero-shot
27.7, ITM 0.703); the suite keeps the half-size batch for its time
(docs/benchmarks.md, eighth pass). The pieces the recipe adds are
checked on every backend by `tests/test_contrastive.py`, and `fit` taking
the same steps on every backend by `tests/test_cross_backend.py`.
"""
import os
import sys

import keras
import pytest

from conftest import REPO_ROOT

from keras_interbert.evaluation import recall_at

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="pretraining, finetuning and a baseline: TensorFlow only (see the "
    "module doc).")


def test_improved_recipe_beats_a_dual_encoder(tmp_path):
    # The runs, with the settings the module doc gives, are
    # benchmarks/retrieval_learning_costs.py's (which also reports their
    # CPU time and takes other settings).
    import retrieval_learning_costs

    result = retrieval_learning_costs.run(str(tmp_path), seed=42)
    itm_accuracy = result["itm_accuracy"]
    zero_shot, finetuned = result["zero_shot"], result["finetuned"]
    baseline = result["dual_encoder"]
    print("CPU seconds", result["cpu_seconds"])

    random_r1 = recall_at(zero_shot["random_baseline"]["text_to_image"], 1)
    zero_r1 = recall_at(zero_shot["modes"]["full"]["text_to_image"], 1)
    full_r1 = recall_at(finetuned["modes"]["full"]["text_to_image"], 1)
    two_stage_r1 = recall_at(finetuned["modes"]["two_stage"]["text_to_image"], 1)
    baseline_r1 = recall_at(baseline["metrics"]["text_to_image"], 1)
    print(f"held-out ITM accuracy {itm_accuracy:.3f}; text -> image R@1: "
          f"random {random_r1:.1f}, zero-shot {zero_r1:.1f}, finetuned "
          f"{full_r1:.1f} (two-stage {two_stage_r1:.1f}), dual encoder "
          f"{baseline_r1:.1f}")
    assert finetuned["protocol"] == zero_shot["protocol"]
    assert finetuned["protocol"]["num_images"] == 100
    # Measured on 2026-12-02 at 9df2b9d (TensorFlow, this test's settings
    # with the pretraining and finetuning seed 42 / 43 / 44 and the dual
    # encoder's seed alike, `benchmarks/retrieval_learning_costs.py`): ITM
    # accuracy 0.758 / 0.680 / 0.742, zero-shot R@1 17.0 / 14.6 / 22.0,
    # finetuned 53.3 / 49.7 / 50.6 (two-stage the same), dual encoder 49.1
    # / 46.7 / 51.5. Before the vocabulary head was computed at the targets
    # alone (the same loss, other rounding) the finetuned figures were 53.0
    # / 51.2 / 56.0: rounding alone moves seed 44 by 5 points, so the
    # margin over the dual encoder at this scale is not a property of every
    # seed (at the quickstart's, 2.7-7.7 points, docs/results.md). 512
    # held-out pairs: chance accuracy has a standard deviation of 0.022.
    # 336 queries: one query is 0.3 points of R@1.
    assert itm_accuracy >= 0.65, itm_accuracy
    assert zero_r1 >= 10 * random_r1, (random_r1, zero_r1)
    assert full_r1 >= baseline_r1, (full_r1, baseline_r1)
    assert abs(two_stage_r1 - full_r1) <= 1.5, (two_stage_r1, full_r1)
