"""Killed finetuning runs resume (docs/reliability.md): each finetuning
recipe is ended abruptly half-way (`--crash-after-steps`, an `os._exit` as a
kill), started again with the same command, and must end with the outputs
of a run that was never interrupted: the same weights and per-epoch
history, every epoch once in history.csv and metrics.json, TensorBoard
steps each once. Also the TensorBoard callback on its own, unseeded
dropout under PyTorch, and the folder guard's answers to a changed argument
and to a finished run.

The recipes run in their own processes (a kill must end a process), under
this session's backend; in `make test`, whose three sessions run a `once`
check in one of them only, under TensorFlow. The tolerances: an attempt
loads the backed-up float32 weights, optimizer variables and random states
exactly (HDF5, bit for bit) and then runs the same computation on the same
batches, so the results agree to float32 rounding; they are not compared
bit for bit because the two processes compile their own kernels, and
multi-threaded CPU reductions need not add in the same order twice.
"""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import ONCE_BACKEND
from conftest import REPO_ROOT

from keras_interbert.training import read_history_csv
from keras_interbert.training.resumable_tensorboard import event_files
from keras_interbert.training.resumable_tensorboard import read_scalars

sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))

RTOL, ATOL = 1e-4, 1e-5
# A single session checks the recipes under its own backend; `make test`
# (INTERBERT_ONCE_BACKEND set) once, under TensorFlow.
RECIPE_BACKEND = BACKEND if ONCE_BACKEND is None else "tensorflow"


# ------------------------------------------------ TensorBoard on its own

def tiny_model(dropout_seed=5):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dropout(0.5, seed=dropout_seed),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


DATA = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
TARGET = DATA.sum(axis=1, keepdims=True)


class KilledAfter(keras.callbacks.Callback):
    """Stops `fit` after `steps` batches as a kill would, except that the
    TensorBoard writers have flushed what they hold (they do every 10 events
    or 2 minutes): the worst case, the most events of the lost steps on
    disk."""

    def __init__(self, steps, tensorboard):
        super().__init__()
        self.steps, self.seen, self.tensorboard = steps, 0, tensorboard

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.steps:
            for writer in self.tensorboard._writers.values():
                writer.flush()
            raise KeyboardInterrupt("killed")


def fit_with_tensorboard(out, kill_after=None, dropout_seed=5,
                         steps_per_epoch=False):
    from keras_interbert.training import ExactBackupAndRestore
    from keras_interbert.training import ResumableTensorBoard

    model = tiny_model(dropout_seed)
    tensorboard = ResumableTensorBoard(os.path.join(out, "tensorboard"),
                                       update_freq=1)
    callbacks = [tensorboard, ExactBackupAndRestore(
        os.path.join(out, "backup"), delete_checkpoint=False,
        history_path=os.path.join(out, "history.csv"),
        iterator_per_epoch=not steps_per_epoch)]
    if kill_after:
        callbacks.append(KilledAfter(kill_after, tensorboard))
    # 4 steps an epoch, validated at each epoch's end.
    if steps_per_epoch:  # the recipes' way: one iterator for the whole fit
        import tensorflow as tf

        from keras_interbert.training import completed_epochs

        done = completed_epochs(os.path.join(out, "backup"))
        data = tf.data.Dataset.from_tensor_slices((DATA, TARGET)).batch(
            4).repeat().skip(4 * done)
        model.fit(data, epochs=3, steps_per_epoch=4, shuffle=False,
                  validation_data=(DATA[:8], TARGET[:8]),
                  callbacks=callbacks, verbose=0)
    else:
        model.fit(DATA, TARGET, batch_size=4, epochs=3, shuffle=False,
                  validation_data=(DATA[:8], TARGET[:8]),
                  callbacks=callbacks, verbose=0)
    return model


def assert_each_step_once(scalars):
    for key, points in scalars.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), (key, steps)


