"""Preset directories: save_to_preset / from_preset for backbones and tasks."""
import os

import keras
import numpy as np
import pytest

from conftest import TINY_BACKBONE
from conftest import random_backbone_inputs

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer
from keras_interbert import InterBERTRetriever
from keras_interbert import InterBERTTextClassifier
from keras_interbert.models import preset_io
from keras_interbert.preprocessing import InterBERTRetrieverPreprocessor
from keras_interbert.preprocessing import InterBERTTokenizer


def _weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


def _pretrainer():
    keras.utils.set_random_seed(3)
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE, pooling="mean"))
    return InterBERTPretrainer(backbone, num_region_classes=7,
                               contrastive=True)


def test_backbone_round_trips_and_names_stay_built_in(tmp_path):
    keras.utils.set_random_seed(1)
    backbone = InterBERTBackbone(**TINY_BACKBONE)
    folder = str(tmp_path / "backbone")
    backbone.save_to_preset(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "metadata.json",
                                          "model.weights.h5"]
    loaded = InterBERTBackbone.from_preset(folder)
    _same_weights(backbone, loaded)
    x = random_backbone_inputs(batch=2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)["text_pooled"]),
        keras.ops.convert_to_numpy(backbone(x)["text_pooled"]), rtol=1e-6)
    with pytest.raises(ValueError, match="without config overrides"):
        InterBERTBackbone.from_preset(folder, hidden_dim=64)
    with pytest.raises(FileExistsError):
        backbone.save_to_preset(folder)
    backbone.save_to_preset(folder, overwrite=True)
    # Built-in names still give the named configuration.
    assert InterBERTBackbone.from_preset(
        "interbert_tiny_en").vocabulary_size == 30522


def test_pretrainer_preset_gives_every_task(tmp_path):
    pretrainer = _pretrainer()
    folder = str(tmp_path / "pretrained")
    pretrainer.save_to_preset(folder)
    loaded = InterBERTPretrainer.from_preset(folder)
    assert loaded.itc_head is not None
    _same_weights(pretrainer, loaded)
    # A retriever keeps the pretrained matching and contrastive heads.
    retriever = InterBERTRetriever.from_preset(folder)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(retriever.itm_head.classifier.kernel),
        keras.ops.convert_to_numpy(pretrainer.itm_head.classifier.kernel))
    assert retriever.itc_head is not None
    _same_weights(pretrainer.backbone, retriever.backbone)
    # Other tasks take the backbone and a new head; so does the backbone.
    classifier = InterBERTTextClassifier.from_preset(folder, num_classes=2)
    _same_weights(pretrainer.backbone, classifier.backbone)
    _same_weights(pretrainer.backbone, InterBERTBackbone.from_preset(folder))
    # The same folder through from_pretrained (resolve_source).
    _same_weights(pretrainer.backbone,
                  InterBERTRetriever.from_pretrained(folder).backbone)


def test_retriever_preset_keeps_its_preprocessor(tmp_path):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        f"w{i}" for i in range(TINY_BACKBONE["vocabulary_size"] - 5)]
    preprocessor = InterBERTRetrieverPreprocessor(
        InterBERTTokenizer(vocabulary=vocabulary), sequence_length=7,
        max_regions=3)
    retriever = InterBERTRetriever.from_pretrained(
        _pretrainer(), preprocessor=preprocessor)
    folder = str(tmp_path / "retriever")
    retriever.save_to_preset(folder)
    assert {"task.json", "task.weights.h5", "preprocessor.json",
            "vocabulary.txt"} <= set(os.listdir(folder))
    loaded = InterBERTRetriever.from_preset(folder)
    assert loaded.preprocessor.tokenizer.get_vocabulary() == vocabulary
    assert (loaded.preprocessor.sequence_length,
            loaded.preprocessor.max_regions) == (7, 3)
    _same_weights(retriever, loaded)
    rng = np.random.default_rng(0)
    dim = TINY_BACKBONE["image_feature_dim"]
    raw = {"text": np.array(["w1 w2 w3", "w4"]),
           "region_features": rng.normal(size=(2, 4, dim)).astype("float32"),
           "region_boxes": np.tile(np.array([[1, 2, 30, 40]], "float32"),
                                   (2, 4, 1)),
           "image_size": np.array([[50, 60], [70, 80]], "int32"),
           "num_regions": np.array([4, 2], "int32")}
    np.testing.assert_allclose(
        loaded.predict(raw, verbose=0)["itm_logits"],
        retriever.predict(raw, verbose=0)["itm_logits"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="loads as saved"):
        InterBERTRetriever.from_preset(folder, itm_dropout=0.2)


def test_damaged_presets_are_named(tmp_path):
    folder = str(tmp_path / "p")
    _pretrainer().save_to_preset(folder)
    with open(os.path.join(folder, "task.weights.h5"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="task.weights.h5"):
        InterBERTPretrainer.from_preset(folder)
    with open(os.path.join(folder, "task.json"), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="task.json"):
        InterBERTPretrainer.from_preset(folder)
    assert not preset_io.is_preset_directory(str(tmp_path))
    with pytest.raises(ValueError, match="not a preset directory"):
        preset_io.load_preset(str(tmp_path))
