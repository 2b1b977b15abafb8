"""Ranks, Recall@K, median and mean rank of a caption x image score matrix.

Every function takes `scores`, a float matrix `[num_captions, num_images]`
(higher = better match), and `caption_image_index`, the int index of each
caption's own image (its column). Captions are the text->image queries and
every image of the matrix is a candidate; images with at least one caption
are the image->text queries and every caption is a candidate, the image's
own captions (any of them) counting as a hit.

Ranks are 1-based. Ties count against the query: a candidate whose score
equals the ground truth's is ranked before it. So the ground truth's rank is
`1 + #{wrong candidates scoring >= the best ground-truth score}`. It does not
depend on the order of the candidates, a constant score matrix gets the
worst possible ranks, and a model cannot gain from a tie. On a matrix without
ties it equals every other convention. NaN scores (pairs not scored) are an
error, never ranked.
"""
import numpy as np

DEFAULT_KS = (1, 5, 10)
_ROWS_PER_CHUNK = 512


def check_score_matrix(scores, caption_image_index):
    """`scores` as a float array and `caption_image_index` as int64, checked.

    Raises a `ValueError` naming the problem: wrong ranks or shapes, an
    image index out of range, or NaN entries (a partial matrix).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(
            "scores must be a float matrix [num_captions, num_images]; "
            f"received dtype {scores.dtype} and shape {scores.shape}.")
    owner = np.asarray(caption_image_index)
    if owner.shape != (scores.shape[0],) or not np.issubdtype(
            owner.dtype, np.integer):
        raise ValueError(
            f"caption_image_index must be int [num_captions="
            f"{scores.shape[0]}]; received dtype {owner.dtype} and shape "
            f"{owner.shape}.")
    owner = owner.astype(np.int64)
    if owner.size and (owner.min() < 0 or owner.max() >= scores.shape[1]):
        raise ValueError(
            f"caption_image_index must be in [0, {scores.shape[1]}); "
            f"received values in [{owner.min()}, {owner.max()}].")
    missing = int(np.isnan(scores).sum())
    if missing:
        raise ValueError(
            f"scores hold {missing} NaN entries of {scores.size}: the matrix "
            "is partial (pairs not scored) and cannot be ranked.")
    return scores, owner


def text_to_image_ranks(scores, caption_image_index):
    """Rank of each caption's own image among all images, int64 `[C]`."""
    scores, owner = check_score_matrix(scores, caption_image_index)
    ranks = np.empty(len(owner), np.int64)
    for start in range(0, len(owner), _ROWS_PER_CHUNK):
        block = scores[start:start + _ROWS_PER_CHUNK]
        truth = block[np.arange(len(block)), owner[start:start + len(block)]]
        # Counts the ground truth itself once: that is the `1 +`.
        ranks[start:start + len(block)] = (block >= truth[:, None]).sum(axis=1)
    return ranks


def image_to_text_ranks(scores, caption_image_index):
    """Rank of each captioned image's best own caption among all captions.

    Returns:
        `(ranks, image_index)`, both int64 `[M]`: one entry per image with at
        least one caption, in image order.
    """
    scores, owner = check_score_matrix(scores, caption_image_index)
    num_images = scores.shape[1]
    truth = scores[np.arange(len(owner)), owner]
    best = np.full(num_images, -np.inf)
    np.maximum.at(best, owner, truth.astype(np.float64))
    at_least_best = np.zeros(num_images, np.int64)
    for start in range(0, len(owner), _ROWS_PER_CHUNK):
        block = scores[start:start + _ROWS_PER_CHUNK]
        at_least_best += (block >= best[None, :]).sum(axis=0)
    own_at_least_best = np.bincount(
        owner, weights=(truth >= best[owner]), minlength=num_images)
    queries = np.flatnonzero(np.bincount(owner, minlength=num_images) > 0)
    ranks = 1 + at_least_best - own_at_least_best.astype(np.int64)
    return ranks[queries], queries