def assert_same_scalars(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert sorted(s for s, _ in a[key]) == sorted(s for s, _ in b[key]), key
        np.testing.assert_allclose([v for _, v in sorted(a[key])],
                                   [v for _, v in sorted(b[key])],
                                   rtol=RTOL, atol=ATOL, err_msg=str(key))


@pytest.mark.parametrize("kill_after", [6, 9, 3])
def test_tensorboard_logs_of_a_resumed_run_continue_without_repeats(
        tmp_path, kill_after):
    """Killed in epoch 2 (step 6), right after epoch 2's last step (8 + 1:
    its events and epoch summaries flushed, its backup written), and in the
    first epoch, before any backup (3)."""
    straight = str(tmp_path / "straight")
    fit_with_tensorboard(straight)
    reference = read_scalars(os.path.join(straight, "tensorboard"))
    assert_each_step_once(reference)
    assert [s for s, _ in reference[("train", "batch_loss")]] == list(
        range(1, 13))
    assert [s for s, _ in reference[("train", "epoch_loss")]] == [0, 1, 2]

    out = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        fit_with_tensorboard(out, kill_after=kill_after)
    logged = read_scalars(os.path.join(out, "tensorboard"))
    assert max(s for s, _ in logged[("train", "batch_loss")]) == kill_after
    fit_with_tensorboard(out)
    resumed = read_scalars(os.path.join(out, "tensorboard"))
    # Two attempts' files read as one run: every step once, the straight
    # run's steps and values.
    assert_each_step_once(resumed)
    assert_same_scalars(reference, resumed)
    assert len(event_files(os.path.join(out, "tensorboard", "train"))) == (
        2 if kill_after > 4 else 1)
    assert not [n for root, _, names in os.walk(out) for n in names
                if ".partial" in n]


@pytest.mark.parametrize("steps_per_epoch", [True, False])
def test_unseeded_dropout_draws_the_masks_of_an_uninterrupted_run(
        tmp_path, steps_per_epoch):
    """A `Dropout` without a seed, as InterBERT's: under PyTorch Keras draws
    its masks from torch's global generator, not from a `SeedGenerator`
    state among the weights; the backup saves that generator's state and
    restores it where the uninterrupted run had it: after the resumed
    attempt's data iterator is made (which draws from it) when one iterator
    serves the whole `fit` (`steps_per_epoch`, the recipes), before it when
    each epoch makes its own."""
    straight = fit_with_tensorboard(str(tmp_path / "straight"),
                                    dropout_seed=None,
                                    steps_per_epoch=steps_per_epoch)
    out = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        fit_with_tensorboard(out, kill_after=6, dropout_seed=None,
                             steps_per_epoch=steps_per_epoch)
    resumed = fit_with_tensorboard(out, dropout_seed=None,
                                   steps_per_epoch=steps_per_epoch)
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a),
                                   keras.ops.convert_to_numpy(b), rtol=RTOL,
                                   atol=ATOL, err_msg=a.path)
    np.testing.assert_allclose(
        read_history_csv(os.path.join(out, "history.csv"))["loss"],
        read_history_csv(os.path.join(str(tmp_path / "straight"),
                                      "history.csv"))["loss"], rtol=RTOL)


