"""Converters into the canonical region-feature format: TSV, npz, LMDB."""

import base64
import collections
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from keras_interbert.data import convert
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import read_manifest
from keras_interbert.data.region_features import region_dataset

# tf.data, numpy and files only: the same under every KERAS_BACKEND
# (conftest.py).
pytestmark = pytest.mark.once

D = 6
C = 4
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def b64(array, dtype=np.float32):
    return base64.b64encode(np.ascontiguousarray(array, dtype)).decode("ascii")


def make_images(n_images=4, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        n = int(rng.integers(1, 6))
        h, w = int(rng.integers(50, 120)), int(rng.integers(130, 300))
        x1 = rng.uniform(0, w / 2, n)
        y1 = rng.uniform(0, h / 2, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(0, w / 2, n),
                          y1 + rng.uniform(0, h / 2, n)], 1)
        images.append({
            "image_id": f"COCO_{i:04d}",
            "image_h": h, "image_w": w,
            "boxes": boxes.astype(np.float32),
            "features": np.abs(rng.normal(size=(n, D))).astype(np.float32) * 4,
            "class_probs": rng.dirichlet(np.ones(C), n).astype(np.float32),
        })
    return images


def lxmert_row(img, **overrides):
    n = len(img["boxes"])
    row = {
        "img_id": img["image_id"], "img_h": str(img["image_h"]),
        "img_w": str(img["image_w"]),
        "objects_id": b64(np.arange(n), np.int64),
        "objects_conf": b64(np.full(n, 0.5)),
        "attrs_id": b64(np.arange(n), np.int64),
        "attrs_conf": b64(np.full(n, 0.25)),
        "num_boxes": str(n), "boxes": b64(img["boxes"]),
        "features": b64(img["features"]),
    }
    row.update(overrides)
    return "\t".join(row[f] for f in convert.LXMERT_FIELDS) + "\n"


def assert_matches(output_dir, images, with_probs=False, split="train"):
    got = {ex["image_id"].decode(): ex for ex in region_dataset(
        str(output_dir), split=split).as_numpy_iterator()}
    assert list(got) == [img["image_id"] for img in images]
    for img in images:
        ex = got[img["image_id"]]
        assert (ex["image_h"], ex["image_w"]) == (img["image_h"],
                                                  img["image_w"])
        assert ex["num_boxes"] == len(img["boxes"])
        np.testing.assert_array_equal(ex["boxes"], img["boxes"])
        np.testing.assert_allclose(ex["features"], img["features"],
                                   rtol=1e-3, atol=1e-3)
        if with_probs:
            np.testing.assert_allclose(ex["class_probs"], img["class_probs"],
                                       rtol=1e-3, atol=1e-4)
        else:
            assert "class_probs" not in ex


# -------------------------------------------------------------------- TSV --

def test_tsv_lxmert_round_trip(tmp_path):
    images = make_images(5)
    tsv = tmp_path / "feats.tsv"
    tsv.write_text("".join(lxmert_row(img) for img in images))
    out = tmp_path / "out"
    report = convert.convert_tsv([str(tsv)], str(out), examples_per_shard=2,
                                 progress=False)
    assert report["num_written"] == 5 and report["num_skipped"] == 0
    assert report["feature_dim"] == D
    assert len(report["shards"]) == 3
    assert read_manifest(str(out))["splits"]["train"]["num_examples"] == 5
    assert_matches(out, images)


def test_tsv_butd_layout_has_width_before_height(tmp_path):
    images = make_images(3, seed=1)
    lines = []
    for img in images:
        assert img["image_h"] != img["image_w"]
        lines.append("\t".join([
            img["image_id"], str(img["image_w"]), str(img["image_h"]),
            str(len(img["boxes"])), b64(img["boxes"]),
            b64(img["features"])]) + "\n")
    tsv = tmp_path / "butd.tsv"
    tsv.write_text("".join(lines))
    convert.convert_tsv([str(tsv)], str(tmp_path / "out"), fields="butd",
                        split="val", progress=False)
    assert_matches(tmp_path / "out", images, split="val")


