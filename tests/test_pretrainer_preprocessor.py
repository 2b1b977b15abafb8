"""InterBERTPretrainerPreprocessor: the pretraining rules on raw pairs.

Two references, neither computed by the code under test:

- a numpy re-statement written here of the rules of docs/architecture.md
  §3.2 and §3.3 and of the per-example keying (SplitMix64 over
  `(seed * 1000003 + salt, example index)`, keras_interbert's masking
  module docstring);
- tests/fixtures/pretraining_pipeline_batches.npz, batches of the
  pretraining pipeline written before this layer existed (the commit is in
  its `settings` entry), with the raw pairs behind them.
"""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from conftest import TINY_BACKBONE

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer
from keras_interbert.preprocessing import InterBERTPretrainerPreprocessor
from keras_interbert.preprocessing import InterBERTTokenizer

FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures",
                       "pretraining_pipeline_batches.npz")
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog",
              "cat", "on", "the", "beach", "red", "ball", "##s", "."] + [
    f"w{i}" for i in range(TINY_BACKBONE["vocabulary_size"] - 15)]
TEXTS = ["a dog on the beach", "the red balls .", "cat", "a dog",
         "a red ball on the beach a dog on the beach a cat . w1 w2 w3",
         "w4 w5 w6 w7 w8 w9 w10 w11", "a cat on a red ball"]


# === numpy re-statement of the rules ===

GOLDEN = 0x9E3779B97F4A7C15
SPLIT = 0xD1B54A32D192ED03


def _mix(x):
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _add(a, b):
    with np.errstate(over="ignore"):
        return np.asarray(a, np.uint64) + np.uint64(b % 2**64)


def _example_key(seed, index, salt):
    """The row key of `(seed * 1000003 + salt, index)`."""
    first = np.int64(seed * 1000003 + salt).view(np.uint64)
    second = np.int64(index).view(np.uint64)
    return _mix(_mix(_add(first, GOLDEN)) ^ second)


def _sub(key, i):
    """The i-th independent sub-key of a row key."""
    return _mix(_add(key, (i + 1) * SPLIT))


def _uniform(key, j):
    """Element j of a row's stream of floats in [0, 1)."""
    bits = _mix(_add(key, (j + 1) * GOLDEN))
    return float(bits >> np.uint64(11)) * 2.0 ** -53


def _span_mask(ids, mask, key, vocabulary_size, special):
    """§3.2, `--span_mask`: one span, 80/10/10."""
    caption = [t for t in range(len(ids)) if mask[t] and ids[t] not in special]
    n = len(caption)
    start_key, length_key, replace_key = (_sub(key, i) for i in range(3))
    start = int(np.floor(_uniform(start_key, 0) * (n + 1)))
    length = 1 + int(np.floor(_uniform(length_key, 0) * n))
    targets = set()
    if np.floor(0.3 * n) > 0:
        targets = {caption[k] for k in range(start, min(start + length, n))}
    return _replace(ids, targets, replace_key, vocabulary_size)


def _token_mask(ids, mask, key, vocabulary_size, special):
    """§3.2 without `--span_mask`: 15% of the caption pieces, 80/10/10."""
    target_key, replace_key = _sub(key, 0), _sub(key, 1)
    targets = {t for t in range(len(ids)) if mask[t] and ids[t] not in special
               and _uniform(target_key, t) < 0.15}
    return _replace(ids, targets, replace_key, vocabulary_size)


def _replace(ids, targets, key, vocabulary_size):
    choice_key, random_key = _sub(key, 0), _sub(key, 1)
    masked, labels = list(ids), [0] * len(ids)
    for t in targets:
        u = _uniform(choice_key, t)
        labels[t] = ids[t]
        if u < 0.8:
            masked[t] = VOCABULARY.index("[MASK]")
        elif u < 0.9:
            masked[t] = int(np.floor(_uniform(random_key, t)
                                     * vocabulary_size))
    weights = [1.0 if t in targets else 0.0 for t in range(len(ids))]
    return masked, labels, weights


def _iou(a, b, h, w):
    """IoU of normalised boxes with the one-pixel inclusive offset (§3.3)."""
    pw, ph = 1.0 / w, 1.0 / h
    iw = min(a[2], b[2]) - max(a[0], b[0]) + pw
    ih = min(a[3], b[3]) - max(a[1], b[1]) + ph
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = (a[2] - a[0] + pw) * (a[3] - a[1] + ph)
    area_b = (b[2] - b[0] + pw) * (b[3] - b[1] + ph)
    union = area_a + area_b - inter
    return inter / union if union else 0.0


