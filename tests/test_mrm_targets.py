"""Masked-region targets from what users have (issue 15): the stored
class_probs, else one-hot (or confidence-weighted) distributions from the
detector's class ids, else none; the pretraining recipe's messages."""
import json
import os
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT

from helpers.public_formats import detector_images
from helpers.public_formats import random_caption
from helpers.public_formats import write_lxmert_tsv
from helpers.public_formats import write_vilbert_npy

from keras_interbert.data import convert
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.pretraining_pipeline import PretrainingDataConfig
from keras_interbert.data.pretraining_pipeline import numpy_batches
from keras_interbert.data.pretraining_pipeline import pretraining_dataset
from keras_interbert.data.pretraining_pipeline import pretraining_examples
from keras_interbert.data.pretraining_pipeline import resolve_mrm_targets
from keras_interbert.data.region_features import write_captions
from keras_interbert.preprocessing import InterBERTTokenizer

# tf.data pipelines and recipe processes that choose their own backend.
pytestmark = pytest.mark.once

C = 12  # detector classes
D = 8
R = 6   # region slots after the global one
IDS = [f"im{i}" for i in range(16)]


@pytest.fixture(scope="module")
def tokenizer():
    return InterBERTTokenizer.from_preset("interbert_base_en")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Region folders of one image set: LXMERT ids with and without a
    stated class count, BUTD without ids, vilbert ids without confidences."""
    root = tmp_path_factory.mktemp("mrm_targets")
    images = detector_images(IDS, feature_dim=D, num_classes=C, min_boxes=4,
                             max_boxes=9)
    rng = np.random.default_rng(0)
    captions = []
    for split, ids in (("train", IDS[:12]), ("val", IDS[12:])):
        captions += [{"image_id": i, "caption": random_caption(rng),
                      "split": split} for i in ids]
    write_captions(str(root / "captions.jsonl"), captions)
    write_lxmert_tsv(root / "all.tsv", images)
    with open(root / "butd.tsv", "w") as f:  # image_id, w, h, n, boxes, feats
        for line in open(root / "all.tsv"):
            cells = line.rstrip("\n").split("\t")
            f.write("\t".join([cells[0], cells[2], cells[1]] + cells[7:])
                    + "\n")
    for image in images:
        write_vilbert_npy(root / f"{image['image_id']}.npy", image)
    folders = {}
    for name, count in (("counted", C), ("uncounted", None)):
        convert.convert_tsv([str(root / "all.tsv")], str(root / name),
                            num_object_classes=count,
                            splits_from=str(root / "captions.jsonl"),
                            progress=False)
        folders[name] = str(root / name)
    convert.convert_tsv([str(root / "butd.tsv")], str(root / "plain"),
                        fields="butd", splits_from=str(root / "captions.jsonl"),
                        progress=False)
    folders["plain"] = str(root / "plain")
    convert.convert_npy([str(root / "*.npy")], str(root / "npy"),
                        num_object_classes=C,
                        splits_from=str(root / "captions.jsonl"),
                        progress=False)
    folders["npy"] = str(root / "npy")
    folders["captions"] = str(root / "captions.jsonl")
    folders["images"] = {image["image_id"]: image for image in images}
    folders["root"] = str(root)
    return folders


def config(**overrides):
    return PretrainingDataConfig(**dict(dict(
        batch_size=4, max_regions=R, shuffle_buffer=0, mrm_probability=0.5),
        **overrides))


def test_resolution_says_what_is_there_and_what_is_missing(data):
    found = resolve_mrm_targets(data["counted"], "train")
    assert (found.kind, found.num_classes) == ("one_hot", C)
    assert found.description == (
        f"one-hot over {C} detector classes from object_ids")
    found = resolve_mrm_targets(data["counted"], "train", "confidence")
    assert (found.kind, found.num_classes) == ("confidence", C)
    # Class ids without a count: say so, and which flag states it...
    with pytest.raises(RegionDataError) as info:
        resolve_mrm_targets(data["uncounted"], "train")
    assert str(info.value) == (
        f"{data['uncounted']}: the files hold detector class ids (object_ids)"
        " but no class count: state it with --num-object-classes (1600 for "
        "Visual Genome bottom-up-attention features) when converting or "
        "pretraining.")
    # ...unless the run needs no targets, or the count is given.
    assert resolve_mrm_targets(data["uncounted"], "train",
                               required=False).kind == "none"
    assert resolve_mrm_targets(data["uncounted"], "train",
                               num_object_classes=C).num_classes == C
    with pytest.raises(RegionDataError, match="num_object_classes 40 was "
                       "given, but the region manifest states 12"):
        resolve_mrm_targets(data["counted"], "train", num_object_classes=40)
    # Nothing to build targets from: off, saying why.
    found = resolve_mrm_targets(data["plain"], "train")
    assert found.kind == "none" and not found.enabled
    assert found.description == (
        "the region files hold neither class_probs nor detector class ids "
        f"(object_ids) ({data['plain']})")
    with pytest.raises(RegionDataError) as info:
        resolve_mrm_targets(data["counted"], "train", "class_probs")
    assert "asked for, but the region files hold detector class ids " \
        "(object_ids) but no class_probs" in str(info.value)
    with pytest.raises(RegionDataError, match="need the detector's "
                       "confidences"):
        resolve_mrm_targets(data["npy"], "train", "confidence")
    with pytest.raises(RegionDataError, match="hold neither class_probs"):
        resolve_mrm_targets(data["plain"], "train", "one_hot")


@pytest.mark.parametrize("kind", ["one_hot", "confidence"])
def test_targets_from_class_ids_value_by_value(data, tokenizer, kind):
    examples, index = pretraining_examples(
        data["counted"], data["captions"], tokenizer,
        config(mrm_targets=kind), split="train")
    seen = 0
    for example in examples.as_numpy_iterator():
        image = data["images"][index.image_ids[example["image_index"]]]
        kept = min(R, len(image["boxes"]))
        expected = np.zeros((R + 1, C), np.float32)
        rows = np.arange(kept)
        expected[rows + 1, image["objects_id"][:kept]] = (
            image["objects_conf"][:kept] if kind == "confidence" else 1.0)
        np.testing.assert_allclose(example["mrm_targets"], expected,
                                   atol=1e-3)  # float16, as stored probs
        seen += 1
    assert seen == 12


def test_batches_gather_the_targets_at_the_masked_slots(data, tokenizer):
    cfg = config(mrm_targets="one_hot")
    examples, _ = pretraining_examples(data["counted"], data["captions"],
                                       tokenizer, cfg, split="train")
    examples = list(examples.as_numpy_iterator())
    batches = numpy_batches(pretraining_dataset(
        data["counted"], data["captions"], tokenizer, cfg, split="train"), 3)
    targets = 0
    for b, (x, y) in enumerate(batches):
        for row in range(4):
            example = examples[4 * b + row]
            for k, slot in enumerate(x["mrm_positions"][row]):
                if y["mrm_weights"][row, k] > 0:
                    assert example["mrm_weights"][slot] == 1.0
                    np.testing.assert_array_equal(
                        y["mrm_targets"][row, k], example["mrm_targets"][slot])
                    targets += 1
            assert y["mrm_weights"][row].sum() == example["mrm_weights"].sum()
    assert targets > 0


def test_without_targets_regions_are_masked_all_the_same(data, tokenizer):
    with_ids = numpy_batches(pretraining_dataset(
        data["counted"], data["captions"], tokenizer,
        config(mrm_targets="one_hot"), split="train"), 2)
    for folder, kind in ((data["counted"], "none"), (data["plain"], "auto")):
        without = numpy_batches(pretraining_dataset(
            folder, data["captions"], tokenizer, config(mrm_targets=kind),
            split="train"), 2)
        for (x1, y1), (x2, y2) in zip(with_ids, without):
            assert "mrm_positions" not in x2
            assert sorted(y2) == ["itm_labels", "msm_labels", "msm_weights"]
            for key in ("token_ids", "region_features", "region_mask"):
                np.testing.assert_array_equal(x1[key], x2[key])


def test_ids_beyond_the_stated_count_fail_in_the_graph(data, tokenizer):
    ds = pretraining_dataset(data["uncounted"], data["captions"], tokenizer,
                             config(num_object_classes=3), split="train")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"an object id lies outside \[0, "
                             r"num_object_classes=3\)"):
        numpy_batches(ds, 3)


# ---------------------------------------------------------------- recipe --

def pretrain(capsys, data_dir, out, *extra):
    """recipes/pretrain.py as its command line runs it (through
    `utils.cli.run_main`: the exit status, refused input as one line on
    stderr), in this process: a fresh interpreter for each of the four runs
    cost more than the runs. tests/test_cli_errors.py checks that route from
    a real process."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))
    try:
        import pretrain as recipe
    finally:
        sys.path.pop(0)
    from keras_interbert.utils.cli import run_main

    argv = ["--out", out, "--data", data_dir,
            "--steps", "2", "--steps-per-epoch", "2", "--batch-size", "4",
            "--max-regions", "4", "--validation-steps", "1", "--verbose", "0",
            "--jit-compile", "false", *extra]
    capsys.readouterr()
    returncode = run_main(lambda a: 0 if recipe.main(a) else 1, argv,
                          prog="pretrain.py")
    printed = capsys.readouterr()
    return types.SimpleNamespace(returncode=returncode, stdout=printed.out,
                                 stderr=printed.err)


