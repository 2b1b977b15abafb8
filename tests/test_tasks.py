"""The finetuning tasks: construction from pretrained models, saving and
reloading (across processes and backends), learning, schedules, bad input."""
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import BACKEND
from conftest import REPO_ROOT
from conftest import TINY_BACKBONE
from conftest import light_xla_env
from conftest import random_backbone_inputs
from conftest import to_numpy

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTMultipleChoice
from keras_interbert import InterBERTPretrainer
from keras_interbert import InterBERTRetriever
from keras_interbert import InterBERTTextClassifier
from keras_interbert import ModelLoadError
from keras_interbert import load_interbert
from keras_interbert.models.interbert_multiple_choice import (
    multiple_choice_accuracies)
from keras_interbert.models.loading import check_vocabulary
from keras_interbert.training import WarmupConstantStepDecay
from keras_interbert.training import finetuning_optimizer

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def pretrainer():
    return InterBERTPretrainer(InterBERTBackbone(**TINY_BACKBONE), 9)


def with_options(x, num_options=4):
    return {k: np.repeat(v[:, None], num_options, axis=1) for k, v in x.items()}


def test_retriever_keeps_the_pretrained_matching_head(pretrainer):
    x = random_backbone_inputs(batch=3)
    expected = to_numpy(pretrainer(x, training=False))["itm_logits"]
    retriever = InterBERTRetriever.from_pretrained(pretrainer)
    assert retriever.itm_head is pretrainer.itm_head
    assert retriever.backbone is pretrainer.backbone
    got = to_numpy(retriever(x, training=False))["itm_logits"]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    probability = retriever.match_probability(x)
    e = np.exp(expected - expected.max(-1, keepdims=True))
    np.testing.assert_allclose(probability, e[:, 0] / e.sum(-1), atol=1e-6)
    # A bare backbone gets a new head; a retriever is returned as is.
    fresh = InterBERTRetriever.from_pretrained(pretrainer.backbone)
    assert fresh.itm_head is not pretrainer.itm_head
    assert InterBERTRetriever.from_pretrained(retriever) is retriever


def test_each_task_reloads_with_identical_outputs(tmp_path, pretrainer):
    x = random_backbone_inputs(batch=2)
    tasks = [
        (InterBERTRetriever.from_pretrained(pretrainer), x),
        (InterBERTMultipleChoice.from_pretrained(pretrainer, num_options=4),
         with_options(x)),
        (InterBERTTextClassifier.from_pretrained(pretrainer, num_classes=3), x),
    ]
    for task, inputs in tasks:
        before = task.predict(inputs, verbose=0)
        path = str(tmp_path / f"{task.name}.keras")
        task.save(path)
        loaded = load_interbert(path)
        assert type(loaded) is type(task)
        after = loaded.predict(inputs, verbose=0)
        if isinstance(before, dict):
            before, after = before["itm_logits"], after["itm_logits"]
        assert before.shape == after.shape
        np.testing.assert_allclose(after, before, atol=1e-6)
    assert tasks[1][0].predict(tasks[1][1], verbose=0).shape == (2, 4)
    assert tasks[2][0].predict(x, verbose=0).shape == (2, 3)


def test_tasks_from_a_saved_pretrainer_and_a_preset(tmp_path, pretrainer):
    path = str(tmp_path / "pretrained.keras")
    pretrainer.save(path)
    x = random_backbone_inputs(batch=2)
    expected = to_numpy(pretrainer(x, training=False))["itm_logits"]
    retriever = InterBERTRetriever.from_pretrained(path)
    np.testing.assert_allclose(
        to_numpy(retriever(x, training=False))["itm_logits"], expected,
        atol=1e-6)
    classifier = InterBERTTextClassifier.from_pretrained(path, num_classes=2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(
            classifier.backbone.token_embedding.embeddings),
        keras.ops.convert_to_numpy(pretrainer.backbone.token_embedding.embeddings))
    preset = InterBERTRetriever.from_pretrained("interbert_tiny_en",
                                                image_feature_dim=24)
    assert preset.backbone.image_feature_dim == 24
    assert preset.backbone.vocabulary_size == 30522


