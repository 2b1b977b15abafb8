import contextlib
import io
import itertools
import json
import os
import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import write_captions
from keras_interbert.data.retrieval_pipeline import RetrievalEvaluationSet
from keras_interbert.data.synthetic import write_dataset
from keras_interbert.evaluation import PairScorer
from keras_interbert.evaluation import ScoreFileError
from keras_interbert.evaluation import evaluate_retrieval
from keras_interbert.evaluation import image_to_text_ranks
from keras_interbert.evaluation import load_scores
from keras_interbert.evaluation import random_ranking_baseline
from keras_interbert.evaluation import retrieval_metrics
from keras_interbert.evaluation import score_grid
from keras_interbert.evaluation import text_to_image_ranks
from keras_interbert.evaluation import two_stage_scores
from keras_interbert.evaluation.grid_scoring import partial_paths
from keras_interbert.preprocessing import InterBERTTokenizer

FEATURE_DIM = 16
MAX_REGIONS = 8
SEQUENCE_LENGTH = 16
BATCH = 64


# ---------------------------------------------------------------- metrics --

def test_ranks_on_a_hand_built_matrix_count_ties_against_the_query():
    scores = np.array([
        [0.9, 0.5, 0.1],   # caption 0 (image 0): clear first
        [0.7, 0.7, 0.2],   # caption 1 (image 1): tied with image 0
        [0.3, 0.3, 0.3],   # caption 2 (image 2): tied with everything
        [0.1, 0.8, 0.3],   # caption 3 (image 1): clear first
    ])
    owner = [0, 1, 2, 1]
    np.testing.assert_array_equal(text_to_image_ranks(scores, owner),
                                  [1, 2, 3, 1])
    # Image 0: caption 0 (0.9) first. Image 1: its best caption (3, 0.8)
    # first. Image 2: its caption 2 (0.3) tied with caption 3.
    ranks, images = image_to_text_ranks(scores, owner)
    np.testing.assert_array_equal(ranks, [1, 1, 2])
    np.testing.assert_array_equal(images, [0, 1, 2])
    metrics = retrieval_metrics(scores, owner, ks=(1, 2))
    t2i, i2t = metrics["text_to_image"], metrics["image_to_text"]
    assert t2i["hits"] == {1: 2, 2: 3}
    assert t2i["recall"][1] == 50.0 and t2i["recall"][2] == 75.0
    assert t2i["median_rank"] == 1.5 and t2i["mean_rank"] == 1.75
    assert i2t["hits"] == {1: 2, 2: 3} and i2t["num_queries"] == 3
    assert i2t["mean_rank"] == pytest.approx(4 / 3)
    assert t2i["recall_curve"] == [50.0, 75.0, 100.0]


def test_ranks_do_not_depend_on_candidate_order_and_constant_scores_rank_last():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (30, 7)).astype(np.float32)  # many ties
    owner = np.arange(30) % 6  # image 6 has no caption
    t2i = text_to_image_ranks(scores, owner)
    i2t, images = image_to_text_ranks(scores, owner)
    assert list(images) == list(range(6))
    perm = rng.permutation(7)
    inverse = np.argsort(perm)
    np.testing.assert_array_equal(
        text_to_image_ranks(scores[:, perm], inverse[owner]), t2i)
    rows = rng.permutation(30)
    np.testing.assert_array_equal(
        text_to_image_ranks(scores[rows], owner[rows]), t2i[rows])
    np.testing.assert_array_equal(
        image_to_text_ranks(scores[rows], owner[rows])[0], i2t)
    # A constant model earns nothing: every wrong candidate ranks first.
    flat = np.zeros((30, 7), np.float32)
    assert (text_to_image_ranks(flat, owner) == 7).all()
    assert (image_to_text_ranks(flat, owner)[0] == 30 - 5 + 1).all()


