"""Two-stage retrieval: a cheap score for every pair, the cross-encoder for the top k.

First stage. The backbone encodes every caption alone (no image slots) and
every image alone (no text), `C + N` forward passes instead of `C x N`, and
keeps `text_pooled` and `image_pooled`. Run alone, each stream sees only its
own modality in the shared layers, so the pooled vector of a caption does
not depend on the image it will be compared with. Pairs are then scored
from the two pooled matrices:

- `"itm_head"` (default): the model's own matching head applied to the
  unimodal pooled vectors, `(t * v) . (w_0 - w_1) + (b_0 - b_1)`, the
  log-odds the head would give if the joint encoding of a pair were the
  two separate encodings. It needs no extra parameters and ranks with the
  same weights the cross-encoder uses, but ignores cross-modal attention.
- `"cosine"`: the cosine similarity of `t` and `v` (for a model without an
  `ImageTextMatchingHead`).
- `"contrastive"`: the model's `ContrastiveHead` (`itc_head`, trained by
  the optional image-text contrastive task) on `t` and `v`: the similarity
  the model was trained to rank with.
- `"auto"`: `"contrastive"` for a model with a contrastive head, else
  `"itm_head"`.

Second stage. For text->image each caption keeps its `k` best images, and
for image->text each image its `k_captions` best captions (ties broken by
position, so the choice is deterministic). The union of those pairs is
scored by the cross-encoder, in caption-major order. A query's reranked
candidates are ranked by the cross-encoder score ahead of all its other
candidates, which keep their first-stage order; ranks then follow the tie
rule of `retrieval_metrics`. With `k` = all images and `k_captions` = all
captions every pair is reranked and the result equals full scoring.
"""
import time

import keras
import numpy as np

from keras_interbert.evaluation.grid_scoring import padded_call
from keras_interbert.evaluation.grid_scoring import score_pairs
from keras_interbert.layers.image_text_matching_head import ImageTextMatchingHead

FIRST_STAGE_METHODS = ("auto", "itm_head", "cosine", "contrastive")


def _find_backbone(model):
    backbone = getattr(model, "backbone", model)
    output = getattr(backbone, "output", None) if hasattr(
        backbone, "_outputs_struct") else None
    if not isinstance(output, dict) or not {"text_pooled", "image_pooled"} <= set(
            output):
        raise ValueError(
            f"the first stage needs a functional backbone with 'text_pooled' "
            f"and 'image_pooled' outputs (an InterBERTBackbone, or a task "
            f"with one as `.backbone`); received {type(model).__name__}.")
    return backbone


def _pooled_output(backbone, name):
    """The symbolic `name` output of `backbone`; of an `InterBERTBackbone`,
    by its pooled-only call (the last layers at position 0 alone)."""
    from keras_interbert.models.interbert_backbone import InterBERTBackbone

    if isinstance(backbone, InterBERTBackbone):
        return backbone(backbone.input, pooled_only=True)[name]
    return backbone.output[name]


def _find_itm_head(model):
    head = getattr(model, "itm_head", None)
    if isinstance(head, ImageTextMatchingHead):
        return head
    heads = [layer for layer in getattr(model, "layers", [])
             if isinstance(layer, ImageTextMatchingHead)]
    if len(heads) != 1:
        raise ValueError(
            f"first stage 'itm_head' needs a model with one "
            f"ImageTextMatchingHead; {type(model).__name__} has {len(heads)}. "
            "Use first stage 'cosine'.")
    return heads[0]


def _find_contrastive_head(model):
    head = getattr(model, "itc_head", None)
    if head is None:
        raise ValueError(
            f"first stage 'contrastive' needs a model with a contrastive head "
            f"(`itc_head`, from pretraining with the ITC task); "
            f"{type(model).__name__} has none. Use 'itm_head' or 'cosine'.")
    return head


def resolve_first_stage(model, method):
    """The first-stage method `"auto"` stands for with `model`."""
    if method != "auto":
        return method
    return ("contrastive" if getattr(model, "itc_head", None) is not None
            else "itm_head")


def _to_numpy(model):
    return lambda x: keras.ops.convert_to_numpy(model.predict_on_batch(x))


