"""The optional image-text contrastive task and the mean pooling option.

Golden values are computed here by a second implementation in numpy (the
symmetric in-batch cross-entropy written out row by row, the masked mean
written as a loop), never by the code under test.
"""
import os

import keras
import numpy as np
import pytest

from conftest import TINY_BACKBONE
from conftest import random_backbone_inputs

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer
from keras_interbert import InterBERTRetriever
from keras_interbert.layers.contrastive_head import ContrastiveHead
from keras_interbert.models.interbert_pretrainer import unimodal_pooled
from keras_interbert.models.pretraining_objective import PretrainingObjective
from keras_interbert.models.pretraining_objective import contrastive_loss


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _reference_itc(logits, labels):
    """Row-by-row symmetric cross-entropy over the matched rows."""
    losses, hits = [], []
    for i in range(len(labels)):
        if labels[i] != 0:
            continue
        row, column = logits[i], logits[:, i]
        t2i = np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[i]
        i2t = np.log(np.sum(np.exp(column - column.max()))) + column.max() - column[i]
        losses.append(0.5 * (t2i + i2t))
        hits.append(float(np.argmax(row) == i))
    return np.mean(losses), np.mean(hits)


def test_objective_itc_matches_a_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 6)) * 3
    labels = np.array([0, 1, 0, 0, 1, 0])
    logits[3, 3] += 10.0  # one confident hit
    objective = PretrainingObjective(0.0, 0.0, 0.0, itc_weight=1.0)
    values = objective({"itm_labels": labels},
                       {"itc_logits": logits.astype("float32")})
    loss, accuracy = _reference_itc(logits, labels)
    np.testing.assert_allclose(float(values["itc_loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(values["itc_accuracy"]), accuracy)
    np.testing.assert_allclose(float(values["loss"]), loss, rtol=1e-5)


def test_contrastive_loss_is_the_all_matched_case():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 5))
    expected, _ = _reference_itc(logits, np.zeros(5, int))
    np.testing.assert_allclose(
        float(contrastive_loss(logits.astype("float32"))), expected, rtol=1e-5)


def test_objective_names_what_is_missing_for_itc():
    objective = PretrainingObjective(itc_weight=1.0)
    with pytest.raises(ValueError, match="itc_token_ids"):
        objective.statistics(
            {"msm_labels": np.zeros((2, 3)), "msm_weights": np.zeros((2, 3)),
             "mrm_targets": np.zeros((2, 3, 4)), "mrm_weights": np.zeros((2, 3)),
             "itm_labels": np.zeros(2)},
            {"msm_logits": np.zeros((2, 3, 5), "float32"),
             "mrm_logits": np.zeros((2, 3, 4), "float32"),
             "itm_logits": np.zeros((2, 2), "float32")})


def test_contrastive_head_scores_are_scaled_cosines():
    head = ContrastiveHead(projection_dim=None, initial_temperature=0.5)
    text = np.array([[3.0, 4.0], [1.0, 0.0]], "float32")
    image = np.array([[0.0, 2.0], [5.0, 0.0], [1.0, 1.0]], "float32")
    scores = _numpy(head(text, image))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(scores, 2.0 * unit(text) @ unit(image).T,
                               rtol=1e-5)
    projected = ContrastiveHead(projection_dim=3)
    assert tuple(projected(text, image).shape) == (2, 3)
    norms = np.linalg.norm(_numpy(projected.embed_text(text)), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_contrastive_head_scale_is_capped():
    head = ContrastiveHead(projection_dim=None, max_scale=20.0)
    head.build((None, 2))
    head.log_scale.assign(10.0)
    np.testing.assert_allclose(_numpy(head.scale()), 20.0, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"projection_dim": 0}, "projection_dim"),
    ({"initial_temperature": 0.0}, "initial_temperature"),
    ({"max_scale": 2.0}, "max_scale"),
])
def test_contrastive_head_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContrastiveHead(**kwargs)