def test_partial_matrices_and_bad_indices_are_errors():
    scores = np.ones((2, 3))
    scores[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 NaN entries"):
        retrieval_metrics(scores, [0, 1])
    with pytest.raises(ValueError, match=r"caption_image_index must be in \[0, 3\)"):
        retrieval_metrics(np.ones((2, 3)), [0, 3])
    with pytest.raises(ValueError, match=r"int \[num_captions=2\]"):
        retrieval_metrics(np.ones((2, 3)), [0, 1, 2])


def test_random_baseline_equals_brute_force_over_all_orderings():
    counts = np.array([2, 1, 0, 3])  # captions per image; image 2 has none
    num_images, num_captions = len(counts), int(counts.sum())
    owner = np.repeat(np.arange(num_images), counts)
    baseline = random_ranking_baseline(counts, ks=(1, 2, 5))
    # Text->image: each permutation of the 4 images, equally likely.
    t2i_ranks = [list(p).index(0) + 1
                 for p in itertools.permutations(range(num_images))]
    # Image->text: each permutation of the 6 captions; first own caption.
    i2t_ranks = {m: [] for m in (1, 2, 3)}
    for p in itertools.permutations(range(num_captions)):
        for image in (0, 1, 3):
            i2t_ranks[counts[image]].append(
                next(r for r, c in enumerate(p, 1) if owner[c] == image))
    i2t_all = i2t_ranks[2] + i2t_ranks[1] + i2t_ranks[3]
    for k in (1, 2, 5):
        expected = 100 * np.mean(np.array(t2i_ranks) <= k)
        assert baseline["text_to_image"]["recall"][k] == pytest.approx(expected)
        expected = 100 * np.mean(np.array(i2t_all) <= k)
        assert baseline["image_to_text"]["recall"][k] == pytest.approx(expected)
    assert baseline["text_to_image"]["mean_rank"] == pytest.approx(
        np.mean(t2i_ranks))
    assert baseline["image_to_text"]["mean_rank"] == pytest.approx(
        np.mean(i2t_all))
    assert baseline["image_to_text"]["median_rank"] == np.percentile(
        i2t_all, 50, method="inverted_cdf")
    assert baseline["image_to_text"]["num_queries"] == 3


# ------------------------------------------- an independent implementation --

def _ranked_lists(scores, truth, k=10):
    """The top k of each row by integer-valued score, ties against the truth.

    `truth` marks the ground truth of each row. Ranking by `2 * score -
    truth` (exact in float32 below 2^23) puts a wrong candidate tied with a
    ground truth first and changes no other order.
    """
    key = 2 * scores - truth
    best = np.argpartition(-key, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(key, best, axis=1), axis=1,
                       kind="stable")
    return np.take_along_axis(best, order, axis=1)


@pytest.mark.tensorflow_only  # numpy only: one backend is enough
def test_recall_equals_eccv_caption_on_the_coco_5k_test_structure():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns when ujson is missing
        eccv_caption = pytest.importorskip(
            "eccv_caption", reason="eccv-caption==0.1.0 (a test extra) is "
            "not installed; it holds the reference COCO 5k Recall@K")
        reference = eccv_caption.Metrics()
    caption_ids = [int(c) for c in reference.coco_ids]
    caption_to_image = reference.coco_gts["t2i"]
    image_ids = sorted(reference.coco_gts["i2t"])
    assert (len(caption_ids), len(image_ids)) == (25000, 5000)
    column = {image: j for j, image in enumerate(image_ids)}
    owner = np.array([column[caption_to_image[c][0]] for c in caption_ids])
    assert (np.bincount(owner) == 5).all()

    rng = np.random.default_rng(7)
    images = rng.normal(size=(5000, 16)).astype(np.float32)
    captions = images[owner] + rng.normal(size=(25000, 16)).astype(np.float32)
    uniform = rng.random((25000, 5000), dtype=np.float32)
    uniform *= 2 ** 22
    matrices = {
        # Integers below 2^22: about 75 ties per image column.
        "random": np.floor(uniform, out=uniform),
        # Some signal, rounded to integers so that ties abound (about 30
        # distinct values a row).
        "structured": np.round(captions @ images.T).astype(np.float32),
    }
    del captions
    for name, scores in matrices.items():
        ours = retrieval_metrics(scores, owner)
        t2i, i2t = {}, {}
        for start in range(0, 25000, 2500):
            rows = np.arange(start, start + 2500)
            top = _ranked_lists(scores[start:start + 2500],
                                owner[rows, None] == np.arange(5000))
            t2i.update({caption_ids[c]: [image_ids[j] for j in row]
                        for c, row in zip(rows, top)})
        for start in range(0, 5000, 500):
            columns = np.arange(start, start + 500)
            block = np.ascontiguousarray(scores[:, start:start + 500].T)
            top = _ranked_lists(block, columns[:, None] == owner[None, :])
            i2t.update({image_ids[j]: [caption_ids[c] for c in row]
                        for j, row in zip(columns, top)})
        for k in (1, 5, 10):
            theirs = reference.coco_5k_recalls({"i2t": i2t, "t2i": t2i},
                                               "all", K=k)
            for direction, key in (("text_to_image", "t2i"),
                                   ("image_to_text", "i2t")):
                result = ours[direction]
                assert result["hits"][k] / result["num_queries"] == theirs[key], (
                    name, direction, k)
        if name == "structured":
            # The recall is neither trivial nor empty (t2i R@10 ~ 0.42).
            assert 0.2 < theirs["t2i"] < 0.8 and 0.2 < theirs["i2t"] < 0.8


# ---------------------------------------------------- scoring on real data --

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    data = str(root / "data")
    write_dataset(data, num_images=40, seed=3, feature_dim=FEATURE_DIM,
                  languages=("en",), save_images=False, progress=False)
    keras.utils.set_random_seed(1)
    backbone = InterBERTBackbone(
        vocabulary_size=30522, num_single_stream_layers=1, num_text_layers=1,
        num_image_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
        num_image_heads=2, image_intermediate_dim=48, pooled_dim=40,
        image_feature_dim=FEATURE_DIM, max_sequence_length=32)
    model = InterBERTPretrainer(backbone, num_region_classes=49)
    model_path = str(root / "model.keras")
    model.save(model_path)
    tokenizer = InterBERTTokenizer.from_preset("interbert_base_en")
    captions = read_captions(os.path.join(data, "captions_en.jsonl"))
    train = [c for c in captions if c["split"] == "train"]
    # 32 candidate images, 12 captions: 384 pairs, 6 batches of 64.
    evaluation = RetrievalEvaluationSet(
        os.path.join(data, "regions"), train[:12], tokenizer, split="train",
        sequence_length=SEQUENCE_LENGTH, max_regions=MAX_REGIONS)
    scorer = PairScorer(model)
    # Scored once, uninterrupted; the tests below compare against it.
    scores_path = str(root / "scores_full.npz")
    full = score_grid(scorer, evaluation, BATCH, scores_path, progress=False)
    return {"root": root, "data": data, "model": model,
            "model_path": model_path, "evaluation": evaluation,
            "train_captions": train, "scorer": scorer,
            "full_scores": full["scores"], "scores_path": scores_path}


class _CrashAfter:
    """A scorer that fails after `calls` batches (a crash mid-run)."""

    def __init__(self, scorer, calls):
        self.scorer, self.calls = scorer, calls
        self.name = scorer.name

    def fingerprint(self):
        return self.scorer.fingerprint()

    def __call__(self, x):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.scorer(x)


def test_interrupted_scoring_resumes_to_the_uninterrupted_matrix(bundle, tmp_path):
    evaluation, scorer = bundle["evaluation"], bundle["scorer"]
    straight = bundle["full_scores"]
    assert evaluation.num_pairs == 384 and straight.shape == (12, 32)
    assert not np.isnan(straight).any()

    path = str(tmp_path / "scores_full.npz")
    with pytest.raises(KeyboardInterrupt):
        score_grid(_CrashAfter(scorer, 2), evaluation, batch_size=BATCH,
                   path=path, progress=False)
    data_path, state_path = partial_paths(path)
    assert not os.path.exists(path) and os.path.exists(state_path)
    with open(state_path) as f:
        state = json.load(f)
    assert state["status"] == "partial" and state["next_pair"] == 128
    for partial in (path, data_path, state_path):
        with pytest.raises(ScoreFileError, match="partial|not finished"):
            load_scores(partial)
    with pytest.raises(ScoreFileError, match="batch_size"):
        score_grid(scorer, evaluation, batch_size=32, path=path,
                   progress=False)

    stopped = score_grid(scorer, evaluation, batch_size=BATCH, path=path,
                         max_batches=2, progress=False)
    assert not stopped["complete"] and stopped["scores"] is None
    assert (stopped["resumed_from"], stopped["next_pair"]) == (128, 256)
    resumed = score_grid(scorer, evaluation, batch_size=BATCH, path=path,
                         progress=False)
    assert resumed["complete"] and resumed["resumed_from"] == 256
    np.testing.assert_array_equal(resumed["scores"], straight)
    assert not os.path.exists(data_path) and not os.path.exists(state_path)
    saved = load_scores(path)
    np.testing.assert_array_equal(saved["scores"], straight)
    assert saved["image_ids"] == evaluation.image_ids


def test_two_stage_with_every_candidate_reranked_equals_full_scoring(bundle):
    evaluation, scorer = bundle["evaluation"], bundle["scorer"]
    owner = evaluation.caption_image_index
    full = bundle["full_scores"]
    rng = np.random.default_rng(0)
    first_stage = rng.random((12, 32)).astype(np.float32)
    everything = two_stage_scores(scorer, evaluation, first_stage, k=32,
                                  k_captions=12, batch_size=BATCH,
                                  progress=False)
    assert everything["num_pairs_scored"] == evaluation.num_pairs
    np.testing.assert_array_equal(
        text_to_image_ranks(everything["text_to_image"], owner),
        text_to_image_ranks(full, owner))
    np.testing.assert_array_equal(
        image_to_text_ranks(everything["image_to_text"], owner)[0],
        image_to_text_ranks(full, owner)[0])

    # With k = 1 the cross-encoder only confirms the first stage's choice.
    one = two_stage_scores(scorer, evaluation, first_stage, k=1, k_captions=1,
                           batch_size=BATCH, progress=False)
    assert one["num_pairs_scored"] <= 12 + 32
    np.testing.assert_array_equal(
        text_to_image_ranks(one["text_to_image"], owner),
        text_to_image_ranks(first_stage, owner))


def test_a_compiled_scorer_gives_the_eager_scores(bundle):
    """`jit_compile=True`: XLA (TensorFlow, JAX) or `torch.compile`
    (PyTorch) runs the cut-down model; the scores are the same."""
    model = bundle["model"]
    x, _ = next(bundle["evaluation"].grid_dataset(BATCH, 0)
                .as_numpy_iterator())
    compiled = PairScorer(model, jit_compile=True)
    eager = PairScorer(model, jit_compile=False)
    assert compiled._predict.__self__.jit_compile is True
    assert eager._predict.__self__.jit_compile is False
    np.testing.assert_allclose(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled(x), bundle["full_scores"].ravel()[
        :BATCH], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="jit_compile must be 'auto', True "
                       "or False; received 'yes'"):
        PairScorer(model, jit_compile="yes")
    with pytest.raises(ValueError, match="received None"):
        PairScorer(model, jit_compile=None)


def test_evaluate_retrieval_reports_both_modes(bundle):
    evaluation = bundle["evaluation"]
    # The finished score file of the fixture is reused, not scored again.
    report = evaluate_retrieval(bundle["scorer"], evaluation,
                                modes=("full", "two_stage"), batch_size=BATCH,
                                scores_path=bundle["scores_path"], rerank_k=3,
                                rerank_k_captions=4, progress=False,
                                split="train")
    full, two = report["modes"]["full"], report["modes"]["two_stage"]
    expected = retrieval_metrics(bundle["full_scores"],
                                 evaluation.caption_image_index)
    for direction in ("text_to_image", "image_to_text"):
        assert full[direction] == expected[direction]
    assert full["num_pairs_scored"] == 384
    assert two["settings"]["k"] == 3 and two["settings"]["k_captions"] == 4
    assert two["num_pairs_scored"] <= 12 * 3 + 32 * 4
    assert two["seconds"] == pytest.approx(
        two["first_stage_seconds"] + two["rerank_seconds"])
    # Reranking a query's top 3 keeps its other candidates' first-stage
    # order: ranks beyond 3 are the first stage's.
    first = two["first_stage"]["text_to_image"]["recall_curve"]
    assert two["text_to_image"]["recall_curve"][3:] == first[3:]
    assert two["text_to_image"]["recall"][5] == first[4]
    assert report["protocol"]["captions_per_image"]["images_without_captions"] > 0
    assert report["random_baseline"]["text_to_image"]["recall"][1] == 100 / 32


def test_a_caption_whose_image_is_missing_is_a_clear_error(bundle):
    captions = bundle["train_captions"][:3] + [
        {"image_id": "no-such-image", "caption": "a red square",
         "split": "train"}]
    with pytest.raises(RegionDataError, match="'no-such-image', which has no "
                       "region features") as error:
        RetrievalEvaluationSet(bundle["evaluation"].table, captions,
                               InterBERTTokenizer.from_preset(
                                   "interbert_base_en"), split="train")
    assert error.value.kind == "missing_image"


# ------------------------------------------------------------------ recipe --

def _recipe():
    sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))
    try:
        import evaluate_retrieval as recipe
    finally:
        sys.path.pop(0)
    return recipe