def test_tsv_custom_fields_header_and_class_probs(tmp_path):
    images = make_images(2, seed=2)
    fields = ["image_id", "image_h", "image_w", "num_boxes", "boxes",
              "features", "cls_prob"]
    lines = ["\t".join(fields) + "\n"]
    for img in images:
        lines.append("\t".join([
            img["image_id"], str(img["image_h"]), str(img["image_w"]),
            str(len(img["boxes"])), b64(img["boxes"]), b64(img["features"]),
            b64(img["class_probs"])]) + "\r\n")
    tsv = tmp_path / "probs.tsv"
    tsv.write_text("".join(lines))
    report = convert.convert_tsv([str(tsv)], str(tmp_path / "out"),
                                 fields=",".join(fields), progress=False)
    assert report["num_classes"] == C
    assert_matches(tmp_path / "out", images, with_probs=True)


def test_tsv_fields_must_name_required_columns():
    with pytest.raises(ValueError, match="num_boxes"):
        convert.tsv_fields("image_id,image_h,image_w,boxes,features")


def bad_tsv_rows(img):
    n = len(img["boxes"])
    full = lxmert_row(img)
    nan_feats = img["features"].copy()
    nan_feats[0, 0] = np.nan
    outside = img["boxes"].copy()
    outside[0, 2] = img["image_w"] + 10
    reversed_boxes = img["boxes"].copy()
    reversed_boxes[0, [0, 2]] = [20.0, 10.0]
    boxes_short = b64(img["boxes"].reshape(-1)[:-1])
    return {
        "truncated_row": (full[: len(full) // 2] + "\n", "malformed_row",
                          "found"),
        "missing_columns": ("\t".join(full.split("\t")[:7]) + "\n",
                            "malformed_row", "expected 10 tab-separated"),
        "boxes_wrong_length": (lxmert_row(img, boxes=boxes_short),
                               "bad_base64", "boxes: decoded"),
        "bad_base64_chars": (lxmert_row(img, features="@@@@" + b64(
            img["features"])), "bad_base64", "not valid base64"),
        "nan_features": (lxmert_row(img, features=b64(nan_feats)),
                         "non_finite", "NaN"),
        "box_outside": (lxmert_row(img, boxes=b64(outside)),
                        "box_outside_image", "outside"),
        "box_reversed": (lxmert_row(img, boxes=b64(reversed_boxes)),
                         "box_order", "x2 >= x1"),
        "zero_regions": (lxmert_row(img, num_boxes="0", boxes="",
                                    features="", objects_id="",
                                    objects_conf="", attrs_id="",
                                    attrs_conf=""), "no_regions",
                         "zero regions"),
        "feature_width": (lxmert_row(img, features=b64(
            np.ones((n, D + 2)))), "feature_dim", "width 8 instead of 6"),
        "num_boxes_text": (lxmert_row(img, num_boxes="many"), "malformed_row",
                           "num_boxes must be an integer"),
    }


@pytest.mark.parametrize("case", sorted(bad_tsv_rows(make_images(1)[0])))
def test_tsv_bad_row_raises_with_location(tmp_path, case):
    good, bad_img = make_images(2, seed=3)
    bad_img["image_id"] = "BAD"
    line, kind, text = bad_tsv_rows(bad_img)[case]
    tsv = tmp_path / "in.tsv"
    tsv.write_text(lxmert_row(good) + line + lxmert_row(good, img_id="g2"))
    out = tmp_path / "out"
    with pytest.raises(RegionDataError, match=text) as info:
        convert.convert_tsv([str(tsv)], str(out), feature_dim=D,
                            progress=False)
    assert info.value.kind == kind
    message = str(info.value)
    assert str(tsv) in message and "line 2 (image 'BAD')" in message
    # Nothing half-written: no shards and no manifest.
    assert not out.exists() or os.listdir(out) == []


def test_tsv_skip_policy_reports_each_bad_row(tmp_path):
    good = make_images(1, seed=4)[0]
    bad = bad_tsv_rows(make_images(1, seed=5)[0])
    lines = [lxmert_row(good)]
    for i, case in enumerate(sorted(bad)):
        lines.append(bad[case][0])
        lines.append(lxmert_row(good, img_id=f"good{i}"))
    tsv = tmp_path / "mixed.tsv"
    tsv.write_text("".join(lines))
    report = convert.convert_tsv([str(tsv)], str(tmp_path / "out"),
                                 feature_dim=D, policy="skip", progress=False)
    assert report["num_written"] == 1 + len(bad)
    assert report["num_skipped"] == len(bad)
    expected_kinds = collections.Counter(v[1] for v in bad.values())
    assert report["skipped_by_kind"] == dict(expected_kinds)
    assert [s["record"].split(" ")[1] for s in report["skipped"]] == [
        str(2 * i + 2) for i in range(len(bad))]
    assert all(s["file"] == str(tsv) for s in report["skipped"])
    ids = [ex["image_id"].decode() for ex in region_dataset(
        str(tmp_path / "out")).as_numpy_iterator()]
    assert ids == [good["image_id"]] + [f"good{i}" for i in range(len(bad))]


def test_tsv_feature_width_differs_between_rows(tmp_path):
    a, b = make_images(2, seed=6)
    b["features"] = np.ones((len(b["boxes"]), D + 1), np.float32)
    tsv = tmp_path / "in.tsv"
    tsv.write_text(lxmert_row(a) + lxmert_row(b))
    with pytest.raises(RegionDataError, match="feature width 7") as info:
        convert.convert_tsv([str(tsv)], str(tmp_path / "out"), progress=False)
    assert "line 2" in str(info.value)


# -------------------------------------------------------------------- CLI --

def test_cli_skip_prints_and_writes_report(tmp_path, capsys):
    good = make_images(1, seed=7)[0]
    tsv = tmp_path / "in.tsv"
    tsv.write_text(lxmert_row(good) + "just\ttwo\n")
    report_path = tmp_path / "report.json"
    rc = convert.main(["tsv", str(tsv), "--output-dir", str(tmp_path / "o"),
                       "--on-error", "skip", "--report", str(report_path),
                       "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(report_path.read_text())
    assert printed["num_skipped"] == saved["num_skipped"] == 1
    assert saved["skipped"][0]["record"] == "line 2 (image 'just')"
    assert saved["num_written"] == 1


def test_cli_raise_exits_nonzero_with_message(tmp_path, capsys):
    good = make_images(1, seed=7)[0]
    tsv = tmp_path / "in.tsv"
    tsv.write_text(lxmert_row(good) + "just\ttwo\n")
    rc = convert.main(["tsv", str(tsv), "--output-dir", str(tmp_path / "o"),
                       "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "expected 10 tab-separated columns" in err


def test_cli_feature_dim_option(tmp_path, capsys):
    img = make_images(1, seed=8)[0]
    tsv = tmp_path / "in.tsv"
    tsv.write_text(lxmert_row(img))
    rc = convert.main(["tsv", str(tsv), "--output-dir", str(tmp_path / "o"),
                       "--feature-dim", "2048", "--no-progress"])
    assert rc == 1
    assert "width 6 instead of 2048" in capsys.readouterr().err


def test_module_runs_with_python_m(tmp_path):
    images = make_images(2, seed=9)
    tsv = tmp_path / "in.tsv"
    tsv.write_text("".join(lxmert_row(img) for img in images))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "keras_interbert.data.convert", "tsv",
         str(tsv), "--output-dir", str(tmp_path / "o"), "--no-progress"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_written"] == 2
    assert_matches(tmp_path / "o", images)


# -------------------------------------------------------------------- npz --

def write_npz(path, img, style):
    if style == "butd":
        np.savez(path, x=img["features"], bbox=img["boxes"],
                 num_bbox=len(img["boxes"]), image_h=img["image_h"],
                 image_w=img["image_w"], cls_prob=img["class_probs"])
    else:
        np.savez(path, features=img["features"].astype(np.float16),
                 boxes=img["boxes"], image_height=img["image_h"],
                 image_width=img["image_w"], soft_labels=img["class_probs"],
                 conf=np.full(len(img["boxes"]), 0.9, np.float32))


@pytest.mark.parametrize("style", ["butd", "uniter"])
def test_npz_round_trip(tmp_path, style):
    images = make_images(3, seed=10)
    src = tmp_path / "npz"
    src.mkdir()
    for img in images:
        write_npz(src / f"{img['image_id']}.npz", img, style)
    report = convert.convert_npz([str(src)], str(tmp_path / "out"),
                                 progress=False)
    assert report["num_written"] == 3 and report["num_classes"] == C
    assert_matches(tmp_path / "out", images, with_probs=True)


def test_converted_features_say_what_made_them(tmp_path, monkeypatch):
    from keras_interbert.data import feature_source_of
    from keras_interbert.export.image_serving import check_feature_source

    src = tmp_path / "npz"
    src.mkdir()
    for img in make_images(2, seed=12):
        write_npz(src / f"{img['image_id']}.npz", img, "butd")
    out = tmp_path / "data" / "regions"
    convert.convert_npz([str(src)], str(out), split="val", progress=False)
    with open(out / "manifest.json") as f:
        recorded = json.load(f)["splits"]["val"]["source"]
    names = ["COCO_0000.npz", "COCO_0001.npz"]
    assert recorded == {"kind": "converted", "format": "npz",
                        "num_inputs": 2, "example_inputs": names}
    source = feature_source_of(str(tmp_path / "data"))
    assert source == {"kind": "converted", "format": "npz", "num_inputs": 2,
                      "example_inputs": names, "feature_dim": D}

    # No extractor of this project makes detector features: the exporter's
    # check refuses one, naming the converted files.
    class Extractor:  # what the check reads of an extractor
        feature_dim, image_size = D, 224

    # (A stand-in extractor: the check reads its width, size and
    # fingerprint; building a real one is tests/test_feature_source.py's.)
    monkeypatch.setattr(
        "keras_interbert.vision.region_feature_extractor.feature_fingerprint",
        lambda extractor: "sha256:" + "cd" * 32)
    with pytest.raises(ValueError, match=f"{D}-d detector features "
                       "converted from npz files \\(2 files: "
                       "COCO_0000.npz, COCO_0001.npz\\); no image extractor"):
        check_feature_source(Extractor(), source, name="x.keras")


def test_npz_bad_files(tmp_path):
    img = make_images(1, seed=11)[0]
    src = tmp_path / "npz"
    src.mkdir()
    write_npz(src / "a_good.npz", img, "butd")
    np.savez(src / "b_count.npz", x=img["features"], bbox=img["boxes"],
             num_bbox=len(img["boxes"]) + 1, image_h=img["image_h"],
             image_w=img["image_w"], cls_prob=img["class_probs"])
    np.savez(src / "c_nobox.npz", x=img["features"], image_h=1, image_w=1)
    (src / "d_corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(src / "e_pickled.npz",
             x=np.array([{"evil": 1}], dtype=object), bbox=img["boxes"],
             image_h=img["image_h"], image_w=img["image_w"])
    with pytest.raises(RegionDataError, match="num_bbox") as info:
        convert.convert_npz([str(src)], str(tmp_path / "o1"), progress=False)
    assert "b_count.npz" in str(info.value)
    report = convert.convert_npz([str(src)], str(tmp_path / "o2"),
                                 policy="skip", progress=False)
    assert report["num_written"] == 1
    by_file = {os.path.basename(s["file"]): s["problem"]
               for s in report["skipped"]}
    assert "boxes has" in by_file["b_count.npz"]
    assert "['boxes', 'bbox']" in by_file["c_nobox.npz"]
    assert "cannot read" in by_file["d_corrupt.npz"]
    assert "pickled" in by_file["e_pickled.npz"]


# ------------------------------------------------------------------- LMDB --

def test_lmdb_missing_package_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(ImportError, match="pip install lmdb"):
        convert.convert_lmdb(str(tmp_path), str(tmp_path / "o"))
    rc = convert.main(["lmdb", str(tmp_path), "--output-dir",
                       str(tmp_path / "o")])
    assert rc == 2
    assert "pip install lmdb" in capsys.readouterr().err


def write_vilbert_lmdb(path, images, extra=None, keys=None):
    lmdb = pytest.importorskip("lmdb", reason="the lmdb package is not "
                                              "installed")
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for img in images:
            item = {
                "image_id": img["image_id"], "image_h": img["image_h"],
                "image_w": img["image_w"], "num_boxes": len(img["boxes"]),
                "boxes": base64.b64encode(img["boxes"].tobytes()),
                "features": base64.b64encode(img["features"].tobytes()),
            }
            txn.put(img["image_id"].encode(), pickle.dumps(item))
        for key, value in (extra or {}).items():
            txn.put(key, value)
        ids = keys if keys is not None else [
            img["image_id"].encode() for img in images]
        txn.put(b"keys", pickle.dumps(ids))
    env.close()


def test_lmdb_round_trip(tmp_path):
    pytest.importorskip("lmdb", reason="the lmdb package is not installed")
    images = make_images(4, seed=12)
    write_vilbert_lmdb(tmp_path / "feat.lmdb", images)
    report = convert.convert_lmdb(str(tmp_path / "feat.lmdb"),
                                  str(tmp_path / "out"), progress=False)
    assert report["num_written"] == 4
    assert_matches(tmp_path / "out", images)


def test_lmdb_bad_entries(tmp_path):
    pytest.importorskip("lmdb", reason="the lmdb package is not installed")
    images = make_images(2, seed=13)
    evil = pickle.dumps(collections.OrderedDict(image_id="x"))
    keys = [b"COCO_0000", b"ghost", b"evil", b"COCO_0001"]
    write_vilbert_lmdb(tmp_path / "feat.lmdb", images,
                       extra={b"evil": evil}, keys=keys)
    with pytest.raises(RegionDataError, match="not stored") as info:
        convert.convert_lmdb(str(tmp_path / "feat.lmdb"),
                             str(tmp_path / "o1"), progress=False)
    assert "'ghost'" in str(info.value)
    report = convert.convert_lmdb(str(tmp_path / "feat.lmdb"),
                                  str(tmp_path / "o2"), policy="skip",
                                  progress=False)
    assert report["num_written"] == 2
    assert report["skipped_by_kind"] == {"missing_entry": 1,
                                         "malformed_record": 1}
    assert "refusing to unpickle collections.OrderedDict" in (
        report["skipped"][1]["problem"])
    assert_matches(tmp_path / "o2", images)


def test_lmdb_feature_dim_checked(tmp_path):
    pytest.importorskip("lmdb", reason="the lmdb package is not installed")
    images = make_images(1, seed=14)
    write_vilbert_lmdb(tmp_path / "feat.lmdb", images)
    with pytest.raises(RegionDataError, match="instead of 2048") as info:
        convert.convert_lmdb(str(tmp_path / "feat.lmdb"),
                             str(tmp_path / "o"), feature_dim=2048,
                             progress=False)
    assert info.value.kind == "feature_dim"
    assert "COCO_0000" in str(info.value)


def test_safe_unpickle_refuses_code():
    payload = pickle.dumps(os.getcwd)  # a reference to a callable
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        convert.safe_unpickle(payload)
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = convert.safe_unpickle(pickle.dumps({"a": arr, "b": b"x"}))
    np.testing.assert_array_equal(back["a"], arr)