def test_mean_pooling_reads_the_masked_mean():
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE, pooling="mean"))
    x = random_backbone_inputs()
    outputs = backbone(x)
    text = _numpy(outputs["text_sequence"])
    kernel = _numpy(backbone.text_pooler.kernel)
    bias = _numpy(backbone.text_pooler.bias)
    for row in range(2):
        real = [t for t in range(text.shape[1]) if x["text_mask"][row, t]]
        mean = sum(text[row, t] for t in real) / len(real)
        np.testing.assert_allclose(
            _numpy(outputs["text_pooled"])[row],
            np.maximum(mean @ kernel + bias, 0.0), rtol=1e-4, atol=1e-5)


def test_pooling_option_round_trips_and_the_original_config_is_unchanged():
    first = InterBERTBackbone(**TINY_BACKBONE)
    assert "pooling" not in first.get_config()
    mean = InterBERTBackbone(**dict(TINY_BACKBONE, pooling="mean"))
    again = InterBERTBackbone.from_config(mean.get_config())
    assert again.pooling == "mean"
    with pytest.raises(ValueError, match="pooling"):
        InterBERTBackbone(**dict(TINY_BACKBONE, pooling="max"))


def _contrastive_pretrainer():
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE, pooling="mean"))
    return InterBERTPretrainer(backbone, num_region_classes=7,
                               contrastive=True, itm_initializer="zeros")


def test_pretrainer_itc_logits_are_unimodal_passes():
    model = _contrastive_pretrainer()
    x = random_backbone_inputs(batch=3)
    x["itc_token_ids"] = x["token_ids"]
    outputs = model(x)
    assert tuple(outputs["itc_logits"].shape) == (3, 3)
    # Row i, column j: caption i alone against image j alone, whatever
    # caption image j is paired with in the batch.
    text, image = unimodal_pooled(model.backbone, x, x["token_ids"])
    swapped = dict(x)
    for key in ("region_features", "region_locations", "region_mask"):
        swapped[key] = x[key][::-1].copy()
    _, image_reversed = unimodal_pooled(model.backbone, swapped,
                                        x["token_ids"])
    np.testing.assert_allclose(_numpy(image_reversed), _numpy(image)[::-1],
                               rtol=1e-4, atol=1e-6)
    expected = _numpy(model.itc_head(text, image))
    np.testing.assert_allclose(_numpy(outputs["itc_logits"]), expected,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        _numpy(model.itm_head.classifier.kernel), 0.0)


def test_compile_refuses_itc_without_a_contrastive_head():
    model = InterBERTPretrainer(InterBERTBackbone(**TINY_BACKBONE),
                                num_region_classes=7)
    with pytest.raises(ValueError, match="contrastive=True"):
        model.compile(itc_weight=1.0)
    with pytest.raises(ValueError, match="contrastive head"):
        x = random_backbone_inputs()
        model(dict(x, itc_token_ids=x["token_ids"]))


def test_contrastive_pretrainer_saves_and_loads(tmp_path):
    model = _contrastive_pretrainer()
    model.itc_head.log_scale.assign(1.5)
    path = str(tmp_path / "itc.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.contrastive and loaded.itc_head is not None
    np.testing.assert_allclose(_numpy(loaded.itc_head.log_scale), 1.5)
    assert loaded.backbone.pooling == "mean"
    x = random_backbone_inputs(batch=3)
    x["itc_token_ids"] = x["token_ids"]
    np.testing.assert_allclose(_numpy(loaded(x)["itc_logits"]),
                               _numpy(model(x)["itc_logits"]), rtol=1e-5,
                               atol=1e-6)
    retriever = InterBERTRetriever.from_pretrained(loaded)
    assert retriever.itc_head is loaded.itc_head
    retriever_path = str(tmp_path / "retriever.keras")
    retriever.save(retriever_path)
    again = keras.saving.load_model(retriever_path)
    np.testing.assert_allclose(_numpy(again.itc_head.log_scale), 1.5)


def test_pretrainer_fits_with_all_four_tasks():
    model = _contrastive_pretrainer()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), itc_weight=1.0)
    rng = np.random.default_rng(0)
    x = random_backbone_inputs(batch=4)
    x["itc_token_ids"] = x["token_ids"]
    y = {"msm_labels": rng.integers(1, 120, (4, 7)).astype("int32"),
         "msm_weights": (rng.random((4, 7)) < 0.3).astype("float32"),
         "mrm_targets": np.full((4, 5, 7), 1 / 7, "float32"),
         "mrm_weights": (rng.random((4, 5)) < 0.3).astype("float32"),
         "itm_labels": np.array([0, 1, 0, 0], "int32")}
    logs = model.fit(x, y, epochs=2, verbose=0).history
    assert np.isfinite(logs["itc_loss"]).all() and "itc_accuracy" in logs


