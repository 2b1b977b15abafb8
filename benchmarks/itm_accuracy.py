"""Held-out image-text matching accuracy of a pretrained or finetuned model, masked and clean.

Pretraining computes ITM on the same forward pass as masked segment and
region modelling (docs/architecture.md §3.4): the caption the matching head
judges has one span of about a third of its word pieces masked, and some
regions are zeroed. Its held-out ITM accuracy (the `val_itm_accuracy` of
history.csv) is therefore measured on damaged pairs: a span that hides the
only words that tell a caption from another image's caps what any model can
reach. This program scores the same held-out pairs (the pipeline's pairs
and negatives: another image's caption for half of them) twice:

- `masked`: the pipeline's inputs, as in training and `val_itm_accuracy`
  (the masking rules of the model's preprocessor when the file holds one,
  else the published ones);
- `clean`: the same pairs with no text or region masking, as retrieval
  scores them;

and, for each, reports the matching head's accuracy at its own decision
(match probability > 0.5), its accuracy at the best threshold (fit on one
half of the pairs, measured on the other, both ways, averaged: how separable
the scores are, whatever the head's bias), its ROC AUC, and the same two
figures for the model's contrastive head (the cosine of the caption alone
against the image alone), when it has one: the first stage as a matcher.

The model may also be a finetuned retriever (`retrieval/finetuned.keras`,
an `InterBERTRetriever`): its matching head then scores the same pairs, so
pretraining and finetuning are compared on one set of held-out pairs. A
retriever never saw masked inputs; its `clean` column is the one to read
(its head was trained with three mismatched pairs to one matched, so read
the fitted-threshold accuracy rather than the one at p > 0.5).

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/itm_accuracy.py \\
        runs/quickstart/pretrain/pretrained.keras \\
        --data runs/quickstart/bundled-data-1000-d256 --language en
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="A pretrained .keras file (InterBERTPretrainer) "
                   "or a finetuned one (InterBERTRetriever).")
    p.add_argument("--data", required=True,
                   help="A data folder with regions/ and captions_<language>.jsonl.")
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--split", default="val")
    p.add_argument("--batches", type=int, default=16,
                   help="Batches of pairs per input kind (the held-out split "
                   "is repeated with fresh pairs and masks).")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sequence-length", type=int, default=None,
                   help="Default: the model's preprocessor's, else 36.")
    p.add_argument("--max-regions", type=int, default=None,
                   help="Default: the model's preprocessor's; required if "
                   "the file holds none.")
    p.add_argument("--seed", type=int, default=43,
                   help="Pipeline seed (the pretraining recipe validates with "
                   "its --seed + 1).")
    p.add_argument("--json", default=None, help="Also write the figures here.")
    return p.parse_args(argv)


def roc_auc(scores, positive):
    """Probability that a random positive outscores a random negative
    (ties count one half)."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    # Average ranks over ties.
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2)
                 / (len(pos) * len(neg)))


def best_threshold(scores, positive):
    """The threshold `t` (calling `score > t` a match) with the highest
    accuracy on these pairs."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    values = np.unique(scores)
    # Midway between neighbouring scores (and below all of them): no
    # fitted threshold sits on a score of the pairs it was fit on.
    candidates = np.concatenate([[values[0] - 1.0],
                                 (values[:-1] + values[1:]) / 2])
    accuracy = [np.mean((scores > t) == positive) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def held_out_threshold_accuracy(scores, positive):
    """Accuracy at a threshold fit on the other half of the pairs (both
    halves in turn, averaged)."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    half = len(scores) // 2
    parts = [(slice(0, half), slice(half, None)),
             (slice(half, None), slice(0, half))]
    accuracy = []
    for fit, test in parts:
        t = best_threshold(scores[fit], positive[fit])
        accuracy.append(np.mean((scores[test] > t) == positive[test]))
    return float(np.mean(accuracy))


def clean_config(config):
    """`config` with no text or region masking (the same pairs)."""
    import dataclasses

    return dataclasses.replace(config, msm="token", msm_token_probability=0.0,
                               mrm="group", mrm_probability=0.0)


