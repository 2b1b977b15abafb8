"""The `score_image` export: encoded image and caption in, match out."""
import os

import keras
import numpy as np
import pytest
from conftest import TINY_BACKBONE

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTRetriever
from keras_interbert.export import ExportOptions
from keras_interbert.export import export_for_serving
from keras_interbert.export.image_serving import example_image_bytes
from keras_interbert.export.image_serving import python_score_inputs
from keras_interbert.export.validate import validate_export
from keras_interbert.vision import RegionFeatureExtractor
from keras_interbert.vision import resnet_backbone

pytestmark = pytest.mark.tensorflow_only  # SavedModel export
GRID = (1, 2)


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    from test_export import tiny_vocabulary

    root = tmp_path_factory.mktemp("image_export")
    vocabulary = root / "vocabulary.txt"
    vocabulary.write_text("".join(t + "\n" for t in tiny_vocabulary()))
    keras.utils.set_random_seed(0)
    extractor = RegionFeatureExtractor(
        resnet_backbone(block_type="basic_block",
                        stackwise_num_filters=[64, 24],
                        stackwise_num_blocks=[1, 1],
                        stackwise_num_strides=[1, 2]),
        image_size=64)
    assert extractor.feature_dim == TINY_BACKBONE["image_feature_dim"]
    model = InterBERTRetriever(InterBERTBackbone(**TINY_BACKBONE))
    export_dir = str(root / "retrieval" / "1")
    metadata = export_for_serving(
        model, export_dir, ExportOptions(vocabulary=str(vocabulary),
                                         sequence_length=12, max_regions=4),
        image_extractor=extractor, grid_levels=GRID)
    return model, extractor, export_dir, metadata, str(vocabulary)


def test_score_image_validates_in_a_fresh_process_like_the_python_pipeline(
        image_export):
    model, extractor, export_dir, metadata, _ = image_export
    assert metadata["signature_names"] == ["score", "embed", "score_image"]
    assert metadata["signatures"]["score_image"]["inputs"].keys() == {
        "image_bytes", "text"}
    # Fresh process, allowed ops only, warmup replay, saved_model_cli, and
    # every output equal to the Keras model fed by the Python pipeline
    # (eager decoding, `extract_regions`, `to_backbone_regions`).
    summary = validate_export(export_dir, model=model,
                              image_extractor=extractor, run_cli=False)
    assert summary["differences"]["score_image/match_probability"] <= 1e-5
    report = summary["report"]
    assert "score_image" in report["signatures"]
    assert "DecodeImage" in report["ops"] or "DecodePng" in report["ops"]
    assert report["warmup"]["records"] >= 2


def test_score_image_equals_score_on_extracted_regions(image_export):
    import tensorflow as tf

    _, extractor, export_dir, _, _ = image_export
    loaded = tf.saved_model.load(export_dir).signatures
    images = example_image_bytes(3, seed=7)
    text = np.array(["a brown dog", "the man on the beach", ""], object)
    got = loaded["score_image"](image_bytes=tf.constant(list(images)),
                                text=tf.constant(list(text)))
    regions = python_score_inputs(extractor, {"image_bytes": images,
                                              "text": text}, GRID)
    want = loaded["score"](**{k: tf.constant(list(v) if v.dtype == object
                                             else v)
                              for k, v in regions.items()})
    np.testing.assert_allclose(got["match_probability"].numpy(),
                               want["match_probability"].numpy(), atol=1e-5)
    # Pixel boxes on the original image: the first grid level is the image.
    np.testing.assert_allclose(regions["region_boxes"][:, 0, 2:],
                               regions["image_size"][:, ::-1], atol=1e-3)


def test_score_image_rejects_undecodable_bytes(image_export):
    import tensorflow as tf

    _, _, export_dir, _, _ = image_export
    loaded = tf.saved_model.load(export_dir).signatures
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded["score_image"](image_bytes=tf.constant([b"not an image"]),
                              text=tf.constant(["a dog"]))


def test_score_image_needs_matching_features(image_export, tmp_path):
    model, _, _, _, vocabulary = image_export
    wide = RegionFeatureExtractor(
        resnet_backbone(block_type="basic_block",
                        stackwise_num_filters=[64, 16],
                        stackwise_num_blocks=[1, 1],
                        stackwise_num_strides=[1, 2]), image_size=64)
    with pytest.raises(ValueError, match="image_feature_dim"):
        export_for_serving(model, str(tmp_path / "x" / "1"),
                           ExportOptions(sequence_length=12,
                                         vocabulary=vocabulary),
                           image_extractor=wide)
    assert not os.path.exists(tmp_path / "x" / "1")


def test_command_line_adds_score_image(image_export, tmp_path):
    from keras_interbert.export.__main__ import main

    model, extractor, _, _, vocabulary = image_export
    model_path, extractor_path = str(tmp_path / "m.keras"), str(
        tmp_path / "x.keras")
    model.save(model_path)
    extractor.save(extractor_path)
    assert main([model_path, "--name", "pixels", "--output-dir",
                 str(tmp_path / "out"), "--vocabulary", vocabulary,
                 "--sequence-length", "12", "--max-regions", "4",
                 "--image-extractor", extractor_path, "--grid-levels", "1,2",
                 "--no-warmup"]) == 0
    import json

    with open(tmp_path / "out" / "pixels" / "1" / "assets.extra" /
              "interbert_export.json") as f:
        metadata = json.load(f)
    assert "score_image" in metadata["signature_names"]
