"""A small dual-encoder baseline for image-text retrieval on the same data.

The ceiling every InterBERT retrieval number is read against: a model with
no cross-modal attention at all, trained from scratch on the same training
split and evaluated with the same evaluation code (`RetrievalEvaluationSet`,
`retrieval_metrics`) on the same test split.

- Text tower: word embeddings plus learned positions, one self-attention
  block (multi-head attention and a feed-forward layer, post-LN), mean over
  the real tokens, a linear projection.
- Image tower: the same region slots InterBERT sees (global slot, 5-d
  locations, padding), a two-layer MLP on `[feature, location]`, one
  self-attention block, mean over the real slots, a linear projection.
- Both embeddings are L2-normalised; a pair's score is their cosine times a
  learned scale. Loss: the symmetric in-batch contrastive cross-entropy over
  batches of distinct training images, one random caption each.

It runs on every Keras backend. As a module it gives `train_and_evaluate`
(the quickstart calls it); as a program it prints the metrics and writes
them as JSON:

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/dual_encoder_baseline.py \
        --data runs/bundled-data-1000-d256 --max-regions 8 --steps 600
"""
import argparse
import math
import os
import sys
import time

import numpy as np


def build_dual_encoder(vocabulary_size, feature_dim, sequence_length,
                       hidden_dim=128, num_heads=4, embedding_dim=128,
                       dropout=0.1):
    """The two towers and the scored model, as Keras functional models.

    Returns `(model, text_encoder, image_encoder)`: `model` maps a batch of
    text inputs (`token_ids`, `text_mask`) and region inputs
    (`region_features`, `region_locations`, `region_mask`) of matched pairs
    to the `[B, B]` score matrix; the encoders give normalised embeddings.
    """
    import keras
    import keras_hub
    from keras import layers
    from keras import ops

    def block(x, mask, name):
        attention_mask = ops.expand_dims(ops.cast(mask, "bool"), 1)
        attended = layers.MultiHeadAttention(
            num_heads, hidden_dim // num_heads, dropout=dropout,
            name=f"{name}_attention")(x, x, attention_mask=attention_mask)
        x = layers.LayerNormalization(name=f"{name}_norm1")(
            x + layers.Dropout(dropout)(attended))
        hidden = layers.Dense(hidden_dim * 2, activation="gelu",
                              name=f"{name}_ffn1")(x)
        hidden = layers.Dense(hidden_dim, name=f"{name}_ffn2")(hidden)
        return layers.LayerNormalization(name=f"{name}_norm2")(
            x + layers.Dropout(dropout)(hidden))

    def mean_pool(x, mask):
        weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
        return ops.sum(x * weights, axis=1) / ops.maximum(
            ops.sum(weights, axis=1), 1.0)

    def normalise(x):
        return x / ops.sqrt(ops.maximum(
            ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))

    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    text_mask = keras.Input((None,), dtype="int32", name="text_mask")
    words = layers.Embedding(vocabulary_size, hidden_dim,
                             name="word_embedding")(token_ids)
    positions = keras_hub.layers.PositionEmbedding(
        sequence_length, name="position_embedding")(words)
    text = layers.LayerNormalization(name="text_embedding_norm")(
        words + positions)
    text = block(text, text_mask, "text")
    text = normalise(layers.Dense(embedding_dim, name="text_projection")(
        mean_pool(text, text_mask)))
    text_encoder = keras.Model({"token_ids": token_ids, "text_mask": text_mask},
                               text, name="text_encoder")

    features = keras.Input((None, feature_dim), name="region_features")
    locations = keras.Input((None, 5), name="region_locations")
    region_mask = keras.Input((None,), dtype="int32", name="region_mask")
    image = layers.Concatenate()([features, locations])
    image = layers.Dense(hidden_dim * 2, activation="gelu",
                         name="region_mlp1")(image)
    image = layers.LayerNormalization(name="region_norm")(
        layers.Dense(hidden_dim, name="region_mlp2")(image))
    image = block(image, region_mask, "image")
    image = normalise(layers.Dense(embedding_dim, name="image_projection")(
        mean_pool(image, region_mask)))
    image_encoder = keras.Model(
        {"region_features": features, "region_locations": locations,
         "region_mask": region_mask}, image, name="image_encoder")

    model = _ContrastivePair(text_encoder, image_encoder)
    return model, text_encoder, image_encoder


def _contrastive_pair_class():
    import keras
    from keras import ops

    class ContrastivePair(keras.Model):
        """Scores every caption of a batch against every image of it."""

        def __init__(self, text_encoder, image_encoder, **kwargs):
            super().__init__(**kwargs)
            self.text_encoder = text_encoder
            self.image_encoder = image_encoder
            self.log_scale = self.add_weight(
                shape=(), name="log_scale",
                initializer=keras.initializers.Constant(math.log(1 / 0.07)))

        def call(self, inputs, training=None):
            text = self.text_encoder(
                {k: inputs[k] for k in ("token_ids", "text_mask")},
                training=training)
            image = self.image_encoder(
                {k: inputs[k] for k in ("region_features", "region_locations",
                                        "region_mask")}, training=training)
            scale = ops.exp(ops.minimum(self.log_scale, math.log(100.0)))
            return scale * ops.matmul(text, ops.transpose(image))

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                         training=True):
            own = ops.arange(ops.shape(y_pred)[0])
            text_to_image = keras.losses.sparse_categorical_crossentropy(
                own, y_pred, from_logits=True)
            image_to_text = keras.losses.sparse_categorical_crossentropy(
                own, ops.transpose(y_pred), from_logits=True)
            return 0.5 * ops.mean(text_to_image + image_to_text)

    return ContrastivePair