def score_pairs(model, dataset, batches):
    """Match probabilities, contrastive cosines (or None) and labels."""
    import keras

    from keras_interbert.models.input_checks import BACKBONE_INPUT_NAMES
    from keras_interbert.models.interbert_pretrainer import unimodal_pooled
    from keras_interbert.models.interbert_retriever import InterBERTRetriever

    retriever = isinstance(model, InterBERTRetriever)
    match, cosine, labels = [], [], []
    for x, y in dataset.take(batches):
        x = {k: keras.ops.convert_to_tensor(v.numpy()) for k, v in x.items()}
        if retriever:
            # The retriever's graph takes the backbone's inputs alone; its
            # first stage is the contrastive head on each modality alone,
            # the caption unmasked as in the pretrainer's `itc_logits`.
            out = model({k: x[k] for k in BACKBONE_INPUT_NAMES},
                        training=False)
            if model.itc_head is not None:
                text, image = unimodal_pooled(
                    model.backbone, x, x["itc_token_ids"], training=False)
                out = dict(out, itc_logits=model.itc_head(text, image))
        else:
            out = model(x, training=False)
        logits = keras.ops.convert_to_numpy(out["itm_logits"]).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        match.append(probs[:, 0])  # class 0 = matched
        if "itc_logits" in out:
            cosine.append(np.diag(keras.ops.convert_to_numpy(out["itc_logits"])))
        labels.append(y["itm_labels"].numpy())
    labels = np.concatenate(labels)
    if not len(labels):
        raise SystemExit("no held-out pairs: the split has no batch of "
                         "--batch-size pairs.")
    return (np.concatenate(match), np.concatenate(cosine) if cosine else None,
            labels)


def summarise(match, cosine, labels):
    positive = labels == 0
    out = {
        "pairs": int(len(labels)),
        "matched_fraction": float(positive.mean()),
        "itm_accuracy": float(np.mean((match > 0.5) == positive)),
        "itm_threshold_accuracy": held_out_threshold_accuracy(match, positive),
        "itm_auc": roc_auc(match, positive),
    }
    if cosine is not None:
        out["itc_threshold_accuracy"] = held_out_threshold_accuracy(
            cosine, positive)
        out["itc_auc"] = roc_auc(cosine, positive)
    return out


def main(argv=None):
    args = parse_args(argv)
    import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)
    import keras

    from keras_interbert.data.pretraining_pipeline import PretrainingDataConfig
    from keras_interbert.data.pretraining_pipeline import pretraining_dataset
    from keras_interbert.models.interbert_retriever import InterBERTRetriever
    from keras_interbert.preprocessing import InterBERTTokenizer
    from keras_interbert.utils.atomic import write_json_atomically

    if not os.path.exists(args.model):
        raise SystemExit(f"{args.model}: no such model file.")
    model = keras.saving.load_model(args.model)
    preprocessor = getattr(model, "preprocessor", None)
    sequence_length = args.sequence_length or getattr(
        preprocessor, "sequence_length", None) or 36
    max_regions = args.max_regions or getattr(preprocessor, "max_regions", None)
    if max_regions is None:
        raise SystemExit(f"{args.model} holds no preprocessor: give "
                         "--max-regions (the pretraining run's).")
    contrastive = getattr(model, "itc_head", None) is not None
    tokenizer = InterBERTTokenizer.from_preset(f"interbert_base_{args.language}")
    # The masking rules the model was trained with, when its file says
    # (the published ones otherwise; a retriever's preprocessor holds none,
    # and its image slot is the mean of unmasked regions).
    if isinstance(model, InterBERTRetriever):
        rules = {"global_feature": "unmasked_mean"}
    else:
        rules = {name: getattr(preprocessor, name) for name in (
            "msm", "msm_token_probability", "mrm", "mrm_probability",
            "mrm_iou_threshold", "global_feature")
            if hasattr(preprocessor, name)}
    masked = PretrainingDataConfig(
        sequence_length=sequence_length, max_regions=max_regions,
        batch_size=args.batch_size, itc=contrastive, seed=args.seed,
        shuffle_buffer=0, repeat=True, **rules)
    regions = os.path.join(args.data, "regions")
    captions = os.path.join(args.data, f"captions_{args.language}.jsonl")
    report = {"model": args.model, "data": args.data, "split": args.split,
              "seed": args.seed}
    for kind, config in (("masked", masked), ("clean", clean_config(masked))):
        dataset = pretraining_dataset(regions, captions, tokenizer, config,
                                      split=args.split)
        report[kind] = summarise(*score_pairs(model, dataset, args.batches))

    rows = [("matching head, accuracy at p > 0.5", "itm_accuracy"),
            ("matching head, accuracy at a fitted threshold",
             "itm_threshold_accuracy"),
            ("matching head, ROC AUC", "itm_auc")]
    if contrastive:
        rows += [("contrastive cosine, accuracy at a fitted threshold",
                  "itc_threshold_accuracy"),
                 ("contrastive cosine, ROC AUC", "itc_auc")]
    print(f"{report['masked']['pairs']} held-out pairs of the {args.split} "
          f"split per column ({report['masked']['matched_fraction']:.0%} "
          "matched)")
    print("| | masked (as in training) | clean |")
    print("|---|---|---|")
    for label, key in rows:
        print(f"| {label} | {report['masked'][key]:.3f} | "
              f"{report['clean'][key]:.3f} |")
    if args.json:
        write_json_atomically(args.json, report)
    return report


if __name__ == "__main__":
    main()