def _run(recipe, *argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = recipe.main(list(argv))
    return code, out.getvalue()


def test_recipe_end_to_end(bundle, tmp_path):
    recipe = _recipe()
    captions = str(tmp_path / "captions.jsonl")
    write_captions(captions, bundle["train_captions"][:16])
    out = str(tmp_path / "out")
    common = ["--model", bundle["model_path"], "--out", out,
              "--regions", os.path.join(bundle["data"], "regions"),
              "--captions", captions, "--split", "train",
              "--max-regions", str(MAX_REGIONS),
              "--sequence-length", str(SEQUENCE_LENGTH),
              "--batch-size", "128", "--rerank-k", "4", "--no-progress"]
    metrics = os.path.join(out, "retrieval_metrics.json")

    code, _ = _run(recipe, *common, "--max-batches", "2")
    assert code == recipe.EXIT_PARTIAL
    assert not os.path.exists(metrics)
    assert not os.path.exists(os.path.join(out, "scores_full.npz"))
    assert os.path.exists(os.path.join(out, "scores_full.partial.json"))

    code, printed = _run(recipe, *common, "--jit-compile", "false")
    assert code == 0
    assert "Resumed full scoring at pair 256." in printed
    assert sorted(os.listdir(out)) == [".keras_interbert_evaluation",
                                       "retrieval_metrics.json",
                                       "retrieval_recall.png",
                                       "scores_full.npz"]
    with open(os.path.join(out, "retrieval_recall.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(metrics) as f:
        report = json.load(f)
    assert set(report["modes"]) == {"full", "two_stage"}
    assert report["protocol"]["num_captions"] == 16
    assert report["protocol"]["num_images"] == 32
    assert report["modes"]["two_stage"]["settings"]["k"] == 4
    for mode in report["modes"].values():
        assert set(mode["text_to_image"]["recall"]) == {"1", "5", "10"}
        assert mode["seconds"] > 0
    # The printed table: the random baseline next to each mode.
    assert "random" in printed and "two-stage" in printed
    assert f"{100 / 32:.2f}" in printed  # t2i R@1 of random ranking


def test_recipe_writes_nothing_when_a_caption_has_no_image(bundle, tmp_path):
    recipe = _recipe()
    captions = str(tmp_path / "captions.jsonl")
    write_captions(captions, bundle["train_captions"][:5] + [
        {"image_id": "missing-42", "caption": "a blue ring", "split": "train"}])
    out = str(tmp_path / "out")
    with pytest.raises(RegionDataError, match="missing-42"):
        _run(recipe, "--model", bundle["model_path"], "--out", out,
             "--regions", os.path.join(bundle["data"], "regions"),
             "--captions", captions, "--split", "train",
             "--max-regions", str(MAX_REGIONS), "--no-progress")
    assert not os.path.exists(out)


def test_recall_at_reads_a_summary_before_and_after_json():
    import json

    from keras_interbert.evaluation import rank_summary
    from keras_interbert.evaluation import recall_at

    summary = rank_summary(np.array([1, 2, 7, 30]), ks=(1, 5, 10))
    assert recall_at(summary, 5) == 50.0
    assert recall_at(json.loads(json.dumps(summary)), 10) == 75.0
