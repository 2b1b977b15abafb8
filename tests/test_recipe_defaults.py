"""The quickstart's recipe settings, and the ablations that share them."""
import os
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))
import ablations  # noqa: E402
import quickstart  # noqa: E402

# Argument parsing only: the same under every KERAS_BACKEND (conftest.py).
pytestmark = pytest.mark.once

SHARED = ("preset", "pretrain_steps", "pretrain_batch_size",
          "pretrain_learning_rate", "finetune_learning_rate",
          "finetune_epochs", "finetune_decay_epochs")


def test_unset_settings_come_from_the_recipe():
    improved = quickstart.parse_args([])
    assert (improved.preset, improved.pretrain_steps,
            improved.pretrain_batch_size,
            improved.pretrain_learning_rate, improved.finetune_learning_rate,
            improved.finetune_epochs, improved.finetune_decay_epochs) == (
        "interbert_mini_en", 600, 64, 1e-3, 1e-3, 12, "10")
    faithful = quickstart.parse_args(["--recipe", "faithful", "--language",
                                      "zh"])
    assert (faithful.preset, faithful.pretrain_steps,
            faithful.pretrain_batch_size,
            faithful.pretrain_learning_rate, faithful.finetune_learning_rate,
            faithful.finetune_epochs, faithful.finetune_decay_epochs) == (
        "interbert_tiny_zh", 300, 32, 5e-4, 5e-4, 10, "8")


def test_settings_given_on_the_command_line_are_kept():
    args = quickstart.parse_args([
        "--preset", "interbert_tiny_en", "--pretrain-steps", "40",
        "--pretrain-batch-size", "16",
        "--pretrain-learning-rate", "2e-4", "--finetune-learning-rate", "3e-4",
        "--finetune-epochs", "5", "--finetune-decay-epochs", ""])
    assert (args.preset, args.pretrain_steps, args.pretrain_batch_size,
            args.pretrain_learning_rate, args.finetune_learning_rate,
            args.finetune_epochs, args.finetune_decay_epochs) == (
        "interbert_tiny_en", 40, 16, 2e-4, 3e-4, 5, "")
    # Five epochs: the decay after 80% of them, unless given.
    assert quickstart.parse_args(
        ["--finetune-epochs", "5"]).finetune_decay_epochs == "4"


@pytest.mark.parametrize("argv", [[], ["--recipe", "faithful", "--language",
                                       "zh"]])
def test_the_ablations_train_with_the_quickstarts_settings(argv):
    mine = ablations.parse_args(["--out", "unused"] + argv)
    theirs = quickstart.parse_args(argv)
    assert {k: getattr(mine, k) for k in SHARED} == {
        k: getattr(theirs, k) for k in SHARED}
    # Its own step count sets the epochs.
    fewer = ablations.parse_args(["--out", "unused", "--finetune-steps", "300"]
                                 + argv)
    assert (fewer.finetune_epochs, fewer.finetune_decay_epochs) == (3, "2")