def test_retriever_itc_finetuning_needs_a_head_and_trains():
    plain = InterBERTRetriever(InterBERTBackbone(**TINY_BACKBONE))
    with pytest.raises(ValueError, match="contrastive head"):
        plain.compile(itc_weight=1.0)
    retriever = InterBERTRetriever.from_pretrained(_contrastive_pretrainer())
    retriever.compile(optimizer=keras.optimizers.Adam(1e-3), itc_weight=1.0)
    x = random_backbone_inputs(batch=8)
    labels = np.tile(np.array([0, 1, 1, 1], "int32"), 2)
    before = float(keras.ops.convert_to_numpy(retriever.itc_head.log_scale))
    history = retriever.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    after = float(keras.ops.convert_to_numpy(retriever.itc_head.log_scale))
    assert np.isfinite(history.history["loss"]).all()
    # Only the contrastive loss reaches the scale: it moved.
    assert after != before


def _listwise_reference(logits):
    # Written out per caption, with explicit softmaxes, in float64.
    margins = (logits[:, 0] - logits[:, 1]).astype(np.float64).reshape(-1, 4)
    total = 0.0
    for matched, random_caption, other_image, hard_caption in margins:
        image_list = np.array([matched, random_caption, hard_caption])
        caption_list = np.array([matched, other_image])
        image_p = np.exp(image_list) / np.exp(image_list).sum()
        caption_p = np.exp(caption_list) / np.exp(caption_list).sum()
        total += 0.5 * (-np.log(image_p[0]) - np.log(caption_p[0]))
    return total / len(margins)


def test_listwise_ranking_loss_matches_a_reference():
    from keras_interbert.models.interbert_retriever import listwise_ranking_loss
    logits = np.random.default_rng(3).normal(size=(12, 2)).astype("float32") * 3
    got = float(keras.ops.convert_to_numpy(listwise_ranking_loss(logits)))
    np.testing.assert_allclose(got, _listwise_reference(logits), rtol=1e-5)
    # A matched pair far above its three negatives costs (almost) nothing.
    clear = np.tile(np.array([[9.0, -9.0], [-9.0, 9.0], [-9.0, 9.0],
                              [-9.0, 9.0]], "float32"), (2, 1))
    assert float(keras.ops.convert_to_numpy(listwise_ranking_loss(clear))) < 1e-6


