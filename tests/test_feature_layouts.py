"""Feature layouts of issue 15: detector class ids from LXMERT TSVs and npz
files, UNITER's npz (normalised boxes, no image size), vilbert-multi-task's
per-image .npy dictionaries, and `--splits-from CAPTIONS`. Each file is
written from the format's documentation (tests/helpers/public_formats.py), converted,
read back and compared value by value."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from helpers.public_formats import detector_images
from helpers.public_formats import lxmert_tsv_line
from helpers.public_formats import write_lxmert_tsv
from helpers.public_formats import write_uniter_npz
from helpers.public_formats import write_vilbert_npy

from keras_interbert.data import convert
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import parse_region_batch
from keras_interbert.data.region_features import read_manifest
from keras_interbert.data.region_features import region_dataset
from keras_interbert.data.region_features import region_files
from keras_interbert.data.region_features import region_object_classes
from keras_interbert.data.region_features import write_captions

# tf.data, numpy and files only: the same under every KERAS_BACKEND.
pytestmark = pytest.mark.once

D = 8


def read_back(folder, split, object_ids=False, object_confs=False):
    """{image_id: record} with the object fields, via the batched parser."""
    manifest = read_manifest(folder)
    records = tf.data.TFRecordDataset(region_files(folder, split))
    out = {}
    for batch in records.batch(64).map(lambda s: parse_region_batch(
            s, manifest["feature_dim"], manifest["num_classes"],
            object_ids=object_ids, object_confs=object_confs,
            num_object_classes=manifest.get("num_object_classes"))):
        batch = {k: v.numpy() for k, v in batch.items()}
        for i, image_id in enumerate(batch["image_id"]):
            n = batch["num_boxes"][i]
            record = {k: v[i] for k, v in batch.items()}
            for key in ("boxes", "features", "class_probs", "object_ids",
                        "object_confs"):
                if key in record:
                    record[key] = record[key][:n]
            out[image_id.decode()] = record
    return out


def assert_image(got, image, probs=None, atol_boxes=0.0):
    assert (got["image_h"], got["image_w"]) == (image["image_h"],
                                                image["image_w"])
    assert got["num_boxes"] == len(image["boxes"])
    np.testing.assert_allclose(got["boxes"], image["boxes"], rtol=0,
                               atol=atol_boxes)
    np.testing.assert_allclose(got["features"], image["features"],
                               rtol=1e-3, atol=1e-3)
    if probs is not None:
        np.testing.assert_allclose(got["class_probs"], probs, atol=1e-3)


# ------------------------------------------------------------ class ids --

def test_lxmert_tsv_keeps_class_ids_and_confidences(tmp_path):
    images = detector_images([f"img{i}" for i in range(5)], feature_dim=D)
    tsv = tmp_path / "obj36.tsv"
    write_lxmert_tsv(tsv, images)
    report = convert.convert_tsv([str(tsv)], str(tmp_path / "out"),
                                 num_object_classes=1600, progress=False)
    assert report["object_ids"] and report["num_object_classes"] == 1600
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["num_object_classes"] == 1600
    assert manifest["splits"]["train"]["object_ids"] is True
    assert manifest["splits"]["train"]["object_confs"] is True
    assert region_object_classes(str(tmp_path / "out"), "train") == {
        "object_ids": True, "object_confs": True, "num_object_classes": 1600}
    got = read_back(str(tmp_path / "out"), "train", True, True)
    assert list(got) == [image["image_id"] for image in images]
    for image in images:
        record = got[image["image_id"]]
        assert_image(record, image)
        np.testing.assert_array_equal(record["object_ids"],
                                      image["objects_id"])
        np.testing.assert_array_equal(record["object_confs"],
                                      image["objects_conf"])
    # The per-example reader is unchanged: no new keys.
    example = next(region_dataset(str(tmp_path / "out"),
                                  "train").as_numpy_iterator())
    assert "object_ids" not in example and "class_probs" not in example


def test_lxmert_class_ids_without_a_count_are_kept_unchecked(tmp_path):
    images = detector_images(["a", "b"], feature_dim=D)
    write_lxmert_tsv(tmp_path / "f.tsv", images)
    report = convert.convert_tsv([str(tmp_path / "f.tsv")],
                                 str(tmp_path / "out"), progress=False)
    assert report["object_ids"] and report["num_object_classes"] is None
    assert read_manifest(str(tmp_path / "out"))["num_object_classes"] is None


@pytest.mark.parametrize("case, kind, text", [
    ("ids_short", "bad_object_classes",
     r"objects_id: decoded 16 bytes \(2 int64 values\), expected one per box"),
    ("confs_long", "bad_object_classes", "objects_conf: decoded"),
    ("id_too_large", "bad_object_classes",
     "below num_object_classes=1600; region 0 has 1600"),
])
def test_bad_class_ids_name_file_and_image(tmp_path, case, kind, text):
    good, bad = detector_images(["good", "BAD"], feature_dim=D, min_boxes=4)
    ids = bad["objects_id"].copy()
    overrides = {
        "ids_short": {"objects_id": convert_b64(ids[:2], np.int64)},
        "confs_long": {"objects_conf": convert_b64(
            np.ones(len(ids) + 1), np.float32)},
        "id_too_large": {"objects_id": convert_b64(
            np.concatenate([[1600], ids[1:]]), np.int64)},
    }[case]
    tsv = tmp_path / "f.tsv"
    tsv.write_text(lxmert_tsv_line(good) + lxmert_tsv_line(bad, **overrides))
    with pytest.raises(RegionDataError, match=text) as info:
        convert.convert_tsv([str(tsv)], str(tmp_path / "out"),
                            num_object_classes=1600, progress=False)
    assert info.value.kind == kind
    assert str(tsv) in str(info.value)
    assert "line 2 (image 'BAD')" in str(info.value)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def convert_b64(array, dtype):
    import base64

    return base64.b64encode(np.ascontiguousarray(array, dtype)).decode()


def test_npz_with_class_ids(tmp_path):
    images = detector_images(["x1", "x2"], feature_dim=D)
    for image in images:
        np.savez(tmp_path / f"{image['image_id']}.npz",
                 features=image["features"], boxes=image["boxes"],
                 image_h=image["image_h"], image_w=image["image_w"],
                 objects_id=image["objects_id"],
                 conf=image["objects_conf"])
    convert.convert_npz([str(tmp_path)], str(tmp_path / "out"),
                        num_object_classes=1600, progress=False)
    got = read_back(str(tmp_path / "out"), "train", True, True)
    for image in images:
        np.testing.assert_array_equal(got[image["image_id"]]["object_ids"],
                                      image["objects_id"])
        np.testing.assert_array_equal(got[image["image_id"]]["object_confs"],
                                      image["objects_conf"])


# ---------------------------------------------------------------- UNITER --

@pytest.mark.parametrize("width", [4, 6, 7])
def test_uniter_npz_with_a_sizes_file(tmp_path, width):
    images = detector_images([f"flickr30k_{1000 + i}" for i in range(3)],
                             feature_dim=D)
    rng = np.random.default_rng(1)
    src = tmp_path / "npz"
    src.mkdir()
    probs = {}
    for image in images:
        probs[image["image_id"]] = rng.dirichlet(
            np.ones(5), len(image["boxes"])).astype(np.float32)
        write_uniter_npz(src / f"{image['image_id']}.npz", image, width,
                         soft_labels=probs[image["image_id"]])
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({
        image["image_id"][len("flickr30k_"):]: [image["image_h"],
                                                image["image_w"]]
        for image in images}))
    report = convert.convert_uniter(
        [str(src)], str(tmp_path / "out"), image_sizes=str(sizes),
        id_pattern=r"_(\d+)$", progress=False)
    assert report["num_written"] == 3 and report["num_classes"] == 5
    got = read_back(str(tmp_path / "out"), "train")
    for image in images:
        short = image["image_id"][len("flickr30k_"):]
        # Pixel boxes come back from float32 normalised ones: within a
        # thousandth of a pixel.
        assert_image(got[short], image, probs[image["image_id"]],
                     atol_boxes=1e-3)


def test_uniter_npz_with_one_stated_size_gives_the_same_locations(tmp_path):
    image = detector_images(["u"], feature_dim=D)[0]
    write_uniter_npz(tmp_path / "u.npz", image, 6)
    convert.convert_uniter([str(tmp_path / "u.npz")], str(tmp_path / "out"),
                           image_size=(1000, 1000), progress=False)
    got = read_back(str(tmp_path / "out"), "train")["u"]
    assert (got["image_h"], got["image_w"]) == (1000, 1000)
    scale = np.array([image["image_w"], image["image_h"]] * 2, np.float32)
    np.testing.assert_allclose(got["boxes"] / 1000.0, image["boxes"] / scale,
                               atol=1e-6)


def test_uniter_bad_files(tmp_path):
    image = detector_images(["u"], feature_dim=D)[0]
    np.savez(tmp_path / "u.npz", features=image["features"],
             conf=image["objects_conf"])
    with pytest.raises(RegionDataError, match="no norm_bb") as info:
        convert.convert_uniter([str(tmp_path / "u.npz")],
                               str(tmp_path / "o"), image_size=(10, 10),
                               progress=False)
    assert str(tmp_path / "u.npz") in str(info.value)
    assert "image 'u'" in str(info.value)
    write_uniter_npz(tmp_path / "u.npz", image, 4)
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({"other": [10, 10]}))
    with pytest.raises(RegionDataError, match="no image size") as info:
        convert.convert_uniter([str(tmp_path / "u.npz")],
                               str(tmp_path / "o"), image_sizes=str(sizes),
                               progress=False)
    assert info.value.kind == "no_image_size"
    sizes.write_text(json.dumps({"u": [10, -3]}))
    with pytest.raises(RegionDataError, match="whole pixels") as info:
        convert.convert_uniter([str(tmp_path / "u.npz")],
                               str(tmp_path / "o"), image_sizes=str(sizes),
                               progress=False)
    assert str(sizes) in str(info.value)
    # x, y, w, h columns instead of x1, y1, x2, y2, w, h: caught.
    norm = np.array([[0.1, 0.1, 0.3, 0.3, 0.2, 0.2],
                     [0.2, 0.2, 0.5, 0.6, 0.5, 0.6]], np.float32)
    np.savez(tmp_path / "u.npz", norm_bb=norm,
             features=np.ones((2, D), np.float32))
    with pytest.raises(RegionDataError, match="not x1,y1,x2,y2,w,h"):
        convert.convert_uniter([str(tmp_path / "u.npz")],
                               str(tmp_path / "o"), image_size=(10, 10),
                               progress=False)
    with pytest.raises(ValueError, match="exactly one of image_sizes"):
        convert.convert_uniter([str(tmp_path / "u.npz")],
                               str(tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


# ---------------------------------------------------------------- vilbert --

def test_vilbert_npy_dictionaries(tmp_path):
    images = detector_images(["397133", "37777", "252219"], feature_dim=D,
                             num_classes=1600)
    rng = np.random.default_rng(2)
    src = tmp_path / "npy"
    src.mkdir()
    for image in images[:2]:
        write_vilbert_npy(src / f"{image['image_id']}.npy", image)
    report = convert.convert_npy([str(src)], str(tmp_path / "ids"),
                                 num_object_classes=1600, progress=False)
    assert report["num_written"] == 2 and report["object_ids"]
    got = read_back(str(tmp_path / "ids"), "train", object_ids=True)
    for image in images[:2]:
        assert_image(got[image["image_id"]], image)
        np.testing.assert_array_equal(got[image["image_id"]]["object_ids"],
                                      image["objects_id"])
    # With cls_prob instead: stored as class_probs.
    src2 = tmp_path / "npy2"
    src2.mkdir()
    probs = rng.dirichlet(np.ones(7), len(images[2]["boxes"])).astype(
        np.float32)
    write_vilbert_npy(src2 / "x.npy", images[2], cls_prob=probs,
                      objects=False)
    convert.convert_npy([str(src2)], str(tmp_path / "probs"), progress=False)
    got = read_back(str(tmp_path / "probs"), "train")
    # The dictionary's image_id wins over the file name.
    assert_image(got[images[2]["image_id"]], images[2], probs)


def test_vilbert_npy_bad_files(tmp_path):
    image = detector_images(["1"], feature_dim=D)[0]
    np.save(tmp_path / "plain.npy", np.ones((3, 4), np.float32))
    with pytest.raises(RegionDataError, match="not a feature dictionary"):
        convert.convert_npy([str(tmp_path / "plain.npy")],
                            str(tmp_path / "o"), progress=False)
    info = {"bbox": image["boxes"], "image_width": image["image_w"],
            "image_height": image["image_h"], "features": image["features"],
            "num_boxes": len(image["boxes"]) + 1}
    np.save(tmp_path / "count.npy", info)
    with pytest.raises(RegionDataError, match="num_boxes=.* but boxes has"):
        convert.convert_npy([str(tmp_path / "count.npy")],
                            str(tmp_path / "o"), progress=False)
    del info["num_boxes"], info["features"]
    np.save(tmp_path / "nofeat.npy", info)
    with pytest.raises(RegionDataError, match="lacks 'features'") as e:
        convert.convert_npy([str(tmp_path / "nofeat.npy")],
                            str(tmp_path / "o"), progress=False)
    assert str(tmp_path / "nofeat.npy") in str(e.value)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    np.save(tmp_path / "evil.npy", {"x": Evil()}, allow_pickle=True)
    with pytest.raises(RegionDataError, match="refusing to unpickle"):
        convert.convert_npy([str(tmp_path / "evil.npy")],
                            str(tmp_path / "o"), progress=False)


# ----------------------------------------------------------- splits-from --

def flickr_captions(path, splits, extra=()):
    records = [{"image_id": i, "caption": f"caption of {i}", "split": s}
               for i, s in splits.items()]
    write_captions(str(path), records + list(extra))


def test_splits_from_captions(tmp_path):
    ids = [f"{100 + i}" for i in range(7)]
    images = detector_images(ids, feature_dim=D)
    tsv = tmp_path / "all.tsv"
    write_lxmert_tsv(tsv, images)
    splits = {"100": "train", "101": "val", "102": "train", "103": "test",
              "104": "train", "105": "val"}  # 106: features, no captions
    flickr_captions(tmp_path / "captions.jsonl", splits, extra=[
        {"image_id": "100", "caption": "second caption", "split": "train"}])
    out = tmp_path / "regions"
    report = convert.convert_tsv(
        [str(tsv)], str(out), splits_from=str(tmp_path / "captions.jsonl"),
        num_object_classes=1600, examples_per_shard=2, progress=False)
    assert report["splits"] == {"train": 3, "val": 2, "test": 1}
    assert report["num_uncaptioned"] == 1 and report["uncaptioned"] == ["106"]
    manifest = read_manifest(str(out))
    assert sorted(manifest["splits"]) == ["test", "train", "val"]
    by_id = {image["image_id"]: image for image in images}
    for split in ("train", "val", "test"):
        got = read_back(str(out), split, True, True)
        assert sorted(got) == sorted(i for i, s in splits.items()
                                     if s == split)
        for image_id, record in got.items():
            assert_image(record, by_id[image_id])
            np.testing.assert_array_equal(record["object_ids"],
                                          by_id[image_id]["objects_id"])


def test_splits_from_reports_captioned_images_without_features(tmp_path):
    images = detector_images(["1", "2"], feature_dim=D)
    write_lxmert_tsv(tmp_path / "f.tsv", images)
    flickr_captions(tmp_path / "c.jsonl",
                    {"1": "train", "2": "val", "3": "val", "4": "test"})
    with pytest.raises(RegionDataError) as info:
        convert.convert_tsv([str(tmp_path / "f.tsv")], str(tmp_path / "out"),
                            splits_from=str(tmp_path / "c.jsonl"),
                            progress=False)
    message = str(info.value)
    assert info.value.kind == "missing_image"
    assert f"{tmp_path / 'c.jsonl'}, line 3: image '3' has captions (split " \
        "'val') but no region features" in message
    assert "2 captioned images lack them" in message
    assert not (tmp_path / "out").exists() or not [
        n for n in os.listdir(tmp_path / "out") if not n.startswith(".")]
    # Under skip: written, each missing image listed; the empty test split
    # is not written.
    report = convert.convert_tsv(
        [str(tmp_path / "f.tsv")], str(tmp_path / "out"),
        splits_from=str(tmp_path / "c.jsonl"), policy="skip", progress=False)
    assert report["skipped_by_kind"] == {"missing_image": 2}
    assert report["splits"] == {"train": 1, "val": 1}
    assert report["empty_splits"] == ["test"]
    assert sorted(read_manifest(str(tmp_path / "out"))["splits"]) == [
        "train", "val"]


def test_splits_from_refuses_bad_caption_files(tmp_path):
    images = detector_images(["1"], feature_dim=D)
    write_lxmert_tsv(tmp_path / "f.tsv", images)
    cases = {
        "no_split": [{"image_id": "1", "caption": "x"}],
        "split_conflict": [
            {"image_id": "1", "caption": "x", "split": "train"},
            {"image_id": "1", "caption": "y", "split": "val"}],
        "bad_split": [{"image_id": "1", "caption": "x", "split": "../up"}],
    }
    for kind, records in cases.items():
        path = tmp_path / f"{kind}.jsonl"
        write_captions(str(path), records)
        with pytest.raises(RegionDataError) as info:
            convert.convert_tsv([str(tmp_path / "f.tsv")],
                                str(tmp_path / kind),
                                splits_from=str(path), progress=False)
        assert info.value.kind == kind
        assert str(path) in str(info.value) and "line " in str(info.value)


def test_cli_uniter_npy_and_splits_from(tmp_path, capsys):
    images = detector_images(["10", "11"], feature_dim=D)
    for image in images:
        write_uniter_npz(tmp_path / f"{image['image_id']}.npz", image, 7)
        write_vilbert_npy(tmp_path / f"{image['image_id']}.npy", image)
    flickr_captions(tmp_path / "c.jsonl", {"10": "train", "11": "test"})
    status = convert.main([
        "uniter", str(tmp_path / "10.npz"), str(tmp_path / "11.npz"),
        "--image-size", "600x800", "--output-dir", str(tmp_path / "u"),
        "--splits-from", str(tmp_path / "c.jsonl"), "--no-progress"])
    assert status == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["splits"] == {"train": 1, "test": 1}
    assert read_back(str(tmp_path / "u"), "test")["11"]["image_w"] == 800
    status = convert.main([
        "npy", str(tmp_path / "*.npy"), "--output-dir", str(tmp_path / "v"),
        "--num-object-classes", "1600", "--no-progress"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["num_object_classes"] == 1600
    with pytest.raises(SystemExit):
        convert.main(["npy", str(tmp_path / "10.npy"), "--output-dir",
                      str(tmp_path / "w"), "--split", "train",
                      "--splits-from", str(tmp_path / "c.jsonl")])
    assert "not both" in capsys.readouterr().err
