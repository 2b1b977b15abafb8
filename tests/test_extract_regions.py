import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import region_dataset
from keras_interbert.vision import RegionFeatureExtractor
from keras_interbert.vision import extract_regions
from keras_interbert.vision import resnet_backbone
from keras_interbert.vision.image_decoding import decode_image

skimage_data = pytest.importorskip("skimage.data")

RECIPE = os.path.join(REPO_ROOT, "recipes", "extract_regions.py")
# Photographs shipped inside scikit-image's wheel (no download needed).
PHOTOS = {"astronaut": ("astronaut.png", "train"),
          "coffee": ("coffee.png", "train"),
          "chelsea": ("chelsea.png", "val"),
          "rocket": ("rocket.jpg", "val")}


def load_recipe():
    spec = importlib.util.spec_from_file_location("extract_regions", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def photo_folder(tmp_path):
    """Real photographs, their docstring descriptions as captions, one
    corrupt file and one caption whose image does not exist."""
    images = tmp_path / "images"
    images.mkdir()
    source = os.path.dirname(skimage_data.__file__)
    captions = []
    for image_id, (name, split) in PHOTOS.items():
        shutil.copy(os.path.join(source, name), images / name)
        doc = getattr(skimage_data, image_id).__doc__.strip().splitlines()[0]
        captions.append({"image_id": image_id, "caption": doc, "split": split})
    (images / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    captions += [{"image_id": "damaged", "caption": "a damaged file",
                  "split": "train"},
                 {"image_id": "absent", "caption": "no such file"}]
    with open(tmp_path / "captions.jsonl", "w") as f:
        for c in captions:
            f.write(json.dumps(c) + "\n")
    extractor = RegionFeatureExtractor(
        resnet_backbone(block_type="basic_block",
                        stackwise_num_filters=[64, 16],
                        stackwise_num_blocks=[1, 1],
                        stackwise_num_strides=[1, 2]),
        image_size=96, num_classes=7)
    extractor.save(str(tmp_path / "extractor.keras"))
    return tmp_path, extractor


def recipe_args(folder, out):
    return ["--images", str(folder / "images"),
            "--captions", str(folder / "captions.jsonl"), "--out", str(out),
            "--extractor", str(folder / "extractor.keras"), "--grid", "1,2",
            "--examples-per-shard", "1", "--batch-size", "2", "--no-progress"]


def test_recipe_writes_shards_reports_bad_images_and_resumes(photo_folder):
    folder, extractor = photo_folder
    out = folder / "out"
    recipe = load_recipe()
    original = recipe.extract_chunk
    calls = []

    def dying_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(args[2:4])
        return original(*args, **kwargs)

    recipe.extract_chunk = dying_after_two
    with pytest.raises(KeyboardInterrupt):
        recipe.main(recipe_args(folder, out))
    assert not os.path.exists(out / "regions" / "manifest.json")
    calls.clear()
    recipe.extract_chunk = lambda *a, **k: calls.append(a[2:4]) or original(
        *a, **k)
    assert recipe.main(recipe_args(folder, out)) == 0
    # The two chunks committed before the kill were not extracted again.
    assert len(calls) == 3, calls

    with open(out / "extraction_report.json") as f:
        report = json.load(f)
    assert report["num_written"] == {"train": 2, "val": 2}
    assert [f["image_id"] for f in report["failed"]] == ["damaged"]
    assert report["missing"] == ["absent"]
    assert (report["feature_dim"], report["num_classes"]) == (16, 7)
    assert not os.path.exists(out / ".partial")
    captions = read_captions(out / "captions_en.jsonl")
    assert sorted(c["image_id"] for c in captions) == sorted(PHOTOS)

    stored = {ex["image_id"].decode(): ex for split in ("train", "val")
              for ex in region_dataset(str(out / "regions"), split=split)
              .as_numpy_iterator()}
    assert sorted(stored) == sorted(PHOTOS)
    chelsea = stored["chelsea"]
    assert (chelsea["image_h"], chelsea["image_w"]) == (300, 451)
    np.testing.assert_allclose(chelsea["boxes"][0], [0, 0, 451, 300],
                               atol=1e-3)
    # The shards hold what the Python pipeline computes for the decoded file
    # (stored as float16).
    image = decode_image(open(folder / "images" / "chelsea.png", "rb").read())
    (direct,) = extract_regions(extractor, [image.numpy()],
                                grid_levels=(1, 2))
    np.testing.assert_allclose(chelsea["features"], direct["features"],
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(chelsea["class_probs"], direct["class_probs"],
                               rtol=2e-3, atol=1e-3)
    with open(out / "regions" / "extraction.json") as f:
        provenance = json.load(f)
    assert "class head" in provenance["class_probs"]


@pytest.mark.tensorflow_only  # pretrain.py's own tests cover the backends
def test_pretraining_runs_on_extracted_photographs(photo_folder):
    folder, _ = photo_folder
    out = folder / "out"
    assert load_recipe().main(recipe_args(folder, out)) == 0
    # The recipe in this process (its command line is checked by its own
    # tests): what matters here is the data the extractor wrote.
    sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))
    try:
        import pretrain
    finally:
        sys.path.pop(0)
    run = folder / "pretrain"
    pretrain.main(
        ["--out", str(run), "--data", str(out), "--steps", "2",
         "--steps-per-epoch", "2", "--batch-size", "2", "--max-regions", "6",
         "--validation-steps", "1", "--verbose", "0", "--run-eagerly"])
    with open(run / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["steps"] == 2
    assert np.isfinite(metrics["final"]["mrm_loss"])
    assert metrics["final"]["mrm_loss"] > 0
    assert os.path.getsize(run / "pretrained.keras") > 0


@pytest.mark.parametrize("flag", ["--classifier", "--detector"])
def test_an_unreachable_preset_names_the_flags_that_take_local_files(flag):
    """Offline, a preset name cannot be downloaded: the recipe says so and
    names the flags that take a local file, instead of a network traceback."""
    recipe = load_recipe()

    class Unreachable:
        @classmethod
        def from_preset(cls, name):
            raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    with pytest.raises(SystemExit) as raised:
        recipe._from_preset(Unreachable, "resnet_50_imagenet", flag,
                            f"a saved file ({flag} FILE.keras)")
    message = str(raised.value)
    assert f"{flag} resnet_50_imagenet" in message
    assert "ConnectionError" in message and "api.kaggle.com" in message
    assert f"{flag} FILE.keras" in message
