"""tests/test_case.py's checks applied to every layer, preprocessor, the
backbone and every task (tiny configurations)."""
import warnings

import keras
import numpy as np
import pytest

from conftest import TINY_BACKBONE
from conftest import random_backbone_inputs
import test_case
from test_case import run_layer_test
from test_case import run_model_test
from test_case import run_preprocessor_test

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTMultipleChoice
from keras_interbert import InterBERTPretrainer
from keras_interbert import InterBERTRetriever
from keras_interbert import InterBERTTextClassifier
from keras_interbert.layers import ImageTextMatchingHead
from keras_interbert.layers import InterBERTTransformerLayer
from keras_interbert.layers import MaskedRegionHead
from keras_interbert.layers.contrastive_head import ContrastiveHead
from keras_interbert.models.interbert_backbone import SequencePooling
from keras_interbert.models.option_layers import MergeOptions
from keras_interbert.models.option_layers import SplitOptions
from keras_interbert.preprocessing import InterBERTMultipleChoicePreprocessor
from keras_interbert.preprocessing import InterBERTPretrainerPreprocessor
from keras_interbert.preprocessing import InterBERTRegionPacker
from keras_interbert.preprocessing import InterBERTRetrieverPreprocessor
from keras_interbert.preprocessing import InterBERTTextClassifierPreprocessor
from keras_interbert.preprocessing import InterBERTTextPacker
from keras_interbert.preprocessing import InterBERTTokenizer

RNG = np.random.default_rng(0)
POOLED = RNG.normal(size=(3, 16)).astype("float32")
SEQUENCE = RNG.normal(size=(3, 5, 16)).astype("float32")
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], "int32")
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "on",
              "the", "beach", "?", "red", "ball"] + [
    f"w{i}" for i in range(TINY_BACKBONE["vocabulary_size"] - 13)]
DIM = TINY_BACKBONE["image_feature_dim"]