def _group_mask(boxes, kept, h, w, key, probability, threshold):
    """§3.3, `--span_mask`: seeds with `probability`, groups by IoU."""
    choice_key = _sub(key, 0)
    seeds = [j for j in range(kept) if _uniform(choice_key, j) < probability]
    scale = np.array([w, h, w, h], np.float32)
    normal = (boxes.astype(np.float32) / scale).astype(np.float64)
    zeroed = [any(i == j or _iou(normal[i], normal[j], h, w) >= threshold
                  for i in seeds) for j in range(kept)]
    return zeroed, zeroed


def _random_mask(kept, key):
    """§3.3 without `--span_mask`: 15% targets, 90% of them zeroed."""
    target_key, zero_key = _sub(key, 0), _sub(key, 1)
    targets = [_uniform(target_key, j) < 0.15 for j in range(kept)]
    zeroed = [t and _uniform(zero_key, j) < 0.9
              for j, t in enumerate(targets)]
    return targets, zeroed


def _reference(raw, labels, settings, tokenizer):
    """The expected `(x, y)` of one batch, example by example."""
    T, R = settings["sequence_length"], settings["max_regions"]
    seed = settings["seed"]
    special = {tokenizer.cls_id, tokenizer.sep_id}
    V = tokenizer.vocabulary_size()
    out = {k: [] for k in ("token_ids", "text_mask", "msm_labels",
                           "msm_weights", "region_features",
                           "region_locations", "region_mask", "mrm_weights",
                           "unmasked_ids")}
    for b, text in enumerate(raw["text"]):
        index = int(raw["example_index"][b])
        pieces = [int(i) for i in np.asarray(tokenizer(text))][:T - 2]
        ids = [tokenizer.cls_id] + pieces + [tokenizer.sep_id]
        mask = [1] * len(ids) + [0] * (T - len(ids))
        ids = ids + [tokenizer.pad_id] * (T - len(ids))
        rule = _span_mask if settings["msm"] == "span" else _token_mask
        masked, msm_labels, msm_weights = rule(
            ids, mask, _example_key(seed, index, 3), V, special)
        out["token_ids"].append(masked)
        out["unmasked_ids"].append(ids)
        out["text_mask"].append(mask)
        out["msm_labels"].append(msm_labels)
        out["msm_weights"].append(msm_weights)

        h, w = (float(v) for v in raw["image_size"][b])
        kept = min(int(raw["num_regions"][b]), R)
        features = raw["region_features"][b].astype(np.float64)
        boxes = raw["region_boxes"][b]
        key = _example_key(seed, index, 4)
        if settings["mrm"] == "group":
            targets, zeroed = _group_mask(
                boxes, kept, h, w, key, settings["mrm_probability"],
                settings["mrm_iou_threshold"])
        else:
            targets, zeroed = _random_mask(kept, key)
        slots = np.zeros((R + 1, features.shape[-1]))
        locations = np.zeros((R + 1, 5))
        masked_features = [features[j] * (0.0 if zeroed[j] else 1.0)
                           for j in range(kept)]
        averaged = (masked_features if settings["global_feature"]
                    == "masked_mean" else list(features[:kept]))
        slots[0] = np.mean(averaged, axis=0) if kept else 0.0
        locations[0] = [0, 0, 1, 1, 1]
        for j in range(kept):
            x1, y1, x2, y2 = boxes[j].astype(np.float64)
            slots[j + 1] = masked_features[j]
            locations[j + 1] = [x1 / w, y1 / h, x2 / w, y2 / h,
                                (x2 - x1) * (y2 - y1) / (w * h)]
        out["region_features"].append(slots)
        out["region_locations"].append(locations)
        out["region_mask"].append([1] * (kept + 1) + [0] * (R - kept))
        out["mrm_weights"].append(
            [0.0] + [1.0 if t else 0.0 for t in targets] + [0.0] * (R - kept))
    out = {k: np.array(v) for k, v in out.items()}
    out["itm_labels"] = np.asarray(labels)
    return out


