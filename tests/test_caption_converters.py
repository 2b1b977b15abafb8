"""Caption converters (issue 15): Karpathy's split JSON and Conceptual
Captions' TSV into captions JSON Lines, checked against region features.
The inputs are written from the formats' documentation
(tests/helpers/public_formats.py)."""
import hashlib
import json
import os

import numpy as np
import pytest

from helpers.public_formats import detector_images
from helpers.public_formats import karpathy_file
from helpers.public_formats import write_cc_tsv
from helpers.public_formats import write_lxmert_tsv

from keras_interbert.data import convert
from keras_interbert.data.caption_converters import convert_cc
from keras_interbert.data.caption_converters import convert_karpathy
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import read_captions

# Files only: the same under every KERAS_BACKEND.
pytestmark = pytest.mark.once

SPLITS = {"1000092795.jpg": "train", "10002456.jpg": "restval",
          "1000268201.jpg": "val", "1000344755.jpg": "test",
          "1000366164.jpg": "train"}


def expected_records(data, rule="stem"):
    out = []
    for image in data["images"]:
        key = {"stem": os.path.splitext(image["filename"])[0],
               "filename": image["filename"],
               "imgid": str(image["imgid"])}[rule]
        split = {"restval": "train"}.get(image["split"], image["split"])
        out += [{"image_id": key, "caption": s["raw"], "split": split}
                for s in image["sentences"]]
    return out


@pytest.mark.parametrize("rule", ["stem", "filename", "imgid"])
def test_karpathy_round_trip(tmp_path, rule):
    data = karpathy_file(tmp_path / "dataset_flickr30k.json", SPLITS,
                         captions_per_image=3)
    report = convert_karpathy(tmp_path / "dataset_flickr30k.json",
                              tmp_path / "data", image_id=rule)
    written = read_captions(str(tmp_path / "data" / "captions_en.jsonl"))
    assert written == expected_records(data, rule)
    assert list(report["splits"].items()) == [
        ("train", {"images": 3, "captions": 9}),
        ("val", {"images": 1, "captions": 3}),
        ("test", {"images": 1, "captions": 3})]
    assert report["restval"] == {"images": 1, "captions": 3,
                                 "written_to": "train"}
    assert report["notes"] == [
        "restval: 1 images (3 captions) are written to split 'train', as the "
        "usual Karpathy training set (train + restval)."]


def test_karpathy_bad_files_name_file_and_record(tmp_path):
    path = tmp_path / "k.json"
    out = tmp_path / "data"
    path.write_text(json.dumps({"dataset": "flickr30k"}))
    with pytest.raises(RegionDataError, match="no 'images' list") as info:
        convert_karpathy(path, out)
    assert str(path) in str(info.value) and "found keys ['dataset']" in str(
        info.value)
    path.write_text("{not json")
    with pytest.raises(RegionDataError, match="not a JSON file"):
        convert_karpathy(path, out)

    data = karpathy_file(path, SPLITS)
    del data["images"][2]["sentences"][1]["raw"]
    path.write_text(json.dumps(data))
    with pytest.raises(RegionDataError) as info:
        convert_karpathy(path, out)
    assert str(info.value) == (
        f"{path}, images[2] ('1000268201.jpg'), sentences[1]: the sentence "
        "has no 'raw' text (has ['imgid', 'sentid', 'tokens']).")
    assert not out.exists() or not os.listdir(out)
    # Under skip: the sentence is left out and listed.
    report = convert_karpathy(path, out, policy="skip")
    assert report["num_captions"] == 2 * len(SPLITS) - 1
    assert report["skipped"][0]["record"] == (
        "images[2] ('1000268201.jpg'), sentences[1]")

    data = karpathy_file(path, SPLITS)
    data["images"][1]["split"] = "dev"
    data["images"][3]["filename"] = data["images"][0]["filename"]
    data["images"][4]["sentences"][0]["raw"] = "  "
    path.write_text(json.dumps(data))
    report = convert_karpathy(path, tmp_path / "skip", policy="skip")
    assert report["skipped_by_kind"] == {"bad_split": 1,
                                         "duplicate_image_id": 1,
                                         "empty_caption": 1}
    with pytest.raises(RegionDataError, match="split 'dev' is not one of"):
        convert_karpathy(path, tmp_path / "raise")