def run_stage(backend, *args):
    env = light_xla_env(dict(os.environ, KERAS_BACKEND=backend), backend)
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "helpers", "task_round_trip.py"),
         *args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_pretrain_save_load_finetune_save_load_across_processes(
        tmp_path, saved_by_other_backend):
    # Pretrained and saved under another backend, in a process of its own
    # (the session's writer process, conftest.py), finetuned here, and the
    # finetuned file loaded in a third process: identical outputs at every
    # load.
    from helpers import task_round_trip

    out = str(tmp_path)
    for name in ("pretrained.keras", "pretrained.saved.npz"):
        shutil.copy(saved_by_other_backend / name, out)
    task_round_trip.main("finetune", out)
    stdout = run_stage(BACKEND, "predict", out, "finetuned")
    # Two epochs of two batches; the preprocessor's class found in a
    # process that imported only keras_interbert.
    assert ("preprocessor InterBERTRetrieverPreprocessor optimizer "
            "iterations 4") in stdout, stdout

    def load(name):
        with np.load(os.path.join(out, name)) as data:
            return {k: data[k] for k in data.files}

    saved, loaded = load("pretrained.saved.npz"), load("pretrained.loaded.npz")
    for key in ("itm_logits", "msm_logits", "mrm_logits"):
        np.testing.assert_allclose(loaded[key], saved[key], atol=1e-5)
    saved, loaded = load("finetuned.saved.npz"), load("finetuned.loaded.npz")
    np.testing.assert_allclose(loaded["itm_logits"], saved["itm_logits"],
                               atol=1e-6)
    # Finetuning changed every variable that reaches the score.
    assert not np.allclose(saved["itm_logits"],
                           load("pretrained.saved.npz")["itm_logits"])


def test_bad_model_files_raise_clear_errors(tmp_path, pretrainer):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_interbert(tmp_path / "missing.keras")
    good = str(tmp_path / "good.keras")
    pretrainer.save(good)
    with open(good, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not a .keras archive"):
        InterBERTRetriever.from_pretrained(str(truncated))
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError, match="truncated"):
        load_interbert(text)
    inputs = keras.Input((3,))
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    other_path = str(tmp_path / "other.keras")
    other.save(other_path)
    with pytest.raises(ModelLoadError, match="not an InterBERT model"):
        InterBERTTextClassifier.from_pretrained(other_path, num_classes=2)
    with pytest.raises(ModelLoadError, match="neither a .keras file nor a preset"):
        InterBERTRetriever.from_pretrained("interbert_huge_xx")


def test_vocabulary_mismatch_is_refused(pretrainer):
    from keras_interbert.preprocessing import InterBERTTokenizer

    tokenizer = InterBERTTokenizer.from_preset("interbert_base_zh")
    with pytest.raises(ValueError, match=r"vocabulary of 120 word pieces but "
                                         r"the tokenizer has 21,128"):
        check_vocabulary(pretrainer.backbone, tokenizer, "pretrained.keras")
    english = InterBERTBackbone.from_preset("interbert_tiny_en")
    check_vocabulary(english, InterBERTTokenizer.from_preset(
        "interbert_base_en"))


def test_multiple_choice_checks_the_options_axis(pretrainer):
    model = InterBERTMultipleChoice.from_pretrained(pretrainer, num_options=4)
    x = random_backbone_inputs(batch=2)
    with pytest.raises(ValueError, match=r"'token_ids': expected \[batch, 4 "
                                         r"options, \.\.\.\]"):
        model(x)
    bad = with_options(x, 3)
    with pytest.raises(ValueError, match="4 options"):
        model(bad)
    wide = with_options(random_backbone_inputs(batch=2, feature_dim=10))
    with pytest.raises(ValueError, match="expected feature width 24"):
        model(wide)


def test_multiple_choice_accuracies_by_hand():
    q_a = (np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3]))
    qa_r = (np.array([1, 1, 2, 0]), np.array([1, 0, 2, 0]))
    assert multiple_choice_accuracies(q_a, qa_r) == {
        "q_a": 0.75, "qa_r": 0.75, "q_ar": 0.5}
    with pytest.raises(ValueError, match="same questions"):
        multiple_choice_accuracies(q_a, (qa_r[0][:3], qa_r[1][:3]))


def test_warmup_constant_step_decay_values():
    schedule = WarmupConstantStepDecay(4e-5, warmup_steps=10,
                                       decay_steps=[120, 160])
    rates = [float(schedule(step)) for step in (0, 4, 9, 10, 119, 120, 159,
                                                160, 500)]
    expected = [4e-6, 2e-5, 4e-5, 4e-5, 4e-5, 4e-6, 4e-6, 4e-7, 4e-7]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    config = schedule.get_config()
    assert WarmupConstantStepDecay(**config).decay_steps == [120, 160]
    with pytest.raises(ValueError, match="increasing"):
        WarmupConstantStepDecay(1e-4, decay_steps=[5, 3])