def _raw(rng, batch=7, rows=9, dim=TINY_BACKBONE["image_feature_dim"],
         classes=3):
    nums = rng.integers(0, rows + 1, size=batch)
    nums[:2] = [rows, 1]
    features = rng.normal(size=(batch, rows, dim)).astype("float32")
    size = np.stack([rng.integers(50, 400, batch),
                     rng.integers(50, 400, batch)], axis=1).astype("int32")
    # Overlapping boxes so that groups form.
    corner = rng.uniform(0, 0.4, size=(batch, rows, 2))
    extent = rng.uniform(0.3, 0.6, size=(batch, rows, 2))
    wh = size[:, None, ::-1].astype("float64")
    boxes = np.concatenate([corner * wh, (corner + extent) * wh],
                           axis=-1).astype("float32")
    probs = rng.dirichlet(np.ones(classes), size=(batch, rows)).astype(
        "float32")
    for b, n in enumerate(nums):  # padding rows may hold anything
        features[b, n:] = np.nan
        boxes[b, n:] = -1e30
    return {"text": np.array(TEXTS[:batch]), "region_features": features,
            "region_boxes": boxes, "image_size": size,
            "num_regions": nums.astype("int32"), "region_class_probs": probs,
            "example_index": np.arange(100, 100 + batch)}


SETTINGS = {
    "span_group": dict(msm="span", mrm="group", mrm_probability=0.4,
                       global_feature="masked_mean"),
    "token_random": dict(msm="token", mrm="random",
                         global_feature="unmasked_mean"),
}


