"""The region packer and the retrieval preprocessor, alone and in a task.

The region layout is checked against a reference written here example by
example in numpy from the layout's definition (docs/architecture.md §1.2),
not against the packer's own code.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_BACKBONE

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTRetriever
from keras_interbert.preprocessing import InterBERTRegionPacker
from keras_interbert.preprocessing import InterBERTRetrieverPreprocessor
from keras_interbert.preprocessing import InterBERTTextPacker
from keras_interbert.preprocessing import InterBERTTokenizer

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog",
              "cat", "on", "the", "beach", "red", "ball", "##s", "."]


def _reference_layout(features, boxes, size, num, max_regions, kept_mean):
    """One image's slots, written out from the layout's definition."""
    d = features.shape[-1]
    out_f = np.zeros((max_regions + 1, d), np.float64)
    out_l = np.zeros((max_regions + 1, 5), np.float64)
    out_m = np.zeros((max_regions + 1,), np.int64)
    h, w = float(size[0]), float(size[1])
    kept = min(num, max_regions)
    averaged = features[:kept] if kept_mean else features[:num]
    out_f[0] = averaged.mean(axis=0) if len(averaged) else 0.0
    out_l[0] = [0, 0, 1, 1, 1]
    out_m[0] = 1
    for k in range(kept):
        x1, y1, x2, y2 = boxes[k]
        out_f[k + 1] = features[k]
        out_l[k + 1] = [x1 / w, y1 / h, x2 / w, y2 / h,
                        (x2 - x1) * (y2 - y1) / (w * h)]
        out_m[k + 1] = 1
    return out_f, out_l, out_m


def _raw_batch(rng, batch=4, rows=6, dim=8, nums=(6, 3, 0, 5)):
    features = rng.normal(size=(batch, rows, dim)).astype("float32")
    x1 = rng.uniform(0, 300, size=(batch, rows))
    y1 = rng.uniform(0, 200, size=(batch, rows))
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 300, size=(batch, rows)),
                      y1 + rng.uniform(1, 200, size=(batch, rows))],
                     axis=-1).astype("float32")
    nums = np.array(nums[:batch], "int32")
    # Rows past num_regions are padding and may hold anything.
    for b, n in enumerate(nums):
        features[b, n:] = np.nan
        boxes[b, n:] = -1e30
    size = np.array([[480, 640], [375, 500], [100, 100], [600, 800]][:batch],
                    "int32")
    return features, boxes, size, nums


@pytest.mark.parametrize("global_feature", ["all_regions", "kept_regions"])
@pytest.mark.parametrize("max_regions", [2, 4, 9])
def test_region_packer_matches_the_layout(global_feature, max_regions):
    features, boxes, size, nums = _raw_batch(np.random.default_rng(0))
    packer = InterBERTRegionPacker(max_regions, global_feature=global_feature)
    got = {k: np.asarray(v) for k, v in
           packer(features, boxes, size, nums).items()}
    assert got["region_features"].shape == (4, max_regions + 1, 8)
    assert got["region_mask"].dtype == np.int32
    for b in range(4):
        ref_f, ref_l, ref_m = _reference_layout(
            features[b].astype(np.float64), boxes[b].astype(np.float64),
            size[b], int(nums[b]), max_regions,
            kept_mean=global_feature == "kept_regions")
        np.testing.assert_allclose(got["region_features"][b], ref_f,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["region_locations"][b], ref_l,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["region_mask"][b], ref_m)


def test_region_packer_runs_in_tf_data_and_round_trips_its_config():
    features, boxes, size, nums = _raw_batch(np.random.default_rng(1))
    packer = InterBERTRegionPacker(3)
    eager = packer(features, boxes, size, nums)
    ds = tf.data.Dataset.from_tensor_slices(
        (features, boxes, size, nums)).batch(4).map(packer)
    mapped = next(iter(ds))
    for key in eager:
        np.testing.assert_array_equal(np.asarray(eager[key]),
                                      mapped[key].numpy())
    clone = InterBERTRegionPacker.from_config(packer.get_config())
    assert clone.max_regions == 3 and clone.global_feature == "all_regions"
    with pytest.raises(ValueError, match="max_regions"):
        InterBERTRegionPacker(0)
    with pytest.raises(ValueError, match="global_feature"):
        InterBERTRegionPacker(3, global_feature="mean")


def _preprocessor(**kwargs):
    tokenizer = InterBERTTokenizer(vocabulary=VOCABULARY)
    kwargs.setdefault("sequence_length", 6)
    kwargs.setdefault("max_regions", 3)
    return InterBERTRetrieverPreprocessor(tokenizer, **kwargs)


def _raw(rng, batch=4):
    features, boxes, size, nums = _raw_batch(rng, batch=batch,
                                             dim=TINY_BACKBONE[
                                                 "image_feature_dim"])
    text = np.array(["a dog on the beach", "the red balls .", "cat",
                     "a dog a cat a ball a beach"][:batch])
    return {"text": text, "region_features": features, "region_boxes": boxes,
            "image_size": size, "num_regions": nums}


def test_retriever_preprocessor_packs_text_and_regions():
    preprocessor = _preprocessor()
    raw = _raw(np.random.default_rng(2))
    x = preprocessor(raw)
    assert sorted(x) == sorted(["token_ids", "segment_ids", "text_mask",
                                "region_features", "region_locations",
                                "region_mask"])
    tokenizer = preprocessor.tokenizer
    # [CLS] a dog on the beach [SEP] cut to 6: the retrieval loader's quirk
    # drops the final [SEP] of an over-long caption.
    expected = [tokenizer.token_to_id(t) for t in
                ["[CLS]", "a", "dog", "on", "the", "beach"]]
    np.testing.assert_array_equal(np.asarray(x["token_ids"])[0], expected)
    np.testing.assert_array_equal(
        np.asarray(x["text_mask"])[2], [1, 1, 1, 0, 0, 0])
    packer = InterBERTTextPacker(6, cls_id=tokenizer.cls_id,
                                 sep_id=tokenizer.sep_id,
                                 pad_id=tokenizer.pad_id,
                                 truncate_after_packing=True)
    np.testing.assert_array_equal(
        np.asarray(x["token_ids"]),
        np.asarray(packer(tokenizer(raw["text"]))["token_ids"]))
    regions = InterBERTRegionPacker(3)(
        raw["region_features"], raw["region_boxes"], raw["image_size"],
        raw["num_regions"])
    np.testing.assert_array_equal(np.asarray(x["region_mask"]),
                                  np.asarray(regions["region_mask"]))
    # (x, y) pass through with labels untouched.
    x2, y2 = preprocessor(raw, np.array([0, 1, 1, 1]))
    np.testing.assert_array_equal(np.asarray(y2), [0, 1, 1, 1])


def test_retriever_preprocessor_names_a_missing_or_extra_key():
    preprocessor = _preprocessor()
    raw = _raw(np.random.default_rng(3))
    missing = {k: v for k, v in raw.items() if k != "num_regions"}
    with pytest.raises(ValueError, match=r"missing \['num_regions'\]"):
        preprocessor(missing)
    with pytest.raises(ValueError, match=r"unexpected \['caption'\]"):
        preprocessor(dict(raw, caption=raw["text"]))
    with pytest.raises(ValueError, match="strings"):
        preprocessor(dict(raw, text=np.arange(4)))


def test_retriever_preprocessor_presets(tmp_path):
    built_in = InterBERTRetrieverPreprocessor.from_preset(
        "interbert_tiny_en", max_regions=36)
    assert built_in.vocabulary_size == 30522
    assert (built_in.sequence_length, built_in.max_regions) == (30, 36)
    preprocessor = _preprocessor(sequence_length=7)
    preprocessor.save_to_preset(str(tmp_path / "p"))
    loaded = InterBERTRetrieverPreprocessor.from_preset(str(tmp_path / "p"))
    assert loaded.tokenizer.get_vocabulary() == VOCABULARY
    assert (loaded.sequence_length, loaded.max_regions) == (7, 3)
    raw = _raw(np.random.default_rng(4))
    for key, value in preprocessor(raw).items():
        np.testing.assert_array_equal(np.asarray(value),
                                      np.asarray(loaded(raw)[key]))
    assert InterBERTRetrieverPreprocessor.from_preset(
        str(tmp_path / "p"), max_regions=5).max_regions == 5
    with pytest.raises(ValueError, match="Unknown preset"):
        InterBERTRetrieverPreprocessor.from_preset("no_such_preset")
    with pytest.raises(ValueError, match="preprocessor.json"):
        InterBERTRetrieverPreprocessor.from_preset(str(tmp_path))


def _retriever(preprocessor):
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE,
                                        vocabulary_size=len(VOCABULARY)))
    return InterBERTRetriever(backbone, preprocessor=preprocessor)


def test_retriever_predicts_and_fits_on_raw_inputs_and_saves_them(tmp_path):
    preprocessor = _preprocessor()
    retriever = _retriever(preprocessor)
    raw = _raw(np.random.default_rng(5))
    direct = retriever.predict(preprocessor(raw), verbose=0)["itm_logits"]
    from_raw = retriever.predict(raw, batch_size=3, verbose=0)["itm_logits"]
    np.testing.assert_allclose(from_raw, direct, rtol=1e-5, atol=1e-6)
    ds = tf.data.Dataset.from_tensor_slices(raw).batch(2)
    np.testing.assert_allclose(
        retriever.predict(ds, verbose=0)["itm_logits"], direct, rtol=1e-5,
        atol=1e-6)

    retriever.compile(optimizer=keras.optimizers.Adam(1e-3))
    labels = np.array([0, 1, 1, 1], "int32")
    history = retriever.fit(raw, labels, batch_size=4, epochs=1, verbose=0,
                            validation_data=(raw, labels))
    assert np.isfinite(history.history["val_loss"]).all()
    assert np.isfinite(retriever.evaluate(raw, labels, verbose=0)).all()

    path = str(tmp_path / "retriever.keras")
    retriever.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.preprocessor, InterBERTRetrieverPreprocessor)
    assert loaded.preprocessor.tokenizer.get_vocabulary() == VOCABULARY
    assert loaded.preprocessor.max_regions == 3
    np.testing.assert_allclose(
        loaded.predict(raw, verbose=0)["itm_logits"],
        retriever.predict(raw, verbose=0)["itm_logits"], rtol=1e-5, atol=1e-6)


def test_retriever_refuses_a_preprocessor_of_another_vocabulary():
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE,
                                        vocabulary_size=len(VOCABULARY) + 1))
    with pytest.raises(ValueError, match=r"15 word pieces.*16"):
        InterBERTRetriever(backbone, preprocessor=_preprocessor())
    with pytest.raises(ValueError, match="preprocessors"):
        InterBERTRetriever(backbone, preprocessor=lambda x: x)


def test_text_classifier_preprocessor_packs_pairs_with_an_empty_image(
        tmp_path):
    from keras_interbert import InterBERTTextClassifier
    from keras_interbert.preprocessing import InterBERTTextClassifierPreprocessor

    tokenizer = InterBERTTokenizer(vocabulary=VOCABULARY)
    dim = TINY_BACKBONE["image_feature_dim"]
    preprocessor = InterBERTTextClassifierPreprocessor(
        tokenizer, image_feature_dim=dim, sequence_length=8, text_pairs=True)
    raw = {"text": np.array(["a dog on the beach", "cat"]),
           "text_pair": np.array(["the red balls", "a cat on a ball ."])}
    x = preprocessor(raw)
    ids = {t: i for i, t in enumerate(VOCABULARY)}
    # Longest first to 8 - 3 = 5 pieces: "a dog on" + "the red" is 3 + 2.
    np.testing.assert_array_equal(
        np.asarray(x["token_ids"])[0],
        [ids[t] for t in ["[CLS]", "a", "dog", "on", "[SEP]", "the", "red",
                          "[SEP]"]])
    np.testing.assert_array_equal(np.asarray(x["segment_ids"])[0],
                                  [0, 0, 0, 0, 0, 1, 1, 1])
    assert np.asarray(x["region_features"]).shape == (2, 1, dim)
    assert not np.asarray(x["region_mask"]).any()
    with pytest.raises(ValueError, match=r"missing \['text_pair'\]"):
        preprocessor({"text": raw["text"]})

    backbone = InterBERTBackbone(**dict(TINY_BACKBONE,
                                        vocabulary_size=len(VOCABULARY)))
    classifier = InterBERTTextClassifier(backbone, num_classes=3,
                                         preprocessor=preprocessor)
    np.testing.assert_allclose(classifier.predict(raw, verbose=0),
                               classifier.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    path = str(tmp_path / "classifier.keras")
    classifier.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.preprocessor.text_pairs
    np.testing.assert_allclose(loaded.predict(raw, verbose=0),
                               classifier.predict(raw, verbose=0),
                               rtol=1e-5, atol=1e-6)
    narrow = InterBERTTextClassifierPreprocessor(tokenizer,
                                                 image_feature_dim=dim + 1)
    with pytest.raises(ValueError, match="image slots"):
        InterBERTTextClassifier(backbone, num_classes=3, preprocessor=narrow)


def test_multiple_choice_preprocessor_and_task(tmp_path):
    from keras_interbert import InterBERTMultipleChoice
    from keras_interbert.preprocessing import (
        InterBERTMultipleChoicePreprocessor)

    tokenizer = InterBERTTokenizer(vocabulary=VOCABULARY)
    preprocessor = InterBERTMultipleChoicePreprocessor(
        tokenizer, num_options=3, sequence_length=7, max_regions=2)
    raw = _raw(np.random.default_rng(6), batch=2)
    raw = {"question": raw.pop("text"),
           "options": np.array([["a dog", "a cat", "the beach"],
                                ["red", "ball", "a red ball on the beach"]]),
           **raw}
    x = preprocessor(raw)
    assert np.asarray(x["token_ids"]).shape == (2, 3, 7)
    assert np.asarray(x["region_mask"]).shape == (2, 3, 3)
    ids = {t: i for i, t in enumerate(VOCABULARY)}
    # "a dog on the beach" + "the beach", longest first to 7 - 3 = 4 pieces.
    np.testing.assert_array_equal(
        np.asarray(x["token_ids"])[0, 2],
        [ids[t] for t in ["[CLS]", "a", "dog", "[SEP]", "the", "beach",
                          "[SEP]"]])
    # Every option row of a question sees the question's image.
    regions = InterBERTRegionPacker(2)(
        raw["region_features"], raw["region_boxes"], raw["image_size"],
        raw["num_regions"])
    for o in range(3):
        np.testing.assert_array_equal(
            np.asarray(x["region_features"])[:, o],
            np.asarray(regions["region_features"]))
    with pytest.raises(ValueError, match=r"\[batch, 3\] string"):
        preprocessor(dict(raw, options=raw["options"][:, :2]))

    backbone = InterBERTBackbone(**dict(TINY_BACKBONE,
                                        vocabulary_size=len(VOCABULARY)))
    with pytest.raises(ValueError, match="3 options per question"):
        InterBERTMultipleChoice(backbone, num_options=4,
                                preprocessor=preprocessor)
    model = InterBERTMultipleChoice(backbone, num_options=3,
                                    preprocessor=preprocessor)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(raw, verbose=0), expected,
                               rtol=1e-5, atol=1e-6)
    path = str(tmp_path / "choice.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(
        raw, verbose=0), expected, rtol=1e-5, atol=1e-6)
