"""benchmarks/itm_accuracy.py: its statistics and its clean inputs."""
import itertools
import os
import sys

import keras
import numpy as np
import pytest

from conftest import TINY_BACKBONE
from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer
from keras_interbert import InterBERTRetriever
from keras_interbert.data.pretraining_pipeline import PretrainingDataConfig
from keras_interbert.data.pretraining_pipeline import numpy_batches
from keras_interbert.data.pretraining_pipeline import pretraining_dataset
from keras_interbert.data.synthetic import write_dataset
from keras_interbert.preprocessing import InterBERTTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
import itm_accuracy  # noqa: E402

pytestmark = pytest.mark.once


def pairwise_auc(scores, positive):
    """AUC by counting every (positive, negative) pair."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0
               for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_counts_pairs_with_ties_as_half():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=60).astype(float)  # many ties
    positive = rng.random(60) < 0.4
    assert itm_accuracy.roc_auc(scores, positive) == pytest.approx(
        pairwise_auc(scores, positive))
    assert itm_accuracy.roc_auc([3.0, 2.0, 1.0], [True, True, False]) == 1.0
    assert itm_accuracy.roc_auc([1.0, 2.0, 3.0], [True, True, False]) == 0.0


def test_threshold_is_fit_on_one_half_and_measured_on_the_other():
    # Separable scores with the boundary at 0: a threshold fit on either
    # half classifies the other perfectly.
    scores = np.array([-3, -2, -1, 1, 2, 3, -2.5, -1.5, 1.5, 2.5])
    positive = scores > 0
    assert itm_accuracy.held_out_threshold_accuracy(scores, positive) == 1.0
    # The first half says "high is a match", the second half the opposite.
    # The first half's threshold (between 2 and 3) gets every pair of the
    # second half wrong; the second half's best "score > t" rule calls
    # everything a match (half right there), which is half right on the
    # first half too: (0 + 0.5) / 2.
    scores = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0])
    positive = np.array([0, 0, 1, 1, 1, 1, 0, 0], bool)
    assert 2.0 < itm_accuracy.best_threshold(scores[:4], positive[:4]) < 3.0
    assert itm_accuracy.best_threshold(scores[4:], positive[4:]) < 1.0
    assert itm_accuracy.held_out_threshold_accuracy(scores, positive) == 0.25


def test_clean_inputs_keep_the_pairs_and_drop_every_mask(tmp_path):
    data = str(tmp_path / "data")
    write_dataset(data, num_images=40, seed=5, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")
    masked = PretrainingDataConfig(batch_size=8, max_regions=6, itc=True,
                                   shuffle_buffer=0, seed=7,
                                   mrm_probability=0.5)

    def batches(config):
        return numpy_batches(pretraining_dataset(
            os.path.join(data, "regions"), os.path.join(data, "captions_en.jsonl"),
            tokenizer, config, split="train"), 3)

    before = batches(masked)
    after = batches(itm_accuracy.clean_config(masked))
    assert sum(float(y["msm_weights"].sum()) for _, y in before) > 0
    assert sum(float(y["mrm_weights"].sum()) for _, y in before) > 0
    for (xm, ym), (xc, yc) in zip(before, after):
        # The same pairs (captions before masking, labels, region boxes).
        np.testing.assert_array_equal(xm["itc_token_ids"], xc["itc_token_ids"])
        np.testing.assert_array_equal(ym["itm_labels"], yc["itm_labels"])
        np.testing.assert_array_equal(xm["region_locations"],
                                      xc["region_locations"])
        # Nothing masked: the caption is the one the contrastive task reads,
        # no region is zeroed, no target is left.
        np.testing.assert_array_equal(xc["token_ids"], xc["itc_token_ids"])
        assert float(yc["msm_weights"].sum()) == 0.0
        assert float(yc["mrm_weights"].sum()) == 0.0
        real = xc["region_mask"].astype(bool)
        assert np.all(np.abs(xc["region_features"][real]).sum(-1) > 0)


def test_a_finetuned_retriever_is_scored_like_the_pretrainer_it_came_from(
        tmp_path):
    # A retriever made from a pretrainer holds the same backbone, matching
    # head and contrastive head: on clean pairs (nothing masked, so the
    # pretrainer's joint pass sees what the retriever sees) both paths of
    # `score_pairs` must give the same probabilities and cosines.
    data = str(tmp_path / "data")
    write_dataset(data, num_images=30, seed=3, feature_dim=24,
                  languages=("en",), save_images=False, progress=False)
    tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")
    keras.utils.set_random_seed(11)
    backbone = InterBERTBackbone(**dict(
        TINY_BACKBONE, vocabulary_size=tokenizer.vocabulary_size(),
        pooling="mean"))
    pretrainer = InterBERTPretrainer(backbone, num_region_classes=49,
                                     contrastive=True)
    retriever = InterBERTRetriever.from_pretrained(pretrainer)
    config = itm_accuracy.clean_config(PretrainingDataConfig(
        sequence_length=16, batch_size=8, max_regions=6, itc=True,
        shuffle_buffer=0, seed=7, global_feature="unmasked_mean"))

    def scores(model):
        return itm_accuracy.score_pairs(model, pretraining_dataset(
            os.path.join(data, "regions"),
            os.path.join(data, "captions_en.jsonl"), tokenizer, config,
            split="train"), 2)

    match_p, cosine_p, labels_p = scores(pretrainer)
    match_r, cosine_r, labels_r = scores(retriever)
    assert len(labels_p) == 16 and 0 < labels_p.sum() < 16
    np.testing.assert_array_equal(labels_r, labels_p)
    # Not a constant: the random head separates the pairs somewhat.
    assert np.ptp(match_p) > 1e-4
    np.testing.assert_allclose(match_r, match_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cosine_r, cosine_p, rtol=1e-5, atol=1e-5)