def _ContrastivePair(text_encoder, image_encoder):
    return _contrastive_pair_class()(text_encoder, image_encoder)


def _split_arrays(data, language, split, max_regions, sequence_length,
                  tokenizer):
    from keras_interbert.data.retrieval_pipeline import RetrievalEvaluationSet

    evaluation = RetrievalEvaluationSet(
        os.path.join(data, "regions"),
        os.path.join(data, f"captions_{language}.jsonl"), tokenizer,
        split=split, sequence_length=sequence_length, max_regions=max_regions)
    regions = evaluation.table.gather(np.arange(evaluation.num_images))
    regions = {k: np.asarray(v) for k, v in regions.items()}
    text = {k: evaluation.text[k] for k in ("token_ids", "text_mask")}
    return evaluation, text, regions


def _encode(encoder, inputs, batch_size=512):
    size = len(next(iter(inputs.values())))
    out = []
    for start in range(0, size, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in inputs.items()}
        out.append(np.asarray(encoder.predict_on_batch(batch)))
    return np.concatenate(out).astype(np.float32)


def train_and_evaluate(data, language="en", max_regions=8, sequence_length=30,
                       steps=600, batch_size=128, learning_rate=2e-3,
                       seed=42, split="test", progress=True, log=print):
    """Trains the baseline on the train split; Recall@K on `split`.

    Returns a dict: `metrics` (`retrieval_metrics` of the score matrix, both
    directions), `protocol`, `train_seconds`, `eval_seconds`, `steps`,
    `batch_size`, `final_loss`.
    """
    import keras

    from keras_interbert.evaluation.retrieval import retrieval_protocol
    from keras_interbert.evaluation.retrieval_metrics import retrieval_metrics
    from keras_interbert.preprocessing import InterBERTTokenizer

    keras.utils.set_random_seed(seed)
    tokenizer = InterBERTTokenizer.from_preset(f"interbert_base_{language}")
    train, text, regions = _split_arrays(data, language, "train", max_regions,
                                         sequence_length, tokenizer)
    if batch_size > train.num_images:
        raise ValueError(f"batch_size {batch_size} exceeds the "
                         f"{train.num_images} training images.")
    owners = train.caption_image_index
    captions_of = [np.flatnonzero(owners == i) for i in range(train.num_images)]
    if any(len(c) == 0 for c in captions_of):
        keep = np.array([len(c) > 0 for c in captions_of])
    else:
        keep = np.ones(train.num_images, bool)
    images = np.flatnonzero(keep)

    model, text_encoder, image_encoder = build_dual_encoder(
        int(tokenizer.vocabulary_size()), train.table.feature_dim,
        sequence_length)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=learning_rate,
        warmup_steps=max(1, steps // 10))
    model.compile(optimizer=keras.optimizers.AdamW(schedule,
                                                   weight_decay=0.01),
                  jit_compile="auto")
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(images), 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="dual encoder", unit="step")
    start = time.time()
    loss = float("nan")
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(images), 0
        chosen = order[cursor:cursor + batch_size]
        cursor += batch_size
        caption = np.array([rng.choice(captions_of[i]) for i in chosen])
        x = {k: v[caption] for k, v in text.items()}
        x.update({k: v[chosen] for k, v in regions.items()})
        loss = float(np.asarray(model.train_on_batch(
            x, np.zeros(batch_size, np.int32))))
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
    if bar is not None:
        bar.close()
    train_seconds = time.time() - start

    start = time.time()
    test, test_text, test_regions = _split_arrays(
        data, language, split, max_regions, sequence_length, tokenizer)
    # The learned scale makes the cosines the logits of the softmax over
    # images the model was trained with (it changes no ranking, only the
    # image -> text posterior, `caption_posterior`).
    scale = float(np.exp(min(float(np.asarray(model.log_scale)),
                             math.log(100.0))))
    scores = scale * (_encode(text_encoder, test_text) @ _encode(
        image_encoder, test_regions).T)
    metrics = retrieval_metrics(scores, test.caption_image_index,
                                posterior_kind="similarity")
    return {
        "metrics": metrics,
        "protocol": retrieval_protocol(test, split),
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "final_loss": loss,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.time() - start, 1),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="Data folder with regions/ and captions_<lang>.jsonl.")
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--max-regions", type=int, default=8)
    p.add_argument("--sequence-length", type=int, default=30)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None, help="Write the result as JSON here.")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    result = train_and_evaluate(
        args.data, args.language, args.max_regions, args.sequence_length,
        args.steps, args.batch_size, args.learning_rate, args.seed,
        args.split)
    for direction in ("text_to_image", "image_to_text",
                      "image_to_text_posterior"):
        recall = result["metrics"][direction]["recall"]
        print(f"{direction}: R@1 {recall[1]:.1f} R@5 {recall[5]:.1f} "
              f"R@10 {recall[10]:.1f}")
    print(f"training {result['train_seconds']} s, evaluation "
          f"{result['eval_seconds']} s")
    if args.out:
        from keras_interbert.utils.atomic import write_json_atomically

        write_json_atomically(args.out, result)
    return result


if __name__ == "__main__":
    main()
