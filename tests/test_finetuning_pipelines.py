"""Finetuning and evaluation input pipelines: retrieval, hard negatives,
multiple choice, text classification.

Expected token ids come from Hugging Face's pure-Python BERT tokenizer (its
pair truncation is BERT's `_truncate_seq_pair`), expected region slots from
numpy on the raw records or from `to_backbone_regions`, expected neighbours
from a float64 numpy cosine computation.
"""
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from conftest import TINY_BACKBONE

from keras_interbert import InterBERTBackbone
from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.hard_negatives import HardNegativePool
from keras_interbert.data.hard_negatives import nearest_neighbour_pool
from keras_interbert.data.multiple_choice_pipeline import NAMES
from keras_interbert.data.multiple_choice_pipeline import MultipleChoiceDataConfig
from keras_interbert.data.multiple_choice_pipeline import multiple_choice_dataset
from keras_interbert.data.multiple_choice_pipeline import read_multiple_choice
from keras_interbert.data.multiple_choice_synthetic import write_multiple_choice
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import region_dataset
from keras_interbert.data.region_features import to_backbone_regions
from keras_interbert.data.retrieval_pipeline import RegionTable
from keras_interbert.data.retrieval_pipeline import RetrievalDataConfig
from keras_interbert.data.retrieval_pipeline import RetrievalEvaluationSet
from keras_interbert.data.retrieval_pipeline import retrieval_training_dataset
from keras_interbert.data.retrieval_pipeline import retrieval_training_examples
from keras_interbert.data.sampling import batched_epochs
from keras_interbert.data.synthetic import write_dataset
from keras_interbert.data.text_classification_pipeline import (
    TextClassificationDataConfig)
from keras_interbert.data.text_classification_pipeline import read_tsv
from keras_interbert.data.text_classification_pipeline import (
    text_classification_dataset)
from keras_interbert.data.text_classification_pipeline import write_caption_tasks
from keras_interbert.preprocessing import InterBERTTokenizer
from keras_interbert.presets import preset_vocabulary

# The pipelines' own checks are the same under every KERAS_BACKEND
# (conftest.py); the backbone and the pool's keras.ops are not
# (every_backend).
pytestmark = pytest.mark.once