def data_dir(data, regions, name):
    folder = os.path.join(data["root"], name)
    os.makedirs(folder, exist_ok=True)
    os.symlink(data[regions], os.path.join(folder, "regions"))
    os.symlink(data["captions"], os.path.join(folder, "captions_en.jsonl"))
    return folder


def test_recipe_messages(data, tmp_path, capsys):
    # No class targets of any kind: one line, and the run trains MSM + ITM.
    plain = data_dir(data, "plain", "plain_data")
    result = pretrain(capsys, plain, str(tmp_path / "off"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "Masked region modelling is off: the region files hold neither "
        "class_probs nor detector class ids (object_ids) "
        f"({os.path.join(plain, 'regions')}); pretraining trains MSM and ITM "
        "only.") in result.stdout.splitlines()
    with open(tmp_path / "off" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["mrm_targets"] == "off"
    assert "mrm_loss" not in metrics["final"]

    # Class ids without a count: an error that names the flag...
    uncounted = data_dir(data, "uncounted", "uncounted_data")
    result = pretrain(capsys, uncounted, str(tmp_path / "uncounted"))
    assert result.returncode == 2  # refused input (utils/cli.py)
    assert (f"pretrain.py: error: {os.path.join(uncounted, 'regions')}: the "
            "files hold detector class ids (object_ids) but no class count: "
            "state it with --num-object-classes") in result.stderr
    # ...but --mrm-weight 0 never needs class targets.
    result = pretrain(capsys, uncounted, str(tmp_path / "no_mrm"),
                      "--mrm-weight", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Masked region modelling" not in result.stdout

    # A folder without a manifest: said as it is.
    empty = tmp_path / "empty"
    (empty / "regions").mkdir(parents=True)
    result = pretrain(capsys, str(empty), str(tmp_path / "none"))
    assert result.returncode == 2
    assert f"pretrain.py: error: {empty / 'regions'}: no manifest.json: " \
        "--data must hold a regions/ folder" in result.stderr
    assert "Traceback" not in result.stderr