def test_retriever_ranking_loss_checks_the_layout_and_trains():
    retriever = InterBERTRetriever(InterBERTBackbone(**TINY_BACKBONE))
    with pytest.raises(ValueError, match="pairs_per_caption=4"):
        retriever.compile(ranking_weight=1.0, pairs_per_caption=2)
    with pytest.raises(ValueError, match="ranking_weight"):
        retriever.compile(ranking_weight=-1.0)
    retriever.compile(optimizer=keras.optimizers.Adam(1e-3),
                      ranking_weight=1.0)
    x = random_backbone_inputs(batch=8)
    labels = np.tile(np.array([0, 1, 1, 1], "int32"), 2)
    logits = keras.ops.convert_to_numpy(retriever(x)["itm_logits"])
    pointwise = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, logits)
    # The training loss is the pair loss plus the listwise term; evaluation
    # reports the pair loss alone.
    y_pred = {"itm_logits": keras.ops.convert_to_tensor(logits)}
    training = retriever.compute_loss(x, labels, y_pred, training=True)
    evaluation = retriever.compute_loss(x, labels, y_pred, training=False)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(training)),
        float(keras.ops.convert_to_numpy(pointwise))
        + _listwise_reference(logits), rtol=1e-4)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(evaluation)),
                               float(keras.ops.convert_to_numpy(pointwise)),
                               rtol=1e-4)
    history = retriever.fit(x, labels, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_pretraining_pipeline_gives_the_unmasked_captions(tmp_path):
    from keras_interbert.data.pretraining_pipeline import PretrainingDataConfig
    from keras_interbert.data.pretraining_pipeline import numpy_batches
    from keras_interbert.data.pretraining_pipeline import pretraining_dataset
    from keras_interbert.data.synthetic import write_dataset
    from keras_interbert.preprocessing import InterBERTTokenizer

    data = str(tmp_path / "data")
    write_dataset(data, num_images=40, seed=0, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")
    config = PretrainingDataConfig(sequence_length=24, max_regions=6,
                                   batch_size=8, itc=True, msm_positions=False)
    (x, y), = numpy_batches(pretraining_dataset(
        os.path.join(data, "regions"), os.path.join(data, "captions_en.jsonl"),
        tokenizer, config, split="train"), 1)
    targets = y["msm_weights"] > 0
    assert targets.any()
    np.testing.assert_array_equal(x["itc_token_ids"][targets],
                                  y["msm_labels"][targets])
    np.testing.assert_array_equal(x["itc_token_ids"][~targets],
                                  x["token_ids"][~targets])
    assert (x["itc_token_ids"][targets] != tokenizer.mask_id).all()


def test_contrastive_first_stage_and_pool(tmp_path):
    from keras_interbert.data.hard_negatives import contrastive_pool
    from keras_interbert.data.retrieval_pipeline import RetrievalEvaluationSet
    from keras_interbert.data.synthetic import write_dataset
    from keras_interbert.evaluation.two_stage import first_stage_scores
    from keras_interbert.evaluation.two_stage import pooled_embeddings
    from keras_interbert.evaluation.two_stage import resolve_first_stage
    from keras_interbert.preprocessing import InterBERTTokenizer

    data = str(tmp_path / "data")
    write_dataset(data, num_images=60, seed=0, feature_dim=24,
                  languages=("en",), save_images=False, progress=False)
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE, vocabulary_size=30522,
                                        pooling="mean"))
    model = InterBERTPretrainer(backbone, num_region_classes=49,
                                contrastive=True, contrastive_dim=8)
    evaluation = RetrievalEvaluationSet(
        os.path.join(data, "regions"), os.path.join(data, "captions_en.jsonl"),
        InterBERTTokenizer.from_preset("interbert_base_en"), split="test",
        sequence_length=20, max_regions=6)
    assert resolve_first_stage(model, "auto") == "contrastive"
    scores = first_stage_scores(model, evaluation, "auto")
    text, image = pooled_embeddings(model, evaluation)
    t = _numpy(model.itc_head.embed_text(text))
    v = _numpy(model.itc_head.embed_image(image))
    np.testing.assert_allclose(scores, t @ v.T, rtol=1e-4, atol=1e-5)

    pool = contrastive_pool(model, evaluation.table, k=4)
    neighbours = pool.table_indices(evaluation.table.image_ids)
    assert neighbours.shape == (evaluation.num_images, 4)
    np.testing.assert_array_equal(neighbours[:, 0],
                                  np.arange(evaluation.num_images))
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(neighbours[:, 1], np.argmax(sims, axis=1))
