"""Image -> text ranked by each caption's posterior over the images, and the
truth oracle of the bundled captions (benchmarks/caption_oracle.py).

Both are numpy over score matrices and scenes: independent of the backend.
"""
import math
import os
import sys

import numpy as np
import pytest

from keras_interbert.evaluation import caption_posterior
from keras_interbert.evaluation import retrieval_metrics

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))

pytestmark = pytest.mark.once


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_the_posterior_puts_a_specific_caption_before_a_vague_one():
    # Caption 0 ("a red square", image 1's) is true of all three images: the
    # matching head gives it 3.0 everywhere. Caption 1 (image 0's) is true of
    # image 0 only, scored 2.0 there. Caption 2 is image 2's, true of it only.
    scores = np.array([[3.0, 3.0, 3.0],
                       [2.0, -4.0, -4.0],
                       [-4.0, -4.0, 2.5]])
    owner = [1, 0, 2]
    metrics = retrieval_metrics(scores, owner, ks=(1,),
                                posterior_kind="match")
    # By the raw score, image 0 and image 2 both rank the vague caption
    # first (a hit only for image 1): R@1 1/3.
    assert metrics["image_to_text"]["recall"][1] == pytest.approx(100 / 3)
    # Normalised over the images, caption 0 has a third of its mass on each
    # image, while captions 1 and 2 have almost all of theirs on their own
    # image: every image finds its own caption first.
    assert metrics["image_to_text_posterior"]["recall"][1] == 100.0
    # Text -> image does not change: the posterior is a constant shift per
    # caption, so no caption's ranking of the images moves.
    again = retrieval_metrics(caption_posterior(scores, "match"), owner,
                              ks=(1,))
    assert again["text_to_image"] == metrics["text_to_image"]


def test_match_scores_become_normalised_match_probabilities():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 3, size=(5, 7))
    probability = _sigmoid(scores)
    expected = np.log(probability / probability.sum(1, keepdims=True))
    np.testing.assert_allclose(caption_posterior(scores, "match"), expected,
                               rtol=1e-12, atol=1e-12)


def test_similarity_scores_become_a_softmax_over_images():
    rng = np.random.default_rng(1)
    scores = rng.normal(0, 5, size=(4, 6))
    e = np.exp(scores)
    np.testing.assert_allclose(caption_posterior(scores, "similarity"),
                               np.log(e / e.sum(1, keepdims=True)),
                               rtol=1e-12, atol=1e-12)


def test_extreme_scores_stay_finite_and_ordered():
    scores = np.array([[1000.0, -1000.0, 0.0], [-800.0, -900.0, -1000.0]])
    for kind in ("match", "similarity"):
        posterior = caption_posterior(scores, kind)
        assert np.isfinite(posterior).all(), kind
        np.testing.assert_allclose(np.exp(posterior).sum(1), 1.0, rtol=1e-12)
        # Within a caption, the order of the images is the scores' order.
        for row, p in zip(scores, posterior):
            assert (np.argsort(row, kind="stable")
                    == np.argsort(p, kind="stable")).all()


def test_an_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="'logits'"):
        caption_posterior(np.zeros((2, 2)), "logits")


# The truth oracle.

def _obj(shape, colour, size, centroid):
    return {"shape": shape, "colour": colour, "size": size,
            "centroid": centroid}


def _mention(shape, colour=None, size=None, count=1):
    return {"shape": shape, "colour": colour, "size": size, "count": count}


