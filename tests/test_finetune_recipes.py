"""The finetuning recipes end to end on a small bundled data set: each trains,
saves a `.keras` file that reloads, and writes its metrics and plot.

The retrieval recipe runs in every session. The VCR and text recipes are
marked `one_session` (tests/conftest.py): under `make test` they run in one
session; the multiple-choice and text-classification tasks train, save and
reload under every backend in tests/test_tasks.py and
tests/test_components.py."""
import json
import os
import sys

import pytest

from conftest import REPO_ROOT

from keras_interbert import InterBERTPretrainer
from keras_interbert import load_interbert
from keras_interbert.data.multiple_choice_synthetic import write_multiple_choice
from keras_interbert.data.synthetic import write_dataset
from keras_interbert.data.text_classification_pipeline import write_caption_tasks

sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune_recipes")
    data = str(root / "data")
    write_dataset(data, num_images=60, seed=2, feature_dim=32,
                  languages=("en",), save_images=False, progress=False)
    pretrained = str(root / "pretrained.keras")
    InterBERTPretrainer.from_preset(
        "interbert_tiny_en", image_feature_dim=32).save(pretrained)
    return root, data, pretrained


def outputs_of(out, model_class):
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert os.path.getsize(os.path.join(out, "training_curves.png")) > 1000
    assert not [n for n in os.listdir(out) if ".partial." in n]
    assert type(load_interbert(metrics["model"])).__name__ == model_class
    return metrics


def test_retrieval_recipe(setup):
    import finetune_retrieval

    root, data, pretrained = setup
    out = str(root / "retrieval")
    finetune_retrieval.main([
        "--init", pretrained, "--data", data, "--out", out, "--epochs", "2",
        "--steps-per-epoch", "3", "--batch-size", "4", "--max-regions", "4",
        "--sequence-length", "16", "--decay-epochs", "1", "--verbose", "0",
        "--eval-split", "val"])
    metrics = outputs_of(out, "InterBERTRetriever")
    assert len(metrics["history"]["loss"]) == 2
    t2i = metrics["evaluation"]["modes"]["full"]["text_to_image"]
    assert t2i["num_queries"] == metrics["evaluation"]["protocol"][
        "num_captions"]
    assert os.path.exists(os.path.join(out, "evaluation",
                                       "retrieval_recall.png"))
    # The finetuned file records what made its training features (the
    # bundled data set, as its metadata.json names it), which the exporter
    # checks --image-extractor against.
    with open(os.path.join(data, "metadata.json")) as f:
        written = json.load(f)
    source = load_interbert(metrics["model"]).preprocessor.region_feature_source
    assert source["kind"] == "synthetic"
    assert (source["name"], source["seed"], source["feature_dim"]) == (
        written["name"], 2, 32)


@pytest.mark.one_session
def test_vcr_recipe(setup):
    import finetune_vcr

    root, data, pretrained = setup
    records = str(root / "mc.jsonl")
    # One question an image: the checks are about the recipe's outputs,
    # not about how much it learns.
    write_multiple_choice(os.path.join(data, "scenes.jsonl"), records,
                          questions_per_image=1)
    out = str(root / "vcr")
    summary = finetune_vcr.main([
        "--init", pretrained, "--data", data, "--records", records,
        "--out", out, "--epochs", "1", "--batch-size", "4",
        "--max-regions", "4", "--q-a-length", "16", "--qa-r-length", "24",
        "--verbose", "0"])
    metrics = outputs_of(out, "InterBERTMultipleChoice")
    assert set(metrics["accuracy"]) == {"q_a", "qa_r", "q_ar"}
    assert metrics["accuracy"]["q_ar"] <= min(metrics["accuracy"]["q_a"],
                                              metrics["accuracy"]["qa_r"])
    assert summary["eval_questions"] > 0


@pytest.mark.one_session
def test_text_recipe_and_a_vocabulary_mismatch(setup):
    import finetune_text

    root, data, pretrained = setup
    write_caption_tasks(os.path.join(data, "captions_en.jsonl"),
                        str(root / "text"))
    out = str(root / "text_run")
    finetune_text.main([
        "--init", pretrained, "--task-dir",
        str(root / "text" / "mentions_circle"), "--out", out, "--epochs", "1",
        "--batch-size", "8", "--sequence-length", "16", "--verbose", "0"])
    metrics = outputs_of(out, "InterBERTTextClassifier")
    assert 0.0 <= metrics["dev_accuracy"] <= 1.0
    assert metrics["labels"] == ["no", "yes"]
    with pytest.raises(ValueError, match="vocabulary of 30,522 word pieces "
                                         "but the tokenizer has 21,128"):
        finetune_text.main([
            "--init", pretrained, "--task-dir",
            str(root / "text" / "mentions_circle"), "--out",
            str(root / "zh"), "--language", "zh", "--verbose", "0"])