R = 4  # region slots after the global one in these tests


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bundled"))
    write_dataset(out, num_images=80, seed=3, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    write_multiple_choice(os.path.join(out, "scenes.jsonl"),
                          os.path.join(out, "mc.jsonl"), seed=1)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return InterBERTTokenizer.from_preset("interbert_base_en")


@pytest.fixture(scope="module")
def hf():
    try:
        from transformers.models.bert.tokenization_bert_legacy import (
            BertTokenizerLegacy as legacy,
        )
    except ImportError:  # transformers < 5: `BertTokenizer` is the Python one
        from transformers import BertTokenizer as legacy
    return legacy(preset_vocabulary("interbert_base_en"), do_lower_case=True)


@pytest.fixture(scope="module")
def train_table(bundled):
    return RegionTable.from_files(os.path.join(bundled, "regions"),
                                  split="train", max_regions=R)


@pytest.fixture(scope="module")
def raw_regions(bundled):
    """split -> list of (image_id, features [N,D], boxes [N,4], h, w)."""
    out = {}
    for split in ("train", "val", "test"):
        out[split] = [
            (e["image_id"].decode(), e["features"], e["boxes"],
             int(e["image_h"]), int(e["image_w"]))
            for e in region_dataset(os.path.join(bundled, "regions"),
                                    split=split).as_numpy_iterator()]
    return out


def captions_path(bundled):
    return os.path.join(bundled, "captions_en.jsonl")


def numpy_slots(features, boxes, h, w, max_regions=R):
    """The region slots of one image, computed from the raw record."""
    kept = min(len(features), max_regions)
    D = features.shape[1]
    slots = np.zeros((max_regions + 1, D), np.float32)
    slots[0] = features.astype(np.float64).mean(0)
    slots[1:kept + 1] = features[:kept]
    locs = np.zeros((max_regions + 1, 5), np.float32)
    locs[0] = [0, 0, 1, 1, 1]
    b = boxes[:kept].astype(np.float64)
    locs[1:kept + 1] = np.stack([b[:, 0] / w, b[:, 1] / h, b[:, 2] / w,
                                 b[:, 3] / h,
                                 (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
                                 / (w * h)], -1)
    mask = np.zeros(max_regions + 1, np.int32)
    mask[:kept + 1] = 1
    return slots, locs, mask


def hf_single(hf, text, length):
    """`[CLS] text [SEP]`, cut to `length` after packing, padded."""
    ids = hf(text)["input_ids"][:length]
    return ids + [0] * (length - len(ids))


def hf_pair(hf, first, second, length):
    enc = hf(first, second, truncation="longest_first", max_length=length,
             padding="max_length", return_token_type_ids=True,
             return_attention_mask=True)
    return enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]


def first_batches(ds, count):
    return [tf.nest.map_structure(np.asarray, b)
            for b in ds.take(count).as_numpy_iterator()]


# ------------------------------------------------------------ region table --

def test_region_table_equals_the_slot_layout(bundled, train_table, raw_regions):
    raw = raw_regions["train"]
    assert train_table.image_ids == [r[0] for r in raw]
    slots = {k: v.numpy() for k, v in train_table.gather(
        tf.range(len(raw))).items()}
    for n, (_, features, boxes, h, w) in enumerate(raw):
        feats, locs, mask = numpy_slots(features, boxes, h, w)
        np.testing.assert_allclose(slots["region_features"][n], feats,
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(slots["region_locations"][n], locs,
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(slots["region_mask"][n], mask)
    # The same layout as the reader's own slot builder, bit for bit.
    for n, example in enumerate(region_dataset(
            os.path.join(bundled, "regions"), split="train").take(6)):
        ref = to_backbone_regions(example, max_regions=R)
        for key in ("region_features", "region_locations", "region_mask"):
            np.testing.assert_array_equal(slots[key][n], ref[key].numpy())
    # Memory: float16 regions + float32 globals and locations.
    kept = sum(min(len(r[1]), R) for r in raw)
    assert train_table.nbytes == (len(raw) * 16 * 4 + kept * (16 * 2 + 20)
                                  + 16 * len(raw))


# ---------------------------------------------------------- retrieval train --

def test_four_pairs_per_caption_with_true_negatives(bundled, train_table,
                                                    raw_regions):
    config = RetrievalDataConfig(max_regions=R, repeat=True, seed=5)
    ds, info = retrieval_training_examples(
        train_table, captions_path(bundled), config=config)
    ids = [r[0] for r in raw_regions["train"]]
    captions = [c for c in read_captions(captions_path(bundled))
                if c["split"] == "train"]
    owner = np.array([ids.index(c["image_id"]) for c in captions])
    np.testing.assert_array_equal(info["caption_owner"], owner)
    pool = info["hard_pool"]
    assert (pool[:, 0] == np.arange(len(ids))).all()
    seen_other_images, seen_hard = set(), set()
    count = 0
    for e in ds.take(3 * len(captions)).as_numpy_iterator():
        c = e["caption"]
        own = owner[c]
        img, cap = e["image_index"], e["caption_index"]
        np.testing.assert_array_equal(e["labels"], [0, 1, 1, 1])
        # 0: the caption with its own image.
        assert img[0] == own and cap[0] == c
        # 1: its image with a caption of another image.
        assert img[1] == own and owner[cap[1]] != own
        # 2: another image with the caption.
        assert img[2] != own and cap[2] == c
        # 3: its image with a caption of an image from ranks 1.. of its pool.
        assert img[3] == own and owner[cap[3]] != own
        assert owner[cap[3]] in pool[own, 1:]
        seen_other_images.add(int(img[2]))
        seen_hard.add(int(np.flatnonzero(pool[own] == owner[cap[3]])[0]))
        count += 1
    assert count == 3 * len(captions)
    # The random image covers (almost) every image, the hard one many ranks.
    assert len(seen_other_images) >= len(ids) - 2
    assert min(seen_hard) == 1 and len(seen_hard) > 20


def test_hard_captions_come_from_the_given_pool(bundled, train_table,
                                                tmp_path):
    ids = train_table.image_ids
    n = len(ids)
    # A pool file in another image order: image j's ranks 1, 2 are the next
    # two images of the table.
    order = np.random.default_rng(0).permutation(n)
    file_ids = [ids[j] for j in order]
    at = {j: p for p, j in enumerate(order)}
    rows = [[at[j], at[(j + 1) % n], at[(j + 2) % n]] for j in order]
    path = HardNegativePool(file_ids, rows).save(str(tmp_path / "pool.npz"))
    config = RetrievalDataConfig(max_regions=R, seed=3)
    ds, info = retrieval_training_examples(train_table, captions_path(bundled),
                                           config, hard_negatives=path)
    owner = info["caption_owner"]
    ranks = []
    for e in ds.as_numpy_iterator():
        own = owner[e["caption"]]
        step = (owner[e["caption_index"][3]] - own) % n
        assert step in (1, 2)
        ranks.append(step)
    assert set(ranks) == {1, 2}


def test_training_epochs_visit_every_caption_once(bundled, train_table):
    config = RetrievalDataConfig(max_regions=R, repeat=True, seed=2)
    ds, info = retrieval_training_examples(train_table, captions_path(bundled),
                                           config=config)
    n = len(info["captions"])
    items = list(ds.take(2 * n).as_numpy_iterator())
    first = [e["caption"] for e in items[:n]]
    second = [e["caption"] for e in items[n:]]
    assert sorted(first) == list(range(n)) == sorted(second)
    assert first != second and first != list(range(n))
    assert [e["position"] for e in items] == list(range(2 * n))
    # Two workers split the stream: disjoint halves of the same positions.
    halves = []
    for w in range(2):
        cfg = RetrievalDataConfig(max_regions=R, seed=2, num_workers=2,
                                  worker_index=w)
        part, _ = retrieval_training_examples(train_table,
                                              captions_path(bundled),
                                              config=cfg)
        halves.append({int(e["position"]): e["caption_index"].tolist()
                       for e in part.as_numpy_iterator()})
    assert set(halves[0]) | set(halves[1]) == set(range(n))
    assert not set(halves[0]) & set(halves[1])
    for e in items[:n]:
        assert halves[int(e["position"]) % 2][int(e["position"])] == \
            e["caption_index"].tolist()


def test_training_batches(bundled, train_table, tokenizer, hf, raw_regions):
    config = RetrievalDataConfig(max_regions=R, batch_size=3, seed=9)
    (x, y), = first_batches(retrieval_training_dataset(
        train_table, captions_path(bundled), tokenizer, config), 1)
    assert {k: v.shape for k, v in x.items()} == {
        "token_ids": (12, 30), "segment_ids": (12, 30), "text_mask": (12, 30),
        "region_features": (12, R + 1, 16), "region_locations": (12, R + 1, 5),
        "region_mask": (12, R + 1)}
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, [0, 1, 1, 1] * 3)
    examples, info = retrieval_training_examples(
        train_table, captions_path(bundled), config=config)
    texts = [c["caption"] for c in info["captions"]]
    raw = raw_regions["train"]
    rows = 0
    for e in examples.take(3).as_numpy_iterator():
        for k in range(4):
            expected = hf_single(hf, texts[e["caption_index"][k]], 30)
            np.testing.assert_array_equal(x["token_ids"][rows], expected)
            np.testing.assert_array_equal(x["text_mask"][rows],
                                          np.array(expected) != 0)
            _, feats, boxes, h, w = raw[e["image_index"][k]]
            slots, locs, mask = numpy_slots(feats, boxes, h, w)
            np.testing.assert_allclose(x["region_features"][rows], slots,
                                       rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(x["region_mask"][rows], mask)
            rows += 1
    assert (x["segment_ids"] == 0).all()


def test_long_captions_lose_their_sep(bundled, train_table, tokenizer, hf):
    ids = train_table.image_ids
    words = " ".join(["a tiny purple diamond beside a ring"] * 8)
    captions = [{"image_id": ids[i % 5], "caption": f"{words} {i}"}
                for i in range(10)]
    config = RetrievalDataConfig(max_regions=R, batch_size=2, shuffle=False)
    (x, _), = first_batches(retrieval_training_dataset(
        train_table, captions, tokenizer, config, split=None), 1)
    expected = hf(captions[0]["caption"])["input_ids"]
    assert len(expected) > 30
    np.testing.assert_array_equal(x["token_ids"][0], expected[:30])
    assert x["token_ids"][0, -1] != tokenizer.sep_id
    assert (x["text_mask"][0] == 1).all()


def test_training_is_deterministic(bundled, train_table, tokenizer):
    def run(seed):
        config = RetrievalDataConfig(max_regions=R, batch_size=4, seed=seed)
        return first_batches(retrieval_training_dataset(
            train_table, captions_path(bundled), tokenizer, config), 3)

    a, b, c = run(1), run(1), run(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        for key in xa:
            np.testing.assert_array_equal(xa[key], xb[key])
    assert any(not np.array_equal(xa["token_ids"], xc["token_ids"])
               for (xa, _), (xc, _) in zip(a, c))


def test_caption_of_a_missing_image_is_an_error(bundled, train_table, tokenizer):
    captions = read_captions(captions_path(bundled))[:5]
    captions.insert(2, {"image_id": "no-such-image", "caption": "a red ring",
                        "split": "train"})
    with pytest.raises(RegionDataError, match="caption 3.*no-such-image") as e:
        retrieval_training_dataset(train_table, captions, tokenizer,
                                   RetrievalDataConfig(max_regions=R))
    assert e.value.kind == "missing_image"


# ----------------------------------------------------------- hard negatives --

def numpy_neighbours(features, k):
    f = np.asarray(features, np.float64)
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    sims = unit @ unit.T
    out = []
    for i in range(len(f)):
        others = [j for j in range(len(f)) if j != i]
        others.sort(key=lambda j: (-sims[i, j], j))
        out.append([i] + others[:k - 1])
    return np.array(out), sims


def test_nearest_neighbour_pool_is_cosine_top_k():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(37, 8)).astype(np.float32)
    # Nearly the same direction, another length: mutual nearest neighbours.
    features[5] = 3.0 * features[9] + rng.normal(scale=0.05, size=8)
    expected, sims = numpy_neighbours(features, 6)
    pool = nearest_neighbour_pool(features, [f"im{i}" for i in range(37)], k=6,
                                  block_size=7)
    np.testing.assert_array_equal(pool.neighbours, expected)
    assert pool.neighbours[5, 1] == 9 and pool.neighbours[9, 1] == 5
    np.testing.assert_allclose(
        pool.scores[:, 1:], np.take_along_axis(sims, expected, 1)[:, 1:],
        rtol=1e-5, atol=1e-6)
    # k beyond the number of images: every other image, ordered.
    full = nearest_neighbour_pool(features[:4], list("abcd"), k=100)
    assert full.k == 4
    np.testing.assert_array_equal(full.neighbours,
                                  numpy_neighbours(features[:4], 4)[0])


@pytest.mark.every_backend
def test_hard_negative_cli(bundled, raw_regions, tmp_path):
    out = str(tmp_path / "pool.npz")
    env = dict(os.environ, KERAS_BACKEND=keras.config.backend(),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "keras_interbert.data.hard_negatives",
         "--regions", os.path.join(bundled, "regions"), "--split", "train",
         "--k", "10", "--out", out],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["k"] == 10 and summary["num_images"] == 64
    assert "nearest images" in result.stderr  # the tqdm bar
    pool = HardNegativePool.load(out)
    raw = raw_regions["train"]
    assert pool.image_ids == [r[0] for r in raw]
    means = np.stack([r[1].astype(np.float64).mean(0) for r in raw])
    expected, _ = numpy_neighbours(means, 10)
    np.testing.assert_array_equal(pool.neighbours, expected)
    # Re-indexed for a table in another order.
    order = list(reversed(pool.image_ids))
    table_pool = pool.table_indices(order)
    for n, image_id in enumerate(order):
        row = [pool.image_ids[j] for j in expected[pool.image_ids.index(image_id)]]
        assert [order[j] for j in table_pool[n]] == row


def test_bad_pools_are_rejected(tmp_path):
    with pytest.raises(RegionDataError, match="own neighbour"):
        HardNegativePool(["a", "b", "c"], [[0, 1], [1, 1], [2, 0]])
    with pytest.raises(RegionDataError, match="rank 0"):
        HardNegativePool(["a", "b"], [[1, 0], [1, 0]])
    pool = HardNegativePool(["a", "b", "c"], [[0, 1], [1, 2], [2, 0]])
    path = pool.save(str(tmp_path / "p.npz"))
    with pytest.raises(RegionDataError, match="no row"):
        HardNegativePool.load(path).table_indices(["a", "b", "z"])
    with pytest.raises(RegionDataError, match="'c'.*not among"):
        HardNegativePool.load(path).table_indices(["a", "b"])


# ------------------------------------------------------ retrieval evaluation --

@pytest.fixture(scope="module")
def evaluation(bundled, tokenizer):
    return RetrievalEvaluationSet(os.path.join(bundled, "regions"),
                                  captions_path(bundled), tokenizer,
                                  split="test", max_regions=R)


def test_evaluation_grid_covers_every_pair_once(bundled, evaluation, hf,
                                                raw_regions):
    raw = raw_regions["test"]
    captions = [c for c in read_captions(captions_path(bundled))
                if c["split"] == "test"]
    ids = [r[0] for r in raw]
    assert evaluation.num_captions == len(captions)
    assert evaluation.num_images == len(ids)
    np.testing.assert_array_equal(
        evaluation.caption_image_index,
        [ids.index(c["image_id"]) for c in captions])
    batches = first_batches(evaluation.grid_dataset(batch_size=7), 10 ** 6)
    pairs = [(int(c), int(i)) for _, p in batches
             for c, i in zip(p["caption_index"], p["image_index"])]
    assert len(pairs) == len(captions) * len(ids)
    assert set(pairs) == {(c, i) for c in range(len(captions))
                          for i in range(len(ids))}
    x, p = batches[3]
    for row, (c, i) in enumerate(zip(p["caption_index"], p["image_index"])):
        np.testing.assert_array_equal(x["token_ids"][row],
                                      hf_single(hf, captions[c]["caption"], 30))
        _, feats, boxes, h, w = raw[i]
        slots, locs, mask = numpy_slots(feats, boxes, h, w)
        np.testing.assert_allclose(x["region_features"][row], slots,
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(x["region_locations"][row], locs,
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(x["region_mask"][row], mask)
    # Resuming at a batch boundary repeats the later batches exactly.
    resumed = first_batches(evaluation.grid_dataset(batch_size=7, start=21), 3)
    for (xa, pa), (xb, pb) in zip(batches[3:6], resumed):
        for key in xa:
            np.testing.assert_array_equal(xa[key], xb[key])
        np.testing.assert_array_equal(pa["image_index"], pb["image_index"])
    # ... and anywhere else at the right pair.
    tail = first_batches(evaluation.grid_dataset(batch_size=5, start=30), 10 ** 6)
    got = [(int(c), int(i)) for _, p in tail
           for c, i in zip(p["caption_index"], p["image_index"])]
    assert got == pairs[30:]
    c, i = evaluation.pair_indices(30)
    assert list(zip(c.tolist(), i.tolist())) == pairs[30:]
    scores = np.arange(len(pairs) - 30, dtype=float)
    matrix = evaluation.score_matrix(scores, start=30)
    assert np.isnan(matrix.reshape(-1)[:30]).all()
    assert matrix[got[0]] == 0 and matrix[got[-1]] == len(pairs) - 31


def test_evaluation_subset_of_pairs(evaluation, bundled, hf):
    captions = [c for c in read_captions(captions_path(bundled))
                if c["split"] == "test"]
    subset_c = [3, 0, 3, len(captions) - 1]
    subset_i = [1, 2, 0, evaluation.num_images - 1]
    batches = first_batches(evaluation.pairs_dataset(subset_c, subset_i,
                                                     batch_size=3), 10)
    assert [len(p["caption_index"]) for _, p in batches] == [3, 1]
    got_c = np.concatenate([p["caption_index"] for _, p in batches])
    got_i = np.concatenate([p["image_index"] for _, p in batches])
    np.testing.assert_array_equal(got_c, subset_c)
    np.testing.assert_array_equal(got_i, subset_i)
    np.testing.assert_array_equal(batches[1][0]["token_ids"][0],
                                  hf_single(hf, captions[-1]["caption"], 30))
    with pytest.raises(ValueError, match="image_index"):
        evaluation.pairs_dataset([0], [evaluation.num_images])


# --------------------------------------------------------- multiple choice --

def test_synthetic_multiple_choice_answers_are_right(bundled):
    scenes = {}
    with open(os.path.join(bundled, "scenes.jsonl")) as f:
        for line in f:
            s = json.loads(line)
            scenes[s["image_id"]] = s
    records = read_multiple_choice(os.path.join(bundled, "mc.jsonl"))
    assert len(records) > 100
    kinds = set()
    for r in records:
        objects = scenes[r["image_id"]]["objects"]
        assert len(set(r["answers"])) == 4 and len(set(r["rationales"])) == 4
        gold = r["answers"][r["answer_label"]]
        m = re.fullmatch(r"what colour is the (\w+)\?", r["question"])
        if m:
            target = [o for o in objects if o["shape"] == m.group(1)]
            assert len(target) == 1 and target[0]["colour"] == gold
        else:
            m = re.fullmatch(r"what shape is the (\w+) object\?", r["question"])
            target = [o for o in objects if o["colour"] == m.group(1)]
            assert len(target) == 1 and target[0]["shape"] == gold
        kinds.add(r["question_type"])
        obj = target[0]
        x, y = obj["centroid"]
        row = ("top", "middle", "bottom")[min(2, int(3 * y / 128))]
        col = ("left", "centre", "right")[min(2, int(3 * x / 128))]
        right = r["rationales"][r["rationale_label"]]
        assert right.startswith(f"the {obj['colour']} {obj['shape']} is ")
        if (row, col) == ("middle", "centre"):
            assert right.endswith("is in the centre of the picture")
        else:
            assert row in right.split() or row == "middle"
            assert col in right.split()
            for wrong in r["rationales"]:
                if wrong != right:
                    assert not (row in wrong.split() and col in wrong.split())
    assert kinds == {"colour", "shape"}
    labels = [r["answer_label"] for r in records]
    assert set(labels) == {0, 1, 2, 3}


def mc_records(table):
    long_q = "why is the " + " ".join(["very"] * 30) + " big red circle here?"
    long_a = "because " + " ".join(["the painter liked it"] * 10)
    ids = table.image_ids
    return [
        {"image_id": ids[0], "question": "what colour is the ring?",
         "answers": ["red", "blue", "a pale green colour", "white"],
         "answer_label": 2,
         "rationales": ["it is at the top", "it is to the left of the square",
                        "the ring is " + " ".join(["quite"] * 40) + " far away",
                        "nothing"],
         "rationale_label": 1},
        {"image_id": ids[3], "question": long_q,
         "answers": [long_a, "no idea", long_a + " so much", "a b c d e f g h"],
         "answer_label": 0,
         "rationales": [long_a, "x", "y", "z"], "rationale_label": 3},
    ]


@pytest.mark.parametrize("task,length", [("q_a", 60), ("qa_r", 80),
                                         ("q_a", 16)])
def test_multiple_choice_packing_matches_bert(train_table, tokenizer, hf,
                                              raw_regions, task, length):
    records = mc_records(train_table)
    config = MultipleChoiceDataConfig(
        task=task, sequence_length=None if length in (60, 80) else length,
        max_regions=R, batch_size=2, shuffle=False)
    (x, y), = first_batches(multiple_choice_dataset(
        train_table, records, tokenizer, config), 1)
    assert x["token_ids"].shape == (2, 4, length)
    assert x["region_features"].shape == (2, 4, R + 1, 16)
    truncated = False
    for b, r in enumerate(records):
        if task == "q_a":
            first, options = r["question"], r["answers"]
            assert y[b] == r["answer_label"]
        else:
            first = r["question"] + " [SEP] " + r["answers"][r["answer_label"]]
            options = r["rationales"]
            assert y[b] == r["rationale_label"]
        for o, option in enumerate(options):
            ids, segments, mask = hf_pair(hf, first, option, length)
            np.testing.assert_array_equal(x["token_ids"][b, o], ids)
            np.testing.assert_array_equal(x["segment_ids"][b, o], segments)
            np.testing.assert_array_equal(x["text_mask"][b, o], mask)
            truncated |= (len(hf(first)["input_ids"])
                          + len(hf(option)["input_ids"]) - 1 > length)
        image = train_table.image_ids.index(r["image_id"])
        _, feats, boxes, h, w = raw_regions["train"][image]
        slots, locs, mask = numpy_slots(feats, boxes, h, w)
        for o in range(4):
            np.testing.assert_allclose(x["region_features"][b, o], slots,
                                       rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(x["region_locations"][b, o], locs,
                                       rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(x["region_mask"][b, o], mask)
    assert truncated  # the records exercise longest-first truncation


def test_multiple_choice_on_bundled_file(bundled, train_table, tokenizer):
    path = os.path.join(bundled, "mc.jsonl")
    records = [r for r in read_multiple_choice(path) if r["split"] == "train"]
    config = MultipleChoiceDataConfig(max_regions=R, batch_size=32, seed=4)

    def labels(cfg):
        return np.concatenate([y for _, y in first_batches(
            multiple_choice_dataset(train_table, path, tokenizer, cfg,
                                    split="train"), 10 ** 6)])

    got = labels(config)
    assert len(got) == len(records)
    np.testing.assert_array_equal(got, labels(config))
    plain = labels(MultipleChoiceDataConfig(max_regions=R, batch_size=32,
                                            shuffle=False))
    np.testing.assert_array_equal(plain, [r["answer_label"] for r in records])
    assert not np.array_equal(got, plain)
    assert sorted(got) == sorted(plain)


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_multiple_choice_errors(train_table, tokenizer, tmp_path):
    good = mc_records(train_table)[0]
    cases = [
        (dict(good, answers=["a", "b", "c"]), "answers has 3 options; "
         "expected 4", "wrong_option_count"),
        (dict(good, rationales=["a", "b", "c", "d", "e"]), "rationales has 5",
         "wrong_option_count"),
        (dict(good, answer_label=4), "answer_label 4 is out of range",
         "label_out_of_range"),
        (dict(good, rationale_label=-1), "rationale_label -1 is out of range",
         "label_out_of_range"),
        (dict(good, answer_label="1"), "must be an integer",
         "bad_multiple_choice"),
        ({k: v for k, v in good.items() if k != "question"}, "lacks",
         "bad_multiple_choice"),
    ]
    for bad, message, kind in cases:
        path = write_jsonl(tmp_path / "mc.jsonl", [good, "", bad])
        with pytest.raises(RegionDataError) as e:
            read_multiple_choice(path)
        assert e.value.kind == kind
        assert str(e.value).startswith(f"{path}, line 3: ")
        assert message in str(e.value)
    report = ErrorReport()
    path = write_jsonl(tmp_path / "mc.jsonl", [good, cases[0][0], "{not json"])
    assert len(read_multiple_choice(path, policy="skip", report=report)) == 1
    assert report.to_dict()["skipped_by_kind"] == {
        "bad_multiple_choice": 1, "wrong_option_count": 1}
    path = write_jsonl(tmp_path / "mc.jsonl",
                       [good, dict(good, image_id="missing-image")])
    with pytest.raises(RegionDataError, match="line 2.*'missing-image' has no "
                                              "region features"):
        multiple_choice_dataset(train_table, path, tokenizer,
                                MultipleChoiceDataConfig(max_regions=R))
    path = write_jsonl(tmp_path / "mc.jsonl",
                       [{k: v for k, v in good.items()
                         if not k.startswith("rationale")}])
    with pytest.raises(RegionDataError, match="line 1: QA->R needs rationales"):
        multiple_choice_dataset(train_table, path, tokenizer,
                                MultipleChoiceDataConfig(task="qa_r",
                                                         max_regions=R))


def test_vcr_detection_tags_become_words(train_table, tmp_path):
    # VCR's own key names.
    record = {
        "img_id": train_table.image_ids[0],
        "objects": ["person", "dog", "person"],
        "question": ["why", "is", [0], "holding", "the", [1], "?"],
        "answer_choices": [[[0], "likes", "it"], [[2], "asked"],
                           ["no", "reason"], [[0, 2], "are", "friends"]],
        "answer_label": 0,
        "rationale_choices": ["a", "b", "c", ["the", [1], "is", "small"]],
        "rationale_label": 3,
    }
    path = write_jsonl(tmp_path / "vcr.jsonl", [record, record])
    first, second = read_multiple_choice(path)
    name0 = first["question"].split()[2]
    name2 = first["answers"][1].split()[0]
    assert name0 in NAMES and name2 in NAMES and name0 != name2
    assert first["question"] == f"why is {name0} holding the dog ?"
    assert first["answers"][0] == f"{name0} likes it"
    assert first["answers"][3] == f"{name0} and {name2} are friends"
    assert first["rationales"][3] == "the dog is small"
    assert first["image_id"] == train_table.image_ids[0]
    again, _ = read_multiple_choice(path)
    assert again["question"] == first["question"]
    names = {read_multiple_choice(path, names_seed=s)[0]["question"]
             for s in range(8)} | {second["question"]}
    assert len(names) > 1  # drawn per record, not fixed
    bad = dict(record, question=["who", "is", [7]])
    path = write_jsonl(tmp_path / "vcr.jsonl", [bad])
    with pytest.raises(RegionDataError, match="line 1: question refers to "
                                              "detection 7"):
        read_multiple_choice(path)


# ------------------------------------------------------ text classification --

@pytest.fixture(scope="module")
def text_tasks(bundled):
    out = os.path.join(bundled, "text_tasks")
    write_caption_tasks(captions_path(bundled), out, seed=0)
    return out


def test_caption_tasks_have_true_labels(bundled, text_tasks):
    by_image = {}
    for c in read_captions(captions_path(bundled)):
        if c["split"] == "train":
            by_image.setdefault(c["image_id"], set()).add(c["caption"])
    data = read_tsv(os.path.join(text_tasks, "same_image", "train.tsv"),
                    ["sentence1", "sentence2"])
    assert data.label_vocabulary == ["different", "same"]
    assert data.num_examples > 50
    for s1, s2, label in zip(*data.texts, data.labels):
        owners = [i for i, texts in by_image.items() if s1 in texts]
        if label == 1:
            assert any(s2 in by_image[i] for i in owners)
        else:
            assert any(s2 not in by_image[i] for i in owners)
    assert 0.3 < data.labels.mean() < 0.7
    data = read_tsv(os.path.join(text_tasks, "mentions_circle", "dev.tsv"),
                    "sentence")
    assert data.label_vocabulary == ["no", "yes"]
    for text, label in zip(data.texts[0], data.labels):
        assert label == int("circle" in text.replace(",", " ").split()
                            or "circles" in text.replace(",", " ").split())
    assert 0 < data.labels.sum() < len(data.labels)


def write_tsv(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write("\t".join(row) + "\n")
    return str(path)


def test_text_classification_packing(tmp_path, tokenizer, hf):
    long_a = " ".join(["the quick brown fox jumps"] * 5)
    long_b = " ".join(["over the lazy dog"] * 3)
    rows = [("idx", "label", "sentence1", "sentence2"),
            ("0", "entailment", "a man sleeps", "a person rests"),
            ("1", "neutral", long_a, "short one"),
            ("2", "contradiction", long_a, long_b),
            ("3", "entailment", "", "only the second")]
    path = write_tsv(tmp_path / "pairs.tsv", rows)
    data = read_tsv(path, ["sentence1", "sentence2"])
    assert data.label_vocabulary == ["contradiction", "entailment", "neutral"]
    np.testing.assert_array_equal(data.labels, [1, 2, 0, 1])
    assert data.line_numbers == [2, 3, 4, 5]
    config = TextClassificationDataConfig(sequence_length=20, batch_size=4,
                                          shuffle=False, image_feature_dim=24)
    (x, y), = first_batches(text_classification_dataset(data, tokenizer,
                                                        config), 1)
    np.testing.assert_array_equal(y, [1, 2, 0, 1])
    for b, row in enumerate(rows[1:]):
        ids, segments, mask = hf_pair(hf, row[2], row[3], 20)
        np.testing.assert_array_equal(x["token_ids"][b], ids)
        np.testing.assert_array_equal(x["segment_ids"][b], segments)
        np.testing.assert_array_equal(x["text_mask"][b], mask)
    assert x["region_features"].shape == (4, 1, 24)
    assert x["region_locations"].shape == (4, 1, 5)
    assert (x["region_features"] == 0).all() and (x["region_mask"] == 0).all()
    # One text column: `[CLS] a [SEP]`, cut to length - 2 word pieces.
    single = read_tsv(path, "sentence1", label_column=None)
    assert single.labels is None
    x, = first_batches(text_classification_dataset(single, tokenizer,
                                                   config), 1)
    assert isinstance(x, dict)
    for b, row in enumerate(rows[1:]):
        enc = hf(row[2], truncation=True, max_length=20, padding="max_length")
        np.testing.assert_array_equal(x["token_ids"][b], enc["input_ids"])
    assert (x["segment_ids"] == 0).all()


def test_an_evaluation_pass_states_its_number_of_batches(tmp_path, tokenizer):
    # Keras's iterators under JAX and PyTorch warn that the input "ran out of
    # data" when a finite dataset's length is unknown; the stated length must
    # be the number of batches the dataset gives, for every worker.
    for batch_size, drop, workers in [(4, False, 1), (4, True, 1),
                                      (3, False, 2), (2, True, 3),
                                      (11, False, 1), (5, False, 4)]:
        for index in range(workers):
            config = TextClassificationDataConfig(
                batch_size=batch_size, shuffle=False, drop_remainder=drop,
                num_workers=workers, worker_index=index)
            ds = batched_epochs(11, config, lambda items: items)
            sizes = [len(b) for b in ds.as_numpy_iterator()]
            assert int(ds.cardinality()) == len(sizes), (batch_size, drop,
                                                         workers, index)
            items = len(range(index, 11, workers))
            assert sum(sizes) == (items - items % batch_size if drop
                                  else items)
    assert int(batched_epochs(11, TextClassificationDataConfig(
        repeat=True), lambda items: items).cardinality()) < 0
    # The text recipe's validation set, through the same function.
    path = write_tsv(tmp_path / "t.tsv", [("sentence", "label")] + [
        (f"text {i}", str(i % 2)) for i in range(11)])
    ds = text_classification_dataset(
        read_tsv(path, "sentence"), tokenizer,
        TextClassificationDataConfig(sequence_length=8, batch_size=4))
    assert int(ds.cardinality()) == len(list(ds.as_numpy_iterator())) == 3


@pytest.mark.every_backend
def test_text_classification_runs_through_the_backbone(tmp_path, tokenizer):
    path = write_tsv(tmp_path / "t.tsv", [("sentence", "label"),
                                          ("a red circle", "1"),
                                          ("two blue squares", "0")])
    data = read_tsv(path, "sentence")
    config = TextClassificationDataConfig(sequence_length=12, batch_size=2,
                                          image_feature_dim=24)
    (x, _), = first_batches(text_classification_dataset(data, tokenizer,
                                                        config), 1)
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE,
                                        vocabulary_size=tokenizer.vocabulary_size()))
    text = backbone.predict(x, verbose=0)["text_sequence"]
    assert text.shape == (2, 12, 32) and np.isfinite(text).all()


def test_tsv_errors(tmp_path):
    path = write_tsv(tmp_path / "bad.tsv", [("sentence", "label"),
                                            ("fine", "yes"),
                                            ("a\textra", "no")])
    with pytest.raises(RegionDataError) as e:
        read_tsv(path, "sentence")
    assert e.value.kind == "malformed_row"
    assert str(e.value).startswith(f"{path}, line 3: the row has 3 fields")
    path = write_tsv(tmp_path / "dev.tsv", [("sentence", "label"),
                                            ("fine", "yes"), ("odd", "maybe")])
    with pytest.raises(RegionDataError, match="line 3: unknown label 'maybe'") \
            as e:
        read_tsv(path, "sentence", label_vocabulary=["no", "yes"])
    assert e.value.kind == "unknown_label"
    with pytest.raises(RegionDataError, match=r"line 1 \(header\): the header "
                                              r"has no column \['premise'\]"):
        read_tsv(path, ["premise", "sentence"])
    report = ErrorReport()
    data = read_tsv(path, "sentence", label_vocabulary=["no", "yes"],
                    policy="skip", report=report)
    assert data.texts == [["fine"]] and data.labels.tolist() == [1]
    assert report.to_dict()["skipped"][0]["record"] == "line 3"
    path = write_tsv(tmp_path / "n.tsv", [("s", "label"), ("a", "10"),
                                          ("b", "2"), ("c", "0")])
    assert read_tsv(path, "s").label_vocabulary == ["0", "2", "10"]
    with pytest.raises(RegionDataError, match="line 2: label 'x' is not a "
                                              "number"):
        read_tsv(write_tsv(tmp_path / "r.tsv", [("s", "label"), ("a", "x")]),
                 "s", regression=True)


def test_text_classification_order_is_seeded(tmp_path, tokenizer, hf):
    rows = [("sentence", "label")] + [(f"number {i}", str(i % 3))
                                      for i in range(40)]
    data = read_tsv(write_tsv(tmp_path / "o.tsv", rows), "sentence")

    def order(seed, repeat=False, count=10 ** 6):
        config = TextClassificationDataConfig(sequence_length=8, batch_size=8,
                                              seed=seed, repeat=repeat,
                                              image_feature_dim=4)
        batches = first_batches(text_classification_dataset(data, tokenizer,
                                                            config), count)
        # "[CLS] number N [SEP]": N is one word piece.
        return [int(hf.convert_ids_to_tokens(int(row[2])))
                for x, _ in batches for row in x["token_ids"]]

    a = order(1)
    assert sorted(a) == list(range(40)) and a == order(1) and a != order(2)
    two = order(1, repeat=True, count=10)
    assert two[:40] == a and sorted(two[40:]) == list(range(40))
    assert two[40:] != a
