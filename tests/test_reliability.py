"""Crash-safe outputs (docs/reliability.md): each case of the table there.

Faults are injected at the write points (a rename that fails, a save that
writes half a file and then reports a full disk, a crash between two
files) and each test checks that nothing truncated or half-written appears
under a final name, that the previous good state survives, and that running
again finishes with the result of an uninterrupted run. Everything here is
small: a two-layer Keras model stands in for InterBERT where the mechanism
does not depend on the model.
"""
import base64
import errno
import json
import os
import re
import sys

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT

from keras_interbert.utils import atomic
from keras_interbert.utils.atomic import atomic_directory
from keras_interbert.utils.atomic import atomic_path
from keras_interbert.utils.atomic import save_model_atomically
from keras_interbert.utils.atomic import write_json_atomically
from keras_interbert.utils.atomic import write_text_atomically

sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(folder):
    """Temporary files or folders of atomic writes under `folder`."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [os.path.join(root, n) for n in dirs + files
                  if atomic.PARTIAL_MARK in n or n.endswith(".tmp")]
    return found


# ------------------------------------------------------------ atomic writes

def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_atomically(path, {"run": 1})
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomically(path, {"run": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"run": 1}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_a_writer_stopped_half_way_leaves_nothing(tmp_path):
    path = tmp_path / "scores.npz"
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(path) as temporary:
            assert temporary.endswith(".npz")  # np.savez keeps the name
            with open(temporary, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            disk_full()
    assert os.listdir(tmp_path) == []


def test_atomic_files_get_ordinary_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert (os.stat(tmp_path / "a.txt").st_mode & 0o777) == 0o644


@pytest.mark.parametrize("exchange", [True, False],
                         ids=["renameat2", "rename-aside"])
def test_a_folder_replaces_the_old_one_only_when_complete(
        tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_renameat2_exchange", lambda: None)
    target = tmp_path / "1"
    target.mkdir()
    (target / "saved_model.pb").write_text("old")
    with pytest.raises(OSError, match="No space left"):
        with atomic_directory(target, overwrite=True) as staging:
            (tmp_path / staging / "saved_model.pb").write_text("new, half")
            disk_full()
    assert os.listdir(tmp_path) == ["1"]
    assert (target / "saved_model.pb").read_text() == "old"
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as staging:
        os.mkdir(os.path.join(staging, "assets.extra"))
        for name in ("saved_model.pb", "assets.extra/warmup"):
            with open(os.path.join(staging, name), "w") as f:
                f.write("new")
        # Until the block ends, the live version is the old one.
        assert (target / "saved_model.pb").read_text() == "old"
    assert os.listdir(tmp_path) == ["1"]
    assert (target / "assets.extra" / "warmup").read_text() == "new"


def test_read_json_names_the_damaged_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 3')
    with pytest.raises(ValueError, match=r"config\.json.*damaged or "
                       "truncated"):
        atomic.read_json(path)


# ------------------------------------------------- backups and checkpoints

def tiny_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dropout(0.5, seed=5),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


DATA = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
TARGET = DATA.sum(axis=1, keepdims=True)


def train(out, epochs=3, fault=None):
    """Trains the tiny model with the recipes' callbacks; returns it.

    `fault(model)` may patch the fresh model before `fit` (the injection).
    """
    from keras_interbert.training import AtomicModelCheckpoint
    from keras_interbert.training import ExactBackupAndRestore

    model = tiny_model()
    if fault is not None:
        fault(model)
    callbacks = [
        AtomicModelCheckpoint(os.path.join(out, "checkpoints",
                                           "epoch-{epoch:03d}.keras")),
        ExactBackupAndRestore(os.path.join(out, "backup"),
                              delete_checkpoint=False,
                              history_path=os.path.join(out, "history.csv")),
    ]
    model.fit(DATA, TARGET, batch_size=4, epochs=epochs, shuffle=False,
              callbacks=callbacks, verbose=0)
    return model


def history_epochs(out):
    from keras_interbert.training import read_history_csv

    return read_history_csv(os.path.join(out, "history.csv"))


def on_call(count, then):
    """A stand-in that runs the real function `count - 1` times, then
    `then(real, *args)`."""
    calls = {"n": 0}

    def wrap(real):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == count:
                return then(real, *args, **kwargs)
            return real(*args, **kwargs)
        return call
    return wrap


def half_written_then_disk_full(real, filepath, *args, **kwargs):
    """Writes half of what `real` would write at `filepath`, then fails."""
    real(filepath, *args, **kwargs)
    with open(filepath, "r+b") as f:
        f.truncate(os.path.getsize(filepath) // 2)
    disk_full()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: its weights and history are the reference."""
    out = str(tmp_path_factory.mktemp("straight"))
    model = train(out)
    return [keras.ops.convert_to_numpy(w) for w in model.weights], \
        history_epochs(out)