def rank_summary(ranks, ks=DEFAULT_KS, num_candidates=None, curve_length=100):
    """Recall@K (%), hits, median and mean rank of 1-based `ranks`.

    Returns a dict: `num_queries`, `num_candidates` (when given), `recall`
    `{K: percent}`, `hits` `{K: count}` (recall = hits / num_queries, exactly
    the fraction other implementations report), `median_rank` (the median of
    the ranks; a half for an even count), `mean_rank`, and `recall_curve`,
    the recall (%) at K = 1, 2, ... up to `curve_length` (or the number of
    candidates when smaller).
    """
    ranks = np.asarray(ranks, np.int64)
    if ranks.ndim != 1 or ranks.size == 0 or ranks.min() < 1:
        raise ValueError(f"ranks must be a non-empty 1-d array of ranks >= 1; "
                         f"received shape {ranks.shape}.")
    n = len(ranks)
    hits = {int(k): int((ranks <= k).sum()) for k in ks}
    top = curve_length if num_candidates is None else min(
        curve_length, int(num_candidates))
    counts = np.bincount(np.minimum(ranks, top + 1), minlength=top + 2)
    curve = 100.0 * np.cumsum(counts[1:top + 1]) / n
    summary = {
        "num_queries": n,
        "recall": {k: 100.0 * h / n for k, h in hits.items()},
        "hits": hits,
        "median_rank": float(np.median(ranks)),
        "mean_rank": float(ranks.mean()),
        "recall_curve": [float(v) for v in curve],
    }
    if num_candidates is not None:
        summary["num_candidates"] = int(num_candidates)
    return summary


SCORE_KINDS = ("match", "similarity")


