import json
import os

import numpy as np
import pytest

from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.pretraining_pipeline import PretrainingDataConfig
from keras_interbert.data.pretraining_pipeline import numpy_batches
from keras_interbert.data.pretraining_pipeline import pretraining_dataset
from keras_interbert.data.pretraining_pipeline import pretraining_examples
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import region_dataset
from keras_interbert.data.synthetic import write_dataset
from keras_interbert.preprocessing import InterBERTTokenizer

# The pipeline's own checks are the same under every KERAS_BACKEND
# (conftest.py); feeding its batches to the model is not (every_backend).
pytestmark = pytest.mark.once


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bundled"))
    write_dataset(out, num_images=80, seed=3, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return InterBERTTokenizer.from_preset("interbert_base_en")


def make(bundled, tokenizer, **overrides):
    config = PretrainingDataConfig(**dict(dict(batch_size=8, max_regions=6,
                                               shuffle_buffer=16), **overrides))
    return pretraining_dataset(os.path.join(bundled, "regions"),
                               os.path.join(bundled, "captions_en.jsonl"),
                               tokenizer, config, split="train")


def examples(bundled, tokenizer, **overrides):
    config = PretrainingDataConfig(**dict(dict(max_regions=6, shuffle_buffer=16),
                                          **overrides))
    return pretraining_examples(os.path.join(bundled, "regions"),
                                os.path.join(bundled, "captions_en.jsonl"),
                                tokenizer, config, split="train")


def caption_owner(index):
    starts = index.start.numpy()
    counts = index.count.numpy()
    owner = np.zeros(index.num_captions, int)
    for k, (s, c) in enumerate(zip(starts, counts)):
        owner[s:s + c] = k
    return owner


def dense_targets(x, y):
    """`msm_labels`, `msm_weights` over all T positions, from the gathered ones."""
    labels = np.zeros_like(x["token_ids"])
    weights = np.zeros(x["token_ids"].shape, "float32")
    for row, positions in enumerate(x["msm_positions"]):
        for j, p in enumerate(positions):
            if y["msm_weights"][row, j] > 0:
                assert weights[row, p] == 0  # each position at most once
                labels[row, p] = y["msm_labels"][row, j]
                weights[row, p] = y["msm_weights"][row, j]
    return labels, weights


def test_batch_layout(bundled, tokenizer):
    (x, y), = numpy_batches(make(bundled, tokenizer, msm_positions=False,
                                 mrm_positions=False), 1)
    assert {k: v.shape for k, v in x.items()} == {
        "token_ids": (8, 36), "segment_ids": (8, 36), "text_mask": (8, 36),
        "region_features": (8, 7, 16), "region_locations": (8, 7, 5),
        "region_mask": (8, 7)}
    assert y["msm_labels"].shape == (8, 36) and y["msm_weights"].shape == (8, 36)
    assert y["mrm_targets"].shape == (8, 7, 49) and y["mrm_weights"].shape == (8, 7)
    assert y["itm_labels"].shape == (8,)
    assert (x["token_ids"][:, 0] == tokenizer.cls_id).all()
    assert (x["region_mask"][:, 0] == 1).all()
    np.testing.assert_array_equal(x["region_locations"][:, 0], [[0, 0, 1, 1, 1]] * 8)
    assert (y["mrm_weights"][:, 0] == 0).all()
    assert (y["mrm_weights"] <= x["region_mask"]).all()
    assert (y["msm_weights"] <= x["text_mask"]).all()


def test_negatives_never_pair_an_image_with_its_own_caption(bundled, tokenizer):
    ds, index = examples(bundled, tokenizer, repeat=True)
    owner = caption_owner(index)
    labels = []
    for e in ds.take(600).as_numpy_iterator():
        own = owner[e["caption_index"]] == e["image_index"]
        assert own == (e["itm_labels"] == 0), e["position"]
        labels.append(e["itm_labels"])
    # Binomial(600, 0.5): 5 standard deviations is about +-0.1.
    assert 0.4 < np.mean(labels) < 0.6


def test_same_seed_same_batches_other_seed_other_batches(bundled, tokenizer):
    a = numpy_batches(make(bundled, tokenizer, seed=5), 3)
    b = numpy_batches(make(bundled, tokenizer, seed=5), 3)
    c = numpy_batches(make(bundled, tokenizer, seed=6), 3)
    for (xa, ya), (xb, yb) in zip(a, b):
        for k in xa:
            np.testing.assert_array_equal(xa[k], xb[k])
        for k in ya:
            np.testing.assert_array_equal(ya[k], yb[k])
    assert any(not np.array_equal(xa["token_ids"], xc["token_ids"])
               for (xa, _), (xc, _) in zip(a, c))


def test_text_targets_are_the_true_word_pieces(bundled, tokenizer):
    transformers = pytest.importorskip("transformers")
    from keras_interbert.presets import preset_vocabulary
    hf = transformers.BertTokenizer(preset_vocabulary("interbert_base_en"))
    ds, index = examples(bundled, tokenizer)
    texts = [t.decode() for t in index.texts.numpy()]
    elements = list(ds.take(8).as_numpy_iterator())
    (x, y), = numpy_batches(make(bundled, tokenizer, shuffle_buffer=16,
                                 msm_positions=False), 1)
    assert sum(y["msm_weights"].sum(1) > 0) >= 4
    for row, e in enumerate(elements):
        expected = [101] + hf.convert_tokens_to_ids(
            hf.tokenize(texts[e["caption_index"]]))[:34] + [102]
        length = len(expected)
        assert x["text_mask"][row].sum() == length
        targets = y["msm_weights"][row] > 0
        # Unmasked positions show the caption; every target's label is the
        # caption's word piece there.
        original = np.where(targets, y["msm_labels"][row], x["token_ids"][row])
        np.testing.assert_array_equal(original[:length], expected)
        assert not targets[0] and not targets[length - 1]
        if targets.any():
            span = np.flatnonzero(targets)
            assert span[-1] - span[0] + 1 == len(span)  # one contiguous span


def test_region_masking_and_global_slot(bundled, tokenizer):
    raw = {e["image_id"].decode(): e for e in region_dataset(
        os.path.join(bundled, "regions"), split="train").as_numpy_iterator()}
    ds, index = examples(bundled, tokenizer, mrm_probability=0.5,
                         shuffle_buffer=0, mrm_positions=False)
    seen_masked = 0
    for e in ds.take(40).as_numpy_iterator():
        image_id = index.image_ids[e["image_index"]]
        source = raw[image_id]
        n = min(source["features"].shape[0], 6)
        masked = e["mrm_weights"][1:n + 1] > 0
        seen_masked += masked.sum()
        feats = e["region_features"][1:n + 1]
        assert (feats[masked] == 0).all()
        np.testing.assert_allclose(feats[~masked], source["features"][:n][~masked], atol=1e-6)
        # Original pretraining code: the mean of the masked features over the
        # number of real regions.
        np.testing.assert_allclose(e["region_features"][0], feats.sum(0) / n, atol=1e-5)
        # Targets are the stored distributions; the weights pick the zeroed
        # regions (and never the global slot or padding).
        np.testing.assert_allclose(e["mrm_targets"][1:n + 1],
                                   source["class_probs"][:n], atol=1e-6)
        assert e["mrm_weights"][0] == 0 and (e["mrm_targets"][0] == 0).all()
        assert (e["mrm_weights"][n + 1:] == 0).all()
    assert seen_masked > 10


def test_unmasked_global_option(bundled, tokenizer):
    ds, index = examples(bundled, tokenizer, mrm_probability=0.5,
                         global_feature="unmasked_mean", shuffle_buffer=0)
    raw = {e["image_id"].decode(): e for e in region_dataset(
        os.path.join(bundled, "regions"), split="train").as_numpy_iterator()}
    for e in ds.take(10).as_numpy_iterator():
        source = raw[index.image_ids[e["image_index"]]]
        np.testing.assert_allclose(e["region_features"][0],
                                   source["features"][:6].mean(0), atol=1e-5)


def test_worker_shards_are_disjoint_and_complete(bundled, tokenizer):
    seen = []
    for worker in range(2):
        ds, index = examples(bundled, tokenizer, num_workers=2,
                             worker_index=worker, shuffle_buffer=0)
        seen.append({int(e["image_index"]) for e in ds.as_numpy_iterator()})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == index.num_images
    assert min(len(s) for s in seen) > 0


def test_length_buckets_keep_a_fixed_set_of_shapes(bundled, tokenizer):
    ds = make(bundled, tokenizer, bucket_lengths=(12, 20, 36), repeat=False)
    shapes = set()
    for x, y in ds.as_numpy_iterator():
        length = x["token_ids"].shape[1]
        shapes.add(length)
        assert x["text_mask"].sum(1).max() <= length
        assert y["msm_labels"].shape[1] == x["msm_positions"].shape[1] <= length
    assert shapes <= {12, 20, 36} and len(shapes) >= 2


def test_plain_token_and_region_masking_options(bundled, tokenizer):
    (x, y), = numpy_batches(make(bundled, tokenizer, msm="token", mrm="random"), 1)
    assert y["msm_weights"].sum() > 0
    with pytest.raises(ValueError, match="msm"):
        make(bundled, tokenizer, msm="spans")


def test_caption_of_a_missing_image_is_an_error(bundled, tokenizer, tmp_path):
    records = read_captions(os.path.join(bundled, "captions_en.jsonl"))
    records.append({"image_id": "no-such-image", "caption": "a red ring",
                    "split": "train"})
    path = str(tmp_path / "captions.jsonl")
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    with pytest.raises(RegionDataError, match="no-such-image"):
        pretraining_dataset(os.path.join(bundled, "regions"), path, tokenizer,
                            PretrainingDataConfig(batch_size=4), split="train")


@pytest.mark.every_backend
def test_batches_feed_the_model_under_this_backend(bundled, tokenizer):
    import keras
    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTPretrainer
    from keras_interbert.presets import preset_backbone_config
    config = dict(preset_backbone_config("interbert_tiny_en"), image_feature_dim=16)
    model = InterBERTPretrainer(InterBERTBackbone(**config), num_region_classes=49)
    x, y = next(iter(make(bundled, tokenizer)))
    outputs = model({k: keras.ops.convert_to_tensor(v.numpy()) for k, v in x.items()})
    width = x["msm_positions"].shape[1]
    assert tuple(outputs["msm_logits"].shape) == (8, width, 30522)
    assert tuple(outputs["mrm_logits"].shape) == (8, x["mrm_positions"].shape[1], 49)
    model.compile(optimizer="adam")
    logs = model.train_on_batch(
        {k: keras.ops.convert_to_tensor(v.numpy()) for k, v in x.items()},
        {k: keras.ops.convert_to_tensor(v.numpy()) for k, v in y.items()},
        return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["msm_loss"] > 0


def test_gathered_msm_targets_match_the_dense_ones(bundled, tokenizer):
    dense = numpy_batches(make(bundled, tokenizer, msm_positions=False), 3)
    gathered = numpy_batches(make(bundled, tokenizer), 3)
    for (xd, yd), (xg, yg) in zip(dense, gathered):
        width = xg["msm_positions"].shape[1]
        assert width % 8 == 0 or width == xd["token_ids"].shape[1]
        assert width >= (yd["msm_weights"] > 0).sum(1).max()
        labels, weights = dense_targets(xg, yg)
        np.testing.assert_array_equal(weights, yd["msm_weights"])
        np.testing.assert_array_equal(labels, yd["msm_labels"])
        np.testing.assert_array_equal(xg["token_ids"], xd["token_ids"])
        # Targets come first, in sequence order.
        for row in range(len(xg["msm_positions"])):
            count = int((yg["msm_weights"][row] > 0).sum())
            assert (yg["msm_weights"][row, count:] == 0).all()
            assert (np.diff(xg["msm_positions"][row, :count]) > 0).all()


def test_gathered_mrm_targets_match_the_dense_ones(bundled, tokenizer):
    dense = numpy_batches(make(bundled, tokenizer, mrm_positions=False,
                               mrm_probability=0.4), 3)
    gathered = numpy_batches(make(bundled, tokenizer, mrm_probability=0.4), 3)
    total = 0
    for (xd, yd), (xg, yg) in zip(dense, gathered):
        width = xg["mrm_positions"].shape[1]
        assert width % 4 == 0 and width >= (yd["mrm_weights"] > 0).sum(1).max()
        np.testing.assert_array_equal(xg["region_features"], xd["region_features"])
        for row in range(len(xg["mrm_positions"])):
            real = yg["mrm_weights"][row] > 0
            slots = xg["mrm_positions"][row][real]
            np.testing.assert_array_equal(slots, np.flatnonzero(yd["mrm_weights"][row]))
            np.testing.assert_array_equal(yg["mrm_targets"][row][real],
                                          yd["mrm_targets"][row][slots])
            total += real.sum()
    assert total > 10


def test_an_example_draws_the_same_in_any_batch(bundled, tokenizer):
    # Every draw is keyed on (seed, example index): batches of 4 hold the
    # same rows as batches of 8, and the examples view agrees with both.
    dense = dict(msm_positions=False, mrm_positions=False)
    eights = numpy_batches(make(bundled, tokenizer, batch_size=8, **dense), 2)
    fours = numpy_batches(make(bundled, tokenizer, batch_size=4, **dense), 4)
    for part in (0, 1):
        for k in eights[part][0]:
            np.testing.assert_array_equal(
                eights[part][0][k],
                np.concatenate([fours[2 * part][0][k], fours[2 * part + 1][0][k]]))
        for k in eights[part][1]:
            np.testing.assert_array_equal(
                eights[part][1][k],
                np.concatenate([fours[2 * part][1][k], fours[2 * part + 1][1][k]]))
    ds, _ = examples(bundled, tokenizer, batch_size=8)
    x, y = eights[0]
    for row, e in enumerate(ds.take(8).as_numpy_iterator()):
        assert e["position"] == row
        for k in ("region_features", "region_locations", "region_mask"):
            np.testing.assert_array_equal(e[k], x[k][row])
        np.testing.assert_array_equal(e["mrm_weights"], y["mrm_weights"][row])
        np.testing.assert_array_equal(e["mrm_targets"], y["mrm_targets"][row])
        assert e["itm_labels"] == y["itm_labels"][row]
        np.testing.assert_array_equal(
            e["token_ids"], np.where(y["msm_weights"][row] > 0,
                                     y["msm_labels"][row], x["token_ids"][row]))


def test_every_caption_once_per_pass_and_uncaptioned_images_skipped(
        bundled, tokenizer):
    records = read_captions(os.path.join(bundled, "captions_en.jsonl"))
    train = [r for r in records if r["split"] == "train"]
    captioned = sorted({r["image_id"] for r in train})[::2]
    kept = [r for r in train if r["image_id"] in captioned]
    config = PretrainingDataConfig(max_regions=6, shuffle_buffer=16,
                                   negative_probability=0.0)
    ds, index = pretraining_examples(os.path.join(bundled, "regions"), kept,
                                     tokenizer, config, split="train")
    assert sorted(index.image_ids) == captioned
    seen = sorted(int(e["image_index"]) for e in ds.as_numpy_iterator())
    assert seen == list(range(len(captioned)))
    config.captions_per_image = "all"
    ds, index = pretraining_examples(os.path.join(bundled, "regions"), kept,
                                     tokenizer, config, split="train")
    owner = caption_owner(index)
    pairs = [(int(e["image_index"]), int(e["caption_index"]))
             for e in ds.as_numpy_iterator()]
    assert sorted(c for _, c in pairs) == list(range(len(kept)))
    assert all(owner[c] == k for k, c in pairs)


def test_image_ids_come_from_the_manifest_and_workers_split_many_shards(
        tmp_path, tokenizer):
    """300 shards of 2 images: `region_image_ids` reads the ids from the
    manifest (no shard opened), falls back to the records for entries
    without them, and two workers get disjoint images covering the split."""
    import keras_interbert.data.region_features.reader as reader
    from keras_interbert.data.region_features import RegionFeatureWriter
    from keras_interbert.data.region_features import read_manifest
    from keras_interbert.data.region_features import region_image_ids
    from keras_interbert.data.region_features.record_format import (
        _write_json_atomic)

    out = str(tmp_path / "regions")
    rng = np.random.default_rng(0)
    ids = [f"im{k:04d}" for k in range(600)]
    with RegionFeatureWriter(out, split="train", examples_per_shard=2,
                             feature_dim=8) as writer:
        for image_id in ids:
            writer.write(image_id, 40, 50,
                         np.array([[1, 2, 30, 20], [0, 0, 10, 10]], "float32"),
                         rng.random((2, 8)).astype("float32"))
    captions = [{"image_id": i, "caption": f"a red square {k}",
                 "split": "train"} for k, i in enumerate(ids)]

    scanned = []
    original_scan = reader._scan_image_ids

    def scan(paths):
        scanned.extend(paths)
        return original_scan(paths)

    reader._scan_image_ids = scan
    try:
        assert region_image_ids(out, split="train") == ids
        assert scanned == []
        # An older folder: entries without ids are read from the records.
        manifest = read_manifest(out)
        for shard in manifest["splits"]["train"]["shards"][::3]:
            del shard["image_ids"]
        _write_json_atomic(os.path.join(out, "manifest.json"), manifest)
        assert region_image_ids(out, split="train") == ids
        assert len(scanned) == 100
    finally:
        reader._scan_image_ids = original_scan

    seen = []
    for worker in range(2):
        config = PretrainingDataConfig(max_regions=2, shuffle_buffer=0,
                                       num_workers=2, worker_index=worker)
        ds, index = pretraining_examples(out, captions, tokenizer, config,
                                         split="train")
        seen.append([index.image_ids[int(e["image_index"])]
                     for e in ds.as_numpy_iterator()])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == ids
