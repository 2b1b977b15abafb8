"""Shared by the pretraining tests and the distributed worker scripts.

A tiny pretrainer configuration (no dropout, so that runs on one and on
several devices are comparable) and a fixed pretraining batch that follows
the batch contract of `InterBERTPretrainer.fit`.
"""
import numpy as np
from conftest import TINY_BACKBONE
from conftest import random_backbone_inputs

NUM_CLASSES = 11
MASK_ID = 3

NO_DROPOUT = dict(TINY_BACKBONE, dropout=0.0, attention_dropout=0.0,
                  image_dropout=0.0, image_attention_dropout=0.0)


def build_pretrainer(seed=0, dropout=False, **overrides):
    import keras

    import keras_interbert

    keras.utils.set_random_seed(seed)
    config = dict(TINY_BACKBONE if dropout else NO_DROPOUT, **overrides)
    backbone = keras_interbert.InterBERTBackbone(**config)
    return keras_interbert.InterBERTPretrainer(
        backbone, num_region_classes=NUM_CLASSES,
        itm_dropout=0.1 if dropout else 0.0)


def pretraining_batch(batch=4, text_len=9, regions=6, seed=0,
                      itm_labels=None):
    """`(x, y)` with masked inputs, uneven target counts across rows."""
    rng = np.random.default_rng(seed)
    x = random_backbone_inputs(batch=batch, text_len=text_len,
                               regions=regions, seed=seed)
    text_mask = x["text_mask"].astype(bool)
    region_mask = x["region_mask"].astype(bool)

    # MSM: row i masks about (i+1)/batch of its real positions after [CLS].
    msm_weights = np.zeros((batch, text_len), "float32")
    for i in range(batch):
        real = np.flatnonzero(text_mask[i])[1:]
        k = max(1, int(round(len(real) * (batch - i) / batch * 0.8)))
        msm_weights[i, rng.choice(real, size=k, replace=False)] = 1.0
    msm_labels = np.where(msm_weights > 0, x["token_ids"], 0).astype("int32")
    x["token_ids"] = np.where(msm_weights > 0, MASK_ID,
                              x["token_ids"]).astype("int32")

    # MRM: real regions (never slot 0) masked at random, at least one a row.
    mrm_weights = np.zeros((batch, regions), "float32")
    for i in range(batch):
        real = np.flatnonzero(region_mask[i])[1:]
        chosen = real[rng.random(len(real)) < 0.5]
        if len(chosen) == 0:
            chosen = real[:1]
        mrm_weights[i, chosen] = 1.0
    logits = rng.normal(size=(batch, regions, NUM_CLASSES)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    probs[..., : NUM_CLASSES // 3] = 0.0  # exact zeros: 0 * log 0 terms
    probs /= probs.sum(-1, keepdims=True)
    mrm_targets = (probs * mrm_weights[..., None]).astype("float32")
    x["region_features"] = np.where(mrm_weights[..., None] > 0, 0.0,
                                    x["region_features"]).astype("float32")

    if itm_labels is None:
        itm_labels = np.arange(batch) % 3 == 1
    y = {
        "msm_labels": msm_labels,
        "msm_weights": msm_weights,
        "mrm_targets": mrm_targets,
        "mrm_weights": mrm_weights,
        "itm_labels": np.asarray(itm_labels, "int32"),
    }
    return x, y
