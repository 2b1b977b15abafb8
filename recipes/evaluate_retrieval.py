"""Evaluate caption-based image retrieval (docs/architecture.md §4.1): Recall@1/5/10, median and mean rank.

Loads a `.keras` model whose output dict holds `itm_logits` (the pretrained
`InterBERTPretrainer` for zero-shot retrieval, or a finetuned retrieval
task), reads a split's canonical region shards and captions, scores every
caption against every image ("full") and/or reranks the top k of a cheap
first stage ("two-stage"), and writes into `--out`:

- `retrieval_metrics.json`: protocol, metrics and wall time of each mode,
  the random-ranking baseline; written last, atomically, so it exists only
  for a finished evaluation;
- `retrieval_recall.png`: Recall@K against K, text->image and image->text;
- `scores_full.npz`: the full mode's score matrix. While scoring it exists
  only as `scores_full.partial.npy/.json` (partial, resumable: run the same
  command again to continue; never read as a result).

    KERAS_BACKEND=jax .venv/bin/python recipes/evaluate_retrieval.py \
        --model runs/pretrain/pretrained.keras --data runs/bundled-data-2000-d2048 \
        --split test --out runs/retrieval-zero-shot --modes full two-stage
"""
import argparse
import os
import sys

EXIT_PARTIAL = 3


def parse_args(argv=None):
    from keras_interbert.utils.cli import add_jit_compile_argument

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help=".keras model with an 'itm_logits' output.")
    p.add_argument("--out", required=True, help="Output directory.")
    data = p.add_argument_group("data")
    data.add_argument("--data", default=None,
                      help="Folder with regions/ and captions_<language>.jsonl.")
    data.add_argument("--regions", default=None,
                      help="Canonical region folder (default: <data>/regions).")
    data.add_argument("--captions", default=None,
                      help="Captions JSON Lines (default: "
                      "<data>/captions_<language>.jsonl).")
    data.add_argument("--split", default="test")
    data.add_argument("--language", choices=("en", "zh"), default="en")
    data.add_argument("--sequence-length", type=int, default=30)
    data.add_argument("--max-regions", type=int, default=101,
                      help="Regions per image after the global slot.")
    run = p.add_argument_group("evaluation")
    run.add_argument("--modes", nargs="+", choices=("full", "two-stage"),
                     default=["full", "two-stage"])
    run.add_argument("--batch-size", type=int, default=500,
                     help="Pairs per cross-encoder call.")
    run.add_argument("--rerank-k", type=int, default=10,
                     help="Two-stage: images reranked per caption.")
    run.add_argument("--rerank-k-captions", type=int, default=None,
                     help="Two-stage: captions reranked per image (default: "
                     "rerank-k x the most captions of an image).")
    run.add_argument("--first-stage",
                     choices=("auto", "itm_head", "cosine", "contrastive"),
                     default="auto",
                     help="Two-stage first score from separately pooled "
                     "text and image vectors (see docs/evaluation.md).")
    run.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    run.add_argument("--max-batches", type=int, default=None,
                     help="Stop full scoring after this many batches (the "
                     "partial score file is kept; exit status 3).")
    run.add_argument("--no-progress", action="store_true")
    add_jit_compile_argument(
        run, "How the cross-encoder runs (Keras jit_compile): auto is "
        "Keras' choice; true compiles it with XLA (TensorFlow, JAX) or "
        "torch.compile (PyTorch: about 1.25x the pairs per second on a CPU "
        "after a first batch that compiles for minutes; "
        "docs/benchmarks.md).")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)
    import keras

    from keras_interbert.data.retrieval_pipeline import RetrievalEvaluationSet
    from keras_interbert.evaluation import PairScorer
    from keras_interbert.evaluation import evaluate_retrieval
    from keras_interbert.evaluation import format_table
    from keras_interbert.evaluation import plot_recall_curves
    from keras_interbert.evaluation import score_grid
    from keras_interbert.preprocessing import InterBERTTokenizer
    from keras_interbert.utils.cli import JIT_COMPILE

    if not (args.data or (args.regions and args.captions)):
        raise SystemExit("Give --data, or both --regions and --captions.")
    regions = args.regions or os.path.join(args.data, "regions")
    captions = args.captions or os.path.join(
        args.data, f"captions_{args.language}.jsonl")

    from keras_interbert.models.loading import backbone_of
    from keras_interbert.models.loading import check_vocabulary
    from keras_interbert.models.loading import load_interbert

    model = load_interbert(args.model)
    tokenizer = InterBERTTokenizer.from_preset(f"interbert_base_{args.language}")
    check_vocabulary(backbone_of(model, args.model), tokenizer, args.model)
    # Reading the split checks every caption's image first: bad input stops
    # here, before anything is written.
    evaluation = RetrievalEvaluationSet(
        regions, captions, tokenizer, split=args.split,
        sequence_length=args.sequence_length, max_regions=args.max_regions)
    print(f"{args.split}: {evaluation.num_images} images, "
          f"{evaluation.num_captions} captions, {evaluation.num_pairs} pairs.")

    from keras_interbert.evaluation.grid_scoring import partial_paths
    from keras_interbert.utils.run_directory import claim_output_directory

    metrics_path = os.path.join(args.out, "retrieval_metrics.json")
    plot_path = os.path.join(args.out, "retrieval_recall.png")
    scores_path = os.path.join(args.out, "scores_full.npz")
    # Somebody else's folder is refused; an earlier evaluation's is reused
    # (its score files are checked against this model and data).
    claim_output_directory(args.out, "evaluation", own_names=[
        os.path.basename(p) for p in (metrics_path, plot_path, scores_path,
                                      *partial_paths(scores_path))])
    # A result of an earlier run must not pass for this one's.
    for stale in (metrics_path, plot_path):
        if os.path.exists(stale):
            os.remove(stale)

    modes = tuple(m.replace("-", "_") for m in args.modes)
    scorer = PairScorer(model, jit_compile=JIT_COMPILE[args.jit_compile])
    progress = not args.no_progress
    if "full" in modes:
        grid = score_grid(scorer, evaluation, args.batch_size, scores_path,
                          max_batches=args.max_batches, progress=progress)
        if grid["resumed_from"]:
            print(f"Resumed full scoring at pair {grid['resumed_from']}.")
        if not grid["complete"]:
            print(f"Stopped after pair {grid['next_pair']} of "
                  f"{grid['num_pairs']}; the partial scores are kept next to "
                  f"{scores_path}. Run the same command again to continue.")
            return EXIT_PARTIAL
    report = evaluate_retrieval(
        scorer, evaluation, modes=modes, ks=args.ks,
        batch_size=args.batch_size, scores_path=scores_path,
        rerank_k=args.rerank_k, rerank_k_captions=args.rerank_k_captions,
        first_stage=args.first_stage, progress=progress, split=args.split)
    report["model"] = os.path.abspath(args.model)
    report["backend"] = keras.config.backend()
    print()
    print(format_table(report))
    plot_recall_curves(report, plot_path,
                       title=f"{os.path.basename(args.model)}: {args.split}")
    from keras_interbert.utils.atomic import write_json_atomically

    write_json_atomically(metrics_path, report)
    print(f"\nWrote {metrics_path} and {plot_path}.")
    return 0


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