def caption_posterior(scores, kind="match"):
    """Each caption's scores turned into log P(image | caption) over the images.

    Image -> text search asks which caption belongs to an image. A caption
    that is true of many images ("a picture with a red square in it") gets a
    high matching score with every one of them; ranking an image's captions
    by that score puts such vague captions level with the specific ones.
    Normalising each caption's scores over the candidate images gives the
    chance that the image is the caption's own, which is what image -> text
    ranks: a caption true of `n` images gets `1 / n` of its mass on each.
    Text -> image rankings do not change (a constant per caption).

    Args:
        scores: float `[C, N]`, caption `c` against image `i`.
        kind: `"match"`: image-text matching log-odds (the cross-encoder's
            score; `sigmoid(score)` is the match probability, normalised
            over the images); `"similarity"`: the logits of a softmax over
            images (a contrastive model's scaled similarity, softmaxed).

    Returns:
        float64 `[C, N]`, each row a log-probability distribution.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}; received "
                         f"{kind!r}.")
    logits = np.asarray(scores, np.float64)
    if kind == "match":
        # log sigmoid(s), stable for large |s|.
        logits = -np.logaddexp(0.0, -logits)
    peak = logits.max(axis=1, keepdims=True)
    log_total = peak + np.log(np.exp(logits - peak).sum(axis=1,
                                                         keepdims=True))
    return logits - log_total


def retrieval_metrics(scores, caption_image_index, ks=DEFAULT_KS,
                      curve_length=100, posterior_kind=None):
    """Text->image and image->text `rank_summary` of a score matrix.

    Returns `{"text_to_image": ..., "image_to_text": ...}`, and with
    `posterior_kind` (`"match"` or `"similarity"`, see `caption_posterior`)
    also `"image_to_text_posterior"`: image -> text ranked by each caption's
    scores normalised over the images.

    Examples:
    ```python
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.7]])
    metrics = retrieval_metrics(scores, caption_image_index=[0, 1, 1])
    metrics["text_to_image"]["recall"][1]  # 66.7: caption 2 ties, so rank 2
    ```
    """
    scores, owner = check_score_matrix(scores, caption_image_index)
    t2i = text_to_image_ranks(scores, owner)
    i2t, _ = image_to_text_ranks(scores, owner)
    metrics = {
        "text_to_image": rank_summary(t2i, ks, scores.shape[1], curve_length),
        "image_to_text": rank_summary(i2t, ks, scores.shape[0], curve_length),
    }
    if posterior_kind is not None:
        ranks, _ = image_to_text_ranks(
            caption_posterior(scores, posterior_kind), owner)
        metrics["image_to_text_posterior"] = rank_summary(
            ranks, ks, scores.shape[0], curve_length)
    return metrics


def _first_hit_tail(num_candidates, num_relevant, length):
    """P(rank > r) for r = 0 .. length, one query, random ranking.

    The rank of the first of `num_relevant` items in a uniformly random
    permutation of `num_candidates`: `P(rank > r)` is the chance that the
    first `r` places hold none of them, a product of `r` factors.
    """
    r = np.arange(length)
    factors = np.clip((num_candidates - num_relevant - r)
                      / (num_candidates - r), 0.0, 1.0)
    return np.concatenate([[1.0], np.cumprod(factors)])


def random_ranking_baseline(num_captions_per_image, ks=DEFAULT_KS,
                            curve_length=100):
    """The exact expectation of every metric under a random ranking.

    Each query's candidates are put in a uniformly random order (a model
    whose scores are continuous random numbers). Text->image: each of the
    `C` captions has one right image among `N`, so `E[R@K] = K / N` and the
    mean rank is `(N + 1) / 2`. Image->text: an image with `m` captions among
    the `C` has its first hit at rank `> K` with probability
    `prod_{i<K} (C - m - i) / (C - i)`, and expected rank `(C + 1) / (m + 1)`;
    these are averaged over the captioned images. `median_rank` is the median
    of the rank of a random query (the smallest `r` with `P(rank <= r) >=
    1/2`).

    Args:
        num_captions_per_image: int `[N]`, how many captions each image of
            the candidate set has (0 for an image without captions).

    Returns:
        `{"text_to_image": ..., "image_to_text": ...}` with the keys of
        `rank_summary` (no `hits`), as expectations.
    """
    counts = np.asarray(num_captions_per_image, np.int64)
    num_images, num_captions = len(counts), int(counts.sum())
    if num_images == 0 or num_captions == 0:
        raise ValueError("the baseline needs at least one image and caption; "
                         f"received {num_images} images and {num_captions} "
                         "captions.")

    def summary(tails, weights, mean_rank, num_candidates):
        # tails[q, r] = P(rank of query q > r); averaged over queries.
        tail = np.average(tails, axis=0, weights=weights)
        at_most = 1.0 - tail
        top = min(curve_length, num_candidates)
        median = int(np.argmax(at_most >= 0.5 - 1e-12))
        return {
            "num_queries": int(np.sum(weights)),
            "num_candidates": num_candidates,
            "recall": {int(k): 100.0 * float(at_most[min(k, num_candidates)])
                       for k in ks},
            "median_rank": float(median),
            "mean_rank": float(mean_rank),
            "recall_curve": [100.0 * float(v) for v in at_most[1:top + 1]],
        }

    t2i_tail = _first_hit_tail(num_images, 1, num_images)[None, :]
    t2i = summary(t2i_tail, [num_captions], (num_images + 1) / 2, num_images)
    relevant, images = np.unique(counts[counts > 0], return_counts=True)
    i2t_tails = np.stack([_first_hit_tail(num_captions, m, num_captions)
                          for m in relevant])
    mean_rank = float(np.sum(images * (num_captions + 1) / (relevant + 1))
                      / images.sum())
    i2t = summary(i2t_tails, images, mean_rank, num_captions)
    return {"text_to_image": t2i, "image_to_text": i2t}


def recall_at(summary, k):
    """Recall@k (%) of a `rank_summary`, also after a JSON round trip.

    JSON turns the integer keys of `summary["recall"]` into strings; this
    reads either form.
    """
    recall = summary["recall"]
    return float(recall[k] if k in recall else recall[str(k)])