def _tokenizer():
    return InterBERTTokenizer(vocabulary=VOCABULARY)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_matches_the_rules_restated_in_numpy(name):
    settings = dict(dict(sequence_length=10, max_regions=5, seed=11,
                         mrm_probability=0.1, mrm_iou_threshold=0.4),
                    **SETTINGS[name])
    tokenizer = _tokenizer()
    preprocessor = InterBERTPretrainerPreprocessor(
        tokenizer, msm_positions=False, mrm_positions=False, itc=True,
        **settings)
    raw = _raw(np.random.default_rng(0))
    labels = np.array([0, 1, 0, 1, 1, 0, 0])
    x, y = preprocessor(raw, labels)
    x, y = keras.tree.map_structure(np.asarray, (x, y))
    ref = _reference(raw, labels, settings, tokenizer)

    for key in ("token_ids", "text_mask", "region_mask"):
        np.testing.assert_array_equal(x[key], ref[key], err_msg=key)
    np.testing.assert_array_equal(x["itc_token_ids"], ref["unmasked_ids"])
    np.testing.assert_array_equal(x["segment_ids"], 0)
    for key in ("msm_labels", "msm_weights", "mrm_weights", "itm_labels"):
        np.testing.assert_array_equal(y[key], ref[key], err_msg=key)
    np.testing.assert_allclose(x["region_features"], ref["region_features"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x["region_locations"],
                               ref["region_locations"], rtol=1e-5, atol=1e-6)
    # The targets are the class distributions of slots 1..R (0 at slot 0).
    expected = np.zeros(y["mrm_targets"].shape)
    expected[:, 1:] = raw["region_class_probs"][:, :5]
    keep = ref["region_mask"][..., None] > 0
    np.testing.assert_allclose(np.where(keep, y["mrm_targets"], 0),
                               np.where(keep, expected, 0), rtol=1e-6)
    # The draws hit something: the check is not vacuous.
    assert y["msm_weights"].sum() > 0 and y["mrm_weights"].sum() > 0
    assert (x["token_ids"] != ref["unmasked_ids"]).any()


def test_target_positions_gather_the_dense_targets():
    tokenizer = _tokenizer()
    common = dict(sequence_length=10, max_regions=5, seed=5,
                  mrm_probability=0.5)
    raw = _raw(np.random.default_rng(1))
    labels = np.zeros(7, "int32")
    dense_x, dense_y = keras.tree.map_structure(np.asarray, (
        InterBERTPretrainerPreprocessor(tokenizer, msm_positions=False,
                                        mrm_positions=False, **common)(
            raw, labels)))
    x, y = keras.tree.map_structure(np.asarray, (
        InterBERTPretrainerPreprocessor(tokenizer, **common)(raw, labels)))
    count = int((dense_y["msm_weights"] > 0).sum(axis=1).max())
    assert x["msm_positions"].shape[1] == min(10, 8 * -(-count // 8))
    for b in range(7):
        targets = np.flatnonzero(dense_y["msm_weights"][b])
        width = len(targets)
        np.testing.assert_array_equal(x["msm_positions"][b, :width], targets)
        np.testing.assert_array_equal(y["msm_labels"][b, :width],
                                      dense_y["msm_labels"][b, targets])
        assert not y["msm_weights"][b, width:].any()
        slots = np.flatnonzero(dense_y["mrm_weights"][b])
        np.testing.assert_array_equal(x["mrm_positions"][b, :len(slots)],
                                      slots)
        np.testing.assert_array_equal(y["mrm_targets"][b, :len(slots)],
                                      dense_y["mrm_targets"][b, slots])
        assert not x["mrm_positions"][b, len(slots):].any()
    assert x["mrm_positions"].shape[1] % 4 == 0
    np.testing.assert_array_equal(x["token_ids"], dense_x["token_ids"])


def _fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", ["span_group", "token_random"])
def test_reproduces_the_pipeline_batches_written_before_it(name):
    data = _fixture()
    settings = json.loads(str(data["settings"]))
    preprocessor = InterBERTPretrainerPreprocessor(
        InterBERTTokenizer.from_preset("interbert_base_en"),
        seed=settings["seed"], **settings["configs"][name])
    raw = {k.rsplit("/", 1)[-1]: v for k, v in data.items()
           if k.startswith(f"{name}/raw/")}
    labels = raw.pop("itm_labels")
    for b in range(2):
        rows = slice(6 * b, 6 * b + 6)
        got = dict(zip("xy", preprocessor({k: v[rows] for k, v in raw.items()},
                                          labels[rows])))
        prefix = f"{name}/batch{b}/"
        expected = [k for k in data if k.startswith(prefix)]
        assert sorted(f"{prefix}{part}/{key}" for part in "xy"
                      for key in got[part]) == sorted(expected)
        for key in expected:
            part, field = key[len(prefix):].split("/")
            value = np.asarray(got[part][field])
            assert value.shape == data[key].shape, key
            np.testing.assert_array_equal(
                value.astype(np.float64), data[key].astype(np.float64),
                err_msg=key)


def test_in_batch_negatives_without_labels():
    preprocessor = InterBERTPretrainerPreprocessor(
        _tokenizer(), sequence_length=24, max_regions=4, seed=3,
        negative_probability=0.5, msm_positions=False, mrm_positions=False,
        itc=True)
    raw = _raw(np.random.default_rng(2))
    x, y = keras.tree.map_structure(np.asarray, preprocessor(raw))
    labels = y["itm_labels"]
    assert 0 < labels.sum() < len(labels)
    own = np.asarray(preprocessor.packer(preprocessor.tokenizer(
        raw["text"]))["token_ids"])
    for b, label in enumerate(labels):
        if label == 0:
            np.testing.assert_array_equal(x["itc_token_ids"][b], own[b])
        else:  # the caption of another example of the batch
            others = [c for c in range(len(own)) if c != b]
            assert any((x["itc_token_ids"][b] == own[c]).all()
                       for c in others)
    # Keyed on the example index: the same draws again, whatever the batch.
    again = preprocessor({k: v[3:] for k, v in raw.items()})[1]["itm_labels"]
    np.testing.assert_array_equal(again, labels[3:])
    np.testing.assert_array_equal(
        preprocessor(raw)[1]["itm_labels"], labels)
    # One example has no other to borrow from.
    single = preprocessor({k: v[:1] for k, v in raw.items()})[1]
    np.testing.assert_array_equal(single["itm_labels"], [0])


def test_without_an_example_index_each_call_draws_anew():
    preprocessor = InterBERTPretrainerPreprocessor(
        _tokenizer(), sequence_length=24, max_regions=4, msm_positions=False,
        mrm_positions=False)
    raw = _raw(np.random.default_rng(3))
    del raw["example_index"]
    draws = [np.asarray(preprocessor(raw, np.zeros(7, "int32"))[1][
        "msm_weights"]) for _ in range(3)]
    assert not all((d == draws[0]).all() for d in draws[1:])


def test_refuses_bad_inputs_naming_them():
    preprocessor = InterBERTPretrainerPreprocessor(_tokenizer())
    raw = _raw(np.random.default_rng(4))
    with pytest.raises(ValueError, match=r"missing \['image_size'\]"):
        preprocessor({k: v for k, v in raw.items() if k != "image_size"})
    with pytest.raises(ValueError, match=r"unexpected \['caption'\]"):
        preprocessor(dict(raw, caption=raw["text"]))
    with pytest.raises(ValueError, match="sample_weight"):
        preprocessor(raw, np.zeros(7, "int32"), np.ones(7))
    with pytest.raises(ValueError, match="matching labels"):
        preprocessor(raw, np.zeros((7, 2), "int32"))
    with pytest.raises(ValueError, match="`msm` must be one of"):
        InterBERTPretrainerPreprocessor(_tokenizer(), msm="word")
    with pytest.raises(ValueError, match="mrm_probability"):
        InterBERTPretrainerPreprocessor(_tokenizer(), mrm_probability=2.0)


def test_tf_data_config_and_preset_round_trips(tmp_path):
    preprocessor = InterBERTPretrainerPreprocessor(
        _tokenizer(), sequence_length=12, max_regions=4, msm="token",
        mrm="random", seed=9, itc=True)
    raw = _raw(np.random.default_rng(5))
    labels = np.array([0, 1, 1, 0, 0, 1, 0], "int32")
    eager = preprocessor(raw, labels)
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(
        (raw, labels)).batch(7).map(preprocessor)))

    def same(a, b):
        for u, v in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))

    same(mapped, eager)
    config = preprocessor.get_config()
    config["tokenizer"] = preprocessor.tokenizer
    same(InterBERTPretrainerPreprocessor.from_config(config)(raw, labels),
         eager)
    folder = str(tmp_path / "preset")
    preprocessor.save_to_preset(folder)
    loaded = InterBERTPretrainerPreprocessor.from_preset(folder)
    assert _settings(loaded) == _settings(preprocessor)
    same(loaded(raw, labels), eager)
    assert InterBERTPretrainerPreprocessor.from_preset(
        folder, seed=10).seed == 10
    built_in = InterBERTPretrainerPreprocessor.from_preset(
        "interbert_tiny_en", max_regions=10)
    assert (built_in.sequence_length, built_in.max_regions,
            built_in.vocabulary_size) == (36, 10, 30522)


