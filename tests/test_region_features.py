"""Canonical region-feature files: writer, reader, model inputs, captions."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import RegionFeatureWriter
from keras_interbert.data.region_features import check_captions_against_images
from keras_interbert.data.region_features import parse_region_batch
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import read_manifest
from keras_interbert.data.region_features import recompute_global_region
from keras_interbert.data.region_features import region_dataset
from keras_interbert.data.region_features import region_dims
from keras_interbert.data.region_features import region_files
from keras_interbert.data.region_features import region_image_ids
from keras_interbert.data.region_features import scan_region_files
from keras_interbert.data.region_features import to_backbone_regions
from keras_interbert.data.region_features import write_captions

# tf.data, numpy and files only: the same under every KERAS_BACKEND
# (conftest.py).
pytestmark = pytest.mark.once

D = 8
C = 5
H, W = 100, 200


def make_image(rng, n, d=D, c=C):
    x1 = rng.uniform(0, W / 2, n)
    y1 = rng.uniform(0, H / 2, n)
    boxes = np.stack(
        [x1, y1, x1 + rng.uniform(1, W / 2, n), y1 + rng.uniform(1, H / 2, n)],
        axis=1,
    ).astype(np.float32)
    features = rng.normal(size=(n, d)).astype(np.float32) * 3
    probs = rng.dirichlet(np.ones(c), n).astype(np.float32)
    return boxes, features, probs


def write_images(directory, images, split="train", **kwargs):
    with RegionFeatureWriter(directory, split=split, **kwargs) as writer:
        for image_id, (boxes, feats, probs) in images.items():
            writer.write(image_id, H, W, boxes, feats, probs)
    return writer.close()


def read_all(ds):
    return {ex["image_id"].decode(): ex for ex in ds.as_numpy_iterator()}


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return {f"img{i}": make_image(rng, n) for i, n in enumerate([3, 1, 6, 4, 2])}


def test_round_trip_values_shards_and_manifest(tmp_path, images):
    paths = write_images(tmp_path, images, examples_per_shard=2)
    assert [os.path.basename(p) for p in paths] == [
        "train-00000.tfrecord", "train-00001.tfrecord", "train-00002.tfrecord"]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(p) for p in paths] + ["manifest.json"])
    manifest = read_manifest(str(tmp_path))
    assert manifest["feature_dim"] == D
    assert manifest["num_classes"] == C
    split = manifest["splits"]["train"]
    assert split["num_examples"] == 5
    assert split["num_boxes"] == 16
    assert [s["num_examples"] for s in split["shards"]] == [2, 2, 1]

    got = read_all(region_dataset(str(tmp_path)))
    assert list(got) == list(images)  # file order is write order
    for image_id, (boxes, feats, probs) in images.items():
        ex = got[image_id]
        assert ex["image_h"] == H and ex["image_w"] == W
        assert ex["num_boxes"] == len(boxes)
        assert ex["features"].dtype == np.float32
        np.testing.assert_array_equal(ex["boxes"], boxes)
        np.testing.assert_allclose(ex["features"], feats, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(
            ex["features"], feats.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(ex["class_probs"], probs, rtol=1e-3,
                                   atol=1e-4)


def test_dataset_from_folder_glob_and_list_agree(tmp_path, images):
    paths = write_images(tmp_path, images, examples_per_shard=2)
    by_dir = list(read_all(region_dataset(str(tmp_path))))
    by_glob = list(read_all(region_dataset(str(tmp_path / "train-*.tfrecord"))))
    by_list = list(read_all(region_dataset(paths)))
    assert by_dir == by_glob == by_list == list(images)
    assert region_image_ids(str(tmp_path)) == list(images)


def test_folder_with_two_splits_needs_split(tmp_path, images):
    write_images(tmp_path, images, split="train")
    write_images(tmp_path, {"v1": images["img0"]}, split="val")
    with pytest.raises(ValueError, match="split="):
        region_dataset(str(tmp_path))
    assert list(read_all(region_dataset(str(tmp_path), split="val"))) == ["v1"]
    assert set(read_manifest(str(tmp_path))["splits"]) == {"train", "val"}


def test_reader_feature_dim_must_match_manifest(tmp_path, images):
    write_images(tmp_path, images)
    with pytest.raises(RegionDataError, match="width 8") as info:
        region_dataset(str(tmp_path), feature_dim=16)
    assert "manifest.json" in str(info.value)
    assert info.value.kind == "feature_dim"


def test_reader_without_manifest_needs_feature_dim(tmp_path, images):
    paths = write_images(tmp_path, images)
    os.remove(tmp_path / "manifest.json")
    with pytest.raises(RegionDataError, match="feature_dim"):
        region_dataset(paths)
    got = read_all(region_dataset(paths, feature_dim=D, num_classes=C))
    assert set(got) == set(images)
    # Without num_classes the examples simply carry no class_probs.
    ex = next(iter(region_dataset(paths, feature_dim=D)))
    assert "class_probs" not in ex


def test_missing_files_are_named(tmp_path):
    with pytest.raises(RegionDataError, match="no files match"):
        region_dataset(str(tmp_path / "nothing-*.tfrecord"), feature_dim=4)
    with pytest.raises(RegionDataError, match="no such file"):
        region_dataset(str(tmp_path / "missing.tfrecord"), feature_dim=4)


# ------------------------------------------------------------- to_backbone --

def single_example(boxes, feats, probs=None, h=H, w=W, image_id="x"):
    ex = {
        "image_id": tf.constant(image_id),
        "image_h": tf.constant(h, tf.int32),
        "image_w": tf.constant(w, tf.int32),
        "num_boxes": tf.constant(len(boxes), tf.int32),
        "boxes": tf.constant(np.asarray(boxes, np.float32).reshape(-1, 4)),
        "features": tf.constant(np.asarray(feats, np.float32)),
    }
    if probs is not None:
        ex["class_probs"] = tf.constant(np.asarray(probs, np.float32))
    return ex


def test_locations_global_slot_and_padding_by_hand():
    boxes = [[10, 20, 50, 80], [0, 0, 200, 100]]
    feats = np.array([[1.0, 2.0, 3.0], [3.0, 6.0, -3.0]], np.float32)
    probs = np.array([[0.5, 0.5], [0.25, 0.75]], np.float32)
    out = to_backbone_regions(single_example(boxes, feats, probs),
                              max_regions=4)
    out = {k: v.numpy() for k, v in out.items()}
    assert sorted(out) == ["region_boxes", "region_class_probs",
                           "region_features", "region_locations",
                           "region_mask"]
    # x1/W, y1/H, x2/W, y2/H, (x2-x1)(y2-y1)/(W*H), W=200, H=100.
    expected_locs = np.array([
        [0, 0, 1, 1, 1],
        [0.05, 0.2, 0.25, 0.8, 40 * 60 / 20000],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ], np.float32)
    np.testing.assert_allclose(out["region_locations"], expected_locs,
                               atol=1e-6)
    np.testing.assert_allclose(out["region_boxes"], expected_locs[:, :4],
                               atol=1e-6)
    np.testing.assert_allclose(
        out["region_features"],
        [[2.0, 4.0, 0.0], feats[0], feats[1], [0, 0, 0], [0, 0, 0]])
    assert out["region_mask"].dtype == np.int32
    np.testing.assert_array_equal(out["region_mask"], [1, 1, 1, 0, 0])
    np.testing.assert_allclose(
        out["region_class_probs"],
        [[0, 0], [0.5, 0.5], [0.25, 0.75], [0, 0], [0, 0]])


def test_truncation_keeps_first_regions_and_global_choice():
    feats = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    boxes = [[i, i, i + 10, i + 10] for i in range(5)]
    ex = single_example(boxes, feats)
    out = to_backbone_regions(ex, max_regions=3)
    np.testing.assert_array_equal(out["region_mask"], [1, 1, 1, 1])
    np.testing.assert_allclose(out["region_features"][1:], feats[:3])
    np.testing.assert_allclose(out["region_locations"][1:, 0],
                               [0, 1 / W, 2 / W])
    # Finetuning rule: mean of every stored region, before truncation.
    np.testing.assert_allclose(out["region_features"][0], [4.0, 5.0])
    kept = to_backbone_regions(ex, max_regions=3,
                               global_feature="kept_regions")
    np.testing.assert_allclose(kept["region_features"][0], [2.0, 3.0])


def test_masked_features_passed_in_drive_global_slot():
    feats = np.array([[2.0, 2.0], [4.0, 8.0], [6.0, 2.0]], np.float32)
    boxes = [[0, 0, 10, 10]] * 3
    masked = feats.copy()
    masked[1] = 0.0
    out = to_backbone_regions(single_example(boxes, feats), max_regions=4,
                              features=tf.constant(masked))
    # Zeroed regions count in the denominator (docs/architecture.md §1.2, pretraining).
    np.testing.assert_allclose(out["region_features"][0], [8 / 3, 4 / 3])
    np.testing.assert_allclose(out["region_features"][2], [0.0, 0.0])


def test_recompute_global_region_batched():
    feats = np.zeros((2, 4, 2), np.float32)
    feats[0, 1:3] = [[1.0, 3.0], [3.0, 5.0]]
    feats[1, 1:4] = [[3.0, 0.0], [0.0, 0.0], [0.0, 3.0]]
    feats[:, 0] = 99.0
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32)
    out = recompute_global_region(feats, mask).numpy()
    np.testing.assert_allclose(out[0, 0], [2.0, 4.0])
    np.testing.assert_allclose(out[1, 0], [1.0, 1.0])
    np.testing.assert_array_equal(out[:, 1:], feats[:, 1:])


def test_map_and_batch_from_files(tmp_path, images):
    write_images(tmp_path, images)
    ds = region_dataset(str(tmp_path)).map(
        lambda ex: to_backbone_regions(ex, max_regions=4)).batch(5)
    batch = next(iter(ds))
    assert batch["region_features"].shape == (5, 5, D)
    assert batch["region_locations"].shape == (5, 5, 5)
    assert batch["region_class_probs"].shape == (5, 5, C)
    np.testing.assert_array_equal(
        batch["region_mask"].numpy().sum(axis=1),
        [1 + min(len(v[0]), 4) for v in images.values()])
    feats = images["img2"][1].astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(batch["region_features"][2, 0],
                               feats.mean(axis=0), rtol=1e-5, atol=1e-5)


def test_zero_regions_raise_or_documented_skip():
    empty = single_example(np.zeros((0, 4)), np.zeros((0, 3)),
                           probs=np.zeros((0, 2)), image_id="empty1")
    with pytest.raises(RegionDataError, match="zero regions") as info:
        to_backbone_regions(empty)
    assert "empty1" in str(info.value)

    ds = tf.data.Dataset.from_tensors(empty).map(to_backbone_regions)
    with pytest.raises(tf.errors.InvalidArgumentError, match="zero regions"):
        next(iter(ds))

    out = to_backbone_regions(empty, max_regions=3, policy="skip")
    np.testing.assert_array_equal(out["region_mask"], [1, 0, 0, 0])
    np.testing.assert_array_equal(out["region_features"], np.zeros((4, 3)))
    np.testing.assert_array_equal(out["region_class_probs"], np.zeros((4, 2)))


# ----------------------------------------------------------------- writer --

GOOD_BOXES = np.array([[0, 0, 10, 10], [5, 5, 20, 30]], np.float32)
GOOD_FEATS = np.ones((2, D), np.float32)

BAD_RECORDS = {
    "nan_features": (dict(features=np.where(np.eye(2, D) > 0, np.nan, 1.0)),
                     "non_finite", "NaN"),
    "inf_features": (dict(features=np.full((2, D), np.inf)), "non_finite",
                     "infinite"),
    "float16_overflow": (dict(features=np.full((2, D), 1e6)), "non_finite",
                         "float16"),
    "x2_before_x1": (dict(boxes=[[10, 0, 5, 10], [0, 0, 1, 1]]), "box_order",
                     "x2 >= x1"),
    "y2_before_y1": (dict(boxes=[[0, 0, 1, 1], [0, 10, 5, 2]]), "box_order",
                     "row 1"),
    "box_outside": (dict(boxes=[[0, 0, 10, 10], [0, 0, W + 5, 10]]),
                    "box_outside_image", "outside"),
    "negative_box": (dict(boxes=[[-3, 0, 10, 10], [0, 0, 1, 1]]),
                     "box_outside_image", "outside"),
    "nan_box": (dict(boxes=[[0, 0, np.nan, 10], [0, 0, 1, 1]]), "non_finite",
                "boxes"),
    "zero_regions": (dict(boxes=np.zeros((0, 4)), features=np.zeros((0, D))),
                     "no_regions", "zero regions"),
    "row_mismatch": (dict(features=np.ones((3, D))), "shape_mismatch",
                     "num_boxes=2"),
    "feature_width": (dict(features=np.ones((2, D + 1))), "feature_dim",
                      "feature width 9"),
    "empty_image_id": (dict(image_id=" "), "bad_image_id", "image_id"),
    "zero_height": (dict(image_h=0), "bad_image_size", "image_h"),
    "fractional_width": (dict(image_w=10.5), "bad_image_size", "image_w"),
    "negative_probs": (dict(class_probs=-np.ones((2, C))), "bad_class_probs",
                       ">= 0"),
    "probs_width": (dict(class_probs=np.ones((2, C + 2)) / C), "num_classes",
                    "num_classes 5"),
}


def write_kwargs(**overrides):
    kwargs = dict(image_id="bad", image_h=H, image_w=W, boxes=GOOD_BOXES,
                  features=GOOD_FEATS, class_probs=np.ones((2, C)) / C)
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_writer_rejects_bad_record(tmp_path, case):
    overrides, kind, text = BAD_RECORDS[case]
    with pytest.raises(RegionDataError, match=text) as info:
        with RegionFeatureWriter(tmp_path, feature_dim=D,
                                 num_classes=C) as writer:
            writer.write(**write_kwargs(image_id="good"))
            writer.write(**write_kwargs(**overrides))
    assert info.value.kind == kind
    if case != "empty_image_id":
        assert "'bad'" in str(info.value)
    # The failed run leaves nothing behind: no shards, no manifest.
    assert os.listdir(tmp_path) == []


def test_writer_skip_policy_reports_and_keeps_good(tmp_path):
    report = ErrorReport()
    with RegionFeatureWriter(tmp_path, feature_dim=D, num_classes=C,
                             policy="skip", report=report) as writer:
        assert writer.write(**write_kwargs(image_id="first"))
        for case in sorted(BAD_RECORDS):
            overrides = dict(BAD_RECORDS[case][0])
            overrides.setdefault("image_id", case)
            assert writer.write(**write_kwargs(**overrides)) is False
        assert writer.write(**write_kwargs(image_id="last"))
        assert not writer.write(**write_kwargs(image_id="last"))  # duplicate
    writer.close()
    data = report.to_dict()
    assert data["num_skipped"] == len(BAD_RECORDS) + 1
    assert data["skipped_by_kind"]["duplicate_image_id"] == 1
    assert data["skipped_by_kind"]["box_order"] == 2
    assert {s["record"] for s in data["skipped"]} >= {"image 'nan_box'",
                                                        "image 'last'"}
    assert region_image_ids(str(tmp_path)) == ["first", "last"]
    assert read_manifest(str(tmp_path))["splits"]["train"]["num_skipped"] == (
        len(BAD_RECORDS) + 1)
    assert scan_region_files(str(tmp_path)).num_skipped == 0


def test_skip_without_report_warns(tmp_path):
    with pytest.warns(UserWarning, match="dropped 1 images"):
        with RegionFeatureWriter(tmp_path, policy="skip") as writer:
            writer.write(**write_kwargs(image_id="a"))
            writer.write(**write_kwargs(image_h=0))


def test_writer_class_probs_all_or_none(tmp_path):
    with pytest.raises(RegionDataError, match="stores none"):
        with RegionFeatureWriter(tmp_path) as writer:
            writer.write(**write_kwargs(image_id="a", class_probs=None))
            writer.write(**write_kwargs(image_id="b"))
    with pytest.raises(RegionDataError, match="class_probs are missing"):
        with RegionFeatureWriter(tmp_path, num_classes=C) as writer:
            writer.write(**write_kwargs(image_id="a", class_probs=None))


def test_existing_split_needs_overwrite(tmp_path, images):
    write_images(tmp_path, images, examples_per_shard=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        RegionFeatureWriter(tmp_path)
    # A failed overwrite leaves the old split whole.
    with pytest.raises(RegionDataError):
        with RegionFeatureWriter(tmp_path, overwrite=True,
                                 examples_per_shard=1) as writer:
            writer.write("new", H, W, *images["img0"])
            writer.write("new2", H, W, *images["img1"])
            writer.write("bad", 0, W, *images["img1"])
    assert region_image_ids(str(tmp_path)) == list(images)
    assert not glob.glob(str(tmp_path / "*.tmp"))
    write_images(tmp_path, {"only": images["img0"]}, overwrite=True)
    assert sorted(glob.glob(str(tmp_path / "train-*"))) == [
        str(tmp_path / "train-00000.tfrecord")]
    assert region_image_ids(str(tmp_path)) == ["only"]


def test_new_split_must_match_manifest_width(tmp_path, images):
    write_images(tmp_path, images)
    with pytest.raises(RegionDataError, match="feature_dim 16"):
        RegionFeatureWriter(tmp_path, split="val", feature_dim=16)
    with pytest.raises(RegionDataError, match="feature width 4"):
        with RegionFeatureWriter(tmp_path, split="val") as writer:
            writer.write(**write_kwargs(features=np.ones((2, 4))))
    assert set(read_manifest(str(tmp_path))["splits"]) == {"train"}


def test_writers_open_together_share_the_manifest(tmp_path, images):
    train = RegionFeatureWriter(tmp_path, split="train")
    val = RegionFeatureWriter(tmp_path, split="val")
    empty = RegionFeatureWriter(tmp_path, split="test")
    for image_id, image in images.items():
        train.write(image_id, H, W, *image)
    val.write("v", H, W, *images["img0"])
    train.close()
    empty.close()  # wrote nothing, knows no widths: must not erase them
    val.close()
    manifest = read_manifest(str(tmp_path))
    assert (manifest["feature_dim"], manifest["num_classes"]) == (D, C)
    assert {k: v["num_examples"] for k, v in manifest["splits"].items()} == {
        "train": 5, "val": 1, "test": 0}
    assert list(read_all(region_dataset(str(tmp_path), split="val"))) == ["v"]

    other = RegionFeatureWriter(tmp_path / "b", split="train")
    wide = RegionFeatureWriter(tmp_path / "b", split="val")
    other.write("a", H, W, *images["img0"])
    boxes, feats, probs = images["img1"]
    wide.write("b", H, W, boxes, np.ones((len(boxes), 2 * D)), probs)
    other.close()
    with pytest.raises(RegionDataError, match="nothing was written"):
        wide.close()
    assert sorted(os.listdir(tmp_path / "b")) == [
        "manifest.json", "train-00000.tfrecord"]


def test_rewriting_the_only_split_may_change_width(tmp_path, images):
    write_images(tmp_path, images)
    boxes, _, _ = images["img0"]
    with RegionFeatureWriter(tmp_path, overwrite=True) as writer:
        writer.write("w", H, W, boxes, np.ones((len(boxes), 3)))
    manifest = read_manifest(str(tmp_path))
    assert (manifest["feature_dim"], manifest["num_classes"]) == (3, None)
    assert next(iter(region_dataset(str(tmp_path))))["features"].shape == (
        len(boxes), 3)


# ---------------------------------------------- damaged canonical records --

def raw_example(image_id, feats_bytes, n=1, boxes=(0.0, 0.0, 5.0, 5.0)):
    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image_id": b(image_id.encode()), "image_h": i(H), "image_w": i(W),
        "num_boxes": i(n),
        "boxes": tf.train.Feature(float_list=tf.train.FloatList(
            value=list(boxes))),
        "features": b(feats_bytes),
    })).SerializeToString()


def test_reader_catches_damaged_records(tmp_path):
    path = str(tmp_path / "train-00000.tfrecord")
    good = np.ones(D, "<f2").tobytes()
    with tf.io.TFRecordWriter(path) as w:
        w.write(raw_example("ok1", good))
        w.write(raw_example("short", good[:-2]))
        w.write(raw_example("nan", np.full(D, np.nan, "<f2").tobytes()))
        w.write(raw_example("outside", good, boxes=(0.0, 0.0, W + 1.0, 5.0)))
        w.write(raw_example("none", b"", n=0, boxes=()))
        w.write(raw_example("ok2", good))
    with pytest.raises(tf.errors.InvalidArgumentError, match="short"):
        list(region_dataset(path, feature_dim=D))
    ids = list(read_all(region_dataset(path, feature_dim=D, policy="skip")))
    assert ids == ["ok1", "ok2"]
    report = scan_region_files(path, feature_dim=D).to_dict()
    assert report["num_skipped"] == 4
    assert report["skipped_by_kind"] == {
        "box_outside_image": 1, "feature_dim": 1, "no_regions": 1,
        "non_finite": 1}
    assert report["skipped"][0]["record"] == "record 1 (image 'short')"


def test_batched_parse_matches_the_record_reader(tmp_path, images):
    write_images(tmp_path, images, examples_per_shard=2)
    assert region_dims(str(tmp_path)) == (D, C)
    paths = region_files(str(tmp_path))
    records = list(read_all(region_dataset(str(tmp_path))).values())
    serialized = tf.constant(list(
        tf.data.TFRecordDataset(paths).as_numpy_iterator()))
    full = parse_region_batch(serialized, D, C)
    cut = parse_region_batch(serialized, D, C, max_regions=4,
                             features_dtype=tf.float16,
                             class_probs_dtype=tf.float16)
    assert full["features"].shape == (5, 6, D)  # the batch's largest count
    assert cut["features"].shape == (5, 4, D)
    assert cut["features"].dtype == tf.float16
    for row, ex in enumerate(records):
        n = ex["num_boxes"]
        assert full["image_id"][row].numpy() == ex["image_id"]
        assert full["num_boxes"][row] == n == cut["num_boxes"][row]
        assert (full["image_h"][row], full["image_w"][row]) == (H, W)
        for name in ("boxes", "features", "class_probs"):
            np.testing.assert_array_equal(full[name][row, :n], ex[name])
            np.testing.assert_array_equal(full[name][row, n:], 0.0)
            np.testing.assert_array_equal(
                cut[name][row, :min(n, 4)].numpy().astype(np.float32),
                ex[name][:4])


def test_batched_parse_catches_damaged_records(tmp_path):
    good = np.ones(D, "<f2").tobytes()
    cases = {
        "short": (raw_example("short", good[:-2]), "'features' holds"),
        "nan": (raw_example("nan", np.full(D, np.nan, "<f2").tobytes()),
                "NaN or infinite"),
        "outside": (raw_example("outside", good, boxes=(0.0, 0.0, W + 1.0, 5.0)),
                    "outside the image"),
        "none": (raw_example("none", b"", n=0, boxes=()), "zero regions"),
        "three": (raw_example("three", good, boxes=(0.0, 0.0, 5.0)),
                  "'boxes' holds"),
    }
    ok = raw_example("ok", good)
    for image_id, (bad, problem) in cases.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            parse_region_batch(tf.constant([ok, bad, ok]), D)
        assert problem in str(info.value) and image_id in str(info.value)
    out = parse_region_batch(tf.constant([ok, ok]), D)
    assert out["features"].shape == (2, 1, D)


# --------------------------------------------------------------- captions --

def test_captions_round_trip_utf8(tmp_path):
    path = tmp_path / "captions.jsonl"
    records = [
        {"image_id": "a", "caption": "un café près d'ici", "split": "train"},
        {"image_id": 17, "caption": "一只猫"},
    ]
    assert write_captions(path, records) == 2
    text = path.read_text(encoding="utf-8")
    assert "café" in text and "一只猫" in text  # not \u-escaped
    assert len(text.splitlines()) == 2
    assert read_captions(path) == [
        {"image_id": "a", "caption": "un café près d'ici", "split": "train"},
        {"image_id": "17", "caption": "一只猫"},
    ]


@pytest.mark.parametrize("line,text,kind", [
    ('{"image_id": "a", "caption": ""}', "empty caption", "empty_caption"),
    ('{"image_id": "a", "caption": "   "}', "empty caption", "empty_caption"),
    ('{"image_id": "a"}', "lacks", "bad_caption"),
    ('{"image_id": "a", "caption": "x"', "not valid JSON", "bad_caption"),
    ('["a", "x"]', "JSON object", "bad_caption"),
    ('{"image_id": "", "caption": "x"}', "image_id is empty", "bad_image_id"),
    ('{"image_id": "a", "caption": 3}', "must be a string", "bad_caption"),
])
def test_read_captions_rejects_bad_line(tmp_path, line, text, kind):
    path = tmp_path / "c.jsonl"
    path.write_text('{"image_id": "ok", "caption": "fine"}\n\n' + line + "\n",
                    encoding="utf-8")
    with pytest.raises(RegionDataError, match=text) as info:
        read_captions(path)
    assert info.value.record == "line 3"
    assert str(path) in str(info.value)
    report = ErrorReport()
    kept = read_captions(path, policy="skip", report=report)
    assert [c["image_id"] for c in kept] == ["ok"]
    assert report.to_dict()["skipped"][0]["kind"] == kind


def test_write_captions_rejects_empty_caption(tmp_path):
    path = tmp_path / "c.jsonl"
    with pytest.raises(RegionDataError, match="empty caption"):
        write_captions(path, [{"image_id": "a", "caption": " "}])
    assert not path.exists()
    report = ErrorReport()
    n = write_captions(path, [{"image_id": "a", "caption": ""},
                              {"image_id": "b", "caption": "ok"}],
                       policy="skip", report=report)
    assert n == 1 and report.num_skipped == 1
    assert read_captions(path) == [{"image_id": "b", "caption": "ok"}]


def test_captions_against_images(tmp_path, images):
    write_images(tmp_path, images)
    captions = [{"image_id": "img0", "caption": "a"},
                {"image_id": "lost", "caption": "b"},
                {"image_id": "img3", "caption": "c"}]
    ids = region_image_ids(str(tmp_path))
    with pytest.raises(RegionDataError, match="'lost'") as info:
        check_captions_against_images(captions, ids, path="caps.jsonl")
    assert info.value.kind == "missing_image"
    assert "caps.jsonl, caption 2" in str(info.value)
    report = ErrorReport()
    kept = check_captions_against_images(captions, ids, policy="skip",
                                         report=report)
    assert [c["image_id"] for c in kept] == ["img0", "img3"]
    assert report.to_dict()["skipped_by_kind"] == {"missing_image": 1}
    with pytest.raises(ValueError, match="policy"):
        check_captions_against_images(captions, ids, policy="ignore")


def test_report_json(tmp_path):
    report = ErrorReport()
    report.add(RegionDataError("bad", "f.tsv", "line 2", kind="x"))
    out = tmp_path / "r.json"
    report.write_json(out, source="f.tsv")
    data = json.loads(out.read_text())
    assert data == {"source": "f.tsv", "num_skipped": 1,
                    "skipped_by_kind": {"x": 1},
                    "skipped": [{"file": "f.tsv", "record": "line 2",
                                 "kind": "x", "problem": "bad"}]}
