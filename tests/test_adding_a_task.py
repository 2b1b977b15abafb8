"""docs/adding-a-task.md, followed: a new task defined outside the package.

The task (visual question answering as classification over answers), its
preprocessor and its serving task are written here, as the document's files
1 and 3 would hold them, and registered as its files 2 and 4 would; nothing
else of the package is changed. The test then checks that raw-input
training and prediction, `.keras` and preset round trips, export without
options and offline validation all work for it.
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import BACKEND
from conftest import TINY_BACKBONE

from keras_interbert import InterBERTBackbone
from keras_interbert.export.serving_inputs import InputChecks
from keras_interbert.export.serving_inputs import checked_image_inputs
from keras_interbert.export.serving_inputs import checked_text
from keras_interbert.export.serving_inputs import serving_regions
from keras_interbert.export.serving_signatures import IMAGE_INPUTS_IO
from keras_interbert.export.serving_signatures import IMAGE_SPECS
from keras_interbert.export.serving_signatures import image_dict
from keras_interbert.export.tasks import ServingTask
from keras_interbert.export.tasks import register
from keras_interbert.export.tasks import serving_tasks
from keras_interbert.models.functional_base import BackboneTask
from keras_interbert.preprocessing import InterBERTRegionPacker
from keras_interbert.preprocessing import InterBERTTokenizer
from keras_interbert.preprocessing.preprocessor_base import InterBERTPreprocessor
from keras_interbert.preprocessing.preprocessor_base import check_raw_inputs
from keras_interbert.preprocessing.preprocessor_base import checked_text as \
    checked_raw_text

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is",
              "the", "colour", "of", "dog", "?", "how", "many"] + [
    f"w{i}" for i in range(TINY_BACKBONE["vocabulary_size"] - 14)]


# --- file 1: the task and its preprocessor ---------------------------------
@keras.saving.register_keras_serializable(package="keras_interbert_test")
class ExampleVQA(BackboneTask):
    def __init__(self, backbone, num_answers, dropout=0.1, preprocessor=None,
                 dtype=None, **kwargs):
        self.backbone = backbone
        self.answer_dropout = keras.layers.Dropout(dropout,
                                                   name="answer_dropout")
        self.answer_dense = keras.layers.Dense(num_answers, dtype=dtype,
                                               name="answer_dense")
        inputs = backbone.input
        features = backbone(inputs)
        fused = features["text_pooled"] * features["image_pooled"]
        outputs = self.answer_dense(self.answer_dropout(fused))
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.num_answers, self.dropout = int(num_answers), dropout
        self.set_preprocessor(preprocessor)

    def _image_feature_dim(self):
        return self.backbone.image_feature_dim

    def _task_config(self):
        return {"num_answers": self.num_answers, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="keras_interbert")
class ExampleVQAPreprocessor(InterBERTPreprocessor):
    raw_input_names = ("question", "region_features", "region_boxes",
                       "image_size", "num_regions")

    def __init__(self, tokenizer, sequence_length=8, max_regions=3,
                 truncate_after_packing=False, **kwargs):
        super().__init__(tokenizer, sequence_length, truncate_after_packing,
                         **kwargs)
        self.max_regions = int(max_regions)
        self.region_packer = InterBERTRegionPacker(self.max_regions)

    def _settings(self):
        return {"sequence_length": self.sequence_length,
                "max_regions": self.max_regions,
                "truncate_after_packing": self.truncate_after_packing}

    def call(self, x, y=None, sample_weight=None):
        owner = type(self).__name__
        check_raw_inputs(x, self.raw_input_names, owner)
        text = self.packer(self.tokenizer(
            checked_raw_text(x, "question", owner)))
        regions = self.region_packer(x["region_features"], x["region_boxes"],
                                     x["image_size"], x["num_regions"])
        return keras.utils.pack_x_y_sample_weight({**text, **regions}, y,
                                                  sample_weight)


# --- file 3: the serving task ----------------------------------------------
def _vqa_signatures(model, tokenizer, packer, options):
    feature_dim = model.backbone.image_feature_dim

    def answer(question, region_features, region_boxes, image_size,
               num_regions):
        checks = InputChecks()
        question = checked_text(checks, {"question": question},
                                ["question"])["question"]
        image = checked_image_inputs(
            checks, image_dict(region_features, region_boxes, image_size,
                               num_regions), feature_dim,
            tf.shape(question)[0])
        x = dict(packer(tokenizer(question)))
        x.update(serving_regions(image, options.max_regions))
        logits = tf.cast(model(x, training=False), tf.float32)
        return {"logits": logits,
                "answer_id": tf.argmax(logits, -1, output_type=tf.int32)}

    specs = (tf.TensorSpec(None, tf.string, name="question"),) + IMAGE_SPECS
    return {"answer": (answer, specs)}


def _describe(model, options):
    return {"answer": ({"question": ("string", "[batch]"), **IMAGE_INPUTS_IO},
                       {"logits": "[batch, num_answers]",
                        "answer_id": "[batch] int32"})}


def _reference(model, export_dir, metadata, signature, inputs):
    from keras_interbert.export.validate import as_numpy
    from keras_interbert.export.validate import pipeline_inputs

    image = dict(inputs)
    image["text"] = image.pop("question")
    logits = as_numpy(model(pipeline_inputs(export_dir, metadata, image),
                            training=False))
    return {"logits": logits, "answer_id": logits.argmax(-1).astype(np.int32)}


VQA_SERVING = ServingTask(
    name="test_vqa", model_classes=lambda: (ExampleVQA,),
    defaults={"sequence_length": 20, "max_regions": 36,
              "truncate_after_packing": False},
    min_sequence_length=3, uses_regions=True, accepts_text_pairs=False,
    build_signatures=_vqa_signatures, describe_signatures=_describe,
    reference=_reference)


@pytest.fixture
def registered():
    from keras_interbert.export import tasks

    register(VQA_SERVING)  # file 4's import line does this
    yield
    del tasks._REGISTRY["test_vqa"]
    assert "test_vqa" not in serving_tasks()


def _raw(rng, batch=4):
    dim = TINY_BACKBONE["image_feature_dim"]
    return {"question": np.array(["what is the colour of the dog ?",
                                  "how many dog ?", "what ?", "w1 w2"][:batch]),
            "region_features": rng.normal(size=(batch, 5, dim)).astype(
                "float32"),
            "region_boxes": np.tile(np.array([[4, 8, 60, 90]], "float32"),
                                    (batch, 5, 1)),
            "image_size": np.array([[100, 120]] * batch, "int32"),
            "num_regions": np.array([5, 1, 3, 0][:batch], "int32")}


def _model():
    keras.utils.set_random_seed(2)
    preprocessor = ExampleVQAPreprocessor(InterBERTTokenizer(
        vocabulary=VOCABULARY))
    return ExampleVQA(InterBERTBackbone(**TINY_BACKBONE), num_answers=5,
                   preprocessor=preprocessor)


def test_a_new_task_trains_saves_and_loads_on_raw_inputs(tmp_path):
    model = _model()
    raw = _raw(np.random.default_rng(0))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    history = model.fit(raw, np.array([0, 1, 2, 3]), batch_size=2, epochs=1,
                        verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    expected = model.predict(raw, verbose=0)
    path = str(tmp_path / "vqa.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(
        raw, verbose=0), expected, rtol=1e-5, atol=1e-6)
    model.save_to_preset(str(tmp_path / "preset"))
    from keras_interbert.models.preset_io import load_preset

    loaded = load_preset(str(tmp_path / "preset"))
    assert isinstance(loaded.preprocessor, ExampleVQAPreprocessor)
    np.testing.assert_allclose(loaded.predict(raw, verbose=0), expected,
                               rtol=1e-5, atol=1e-6)


def test_a_new_task_exports_and_validates(tmp_path, registered, monkeypatch):
    if BACKEND != "tensorflow":
        pytest.skip("exports run under TensorFlow")
    from keras_interbert.export import export_for_serving
    from keras_interbert.export.validate import validate_export

    model = _model()
    path = str(tmp_path / "vqa.keras")
    model.save(path)
    # A relative export folder, as a user types it on the command line.
    monkeypatch.chdir(tmp_path)
    export_dir = os.path.join("served", "vqa", "1")
    metadata = export_for_serving(path, export_dir)
    # The settings came from the model's preprocessor, not the defaults.
    assert (metadata["task"], metadata["sequence_length"],
            metadata["max_regions"]) == ("test_vqa", 8, 3)
    summary = validate_export(export_dir, model=path)
    assert summary["differences"]["answer/logits"] <= 1e-5