def assert_same_run(model, out, straight):
    weights, history = straight
    for a, b in zip(weights, model.weights):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b),
                                   rtol=1e-5, atol=1e-6)
    resumed = history_epochs(out)
    assert sorted(resumed) == sorted(history)
    for key in history:
        assert resumed[key] == pytest.approx(history[key], rel=1e-5), key
    assert history_epochs(out)["epoch"] == [0.0, 1.0, 2.0]
    assert not leftovers(out)
    for name in sorted(os.listdir(os.path.join(out, "checkpoints"))):
        keras.saving.load_model(os.path.join(out, "checkpoints", name))


def test_a_full_disk_while_backing_up_keeps_the_previous_backup(
        tmp_path, straight):
    out = str(tmp_path)

    def fault(model):  # the third backup (end of epoch 2) fills the disk
        model.save_weights = on_call(3, half_written_then_disk_full)(
            model.save_weights)

    with pytest.raises(OSError, match="No space left"):
        train(out, fault=fault)
    backup = os.path.join(out, "backup")
    with open(os.path.join(backup, "training_metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["epoch"] == 2
    assert sorted(os.listdir(backup)) == [
        "state-000002.seeds.npz", "state-000002.weights.h5",
        "training_metadata.json"]
    assert history_epochs(out)["epoch"] == [0.0, 1.0]
    # The re-run resumes from epoch 2 and ends where the straight run did.
    assert_same_run(train(out), out, straight)


def test_a_crash_between_the_backup_files_resumes_from_the_previous_one(
        tmp_path, monkeypatch, straight):
    from keras_interbert.training import exact_backup_and_restore as ebr

    out = str(tmp_path)
    # The second backup dies after its weights, before its metadata.
    monkeypatch.setattr(ebr, "write_json_atomically", on_call(
        2, lambda real, *a, **k: disk_full())(ebr.write_json_atomically))
    with pytest.raises(OSError, match="No space left"):
        train(out)
    monkeypatch.undo()
    with open(os.path.join(out, "backup", "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 1
    assert history_epochs(out)["epoch"] == [0.0]
    assert_same_run(train(out), out, straight)


def test_a_full_disk_while_checkpointing_leaves_no_truncated_checkpoint(
        tmp_path, straight):
    out = str(tmp_path)

    def fault(model):  # the checkpoint of epoch 2 fills the disk
        model.save = on_call(2, half_written_then_disk_full)(model.save)

    with pytest.raises(OSError, match="No space left"):
        train(out, fault=fault)
    assert os.listdir(os.path.join(out, "checkpoints")) == ["epoch-001.keras"]
    assert not leftovers(out)
    # The backup counts an epoch only after its checkpoint: epoch 2 (index
    # 1) is trained again and its checkpoint written on the re-run, and
    # history.csv holds every epoch once.
    with open(os.path.join(out, "backup", "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 1
    assert history_epochs(out)["epoch"] == [0.0]
    assert_same_run(train(out), out, straight)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
        "epoch-001.keras", "epoch-002.keras", "epoch-003.keras"]


def test_a_truncated_backup_is_named_with_the_folder_to_delete(tmp_path):
    from keras_interbert.training.exact_backup_and_restore import (
        BackupDamagedError)

    out = str(tmp_path)
    train(out, epochs=1)
    backup = os.path.join(out, "backup")
    weights = os.path.join(backup, "state-000001.weights.h5")
    open(weights, "wb").close()  # cut to zero bytes behind our back
    with pytest.raises(BackupDamagedError, match=(
            f"{re.escape(weights)}: cannot be loaded.*delete that folder")):
        train(out)
    with open(os.path.join(backup, "training_metadata.json"), "w") as f:
        f.write('{"epoch": ')
    with pytest.raises(BackupDamagedError, match="training_metadata.json"):
        train(out)


def test_save_model_atomically_keeps_the_old_model_on_a_full_disk(tmp_path):
    model = tiny_model()
    path = str(tmp_path / "pretrained.keras")
    save_model_atomically(model, path)
    before = open(path, "rb").read()
    real = model.save
    model.save = lambda filepath, *a, **k: half_written_then_disk_full(
        real, filepath)
    with pytest.raises(OSError, match="No space left"):
        save_model_atomically(model, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["pretrained.keras"]


@pytest.mark.tensorflow_only  # the same callbacks run above on every backend
def test_pretrain_after_a_full_disk_at_the_first_checkpoint(
        tmp_path, monkeypatch):
    """The issue's case: the checkpoint of epoch 1 hits a full disk. Before,
    a truncated epoch-001.keras stayed, and after the resume history.csv
    lacked epoch 0 while metrics.json called epoch 1 "first"."""
    import pretrain

    from keras_interbert.data.synthetic import write_dataset

    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    write_dataset(data, num_images=40, seed=1, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    argv = ["--out", out, "--data", data, *PRETRAIN_ARGS, "--steps", "2",
            "--steps-per-epoch", "1"]
    real = keras.Model.save

    def save(model, filepath, *args, **kwargs):
        if os.path.basename(filepath).startswith(".epoch-001."):
            return half_written_then_disk_full(
                real.__get__(model), filepath, *args, **kwargs)
        return real(model, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)
    with pytest.raises(OSError, match="No space left"):
        pretrain.main(argv)
    monkeypatch.undo()
    assert os.listdir(os.path.join(out, "checkpoints")) == []
    assert not leftovers(out)
    summary = pretrain.main(argv)
    history = history_epochs(out)
    assert history["epoch"] == [0.0, 1.0]
    assert summary["first"] == {k: v[0] for k, v in history.items()
                                if k != "epoch"}
    for name in ("epoch-001.keras", "epoch-002.keras"):
        keras.saving.load_model(os.path.join(out, "checkpoints", name))
    assert not os.path.exists(os.path.join(out, "backup"))
    assert not leftovers(out)


# ------------------------------------------------------- the folder guard

# Eager: for a few steps of the tiny model tracing costs more than the
# steps, and these checks are about files and folders.
PRETRAIN_ARGS = ["--steps", "4", "--steps-per-epoch", "2", "--batch-size",
                 "4", "--max-regions", "6", "--validation-steps", "1",
                 "--verbose", "0", "--run-eagerly"]


def test_pretrain_refuses_a_folder_it_did_not_write(tmp_path):
    import pretrain

    out = tmp_path / "out"
    out.mkdir()
    (out / "pretrained.keras").write_bytes(b"somebody's model")
    (out / "history.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(SystemExit, match="not written by the pretrain"):
        pretrain.main(["--out", str(out), "--data", str(tmp_path / "data"),
                       *PRETRAIN_ARGS])
    assert sorted(os.listdir(out)) == ["history.csv", "pretrained.keras"]
    assert (out / "pretrained.keras").read_bytes() == b"somebody's model"
    assert (out / "history.csv").read_text() == "epoch,loss\n0,1.0\n"


def test_a_resume_with_changed_arguments_names_old_and_new(tmp_path):
    import pretrain

    from keras_interbert.utils.run_directory import claim_run_directory
    from keras_interbert.utils.run_directory import run_arguments

    out = str(tmp_path / "out")
    argv = ["--out", out, "--data", str(tmp_path / "data"), *PRETRAIN_ARGS]
    # What an interrupted first attempt leaves: its record and a backup.
    claim_run_directory(out, "pretrain", run_arguments(
        pretrain.parse_args(argv), ignore=pretrain.NOT_DEFINING))
    os.makedirs(os.path.join(out, "backup"))
    with pytest.raises(SystemExit) as raised:
        pretrain.main(argv + ["--steps", "8", "--batch-size", "8", "--seed",
                              "7"])
    message = str(raised.value)
    assert "--batch-size: 4 in the run, 8 now" in message
    assert "--steps: 4 in the run, 8 now" in message
    assert "--seed: 42 in the run, 7 now" in message
    # Verbosity and the crash aid do not define a run.
    from keras_interbert.utils.run_directory import claim_run_directory as c
    assert c(out, "pretrain", run_arguments(pretrain.parse_args(
        argv + ["--verbose", "2", "--crash-after-steps", "3"]),
        ignore=pretrain.NOT_DEFINING)).resumed


def test_a_finished_run_is_reported_and_left_unchanged(tmp_path, capsys):
    import pretrain

    from keras_interbert.utils.run_directory import claim_run_directory
    from keras_interbert.utils.run_directory import run_arguments

    out = str(tmp_path / "out")
    argv = ["--out", out, "--data", str(tmp_path / "data"), *PRETRAIN_ARGS]
    run = claim_run_directory(out, "pretrain", run_arguments(
        pretrain.parse_args(argv), ignore=pretrain.NOT_DEFINING))
    write_json_atomically(os.path.join(out, "metrics.json"), {"steps": 4})
    run.finish()
    before = {n: os.stat(os.path.join(out, n)).st_mtime_ns
              for n in os.listdir(out)}
    assert pretrain.main(argv) == {"steps": 4}
    assert "finished already; nothing was changed" in capsys.readouterr().out
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns
            for n in os.listdir(out)} == before


@pytest.mark.parametrize("recipe,argv", [
    ("finetune_retrieval", ["--init", "x.keras", "--data", "d"]),
    ("finetune_text", ["--init", "x.keras", "--task-dir", "t"]),
    ("finetune_vcr", ["--init", "x.keras", "--data", "d"]),
])
def test_finetuning_recipes_refuse_a_foreign_folder(tmp_path, recipe, argv):
    import importlib

    out = tmp_path / "out"
    out.mkdir()
    (out / "finetuned.keras").write_bytes(b"somebody's model")
    with pytest.raises(SystemExit, match=f"not written by the {recipe}"):
        importlib.import_module(recipe).main(argv + ["--out", str(out)])
    assert os.listdir(out) == ["finetuned.keras"]


# ------------------------------------------------------ data conversion

FEATURE_DIM = 6


def tsv_file(path, ids, header=False):
    from keras_interbert.data import convert

    rng = np.random.default_rng(len(ids))
    lines = ["\t".join(convert.LXMERT_FIELDS) + "\n"] if header else []
    for image_id in ids:
        boxes = np.array([[1, 2, 30, 40], [5, 5, 20, 25]], np.float32)
        features = rng.random((2, FEATURE_DIM)).astype(np.float32)
        b64 = {k: base64.b64encode(np.ascontiguousarray(v)).decode()
               for k, v in (("ids", np.arange(2, dtype=np.int64)),
                            ("conf", np.full(2, 0.5, np.float32)),
                            ("boxes", boxes), ("features", features))}
        lines.append("\t".join([
            image_id, "50", "60", b64["ids"], b64["conf"], b64["ids"],
            b64["conf"], "2", b64["boxes"], b64["features"]]) + "\n")
    path.write_text("".join(lines))
    return str(path)


def convert_main(*argv):
    from keras_interbert.data import convert

    return convert.main([*argv, "--no-progress"])


def test_convert_overwrite_deletes_only_the_shards_of_its_split(tmp_path):
    from keras_interbert.data.region_features import read_manifest
    from keras_interbert.data.region_features import region_image_ids

    out = str(tmp_path / "regions")
    extra = tsv_file(tmp_path / "extra.tsv", ["e0", "e1", "e2"])
    train = tsv_file(tmp_path / "train.tsv", ["t0", "t1"])
    assert convert_main("tsv", extra, "--output-dir", out, "--split",
                        "train-extra", "--examples-per-shard", "1") == 0
    # `train` next to `train-extra` is a new split, not an existing one...
    assert convert_main("tsv", train, "--output-dir", out) == 0
    # ...and replacing it leaves train-extra's shards alone.
    assert convert_main("tsv", tsv_file(tmp_path / "new.tsv", ["n0"]),
                        "--output-dir", out, "--overwrite") == 0
    assert region_image_ids(out, split="train") == ["n0"]
    assert region_image_ids(out, split="train-extra") == ["e0", "e1", "e2"]
    assert sorted(os.listdir(out)) == [
        "manifest.json", "train-00000.tfrecord", "train-extra-00000.tfrecord",
        "train-extra-00001.tfrecord", "train-extra-00002.tfrecord"]
    assert set(read_manifest(out)["splits"]) == {"train", "train-extra"}


def test_a_header_only_tsv_writes_no_split(tmp_path, capsys):
    out = tmp_path / "regions"
    empty = tsv_file(tmp_path / "empty.tsv", [], header=True)
    assert convert_main("tsv", empty, "--output-dir", str(out)) == 1
    assert "no images to convert" in capsys.readouterr().err
    assert not [n for n in os.listdir(out) if n.endswith(".tfrecord")]
    assert not os.path.exists(out / "manifest.json")


def test_a_report_into_a_missing_folder_fails_before_any_work(tmp_path):
    out = tmp_path / "regions"
    train = tsv_file(tmp_path / "train.tsv", ["t0"])
    with pytest.raises(SystemExit):
        convert_main("tsv", train, "--output-dir", str(out), "--report",
                     str(tmp_path / "missing" / "report.json"))
    assert not out.exists()


@pytest.mark.parametrize("shard", ["../other/train-00000.tfrecord",
                                   "/tmp/train-00000.tfrecord",
                                   "sub/train-00000.tfrecord"])
def test_manifest_shard_paths_stay_in_their_folder(tmp_path, shard):
    from keras_interbert.data.errors import RegionDataError
    from keras_interbert.data.region_features import region_files

    out = str(tmp_path / "data" / "regions")
    assert convert_main("tsv", tsv_file(tmp_path / "t.tsv", ["t0"]),
                        "--output-dir", out) == 0
    outside = tmp_path / "data" / "other"
    outside.mkdir()
    (outside / "train-00000.tfrecord").write_text("somebody else's shard")
    manifest_path = os.path.join(out, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest["splits"]["train"]["shards"][0]["path"] = shard
    write_json_atomically(manifest_path, manifest)
    with pytest.raises(RegionDataError, match="not a plain name"):
        region_files(out, split="train")
    # An overwrite must not delete outside the folder either.
    assert convert_main("tsv", tsv_file(tmp_path / "u.tsv", ["u0"]),
                        "--output-dir", out, "--overwrite") == 1
    assert (outside / "train-00000.tfrecord").exists()


# ---------------------------------------------------------------- export

@pytest.mark.parametrize("name", ["../escape", "/tmp/absolute", "a/b", "..",
                                  ""])
def test_export_names_stay_inside_the_output_folder(tmp_path, name):
    from keras_interbert.export.__main__ import main

    with pytest.raises(SystemExit, match="--name"):
        main(["interbert_tiny_en", "--name", name, "--output-dir",
              str(tmp_path / "saved_models"), "--overwrite"])
    assert not (tmp_path / "saved_models").exists()


@pytest.mark.tensorflow_only  # export runs on TensorFlow (it re-executes)
def test_a_failed_export_keeps_the_live_version(tmp_path, monkeypatch):
    import tensorflow as tf
    from conftest import TINY_BACKBONE
    from test_export import tiny_vocabulary

    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTRetriever
    from keras_interbert.export import ExportOptions
    from keras_interbert.export import exporter
    from keras_interbert.export import export_for_serving

    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("".join(t + "\n" for t in tiny_vocabulary()))
    options = ExportOptions(vocabulary=str(vocabulary), sequence_length=12,
                            max_regions=6)
    model = InterBERTRetriever(InterBERTBackbone(**TINY_BACKBONE))
    live = tmp_path / "saved_models" / "retrieval" / "1"
    live.mkdir(parents=True)
    (live / "saved_model.pb").write_bytes(b"the version being served")
    monkeypatch.setattr(exporter, "write_warmup_requests", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_for_serving(model, str(live), options, overwrite=True)
    assert os.listdir(live.parent) == ["1"]
    assert os.listdir(live) == ["saved_model.pb"]
    assert (live / "saved_model.pb").read_bytes() == b"the version being served"
    monkeypatch.undo()
    export_for_serving(model, str(live), options, overwrite=True)
    assert os.listdir(live.parent) == ["1"]
    assert (live / "assets.extra" / "tf_serving_warmup_requests").exists()
    assert "score" in tf.saved_model.load(str(live)).signatures


# ------------------------------------------------------------ evaluation

class FakeTable:
    max_regions = 2

    def __init__(self, n):
        self.num_kept = np.ones(n, np.int64)

    def global_features(self):
        return np.arange(2 * len(self.num_kept), dtype=np.float32)


class FakeEvaluation:
    """The parts of a `RetrievalEvaluationSet` that `score_grid` reads."""

    def __init__(self, num_captions=3, num_images=5):
        self.num_captions, self.num_images = num_captions, num_images
        self.num_pairs = num_captions * num_images
        self.text = {"token_ids": np.arange(num_captions, dtype=np.int32)}
        self.caption_image_index = np.arange(num_captions) % num_images
        self.image_ids = [f"image{i}" for i in range(num_images)]
        self.table = FakeTable(num_images)

    def grid_dataset(self, batch_size, start=0):
        import tensorflow as tf

        n = self.num_images
        return tf.data.Dataset.range(start, self.num_pairs).batch(
            batch_size).map(lambda p: (
                {"token_ids": p // n, "image": p % n},
                {"caption_index": p // n, "image_index": p % n}))


class FakeScorer:
    name = "fake"

    def __init__(self, bad_batch=None):
        self.calls, self.bad_batch = 0, bad_batch

    def fingerprint(self):
        return "0" * 40

    def __call__(self, x):
        self.calls += 1
        scores = (np.asarray(x["token_ids"]) * 0.5
                  - np.asarray(x["image"])).astype(np.float32)
        if self.calls == self.bad_batch:
            scores[1] = np.nan
        return scores


def scores_path(tmp_path):
    return str(tmp_path / "scores_full.npz")


def partial_run(tmp_path):
    from keras_interbert.evaluation.grid_scoring import partial_paths
    from keras_interbert.evaluation.grid_scoring import score_grid

    path = scores_path(tmp_path)
    result = score_grid(FakeScorer(), FakeEvaluation(), 4, path,
                        max_batches=2, progress=False)
    assert result["next_pair"] == 8
    return path, partial_paths(path)


def finish(tmp_path):
    from keras_interbert.evaluation.grid_scoring import score_grid

    result = score_grid(FakeScorer(), FakeEvaluation(), 4,
                        scores_path(tmp_path), progress=False)
    expected = (np.arange(3)[:, None] * 0.5 - np.arange(5)[None, :])
    np.testing.assert_array_equal(result["scores"], expected)
    assert not leftovers(tmp_path)
    return result


@pytest.mark.parametrize("next_pair", [16, -1, 2.5, "8"])
def test_a_progress_file_out_of_range_names_the_files_to_delete(
        tmp_path, next_pair):
    from keras_interbert.evaluation.grid_scoring import ScoreFileError
    from keras_interbert.evaluation.grid_scoring import score_grid

    path, (data, state_path) = partial_run(tmp_path)
    with open(state_path) as f:
        state = json.load(f)
    write_json_atomically(state_path, dict(state, next_pair=next_pair))
    with pytest.raises(ScoreFileError, match=(
            f"next_pair.*Delete {re.escape(state_path)} and "
            f"{re.escape(data)}")):
        score_grid(FakeScorer(), FakeEvaluation(), 4, path, progress=False)
    os.remove(state_path)
    os.remove(data)
    finish(tmp_path)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_scored_pairs_are_refused_naming_the_file(tmp_path, value):
    from keras_interbert.evaluation.grid_scoring import ScoreFileError
    from keras_interbert.evaluation.grid_scoring import score_grid

    path, (data, state_path) = partial_run(tmp_path)
    scores = np.load(data, mmap_mode="r+")
    scores[3] = value
    scores.flush()
    del scores
    with pytest.raises(ScoreFileError,
                       match=f"{re.escape(data)}: 1 of the 8 scored"):
        score_grid(FakeScorer(), FakeEvaluation(), 4, path, progress=False)


@pytest.mark.parametrize("damage", ["inf", "shape", "truncated"])
def test_a_damaged_finished_score_file_names_the_file(tmp_path, damage):
    from keras_interbert.evaluation.grid_scoring import ScoreFileError
    from keras_interbert.evaluation.grid_scoring import load_scores

    finish(tmp_path)
    path = scores_path(tmp_path)
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    if damage == "inf":
        arrays["scores"][0, 0] = np.inf
    elif damage == "shape":
        arrays["scores"] = arrays["scores"][:, :4]
    with atomic_path(path) as temporary:
        np.savez(temporary, **arrays)
    if damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(100)
    with pytest.raises(ScoreFileError, match=(
            f"{re.escape(path)}: .*Delete {re.escape(path)}")):
        load_scores(path)


def test_a_model_giving_nan_stops_without_recording_it(tmp_path):
    from keras_interbert.evaluation.grid_scoring import partial_paths
    from keras_interbert.evaluation.grid_scoring import score_grid

    path = scores_path(tmp_path)
    with pytest.raises(FloatingPointError, match="pairs 4 to 7"):
        score_grid(FakeScorer(bad_batch=2), FakeEvaluation(), 4, path,
                   progress=False)
    with open(partial_paths(path)[1]) as f:
        assert json.load(f)["next_pair"] == 4
    assert finish(tmp_path)["resumed_from"] == 4


def test_a_failed_final_write_keeps_the_partial_scores(tmp_path, monkeypatch):
    from keras_interbert.evaluation import grid_scoring

    partial_run(tmp_path)
    monkeypatch.setattr(grid_scoring, "_write_atomically",
                        lambda path, write: disk_full())
    with pytest.raises(OSError, match="No space left"):
        grid_scoring.score_grid(FakeScorer(), FakeEvaluation(), 4,
                                scores_path(tmp_path), progress=False)
    monkeypatch.undo()
    assert not os.path.exists(scores_path(tmp_path))
    assert finish(tmp_path)["resumed_from"] > 0


# ------------------------------------------------------------ converters

def test_convert_original_refuses_nan_weights(tmp_path, fixture_npz):
    from keras_interbert.convert.__main__ import main

    state = {k: v for k, v in fixture_npz.items() if k.startswith("weights/")}
    name = sorted(state)[0]
    state[name] = state[name].copy()
    state[name].flat[0] = np.nan
    weights = str(tmp_path / "weights.npz")
    np.savez(weights, **state)
    config = tmp_path / "config.json"
    config.write_text(str(fixture_npz["config"]))
    out = str(tmp_path / "out.keras")
    from keras_interbert.convert.checkpoint_io import load_state_dict

    with pytest.raises(ValueError, match=(
            f"{re.escape(weights)}' holds 1 NaN or infinite values.*"
            f"{re.escape(name[len('weights/'):])}")):
        load_state_dict(weights)
    assert main(["original", "--config", str(config), "--weights", weights,
                 "--out", out]) == 1
    assert not os.path.exists(out)


def test_converter_inputs_are_named_in_their_errors(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from keras_interbert.convert.__main__ import main

    listed = str(tmp_path / "pytorch_model.bin")
    torch.save([torch.zeros(2)], listed)
    config = tmp_path / "config.json"
    config.write_text('{"vocab_size": ')
    truncated = tmp_path / "bert.keras"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    out = str(tmp_path / "out.keras")
    assert main(["original", "--config", str(config), "--weights", listed,
                 "--out", out]) == 1
    assert f"{config}: the original config is not valid JSON" in \
        capsys.readouterr().err
    config.write_text("{}")
    assert main(["original", "--config", str(config), "--weights", listed,
                 "--out", out]) == 1
    assert f"'{listed}' holds a list, not a state dict" in \
        capsys.readouterr().err
    assert main(["bert", "--checkpoint", str(truncated), "--single-layers",
                 "1", "--out", out]) == 1
    assert f"{truncated}: not a .keras archive" in capsys.readouterr().err
    assert not os.path.exists(out)


class _Killed(BaseException):
    """Stands in for a kill: no `except OSError` fallback catches it (the
    converter's cleanup of its own `.tmp` files still runs)."""


def _listed_split(out, split):
    from keras_interbert.data.region_features import read_manifest
    from keras_interbert.data.region_features import region_image_ids

    manifest = read_manifest(out)
    names = [s["path"] for s in manifest["splits"][split]["shards"]]
    assert all(os.path.isfile(os.path.join(out, n)) for n in names), names
    return names, region_image_ids(out, split=split)


@pytest.mark.parametrize("fault", [
    "replace:2", "manifest:1", "remove:1", "link:2", "manifest:2",
    "manifest:2:enospc", "link:1:eperm"])
def test_a_kill_while_replacing_a_split_leaves_the_old_or_the_new(
        tmp_path, monkeypatch, fault):
    from keras_interbert.data.region_features import writer as writer_module

    out = str(tmp_path / "regions")
    old_ids, new_ids = ["t0", "t1"], ["n0", "n1", "n2"]
    for split, ids in (("train", old_ids), ("train-extra", ["e0", "e1"])):
        assert convert_main("tsv", tsv_file(tmp_path / f"{split}.tsv", ids),
                            "--output-dir", out, "--split", split,
                            "--examples-per-shard", "1") == 0
    extra = _listed_split(out, "train-extra")
    new_tsv = tsv_file(tmp_path / "new.tsv", new_ids)

    what, nth, *error = fault.split(":")
    calls = {"n": 0}

    def faulty(original, is_ours):
        def call(*args, **kwargs):
            if is_ours(*args):
                calls["n"] += 1
                if calls["n"] == int(nth):
                    if error == ["enospc"]:
                        disk_full()
                    if error == ["eperm"]:
                        raise OSError(errno.EPERM, "no hard links here")
                    raise _Killed(fault)
            return original(*args, **kwargs)
        return call

    def train_shard(path, *_):
        return os.path.basename(path).startswith("train-0")

    if what == "manifest":
        monkeypatch.setattr(writer_module, "_write_json_atomic", faulty(
            writer_module._write_json_atomic, lambda *_: True))
    else:
        name = {"replace": "replace", "remove": "remove", "link": "link"}[what]
        monkeypatch.setattr(os, name, faulty(getattr(os, name), train_shard))
    killed = False
    try:
        status = convert_main("tsv", new_tsv, "--output-dir", out,
                              "--examples-per-shard", "1", "--overwrite")
    except _Killed:
        killed = True
    monkeypatch.undo()
    assert killed == (not error), fault  # the fault was reached

    # Whatever happened, the manifest lists whole shards that exist: the old
    # split or the new one, never a mix; the other split is untouched.
    names, ids = _listed_split(out, "train")
    assert ids in (old_ids, new_ids), (fault, ids)
    assert _listed_split(out, "train-extra") == extra
    if not killed:  # an OSError after the new split was recorded
        assert status == 0 and ids == new_ids
    if fault in ("replace:2", "manifest:1"):
        assert ids == old_ids
    else:
        assert ids == new_ids

    # Converting again finishes the job and deletes the leftovers (only
    # files with this split's own names).
    (tmp_path / "regions" / "notes.txt").write_text("keep me")
    assert convert_main("tsv", new_tsv, "--output-dir", out,
                        "--examples-per-shard", "1", "--overwrite") == 0
    names, ids = _listed_split(out, "train")
    assert ids == new_ids
    assert names == [f"train-{i:05d}.tfrecord" for i in range(3)]
    assert sorted(os.listdir(out)) == sorted(
        ["manifest.json", "notes.txt", *names, *extra[0]])