LAYERS = {
    "ContrastiveHead": (ContrastiveHead, {"projection_dim": 8},
                        (POOLED, POOLED), (3, 3)),
    "ImageTextMatchingHead": (ImageTextMatchingHead, {"dropout": 0.1},
                              (POOLED, POOLED), (3, 2)),
    "InterBERTTransformerLayer": (InterBERTTransformerLayer,
                                  {"intermediate_dim": 32, "num_heads": 2},
                                  SEQUENCE, (3, 5, 16)),
    "MaskedRegionHead": (MaskedRegionHead, {"num_classes": 7,
                                            "hidden_dim": 16},
                         SEQUENCE, (3, 5, 7)),
    "SequencePooling": (SequencePooling, {"mode": "mean"}, (SEQUENCE, MASK),
                        (3, 16)),
    "MergeOptions": (MergeOptions, {}, SEQUENCE, (15, 16)),
    "SplitOptions": (SplitOptions, {"num_options": 3},
                     RNG.normal(size=(6, 1)).astype("float32"), (2, 3)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer(name):
    cls, kwargs, inputs, shape = LAYERS[name]
    run_layer_test(cls, kwargs, inputs, expected_output_shape=shape)


def test_a_one_slot_modality_attends_without_keras_softmax_warning():
    # An empty modality is one padded slot (`unimodal_pooled`, the two-stage
    # first stage, the text classifier's empty image), and Keras warns on any
    # softmax over an axis of size 1 (under TensorFlow too when the call is
    # eager). Every stack of the backbone is this layer, which keeps that
    # warning out of one-slot calls and only those.
    layer = InterBERTTransformerLayer(intermediate_dim=32, num_heads=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mask in (np.zeros((3, 1), "int32"), np.ones((3, 1), "int32")):
            out = layer(SEQUENCE[:, :1], padding_mask=mask)
            assert out.shape == (3, 1, 16)
    assert not [w for w in caught if "softmax over axis" in str(w.message)]
    # The same recording sees the warning where Keras gives it elsewhere.
    with pytest.warns(UserWarning, match="softmax over axis"):
        keras.ops.softmax(np.zeros((2, 1), "float32"), axis=-1)


def test_packers():
    features = RNG.normal(size=(2, 4, DIM)).astype("float32")
    boxes = np.tile(np.array([[2, 3, 20, 30]], "float32"), (2, 4, 1))
    run_layer_test(InterBERTRegionPacker, {"max_regions": 3},
                   (features, boxes, np.array([[40, 50], [60, 70]], "int32"),
                    np.array([4, 2], "int32")),
                   expected_output_shape={"region_features": (2, 4, DIM),
                                          "region_locations": (2, 4, 5),
                                          "region_mask": (2, 4)},
                   mixed_precision=False)
    tokenizer = InterBERTTokenizer(vocabulary=VOCABULARY)
    ids = tokenizer(np.array(["a dog on the beach", "a ball"]))
    run_layer_test(InterBERTTextPacker, {"sequence_length": 6}, ids,
                   expected_output_shape={"token_ids": (2, 6),
                                          "segment_ids": (2, 6),
                                          "text_mask": (2, 6)},
                   mixed_precision=False)


def _image(batch):
    return {"region_features": RNG.normal(size=(batch, 4, DIM)).astype(
                "float32"),
            "region_boxes": np.tile(np.array([[2, 3, 20, 30]], "float32"),
                                    (batch, 4, 1)),
            "image_size": np.array([[40, 50]] * batch, "int32"),
            "num_regions": np.array([4, 1, 0][:batch], "int32")}


BACKBONE_KEYS = ["token_ids", "segment_ids", "text_mask", "region_features",
                 "region_locations", "region_mask"]


def _preprocessors():
    tokenizer = InterBERTTokenizer(vocabulary=VOCABULARY)
    return {
        "retriever": (InterBERTRetrieverPreprocessor(
            tokenizer, sequence_length=6, max_regions=3),
            {"text": np.array(["a dog", "the beach ?", "red"]), **_image(3)}),
        "text_classifier": (InterBERTTextClassifierPreprocessor(
            tokenizer, image_feature_dim=DIM, sequence_length=8,
            text_pairs=True),
            {"text": np.array(["a dog", "the red ball"]),
             "text_pair": np.array(["on the beach", "?"])}),
        "multiple_choice": (InterBERTMultipleChoicePreprocessor(
            tokenizer, num_options=2, sequence_length=8, max_regions=3),
            {"question": np.array(["a dog ?", "red ?"]),
             "options": np.array([["beach", "ball"], ["a", "the dog"]]),
             **_image(2)}),
        # Makes its own targets: `(x, y)` from raw pairs alone. Keyed on
        # `example_index`, so every call draws the same masks.
        "pretrainer": (InterBERTPretrainerPreprocessor(
            tokenizer, sequence_length=8, max_regions=3, mrm="random",
            region_feature_source=FEATURE_SOURCE),
            {"text": np.array(["a dog on the beach", "the red ball ?",
                               "red"]),
             **_image(3),
             "region_class_probs": RNG.dirichlet(
                 np.ones(5), size=(3, 4)).astype("float32"),
             "example_index": np.array([4, 9, 2], "int64")}),
    }


FEATURE_SOURCE = {"kind": "extracted", "extractor": {"classifier": "a"},
                  "fingerprint": "sha256:0123", "feature_dim": DIM,
                  "image_size": 64}
PRETRAINER_X = BACKBONE_KEYS + ["msm_positions", "mrm_positions"]
PRETRAINER_Y = ["msm_labels", "msm_weights", "mrm_targets", "mrm_weights",
                "itm_labels"]


@pytest.mark.parametrize("name", ["retriever", "text_classifier",
                                  "multiple_choice", "pretrainer"])
def test_preprocessor(name, tmp_path):
    preprocessor, raw = _preprocessors()[name]
    if name != "pretrainer":
        run_preprocessor_test(preprocessor, raw, BACKBONE_KEYS,
                              tmp_dir=str(tmp_path))
        return
    run_preprocessor_test(preprocessor, raw, PRETRAINER_X,
                          tmp_dir=str(tmp_path),
                          expected_label_keys=PRETRAINER_Y,
                          labels=np.array([1, 0, 1], "int32"),
                          label_key="itm_labels")
    # The feature source is kept, not used: the same batches without it.
    plain = InterBERTPretrainerPreprocessor.from_config(dict(
        preprocessor.get_config(), tokenizer=preprocessor.tokenizer,
        region_feature_source=None))
    assert plain.region_feature_source is None
    assert (preprocessor.get_config()["region_feature_source"]
            == FEATURE_SOURCE)
    test_case.assert_all_close(plain(raw), preprocessor(raw), rtol=0, atol=0)


def _backbone():
    return InterBERTBackbone(**dict(TINY_BACKBONE, pooling="mean"))


def test_backbone(tmp_path):
    run_model_test(_backbone(), random_backbone_inputs(batch=3),
                   tmp_dir=str(tmp_path))


def _options(x, count):
    return {k: np.repeat(v[:, None], count, axis=1) for k, v in x.items()}


@pytest.mark.parametrize("name", ["pretrainer", "retriever",
                                  "text_classifier", "multiple_choice"])
def test_task(name, tmp_path):
    x = random_backbone_inputs(batch=4)
    if name == "pretrainer":
        model, y = InterBERTPretrainer(_backbone(), num_region_classes=7), None
    elif name == "retriever":
        model = InterBERTRetriever(_backbone())
        y = np.array([0, 1, 1, 1], "int32")
    elif name == "text_classifier":
        model = InterBERTTextClassifier(_backbone(), num_classes=3)
        y = np.array([0, 2, 1, 0], "int32")
    else:
        model = InterBERTMultipleChoice(_backbone(), num_options=2)
        x, y = _options(x, 2), np.array([0, 1, 1, 0], "int32")
    run_model_test(model, x, y, tmp_dir=str(tmp_path))