def test_finetuning_optimizer_groups_and_epoch_boundaries():
    optimizer = finetuning_optimizer(total_steps=200, steps_per_epoch=10,
                                     decay_epochs=(12, 16, 40),
                                     ema_momentum=0.999)
    schedule = optimizer._learning_rate
    assert schedule.warmup_steps == 20
    assert schedule.decay_steps == [120, 160]  # epoch 40 is past the run
    assert optimizer.use_ema and optimizer.ema_momentum == 0.999
    backbone = InterBERTBackbone(**TINY_BACKBONE)
    by_path = {v.path: v for v in backbone.weights}
    decayed = {p for p, v in by_path.items() if optimizer.uses_weight_decay(v)}
    assert any(p.endswith("kernel") for p in decayed)
    assert not any(p.endswith("bias") or "layer_norm" in p for p in decayed)
    assert {optimizer.learning_rate_multiplier(v) for v in by_path.values()} \
        == {1.0}
    with pytest.raises(ValueError, match="needs `steps_per_epoch`"):
        finetuning_optimizer(total_steps=10, decay_epochs=(1,))


def _choice_task(num_questions, seed):
    """Questions whose right option names the colour of the image.

    Every image is one region (and a global slot) whose feature encodes one
    of four colours plus noise; the four options are the four colour words
    in a random order. Neither the text nor the image alone tells the right
    option.
    """
    rng = np.random.default_rng(seed)
    colour_words = np.array([11, 12, 13, 14])
    prototypes = rng.normal(size=(4, 24)).astype("float32")
    colours = rng.integers(0, 4, num_questions)
    order = np.argsort(rng.random((num_questions, 4)), axis=1)
    token_ids = np.zeros((num_questions, 4, 4), "int32")
    token_ids[:, :, 0] = 2
    token_ids[:, :, 1] = 20 + rng.integers(0, 5, (num_questions, 1))
    token_ids[:, :, 2] = colour_words[order]
    token_ids[:, :, 3] = 3
    region = prototypes[colours] + 0.3 * rng.normal(size=(num_questions, 24))
    features = np.repeat(region[:, None, None], 4, axis=1)
    features = np.repeat(features, 2, axis=2).astype("float32")
    locations = np.zeros((num_questions, 4, 2, 5), "float32")
    locations[..., 2:] = 1.0
    x = {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "text_mask": np.ones_like(token_ids),
        "region_features": features,
        "region_locations": locations,
        "region_mask": np.ones((num_questions, 4, 2), "int32"),
    }
    labels = np.argmax(order == colours[:, None], axis=1).astype("int32")
    return x, labels


def test_multiple_choice_learns_a_task_that_needs_the_image():
    keras.utils.set_random_seed(3)
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE, dropout=0.0,
                                        image_dropout=0.0))
    model = InterBERTMultipleChoice(backbone, num_options=4, dropout=0.0)
    x, y = _choice_task(512, seed=0)
    train = {k: v[:384] for k, v in x.items()}
    test = {k: v[384:] for k, v in x.items()}
    model.compile(optimizer=keras.optimizers.Adam(3e-3))

    def accuracy():
        return np.mean(np.argmax(model.predict(test, verbose=0), -1) == y[384:])

    before = accuracy()
    model.fit(train, y[:384], epochs=12, batch_size=32, verbose=0)
    after = accuracy()
    assert after >= 0.8 and after > before + 0.3, (before, after)


def test_text_classifier_learns_a_word_rule():
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(0)

    def data(n):
        token_ids = rng.integers(20, 60, (n, 8)).astype("int32")
        token_ids[:, 0], token_ids[:, -1] = 2, 3
        labels = rng.integers(0, 2, n).astype("int32")
        # Class 1 texts contain word 7 somewhere; class 0 texts never do.
        where = rng.integers(1, 7, n)
        token_ids[labels == 1, where[labels == 1]] = 7
        x = {"token_ids": token_ids,
             "segment_ids": np.zeros_like(token_ids),
             "text_mask": np.ones_like(token_ids),
             "region_features": np.zeros((n, 1, 24), "float32"),
             "region_locations": np.zeros((n, 1, 5), "float32"),
             "region_mask": np.zeros((n, 1), "int32")}
        return x, labels

    x, y = data(512)
    x_test, y_test = data(256)
    model = InterBERTTextClassifier(InterBERTBackbone(**TINY_BACKBONE),
                                    num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    accuracy = np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)
    assert accuracy >= 0.9
    assert all(not v.trainable for layer in model.backbone.image_stream_layers
               for v in layer.weights)


def test_save_model_atomically_leaves_no_partial_file(tmp_path, pretrainer):
    from keras_interbert.training import save_model_atomically

    path = save_model_atomically(pretrainer, tmp_path / "model.keras")
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]
    assert isinstance(load_interbert(path), InterBERTPretrainer)
    with pytest.raises(ValueError, match="expected a .keras path"):
        save_model_atomically(pretrainer, tmp_path / "model.h5")
