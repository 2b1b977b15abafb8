"""Does adding the contrastive logit to the matching log-odds rank better?

A finetuned retriever of the improved recipe has two scores for a pair: the
cross-encoder's matching log-odds (`itm_logits[1] - itm_logits[0]`, what the
full and two-stage modes rank by) and its contrastive head's scaled cosine
of the caption alone against the image alone (the first stage). Some later
models rank the reranked candidates by the sum of the two. This program
measures that sum, with the contrastive head's own learned scale (so no
weight is chosen by looking at the results), against the matching score
alone, on the validation and the test split of a quickstart run, for text ->
image and for image -> text ranked by the caption posterior (each caption's
scores normalised over the images, `caption_posterior`): the matching score
as `log sigmoid(log-odds)`, the sum as `log sigmoid(log-odds) + logit`.

The test split's full score matrix is read from the run's evaluation when
it is there (`retrieval/evaluation/scores_full.npz`, checked against this
model and data by its fingerprint); the validation split is scored here.

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/score_fusion.py \\
        runs/quickstart_seeds/en_s42 runs/quickstart_seeds/en_s43 --language en
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
    p.add_argument("runs", nargs="+",
                   help="Quickstart run directories (each with "
                   "retrieval/finetuned.keras and bundled-data-*/).")
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    p.add_argument("--max-regions", type=int, default=8)
    p.add_argument("--json", default=None, help="Also write the figures here.")
    return p.parse_args(argv)


def fusion_metrics(match_logodds, contrastive_logits, caption_image_index):
    """R@1 of the matching score, the contrastive logit and their sum."""
    from keras_interbert.evaluation import recall_at
    from keras_interbert.evaluation.retrieval_metrics import caption_posterior
    from keras_interbert.evaluation.retrieval_metrics import image_to_text_ranks
    from keras_interbert.evaluation.retrieval_metrics import rank_summary
    from keras_interbert.evaluation.retrieval_metrics import text_to_image_ranks

    match = np.asarray(match_logodds, np.float64)
    itc = np.asarray(contrastive_logits, np.float64)
    log_match = -np.logaddexp(0.0, -match)  # log sigmoid
    owner = np.asarray(caption_image_index)

    def r1(ranks):
        return round(recall_at(rank_summary(ranks, (1,)), 1), 1)

    def t2i(scores):
        return r1(text_to_image_ranks(scores, owner))

    def i2t(log_scores):
        ranks, _ = image_to_text_ranks(
            caption_posterior(log_scores, "similarity"), owner)
        return r1(ranks)

    return {
        "matching t2i": t2i(match),
        "contrastive t2i": t2i(itc),
        "sum t2i": t2i(match + itc),
        "matching i2t posterior": i2t(log_match),
        "contrastive i2t posterior": i2t(itc),
        "sum i2t posterior": i2t(log_match + itc),
    }


def run_metrics(run, language, split, max_regions):
    import keras

    from keras_interbert.data.retrieval_pipeline import RetrievalEvaluationSet
    from keras_interbert.evaluation import PairScorer
    from keras_interbert.evaluation import score_grid
    from keras_interbert.evaluation.grid_scoring import grid_fingerprint
    from keras_interbert.evaluation.grid_scoring import load_scores
    from keras_interbert.evaluation.two_stage import first_stage_scores
    from keras_interbert.models.loading import load_interbert
    from keras_interbert.preprocessing import InterBERTTokenizer

    data = [os.path.join(run, d) for d in sorted(os.listdir(run))
            if d.startswith("bundled-data")]
    if len(data) != 1:
        raise SystemExit(f"{run}: expected one bundled-data-* folder, found "
                         f"{len(data)}.")
    model = load_interbert(os.path.join(run, "retrieval", "finetuned.keras"))
    if getattr(model, "itc_head", None) is None:
        raise SystemExit(f"{run}: the finetuned model has no contrastive "
                         "head.")
    tokenizer = InterBERTTokenizer.from_preset(f"interbert_base_{language}")
    evaluation = RetrievalEvaluationSet(
        os.path.join(data[0], "regions"),
        os.path.join(data[0], f"captions_{language}.jsonl"), tokenizer,
        split=split, max_regions=max_regions)
    scorer = PairScorer(model)
    saved = os.path.join(run, "retrieval", "evaluation", "scores_full.npz")
    if split == "test" and os.path.exists(saved):
        # Scored by recipes/finetune_retrieval.py's evaluation (its default
        # --eval-batch-size); another model's or data's file is refused.
        match = load_scores(saved, grid_fingerprint(
            evaluation, scorer, 1000))["scores"]
    else:
        match = score_grid(scorer, evaluation, 1000, None,
                           progress=False)["scores"]
    scale = float(keras.ops.convert_to_numpy(model.itc_head.scale()))
    cosine = first_stage_scores(model, evaluation, "contrastive")
    return dict(fusion_metrics(match, scale * cosine,
                               evaluation.caption_image_index),
                contrastive_scale=round(scale, 2))


def main(argv=None):
    args = parse_args(argv)
    import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)

    results = {}
    for run in args.runs:
        for split in args.splits:
            results[f"{run} {split}"] = row = run_metrics(
                run, args.language, split, args.max_regions)
            print(run, split, json.dumps(row), flush=True)
    names = [k for k in next(iter(results.values()))
             if k != "contrastive_scale"]
    print()
    print("| run, split | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for key, row in results.items():
        print(f"| {key} | "
              + " | ".join(f"{row[n]:.1f}" for n in names) + " |")
    for split in args.splits:
        rows = [results[f"{run} {split}"] for run in args.runs]
        gains = [row["sum t2i"] - row["matching t2i"] for row in rows]
        print(f"{split}: sum minus matching, t2i R@1: "
              + ", ".join(f"{g:+.1f}" for g in gains)
              + f" (mean {np.mean(gains):+.2f})")
    if args.json:
        from keras_interbert.utils.atomic import write_text_atomically
        write_text_atomically(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