def test_karpathy_checked_against_features(tmp_path):
    data = karpathy_file(tmp_path / "k.json", SPLITS)
    stems = [os.path.splitext(f)[0] for f in SPLITS]
    images = detector_images(stems, feature_dim=4)
    # Features of every image but the test one, in the captions' splits.
    split_of = {os.path.splitext(f)[0]: {"restval": "train"}.get(s, s)
                for f, s in SPLITS.items()}
    for split in ("train", "val"):
        tsv = tmp_path / f"{split}.tsv"
        write_lxmert_tsv(tsv, [i for i in images
                               if split_of[i["image_id"]] == split])
        convert.convert_tsv([str(tsv)], str(tmp_path / "regions"),
                            split=split, progress=False)
    with pytest.raises(RegionDataError) as info:
        convert_karpathy(tmp_path / "k.json", tmp_path / "data",
                         features=str(tmp_path / "regions"))
    assert info.value.kind == "missing_image"
    assert str(info.value) == (
        f"{tmp_path / 'k.json'}, images[3] ('1000344755.jpg'), sentences[0]: "
        "image '1000344755' (split 'test') has no region features in split "
        f"'test' of {tmp_path / 'regions'}.")
    assert not (tmp_path / "data").exists()
    report = convert_karpathy(tmp_path / "k.json", tmp_path / "data",
                              features=str(tmp_path / "regions"),
                              policy="skip")
    assert report["skipped_by_kind"] == {"missing_image": 1}
    assert [r for r in expected_records(data)
            if r["image_id"] != "1000344755"] == read_captions(
        str(tmp_path / "data" / "captions_en.jsonl"))


def test_cc_image_id_rules_and_merging(tmp_path):
    rows = [("a dog on the beach", "http://example.com/a.jpg"),
            ("a red ball", "http://example.com/b.jpg"),
            ("the same picture again", "http://example.com/a.jpg")]
    write_cc_tsv(tmp_path / "train.tsv", rows)
    report = convert_cc(tmp_path / "train.tsv", tmp_path / "data",
                        image_id="{url_sha1}")
    sha = [hashlib.sha1(url.encode()).hexdigest() for _, url in rows]
    assert read_captions(str(tmp_path / "data" / "captions_en.jsonl")) == [
        {"image_id": sha[i], "caption": rows[i][0], "split": "train"}
        for i in range(3)]
    assert report["num_images"] == 2 and report["num_captions"] == 3
    # A validation file in a second run: train is kept, ids by line.
    write_cc_tsv(tmp_path / "val.tsv", rows[:2])
    report = convert_cc(tmp_path / "val.tsv", tmp_path / "data",
                        image_id="val_{index:04d}", split="val")
    assert report["kept_from_existing"] == 3
    written = read_captions(str(tmp_path / "data" / "captions_en.jsonl"))
    assert [r["image_id"] for r in written] == sha + ["val_0000", "val_0001"]
    with pytest.raises(FileExistsError, match=r"split\(s\) \['val'\]"):
        convert_cc(tmp_path / "val.tsv", tmp_path / "data",
                   image_id="{line}", split="val")
    # Overwriting val with ids that collide with train images is refused.
    with pytest.raises(RegionDataError, match="already in split 'train'"):
        convert_cc(tmp_path / "val.tsv", tmp_path / "data",
                   image_id="{url_sha1}", split="val", overwrite=True)


def test_cc_bad_rows_and_rules(tmp_path):
    path = tmp_path / "cc.tsv"
    path.write_text("a caption\thttp://x/1.jpg\nno url column\n"
                    "\thttp://x/2.jpg\n")
    with pytest.raises(RegionDataError) as info:
        convert_cc(path, tmp_path / "data", image_id="{index}")
    assert str(info.value) == (
        f"{path}, line 2: expected 2 tab-separated columns (caption, url), "
        "found 1.")
    report = convert_cc(path, tmp_path / "data", image_id="{index}",
                        policy="skip")
    assert report["skipped_by_kind"] == {"empty_caption": 1,
                                         "malformed_row": 1}
    for rule in ("{idx}", "fixed", "{index:q}"):
        with pytest.raises(ValueError, match="image-id rule"):
            convert_cc(path, tmp_path / "data", image_id=rule)


def test_cli_karpathy_and_cc(tmp_path, capsys):
    karpathy_file(tmp_path / "k.json", SPLITS)
    assert convert.main(["karpathy", str(tmp_path / "k.json"),
                         "--output-dir", str(tmp_path / "data")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["output"] == str(tmp_path / "data" / "captions_en.jsonl")
    assert shown["restval"]["written_to"] == "train"
    # Again: the splits are there already.
    assert convert.main(["karpathy", str(tmp_path / "k.json"),
                         "--output-dir", str(tmp_path / "data")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    write_cc_tsv(tmp_path / "cc.tsv", [("a cat", "http://x/c.jpg")])
    with pytest.raises(SystemExit):
        convert.main(["cc", str(tmp_path / "cc.tsv"), "--output-dir",
                      str(tmp_path / "cc"), "--image-id", "{nope}"])
    assert "unknown: ['nope']" in capsys.readouterr().err
    assert convert.main(["cc", str(tmp_path / "cc.tsv"), "--output-dir",
                         str(tmp_path / "cc"), "--image-id", "{line}",
                         "--language", "zh"]) == 0
    assert read_captions(str(tmp_path / "cc" / "captions_zh.jsonl")) == [
        {"image_id": "1", "caption": "a cat", "split": "train"}]
    assert np.all([not n.startswith(".") for n in os.listdir(tmp_path / "cc")])
