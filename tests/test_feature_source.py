"""The pretraining recipe saves its preprocessor in pretrained.keras, with
what made the region features; the exporter checks an image extractor
against that record."""
import json
import os
import shutil
import sys

import keras
import pytest
from conftest import REPO_ROOT
from conftest import TINY_BACKBONE

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTRetriever
from keras_interbert.data import RegionDataError
from keras_interbert.data import feature_source_of
from keras_interbert.data.synthetic import write_dataset
from keras_interbert.export.image_serving import check_feature_source
from keras_interbert.preprocessing import InterBERTPretrainerPreprocessor
from keras_interbert.preprocessing import InterBERTRetrieverPreprocessor
from keras_interbert.preprocessing import InterBERTTokenizer
from keras_interbert.vision import RegionFeatureExtractor
from keras_interbert.vision import feature_fingerprint
from keras_interbert.vision import resnet_backbone


def _pretrain_recipe():
    sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))
    try:
        import pretrain
    finally:
        sys.path.pop(0)
    return pretrain


def _tiny_resnet(filters=24):
    return resnet_backbone(block_type="basic_block",
                           stackwise_num_filters=[64, filters],
                           stackwise_num_blocks=[1, 1],
                           stackwise_num_strides=[1, 2])


def _extractor(seed, filters=24):
    keras.utils.set_random_seed(seed)
    return RegionFeatureExtractor(_tiny_resnet(filters), image_size=64)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("feature_source") / "data")
    write_dataset(data, num_images=24, seed=1, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    return data


# === The pretraining recipe keeps its preprocessor ===

@pytest.mark.tensorflow_only  # the recipe's training runs on every backend elsewhere
def test_pretrained_file_holds_the_runs_preprocessor(synthetic, tmp_path):
    pretrain = _pretrain_recipe()
    common = ["--data", synthetic, "--steps", "2", "--steps-per-epoch", "2",
              "--batch-size", "4", "--validation-steps", "1",
              "--verbose", "0", "--run-eagerly"]
    first = str(tmp_path / "first")
    pretrain.main(["--out", first, "--sequence-length", "20",
                   "--max-regions", "6", "--msm", "token", "--mrm", "random",
                   "--seed", "7", *common])
    path = os.path.join(first, "pretrained.keras")
    loaded = keras.saving.load_model(path, compile=False)
    preprocessor = loaded.preprocessor
    assert isinstance(preprocessor, InterBERTPretrainerPreprocessor)
    # The settings of the command line...
    assert (preprocessor.sequence_length, preprocessor.max_regions,
            preprocessor.msm, preprocessor.mrm, preprocessor.seed) == (
        20, 6, "token", "random", 7)
    # ...the tokenizer the run used (the recipe's bundled English one)...
    assert (preprocessor.tokenizer.get_vocabulary()
            == InterBERTTokenizer.from_preset(
                "interbert_base_en").get_vocabulary())
    # ...and the data set it was trained on, as its metadata.json says.
    with open(os.path.join(synthetic, "metadata.json")) as f:
        metadata = json.load(f)
    assert preprocessor.region_feature_source == {
        "kind": "synthetic", "name": metadata["name"], "seed": 1,
        "projection_seed": metadata["projection_seed"], "feature_dim": 16}
    # The checkpoints hold it too.
    checkpoints = sorted(os.listdir(os.path.join(first, "checkpoints")))
    checkpoint = keras.saving.load_model(
        os.path.join(first, "checkpoints", checkpoints[-1]), compile=False)
    assert checkpoint.preprocessor.get_config() == preprocessor.get_config()

    # Finetuning takes the file as before (the retriever gets its own
    # preprocessor from the finetuning recipe).
    retriever = InterBERTRetriever.from_pretrained(path)
    assert retriever.preprocessor is None
    assert retriever.backbone.image_feature_dim == 16

    # Pretraining on from it: the new run's preprocessor replaces the old.
    second = str(tmp_path / "second")
    pretrain.main(["--out", second, "--init", path, "--sequence-length", "16",
                   "--max-regions", "5", "--seed", "8", *common])
    again = keras.saving.load_model(os.path.join(second, "pretrained.keras"),
                                    compile=False).preprocessor
    assert (again.sequence_length, again.max_regions, again.msm, again.mrm,
            again.seed) == (16, 5, "span", "group", 8)
    assert again.region_feature_source == preprocessor.region_feature_source


# === feature_source_of ===

def test_feature_source_of_each_kind_of_folder(synthetic, tmp_path):
    assert feature_source_of(synthetic)["kind"] == "synthetic"
    # The region folder itself works as well as the data folder.
    assert feature_source_of(os.path.join(synthetic, "regions")) == (
        feature_source_of(synthetic))

    # A region folder that says nothing of its origin (converted before the
    # converters recorded their input format; tests/test_data_convert.py
    # covers a folder that does).
    converted = tmp_path / "converted"
    shutil.copytree(os.path.join(synthetic, "regions"), converted / "regions")
    assert feature_source_of(str(converted)) is None

    # Extracted features: what extraction.json records.
    extracted = tmp_path / "extracted"
    shutil.copytree(os.path.join(synthetic, "regions"), extracted / "regions")
    record = {"extractor": {"classifier": "resnet_50_imagenet"},
              "fingerprint": "sha256:" + "ab" * 32, "image_size": 448,
              "feature_dim": 16, "feature_stride": 32.0,
              "roi_align": {"output_size": 7, "sampling_ratio": 2},
              "boxes": "grid levels 6", "class_probs": None}
    with open(extracted / "regions" / "extraction.json", "w") as f:
        json.dump(record, f)
    source = feature_source_of(str(extracted))
    assert source == {"kind": "extracted",
                      **{k: record[k] for k in (
                          "extractor", "fingerprint", "image_size",
                          "feature_dim", "feature_stride", "roi_align",
                          "boxes")}}


def test_feature_source_of_refuses_unreadable_records(synthetic, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(synthetic, "regions"), broken / "regions")
    path = broken / "regions" / "extraction.json"
    path.write_text('{"extractor": ')
    with pytest.raises(RegionDataError, match="extraction.json: cannot read"):
        feature_source_of(str(broken))
    path.write_text('{"image_size": 448}')
    with pytest.raises(RegionDataError, match="no 'extractor' entry"):
        feature_source_of(str(broken))
    (tmp_path / "empty" / "regions").mkdir(parents=True)
    with pytest.raises(RegionDataError, match="no manifest.json"):
        feature_source_of(str(tmp_path / "empty"))


def test_a_preprocessor_refuses_a_feature_source_that_is_not_a_dict():
    tokenizer = InterBERTTokenizer(vocabulary=["[PAD]", "[UNK]", "[CLS]",
                                               "[SEP]", "[MASK]", "a"])
    with pytest.raises(ValueError, match="region_feature_source` must be a "
                                         "dict.*received str"):
        InterBERTRetrieverPreprocessor(tokenizer,
                                       region_feature_source="resnet")


def _extraction_recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "extract_regions", os.path.join(REPO_ROOT, "recipes",
                                        "extract_regions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.tensorflow_only  # runs the extraction recipe (TensorFlow side)
def test_extraction_records_the_extractors_fingerprint(tmp_path):
    import numpy as np
    import tensorflow as tf

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    with open(tmp_path / "captions.jsonl", "w") as f:
        for i, split in enumerate(["train", "train", "val", "val"]):
            pixels = rng.integers(0, 256, (40 + 8 * i, 50, 3), np.uint8)
            (images / f"p{i}.png").write_bytes(
                tf.io.encode_png(pixels).numpy())
            f.write(json.dumps({"image_id": f"p{i}", "split": split,
                                "caption": f"picture {i}"}) + "\n")
    extractor = _extractor(3)
    extractor.save(str(tmp_path / "extractor.keras"))
    def extract(out, *flags):
        assert _extraction_recipe().main([
            "--images", str(images), "--captions",
            str(tmp_path / "captions.jsonl"), "--out", str(out),
            "--batch-size", "2", "--no-progress", *flags]) == 0

    out = tmp_path / "out"
    extract(out, "--extractor", str(tmp_path / "extractor.keras"),
            "--grid", "1,2", "--examples-per-shard", "2")
    source = feature_source_of(str(out))
    assert source["kind"] == "extracted"
    assert source["fingerprint"] == feature_fingerprint(extractor)
    assert source["extractor"] == {
        "extractor": os.path.abspath(tmp_path / "extractor.keras")}
    assert (source["feature_dim"], source["image_size"]) == (
        extractor.feature_dim, 64)
    # The extractor file matches the record; another extractor does not.
    reloaded = keras.saving.load_model(str(tmp_path / "extractor.keras"),
                                       compile=False)
    check_feature_source(reloaded, source, name="extractor.keras")
    with pytest.raises(ValueError, match="does not give the features"):
        check_feature_source(_extractor(5), source, name="other")
    # The record names the file to serve with: the one given.
    with open(out / "regions" / "extraction.json") as f:
        assert json.load(f)["extractor_file"] == os.path.abspath(
            tmp_path / "extractor.keras")
    assert not os.path.exists(out / "regions" / "extractor.keras")

    # An extractor built by the recipe (here from a saved image classifier)
    # is saved next to the features, and that file passes the check.
    import keras_hub

    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=_tiny_resnet(16), num_classes=3)
    classifier.save(str(tmp_path / "classifier.keras"))
    built = tmp_path / "built"
    extract(built, "--classifier", str(tmp_path / "classifier.keras"),
            "--image-size", "64", "--grid", "1", "--examples-per-shard", "4")
    saved = built / "regions" / "extractor.keras"
    with open(built / "regions" / "extraction.json") as f:
        assert json.load(f)["extractor_file"] == str(saved)
    served = keras.saving.load_model(str(saved), compile=False)
    built_source = feature_source_of(str(built))
    assert built_source["fingerprint"] == feature_fingerprint(served)
    check_feature_source(served, built_source, name="extractor.keras")


# === The exporter's check ===

def test_fingerprint_follows_the_weights_not_the_object(tmp_path):
    a, b = _extractor(0), _extractor(1)
    path = str(tmp_path / "a.keras")
    a.save(path)
    same = keras.saving.load_model(path, compile=False)
    assert feature_fingerprint(same) == feature_fingerprint(a)
    assert feature_fingerprint(b) != feature_fingerprint(a)
    # The same weights at another input size give other features.
    config = dict(a.get_config(), image_size=96)
    resized = RegionFeatureExtractor.from_config(config)
    resized.image_backbone.set_weights(a.image_backbone.get_weights())
    assert feature_fingerprint(resized) != feature_fingerprint(a)


def _recorded(extractor, **changes):
    return dict({"kind": "extracted",
                 "extractor": {"classifier": "resnet_50_imagenet"},
                 "fingerprint": feature_fingerprint(extractor),
                 "feature_dim": extractor.feature_dim,
                 "image_size": extractor.image_size,
                 "feature_stride": extractor.feature_stride,
                 "roi_align": {"output_size": 7, "sampling_ratio": 2},
                 "boxes": "grid levels 6"}, **changes)


def test_check_accepts_the_recorded_extractor(capsys):
    a = _extractor(0)
    check_feature_source(a, _recorded(a), name="a.keras")
    assert capsys.readouterr().err == ""


def test_check_refuses_another_extractor_naming_both():
    a, b = _extractor(0), _extractor(1)
    with pytest.raises(ValueError) as raised:
        check_feature_source(b, _recorded(a), name="b.keras")
    message = str(raised.value)
    recorded = feature_fingerprint(a).split(":")[1][:12]
    given = feature_fingerprint(b).split(":")[1][:12]
    assert "image extractor b.keras" in message
    assert f"fingerprint sha256:{given}" in message
    assert "classifier resnet_50_imagenet" in message
    assert f"fingerprint sha256:{recorded}" in message
    assert "--allow-other-features" in message


def test_check_refuses_any_extractor_for_synthetic_features():
    source = {"kind": "synthetic", "name": "keras_interbert synthetic shapes",
              "seed": 1, "projection_seed": 3, "feature_dim": 16}
    with pytest.raises(ValueError, match="synthetic data set's 16-d "
                                         "features.*no image extractor"):
        check_feature_source(_extractor(0), source, name="a.keras")


def test_check_warns_once_when_nothing_is_recorded(capsys):
    check_feature_source(_extractor(0), None, name="a.keras")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("warning: the model records no region "
                               "feature source")
    assert "a.keras" in lines[0]


def test_check_without_a_recorded_fingerprint_compares_settings(capsys):
    a = _extractor(0)
    check_feature_source(a, _recorded(a, fingerprint=None), name="a.keras")
    (line,) = capsys.readouterr().err.splitlines()
    assert "records no fingerprint" in line
    with pytest.raises(ValueError, match="image_size 96"):
        check_feature_source(a, _recorded(a, fingerprint=None,
                                          image_size=96), name="a.keras")


def test_check_allowed_mismatch_is_a_warning(capsys):
    a, b = _extractor(0), _extractor(1)
    check_feature_source(b, _recorded(a), name="b.keras", allow_other=True)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: the image extractor b.keras")
    assert line.endswith("exporting anyway (allowed).")


@pytest.mark.tensorflow_only  # SavedModel export
def test_export_reads_the_record_from_the_model(tmp_path, capsys):
    from test_export import tiny_vocabulary

    from keras_interbert.export import ExportOptions
    from keras_interbert.export import export_for_serving
    from keras_interbert.export.__main__ import main

    vocabulary = tiny_vocabulary()
    a, b = _extractor(0), _extractor(1)
    assert a.feature_dim == TINY_BACKBONE["image_feature_dim"]
    source = _recorded(a)
    model = InterBERTRetriever(
        InterBERTBackbone(**TINY_BACKBONE),
        preprocessor=InterBERTRetrieverPreprocessor(
            InterBERTTokenizer(vocabulary=vocabulary), sequence_length=12,
            max_regions=4, region_feature_source=source))
    model_path = str(tmp_path / "retriever.keras")
    model.save(model_path)
    b_path = str(tmp_path / "b.keras")
    b.save(b_path)

    # The command line refuses the other extractor before writing anything.
    with pytest.raises(ValueError, match="image extractor .*b.keras"):
        main([model_path, "--name", "pixels", "--output-dir",
              str(tmp_path / "out"), "--image-extractor", b_path,
              "--no-warmup"])
    assert not os.path.exists(tmp_path / "out" / "pixels" / "1")

    # The extractor that made the features is taken; the export records it.
    metadata = export_for_serving(
        model_path, str(tmp_path / "out" / "pixels" / "1"),
        ExportOptions(warmup=False), image_extractor=a, grid_levels=(1, 2))
    assert capsys.readouterr().err == ""
    assert "score_image" in metadata["signature_names"]
    assert metadata["region_feature_source"] == source
    assert metadata["image_extractor"]["fingerprint"] == source["fingerprint"]