# ------------------------------------------------------ the recipes

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from keras_interbert import InterBERTPretrainer
    from keras_interbert.data.multiple_choice_synthetic import (
        write_multiple_choice)
    from keras_interbert.data.synthetic import write_dataset
    from keras_interbert.data.text_classification_pipeline import (
        write_caption_tasks)

    root = tmp_path_factory.mktemp("finetune_resume")
    data = str(root / "data")
    write_dataset(data, num_images=40, seed=2, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    pretrained = str(root / "pretrained.keras")
    InterBERTPretrainer.from_preset(
        "interbert_tiny_en", image_feature_dim=16).save(pretrained)
    write_caption_tasks(os.path.join(data, "captions_en.jsonl"),
                        str(root / "text"))
    records = str(root / "mc.jsonl")
    write_multiple_choice(os.path.join(data, "scenes.jsonl"), records,
                          questions_per_image=1)
    return {"root": root, "data": data, "pretrained": pretrained,
            "records": records, "text": str(root / "text" / "mentions_circle")}


# Each recipe with small settings: three epochs (two for VCR), so that the
# kill falls in the middle of the run, after the first backup; a learning
# rate that changes during the run (warmup, and a decay after epoch 1 for
# retrieval), so that a resume at the wrong schedule position would show.
# Retrieval also keeps a moving average of the weights (--ema-momentum; the
# saved model holds the averaged weights), so a resume that lost the
# average would show too.
def recipe_argv(recipe, s):
    if recipe == "finetune_retrieval":
        return ["--init", s["pretrained"], "--data", s["data"], "--epochs",
                "3", "--steps-per-epoch", "2", "--batch-size", "4",
                "--max-regions", "4", "--sequence-length", "12",
                "--decay-epochs", "1", "--warmup-fraction", "0.3",
                "--learning-rate", "1e-3", "--ema-momentum", "0.5",
                "--no-eval"]
    if recipe == "finetune_text":
        return ["--init", s["pretrained"], "--task-dir", s["text"],
                "--epochs", "3", "--batch-size", "32", "--sequence-length",
                "12", "--learning-rate", "1e-3", "--warmup-fraction", "0.5"]
    return ["--init", s["pretrained"], "--data", s["data"], "--records",
            s["records"], "--epochs", "2", "--batch-size", "16",
            "--max-regions", "4", "--q-a-length", "12", "--qa-r-length", "16",
            "--learning-rate", "1e-3", "--warmup-fraction", "0.5",
            "--eval-split", "val"]


def run_recipe(recipe, out, argv, *extra):
    """The recipe in a process of its own, eager (`--run-eagerly`): at
    these sizes tracing the steps costs more than running them, and what is
    checked here (the backup, the resume, the outputs) is the same either
    way."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND=RECIPE_BACKEND)
    command = [sys.executable, os.path.join(REPO_ROOT, "recipes",
                                            f"{recipe}.py"),
               "--out", out, "--verbose", "0", "--run-eagerly", *argv,
               *extra]
    return subprocess.run(command, env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)


def weights_of(out):
    model = keras.saving.load_model(os.path.join(out, "finetuned.keras"),
                                    compile=False)
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def metrics_of(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.once
@pytest.mark.parametrize("recipe", ["finetune_retrieval", "finetune_text",
                                    "finetune_vcr"])
def test_a_killed_finetuning_run_resumes_to_the_uninterrupted_result(
        setup, tmp_path, recipe, capsys):
    import importlib

    argv = recipe_argv(recipe, setup)
    straight = str(tmp_path / "straight")
    result = run_recipe(recipe, straight, argv)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = metrics_of(straight)["steps_per_epoch"]
    epochs = len(metrics_of(straight)["history"]["loss"])

    out = str(tmp_path / "resumed")
    # Killed in the middle of the second epoch.
    killed = run_recipe(recipe, out, argv, "--crash-after-steps",
                        str(steps + max(1, steps // 2)))
    assert killed.returncode == 3, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "finetuned.keras"))
    assert not os.path.exists(os.path.join(out, "metrics.json"))
    assert read_history_csv(os.path.join(out, "history.csv"))["epoch"] == [0]

    # A changed defining argument is refused, naming both values, and
    # nothing is written.
    module = importlib.import_module(recipe)
    before = sorted(os.listdir(out))
    with pytest.raises(SystemExit, match=r"--seed: 42 in the run, 7 now"):
        module.main(["--out", out, *argv, "--seed", "7"])
    assert sorted(os.listdir(out)) == before

    again = run_recipe(recipe, out, argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming after epoch 1 (step {steps})" in again.stdout

    # Every epoch once, with the uninterrupted run's values, in history.csv
    # and in metrics.json...
    history = read_history_csv(os.path.join(out, "history.csv"))
    reference = read_history_csv(os.path.join(straight, "history.csv"))
    assert history["epoch"] == list(range(epochs))
    assert sorted(history) == sorted(reference)
    for key in reference:
        np.testing.assert_allclose(history[key], reference[key], rtol=RTOL,
                                   atol=ATOL, err_msg=key)
    metrics = metrics_of(out)
    assert metrics["resumed_after_epoch"] == 1
    assert sorted(metrics["history"]) == sorted(set(reference) - {"epoch"})
    for key, values in metrics["history"].items():
        assert values == history[key], key
        np.testing.assert_allclose(values, metrics_of(straight)["history"][
            key], rtol=RTOL, atol=ATOL, err_msg=key)
    # ...the same final weights (the optimizer's moments, its position in
    # the schedule and the dropout states came back)...
    a, b = weights_of(straight), weights_of(out)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=RTOL, atol=ATOL,
                                   err_msg=name)
    if recipe == "finetune_text":
        assert metrics["dev_accuracy"] == pytest.approx(
            metrics_of(straight)["dev_accuracy"], abs=1e-6)
    if recipe == "finetune_vcr":
        for key, value in metrics_of(straight)["accuracy"].items():
            assert metrics["accuracy"][key] == pytest.approx(value, abs=1e-6)
    # ...TensorBoard's epochs once each, with the same values...
    logged = read_scalars(os.path.join(out, "tensorboard"))
    assert_each_step_once(logged)
    assert [s for s, _ in sorted(logged[("train", "epoch_loss")])] == list(
        range(epochs))
    assert_same_scalars(read_scalars(os.path.join(straight, "tensorboard")),
                        logged)
    # ...and no backup or temporary file left.
    assert not os.path.exists(os.path.join(out, "backup"))
    assert not [n for root, _, names in os.walk(out) for n in names
                if ".partial" in n]

    # Once finished, the same command reports it and changes nothing.
    stamps = {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns
              for r, _, names in os.walk(out) for n in names}
    assert module.main(["--out", out, *argv, "--verbose", "0"]) == metrics
    assert "finished already; nothing was changed" in capsys.readouterr().out
    assert {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns
            for r, _, names in os.walk(out) for n in names} == stamps