def _settings(preprocessor):
    """The config without the (generated) layer names."""
    return {k: v for k, v in preprocessor.get_config().items()
            if k not in ("name", "tokenizer")}


def _pretrainer(preprocessor):
    keras.utils.set_random_seed(4)
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE,
                                        vocabulary_size=len(VOCABULARY)))
    return InterBERTPretrainer(backbone, num_region_classes=3,
                               preprocessor=preprocessor)


def test_pretrainer_fits_and_predicts_raw_pairs_and_keeps_them(tmp_path):
    # Dense targets: one shape for every call, so JAX compiles each step once.
    preprocessor = InterBERTPretrainerPreprocessor(
        _tokenizer(), sequence_length=12, max_regions=4, mrm_probability=0.5,
        msm_positions=False, mrm_positions=False)
    pretrainer = _pretrainer(preprocessor)
    raw = _raw(np.random.default_rng(6))
    labels = np.array([0, 1, 0, 1, 0, 0, 1], "int32")
    # Without labels, as `predict` calls it: in-batch negatives, keyed on
    # the example index like the masks.
    x, _ = preprocessor(raw)
    direct = pretrainer.predict(x, verbose=0)
    from_raw = pretrainer.predict(raw, batch_size=7, verbose=0)
    np.testing.assert_allclose(from_raw["itm_logits"], direct["itm_logits"],
                               rtol=1e-5, atol=1e-6)

    path = str(tmp_path / "pretrainer.keras")
    pretrainer.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert isinstance(loaded.preprocessor, InterBERTPretrainerPreprocessor)
    assert _settings(loaded.preprocessor) == _settings(preprocessor)
    assert loaded.preprocessor.tokenizer.get_vocabulary() == VOCABULARY
    np.testing.assert_allclose(
        loaded.predict(raw, batch_size=7, verbose=0)["itm_logits"],
        from_raw["itm_logits"], rtol=1e-5, atol=1e-6)

    pretrainer.compile(optimizer=keras.optimizers.SGD(1e-3))
    for y in (labels, None):  # the pairs' own labels, then in-batch ones
        history = pretrainer.fit(raw, y, batch_size=7, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()

    folder = str(tmp_path / "preset")
    pretrainer.save_to_preset(folder)
    assert "preprocessor.json" in os.listdir(folder)
    again = InterBERTPretrainer.from_preset(folder)
    assert _settings(again.preprocessor) == _settings(preprocessor)


def test_pretrainer_refuses_a_preprocessor_of_another_vocabulary():
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE,
                                        vocabulary_size=len(VOCABULARY) + 1))
    with pytest.raises(ValueError, match=r"120 word pieces.*121"):
        InterBERTPretrainer(backbone, num_region_classes=3,
                            preprocessor=InterBERTPretrainerPreprocessor(
                                _tokenizer()))
