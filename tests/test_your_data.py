"""docs/your-data.md, run: a Flickr30K-shaped data set from public files to
a validated TensorFlow Serving export.

The test writes a Karpathy split file and an LXMERT-layout feature TSV
(detector class ids and confidences, no class_probs) from the formats'
documentation (tests/helpers/public_formats.py), then runs each command of the
walk-through exactly as the page shows it, followed by flags that shrink
the runs (a tiny model, a few steps). It checks the outputs the page
promises. Every command must appear verbatim in the page."""
import json
import os
import re
import shlex
import subprocess
import sys

import keras
import pytest
from conftest import REPO_ROOT

from helpers.public_formats import detector_images
from helpers.public_formats import karpathy_file
from helpers.public_formats import write_lxmert_tsv

from keras_interbert.data import convert
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import read_manifest

sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))

PAGE = os.path.join(REPO_ROOT, "docs", "your-data.md")

# The walk-through's commands, as docs/your-data.md shows them.
CONVERT_CAPTIONS = ("python -m keras_interbert.data.convert karpathy "
                    "dataset_flickr30k.json --output-dir flickr")
CONVERT_FEATURES = ("python -m keras_interbert.data.convert tsv "
                    "flickr30k_obj36.tsv --output-dir flickr/regions "
                    "--splits-from flickr/captions_en.jsonl "
                    "--num-object-classes 1600")
PRETRAIN = ("python recipes/pretrain.py --data flickr --out "
            "runs/flickr-pretrain --preset interbert_base_en --steps 20000 "
            "--batch-size 64")
FINETUNE = ("python recipes/finetune_retrieval.py --init "
            "runs/flickr-pretrain/pretrained.keras --data flickr --out "
            "runs/flickr-retrieval --no-eval")
EVALUATE = ("python recipes/evaluate_retrieval.py --model "
            "runs/flickr-retrieval/finetuned.keras --data flickr --split "
            "test --out runs/flickr-test")
EXPORT = ('python -m keras_interbert.export '
          'runs/flickr-retrieval/finetuned.keras --name flickr_retrieval '
          '--output-dir saved_models --validate')

# What the test adds to shrink each run.
TINY = {
    PRETRAIN: "--preset interbert_tiny_en --steps 2 --steps-per-epoch 2 "
              "--batch-size 4 --max-regions 4 --validation-steps 1 "
              "--verbose 0 --jit-compile false",
    FINETUNE: "--epochs 1 --steps-per-epoch 2 --batch-size 4 "
              "--max-regions 4 --sequence-length 16 --decay-epochs '' "
              "--verbose 0",
    EVALUATE: "--max-regions 4 --sequence-length 16 --batch-size 80 "
              "--no-progress",
}

# Flickr30K-shaped: numeric file names, Karpathy's train/val/test.
SPLITS = {}
for _split, _count in (("train", 16), ("val", 4), ("test", 4)):
    for _ in range(_count):
        SPLITS[f"{1000092795 + 7919 * len(SPLITS)}.jpg"] = _split


def argv(command, folder):
    """The command's arguments after the program, `$PWD` expanded."""
    words = shlex.split(command.replace("$PWD", str(folder)) + " "
                        + TINY.get(command, ""))
    return words[3:] if words[1] == "-m" else words[2:]


def test_the_page_shows_every_command():
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()
    lines = re.sub(r" \\\n\s+", " ", page).splitlines()  # lines joined
    for command in (CONVERT_CAPTIONS, CONVERT_FEATURES, PRETRAIN, FINETUNE,
                    EVALUATE, EXPORT):
        assert f"$ {command}" in lines, command


@pytest.mark.one_session  # the recipes per backend: test_finetune_recipes.py, test_retrieval_evaluation.py
def test_walk_through(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    karpathy_file("dataset_flickr30k.json", SPLITS, captions_per_image=5)
    stems = [os.path.splitext(name)[0] for name in SPLITS]
    write_lxmert_tsv("flickr30k_obj36.tsv", detector_images(
        stems, feature_dim=2048, num_classes=1600, min_boxes=10,
        max_boxes=36))

    # 1. Captions.
    assert convert.main(argv(CONVERT_CAPTIONS, tmp_path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == "flickr/captions_en.jsonl"
    assert report["splits"] == {"train": {"images": 16, "captions": 80},
                                "val": {"images": 4, "captions": 20},
                                "test": {"images": 4, "captions": 20}}
    assert read_captions("flickr/captions_en.jsonl")[0] == {
        "image_id": "1000092795", "split": "train",
        "caption": read_captions("flickr/captions_en.jsonl")[0]["caption"]}

    # 2. Features, into the captions' splits.
    assert convert.main(argv(CONVERT_FEATURES, tmp_path)
                        + ["--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == {"train": 16, "val": 4, "test": 4}
    assert (report["feature_dim"], report["num_classes"],
            report["num_object_classes"]) == (2048, None, 1600)
    assert report["num_uncaptioned"] == 0 and report["num_skipped"] == 0
    manifest = read_manifest("flickr/regions")
    assert manifest["splits"]["train"]["object_ids"] is True

    # 3. Pretraining: masked-region targets from the detector's class ids.
    import pretrain

    summary = pretrain.main(argv(PRETRAIN, tmp_path))
    out = capsys.readouterr().out
    assert ("MRM targets: one-hot over 1600 detector classes from "
            "object_ids.") in out.splitlines()
    assert summary["mrm_targets"] == ("one-hot over 1600 detector classes "
                                      "from object_ids")
    assert "mrm_loss" in summary["final"]
    assert os.path.exists("runs/flickr-pretrain/pretrained.keras")

    # 4. Finetuning for retrieval.
    import finetune_retrieval

    keras.config.set_dtype_policy("float32")
    summary = finetune_retrieval.main(argv(FINETUNE, tmp_path))
    assert "Finetuning on 80 training captions" in capsys.readouterr().out
    assert summary["model"] == "runs/flickr-retrieval/finetuned.keras"

    # 5. Evaluation on the test split.
    import evaluate_retrieval

    assert evaluate_retrieval.main(argv(EVALUATE, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "test: 4 images, 20 captions, 80 pairs." in out
    with open("runs/flickr-test/retrieval_metrics.json") as f:
        metrics = json.load(f)
    assert metrics["modes"]["full"]["text_to_image"]["num_queries"] == 20

    # 6. Export for TensorFlow Serving, validated in a fresh process. The
    # exporter runs on TensorFlow (it restarts itself under another
    # backend: a process of its own there).
    if keras.config.backend() == "tensorflow":
        from keras_interbert.export.__main__ import main as export

        assert export(argv(EXPORT, tmp_path)) == 0
        out = capsys.readouterr().out
    else:
        result = subprocess.run(
            [sys.executable, "-m", "keras_interbert.export",
             *argv(EXPORT, tmp_path)],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                     PYTHONPATH=REPO_ROOT),
            capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
    assert ("wrote saved_models/flickr_retrieval/1: "
            "InterBERTRetriever (matching), signatures ['score', 'embed'] "
            "(serving_default = score), sequence_length 16, max_regions 4"
            ) in out
    assert "validated: " in out
    assert os.path.exists("saved_models/flickr_retrieval/1/saved_model.pb")