def test_oracle_truth_rules_on_hand_built_scenes():
    import caption_oracle

    left_red = _obj("square", "red", "small", (20.0, 64.0))
    right_blue = _obj("circle", "blue", "large", (100.0, 64.0))
    scene = [left_red, right_blue]
    true = caption_oracle.is_true
    assert true({"type": "exists", "mention": _mention("square", "red")},
                scene, 128)
    assert true({"type": "exists", "mention": _mention("square")}, scene, 128)
    assert not true({"type": "exists",
                     "mention": _mention("square", "red", "large")},
                    scene, 128)
    relation = {"type": "relation", "subject": _mention("square", "red"),
                "reference": _mention("circle"), "relation": "left"}
    assert true(relation, scene, 128)
    assert not true(dict(relation, relation="right"), scene, 128)
    whole = {"type": "list", "total": 2,
             "mentions": [_mention("circle", "blue"), _mention("square", "red")]}
    assert true(whole, scene, 128)
    # A list must account for every object: a third shape makes it false.
    extra = scene + [_obj("ring", "white", "small", (64.0, 10.0))]
    assert not true(whole, extra, 128)
    # "two red squares" needs exactly two of them.
    two = {"type": "exists", "mention": _mention("square", "red", count=2)}
    assert not true(two, scene, 128)
    assert true(two, scene + [_obj("square", "red", "large", (64.0, 100.0))],
                128)


def test_oracle_metrics_on_a_hand_truth_matrix():
    import caption_oracle

    # Caption 0 (image 0's) is true of both images, caption 1 (image 1's)
    # of image 1 only.
    truth = np.array([[True, True], [False, True]])
    metrics = caption_oracle.oracle_metrics(truth, np.array([0, 1]), ks=(1,))
    # t2i: caption 0 ties between two images (1/2), caption 1 is certain.
    assert metrics["text_to_image_recall"]["1"] == pytest.approx(75.0)
    # i2t: image 0 has one true caption, its own; image 1 ranks its own,
    # specific caption (posterior 1) before caption 0 (posterior 1/2).
    assert metrics["image_to_text_recall"]["1"] == pytest.approx(100.0)
    # Of the one negative pair per caption, caption 0's holds.
    assert metrics["random_negatives_true"] == pytest.approx(0.5)
    assert metrics["itm_accuracy"] == pytest.approx(0.75)


def test_every_generated_caption_is_true_of_its_own_scene():
    """The truth rules, written from the captions' wording, agree with the
    generator on 60 scenes, and some captions are true of other scenes too."""
    import caption_oracle
    from keras_interbert.data.synthetic.scenes import generate_scene

    scenes = [generate_scene(i, seed=3) for i in range(60)]
    truth, owner, captions = caption_oracle.truth_matrix(scenes, 128)
    assert truth[np.arange(len(owner)), owner].all()
    kinds = {c["fact"]["type"] for c in captions}
    assert kinds == {"exists", "relation", "list"}
    assert truth.sum(1).max() > 1
    metrics = caption_oracle.oracle_metrics(truth, owner)
    assert 0 < metrics["random_negatives_true"] < 0.5
    assert math.isclose(metrics["itm_accuracy"],
                        1 - metrics["random_negatives_true"] / 2)


def test_score_fusion_ranks_by_the_sum_of_the_two_scores():
    # benchmarks/score_fusion.py: matching log-odds, contrastive logits and
    # their sum, each ranked on its own. Captions 0, 1, 2 are images 0, 1,
    # 2's. By the matching score caption 1 ranks its image third (0.0 below
    # 0.2 and 1.0); by the contrastive score caption 0 ranks its image third
    # (0.0 below 1.5 and 0.2). The sum ranks every caption's image first:
    # rows [2.0, 1.6, -0.8], [0.2, 2.0, 1.0], [-0.5, 0.3, 4.0].
    import score_fusion

    match = np.array([[2.0, 0.1, -1.0], [0.2, 0.0, 1.0], [-0.5, 0.3, 3.0]])
    contrastive = np.array([[0.0, 1.5, 0.2], [0.0, 2.0, 0.0],
                            [0.0, 0.0, 1.0]])
    figures = score_fusion.fusion_metrics(match, contrastive, [0, 1, 2])
    assert figures["matching t2i"] == 66.7
    assert figures["contrastive t2i"] == 66.7
    assert figures["sum t2i"] == 100.0
    # Image -> text by the posterior: with a contrastive logit of 50 on the
    # diagonal, each caption's mass sits on its own image, alone and summed.
    diagonal = 50 * np.eye(3)
    figures = score_fusion.fusion_metrics(match, diagonal, [0, 1, 2])
    assert figures["contrastive i2t posterior"] == 100.0
    assert figures["sum i2t posterior"] == 100.0