def image_pooled_vectors(backbone, table, batch_size=256, tick=None):
    """`image_pooled` `[N, P]` of every image of a `RegionTable`, each alone.

    Each image goes through `backbone` with one empty text token
    (`text_mask` 0), which its slots do not attend to. `tick()` is called
    after each batch.
    """
    image_model = keras.Model(backbone.input,
                              _pooled_output(backbone, "image_pooled"))
    images = []
    image_batch = min(batch_size, table.num_images)
    for start in range(0, table.num_images, image_batch):
        index = np.arange(start, min(start + image_batch, table.num_images))
        x = {k: np.asarray(v) for k, v in table.gather(index).items()}
        x["token_ids"] = np.zeros((len(index), 1), np.int32)
        x["segment_ids"] = np.zeros((len(index), 1), np.int32)
        x["text_mask"] = np.zeros((len(index), 1), np.int32)
        images.append(padded_call(_to_numpy(image_model), x, image_batch))
        if tick is not None:
            tick()
    return np.concatenate(images).astype(np.float32)


def pooled_embeddings(model, evaluation_set, batch_size=256, progress=False):
    """`text_pooled` `[C, P]` of each caption alone and `image_pooled`
    `[N, P]` of each image alone, float32 numpy.

    Captions are encoded with one empty image slot (`region_mask` 0), images
    with one empty text token (`text_mask` 0); a masked slot is not attended
    to by the other stream's tokens, so it does not change the output.
    """
    backbone = _find_backbone(model)
    text_model = keras.Model(backbone.input,
                             _pooled_output(backbone, "text_pooled"))
    feature_dim = evaluation_set.table.feature_dim
    text = evaluation_set.text
    bar = None
    if progress:
        from tqdm import tqdm

        total = -(-evaluation_set.num_captions // batch_size) - (
            -evaluation_set.num_images // batch_size)
        bar = tqdm(total=total, desc="first stage: encoding", unit="batch")

    def tick():
        if bar is not None:
            bar.update(1)

    texts = []
    text_batch = min(batch_size, evaluation_set.num_captions)
    for start in range(0, evaluation_set.num_captions, text_batch):
        x = {k: text[k][start:start + text_batch] for k in text}
        b = len(x["token_ids"])
        x["region_features"] = np.zeros((b, 1, feature_dim), np.float32)
        x["region_locations"] = np.zeros((b, 1, 5), np.float32)
        x["region_mask"] = np.zeros((b, 1), np.int32)
        texts.append(padded_call(_to_numpy(text_model), x, text_batch))
        tick()
    images = image_pooled_vectors(backbone, evaluation_set.table, batch_size,
                                  tick)
    if bar is not None:
        bar.close()
    return np.concatenate(texts).astype(np.float32), images


def first_stage_scores(model, evaluation_set, method="itm_head",
                       batch_size=256, progress=False):
    """The cheap score of every pair, float32 `[C, N]` (see module docstring).

    `method` is `"auto"`, `"itm_head"`, `"cosine"`, `"contrastive"`, or a
    callable `f(evaluation_set) -> [C, N]` scores.
    """
    if callable(method):
        scores = np.asarray(method(evaluation_set), np.float32)
        expected = (evaluation_set.num_captions, evaluation_set.num_images)
        if scores.shape != expected:
            raise ValueError(f"the first-stage function must return scores "
                             f"{expected}; received {scores.shape}.")
        return scores
    if method not in FIRST_STAGE_METHODS:
        raise ValueError(f"first stage must be one of {FIRST_STAGE_METHODS} "
                         f"or a callable; received {method!r}.")
    method = resolve_first_stage(model, method)
    head = _find_itm_head(model) if method == "itm_head" else None
    if method == "contrastive":
        head = _find_contrastive_head(model)
    text, image = pooled_embeddings(model, evaluation_set, batch_size,
                                    progress)
    if method == "contrastive":
        text = keras.ops.convert_to_numpy(head.embed_text(text))
        image = keras.ops.convert_to_numpy(head.embed_image(image))
        return (text.astype(np.float64) @ image.astype(np.float64).T).astype(
            np.float32)
    text, image = text.astype(np.float64), image.astype(np.float64)
    if method == "cosine":
        text /= np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
        image /= np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
        return (text @ image.T).astype(np.float32)
    kernel = keras.ops.convert_to_numpy(head.classifier.kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(head.classifier.bias).astype(np.float64)
    weight = kernel[:, 0] - kernel[:, 1]
    return ((text * weight) @ image.T + (bias[0] - bias[1])).astype(np.float32)


def top_k_indices(scores, k, axis=1):
    """The `k` best entries of each row (`axis=1`) or column (`axis=0`).

    Ordered best first; ties go to the lower index. Returns int64 `[rows, k]`
    (`[columns, k]` for `axis=0`).
    """
    scores = np.asarray(scores)
    if axis == 0:
        scores = scores.T
    k = int(min(max(k, 1), scores.shape[1]))
    top = np.empty((scores.shape[0], k), np.int64)
    for start in range(0, scores.shape[0], 512):
        block = -scores[start:start + 512].astype(np.float64)
        top[start:start + len(block)] = np.argsort(
            block, axis=1, kind="stable")[:, :k]
    return top


def _dense_order(values):
    """Integers 0, 1, ... that order `values` as they are, ties kept."""
    _, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(-1).astype(np.float64)


def reranked_matrix(first_stage, rerank_mask, cross_scores):
    """An order-equivalent score matrix: reranked pairs above all others.

    `rerank_mask` marks the pairs a query reranks; they are ordered by
    `cross_scores` (read only there), every other pair by `first_stage`,
    and every reranked pair is above every other one. The values are
    integers standing for those orders, so exact ties stay ties.
    """
    first_stage = np.asarray(first_stage)
    rerank_mask = np.asarray(rerank_mask, bool)
    order = np.empty(first_stage.shape, np.float64)
    if (~rerank_mask).any():
        low = _dense_order(first_stage[~rerank_mask])
        order[~rerank_mask] = low - (low.max() + 1)
    if rerank_mask.any():
        order[rerank_mask] = _dense_order(np.asarray(cross_scores)[rerank_mask])
    return order


def two_stage_scores(scorer, evaluation_set, first_stage, k=10,
                     k_captions=None, batch_size=1000, progress=True):
    """Reranks the first stage's top candidates with the cross-encoder.

    Args:
        scorer: a `PairScorer`.
        evaluation_set: a `RetrievalEvaluationSet`.
        first_stage: float `[C, N]`, the cheap scores.
        k: images reranked per caption (text->image).
        k_captions: captions reranked per image (image->text); default
            `k` times the largest number of captions of an image.
        batch_size: pairs per cross-encoder call.

    Returns:
        A dict: `text_to_image` and `image_to_text`, order-equivalent score
        matrices for `retrieval_metrics` (see `reranked_matrix`);
        `num_pairs_scored`, `k`, `k_captions` and `seconds` (the reranking
        time).
    """
    first_stage = np.asarray(first_stage, np.float32)
    num_captions, num_images = first_stage.shape
    if k_captions is None:
        per_image = np.bincount(evaluation_set.caption_image_index,
                                minlength=num_images)
        k_captions = int(k) * max(int(per_image.max()), 1)
    k = int(min(k, num_images))
    k_captions = int(min(k_captions, num_captions))
    began = time.perf_counter()
    t2i_top = top_k_indices(first_stage, k, axis=1)
    i2t_top = top_k_indices(first_stage, k_captions, axis=0)
    t2i_pairs = np.arange(num_captions)[:, None] * num_images + t2i_top
    i2t_pairs = i2t_top * num_images + np.arange(num_images)[:, None]
    # Sorted caption-major: with every pair reranked, the batches are exactly
    # those of full scoring.
    pairs = np.union1d(t2i_pairs.reshape(-1), i2t_pairs.reshape(-1))
    scores = score_pairs(scorer, evaluation_set, pairs // num_images,
                         pairs % num_images, batch_size, progress,
                         desc="second stage: reranking")
    cross = np.full(num_captions * num_images, np.nan, np.float32)
    cross[pairs] = scores
    cross = cross.reshape(num_captions, num_images)
    t2i_mask = np.zeros(first_stage.shape, bool)
    t2i_mask[np.arange(num_captions)[:, None], t2i_top] = True
    i2t_mask = np.zeros(first_stage.shape, bool)
    i2t_mask[i2t_top, np.arange(num_images)[:, None]] = True
    seconds = time.perf_counter() - began
    return {
        "text_to_image": reranked_matrix(first_stage, t2i_mask, cross),
        "image_to_text": reranked_matrix(first_stage, i2t_mask, cross),
        "num_pairs_scored": int(len(pairs)),
        "k": k,
        "k_captions": k_captions,
        "seconds": seconds,
    }
