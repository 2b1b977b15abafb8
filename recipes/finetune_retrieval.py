"""Finetune InterBERT for image-text retrieval (docs/architecture.md §4.1) and evaluate it.

Loads a pretrained model (a `.keras` file written by `recipes/pretrain.py` or
a converter, a saved retriever, or a preset for a from-scratch baseline) with
`keras.saving` in safe mode, keeps its matching head, and trains it with
2-way cross-entropy on four pairs per caption (true, random caption, random
image, hard negative from a nearest-neighbour pool of the training images).
Learning rate with linear warmup over 10% of the steps, then constant, x0.1
after the epochs given by `--decay-epochs`; optional EMA of the weights
(`--ema-momentum 0.9999` as the paper, for long runs). After training it
scores every caption of `--eval-split` against every image of the split
(text->image and image->text Recall@1/5/10, median and mean rank) with the
finetuned model, and writes into `--out`:

    finetuned.keras        the retriever (what export and evaluation load)
    metrics.json           training history, evaluation, settings
    history.csv            per-epoch losses and accuracies
    training_curves.png    loss and accuracy per epoch
    tensorboard/           TensorBoard logs
    evaluation/            scores, recall table and recall-at-K plot

A killed run started again with the same command continues from its last
completed epoch (a backup in `<out>/backup`, deleted when the run
finishes), and an interrupted evaluation from its partial scores; a
finished run is reported and left unchanged (docs/reliability.md).

    KERAS_BACKEND=jax .venv/bin/python recipes/finetune_retrieval.py \
        --init runs/pretrain/pretrained.keras --data runs/bundled-data-1000-d256 \
        --out runs/retrieval --epochs 4 --batch-size 16
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    from keras_interbert.utils.cli import add_jit_compile_argument
    from keras_interbert.utils.cli import add_run_eagerly_argument
    from keras_interbert.utils.cli import step_options

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Run directory.")
    p.add_argument("--init", required=True,
                   help="A .keras InterBERT model (pretrainer, retriever or "
                   "backbone) or a preset name (random weights).")
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True,
                      help="Folder with regions/ and captions_<language>.jsonl "
                      "(the canonical layout; see docs/data.md).")
    data.add_argument("--captions", default=None,
                      help="Captions JSON Lines (default: "
                      "<data>/captions_<language>.jsonl).")
    data.add_argument("--language", choices=("en", "zh"), default="en")
    data.add_argument("--sequence-length", type=int, default=30)
    data.add_argument("--max-regions", type=int, default=101,
                      help="Region slots after the global one (101: 102 slots).")
    data.add_argument("--hard-negatives", default=None,
                      help="A hard-negative pool .npz, or 'contrastive': the "
                      "nearest images in the --init model's contrastive "
                      "space (needs a contrastive head). Default: built now "
                      "from the training images' mean region features.")
    data.add_argument("--hard-negative-k", type=int, default=None,
                      help="Pool width, rank 0 (the image) included "
                      "(default: 100, or 16 for 'contrastive').")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=64,
                       help="Captions per step (each gives 4 pairs).")
    train.add_argument("--steps-per-epoch", type=int, default=None,
                       help="Default: one pass over the training captions.")
    train.add_argument("--learning-rate", type=float, default=4e-5)
    train.add_argument("--itc-weight", type=float, default=0.0,
                       help="Weight of the image-text contrastive loss on "
                       "each caption's matched pair (not in the original "
                       "finetuning; needs a contrastive head; keeps the "
                       "two-stage first stage trained).")
    train.add_argument("--ranking-weight", type=float, default=0.0,
                       help="Weight of a listwise ranking loss over each "
                       "caption's four pairs, both directions (not in the "
                       "original finetuning; trains image-to-text ranking "
                       "directly).")
    train.add_argument("--warmup-fraction", type=float, default=0.1)
    train.add_argument("--decay-epochs", default="12,16",
                       help="Comma-separated epochs after which the rate "
                       "drops x0.1 ('' for none).")
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--ema-momentum", type=float, default=None,
                       help="Keep and evaluate an EMA of the weights (the "
                       "paper: 0.9999; only for runs of many thousand steps).")
    add_jit_compile_argument(
        train, help="passed to compile for the train step (the evaluation "
        "scores with its own model, without XLA on TensorFlow). Under "
        "TensorFlow on CPU, `true` compiles the step with XLA: the "
        "quickstart's step of 128 pairs costs about a fifth less after 7-10 s "
        "of compilation (docs/benchmarks.md).")
    add_run_eagerly_argument(train)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--verbose", type=int, default=1)
    train.add_argument("--crash-after-steps", type=int, default=None,
                       help="Testing aid: end the process abruptly (as a "
                       "kill would) after this many steps of this attempt.")
    evaluation = p.add_argument_group("evaluation")
    evaluation.add_argument("--eval-split", default="test")
    evaluation.add_argument("--eval-batch-size", type=int, default=1000)
    evaluation.add_argument("--no-eval", action="store_true")
    args = p.parse_args(argv)
    try:
        step_options(args)
    except ValueError as e:
        p.error(str(e))
    return args


# Arguments that may change between the attempts of one run.
NOT_DEFINING = ("out", "verbose", "crash_after_steps", "run_eagerly")


def main(argv=None):
    args = parse_args(argv)
    import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)
    import keras

    keras.utils.set_random_seed(args.seed)
    from keras_interbert import InterBERTRetriever
    from keras_interbert.data.feature_source import feature_source_of
    from keras_interbert.data.retrieval_pipeline import RegionTable
    from keras_interbert.data.retrieval_pipeline import RetrievalDataConfig
    from keras_interbert.data.retrieval_pipeline import load_split_captions
    from keras_interbert.data.retrieval_pipeline import retrieval_training_dataset
    from keras_interbert.models.loading import check_vocabulary
    from keras_interbert.preprocessing import InterBERTRetrieverPreprocessor
    from keras_interbert.preprocessing import InterBERTTokenizer
    from keras_interbert.training import ResumableFit
    from keras_interbert.training import finetuning_optimizer
    from keras_interbert.training import plot_history
    from keras_interbert.training import save_model_atomically
    from keras_interbert.utils.atomic import write_json_atomically
    from keras_interbert.utils.run_directory import claim_run_directory
    from keras_interbert.utils.run_directory import run_arguments

    run = claim_run_directory(args.out, "finetune_retrieval",
                              run_arguments(args, ignore=NOT_DEFINING))
    if run.finished:
        return run.finished_summary()
    regions = os.path.join(args.data, "regions")
    captions = args.captions or os.path.join(
        args.data, f"captions_{args.language}.jsonl")
    tokenizer = InterBERTTokenizer.from_preset(f"interbert_base_{args.language}")

    retriever = InterBERTRetriever.from_pretrained(args.init)
    check_vocabulary(retriever.backbone, tokenizer, args.init)
    # The finetuned file carries the text and region settings it was
    # trained with: `python -m keras_interbert.export` reads them there.
    # With what made the region features, which the exporter checks
    # against --image-extractor.
    retriever.set_preprocessor(InterBERTRetrieverPreprocessor(
        tokenizer, sequence_length=args.sequence_length,
        max_regions=args.max_regions,
        region_feature_source=feature_source_of(args.data)))
    table = RegionTable.from_files(regions, split="train",
                                   max_regions=args.max_regions)
    if table.feature_dim != retriever.backbone.image_feature_dim:
        raise SystemExit(
            f"{regions}: {table.feature_dim}-d region features, but "
            f"{args.init} takes {retriever.backbone.image_feature_dim}-d ones.")
    num_captions = len(load_split_captions(captions, table, "train"))
    steps = args.steps_per_epoch or max(1, num_captions // args.batch_size)
    total = steps * args.epochs
    decay = [int(e) for e in args.decay_epochs.split(",") if e.strip()]
    hard_negatives = args.hard_negatives
    if hard_negatives == "contrastive":
        from keras_interbert.data.hard_negatives import contrastive_pool

        hard_negatives = contrastive_pool(retriever, table,
                                          k=args.hard_negative_k or 16)
    elif args.hard_negative_k and hard_negatives is None:
        from keras_interbert.data.hard_negatives import nearest_neighbour_pool

        hard_negatives = nearest_neighbour_pool(
            table.global_features(), table.image_ids, k=args.hard_negative_k)
    config = RetrievalDataConfig(
        sequence_length=args.sequence_length, max_regions=args.max_regions,
        batch_size=args.batch_size, seed=args.seed, repeat=True)
    train = retrieval_training_dataset(table, captions, tokenizer, config,
                                       hard_negatives=hard_negatives,
                                       split="train")
    from keras_interbert.utils.cli import step_options

    retriever.compile(optimizer=finetuning_optimizer(
        total_steps=total, learning_rate=args.learning_rate,
        warmup_fraction=args.warmup_fraction, steps_per_epoch=steps,
        decay_epochs=decay, weight_decay=args.weight_decay,
        ema_momentum=args.ema_momentum), itc_weight=args.itc_weight,
        ranking_weight=args.ranking_weight,
        **step_options(args))
    if args.ema_momentum and args.ema_momentum ** total > 0.5:
        print(f"warning: EMA momentum {args.ema_momentum} over {total} steps "
              f"keeps {args.ema_momentum ** total:.0%} of the initial weights "
              "in the average; evaluate without EMA for short runs.")

    resume = ResumableFit(args.out, steps_per_epoch=steps,
                          crash_after_steps=args.crash_after_steps)
    train = resume.skip(train)
    resume.build(retriever, train)
    # The averaged weights go into the model only after the backup, which
    # must hold the trained ones.
    callbacks = resume.callbacks(after=[
        keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    ] if args.ema_momentum else [])
    print(f"Finetuning on {num_captions} training captions: {args.epochs} "
          f"epochs x {steps} steps of {args.batch_size} captions "
          f"({4 * args.batch_size} pairs).")
    start = time.time()
    retriever.fit(train, epochs=args.epochs, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=args.verbose, shuffle=False)
    history = resume.history()
    train_seconds = time.time() - start
    final = save_model_atomically(retriever, os.path.join(args.out,
                                                          "finetuned.keras"))
    plot_history(history, os.path.join(args.out, "training_curves.png"),
                 title=f"retrieval finetuning ({keras.config.backend()})")
    summary = {
        "backend": keras.config.backend(),
        "init": args.init,
        "model": final,
        "data": args.data,
        "language": args.language,
        "train_captions": num_captions,
        "epochs": args.epochs,
        "steps_per_epoch": steps,
        "batch_size_captions": args.batch_size,
        "learning_rate": args.learning_rate,
        "ema_momentum": args.ema_momentum,
        "resumed_after_epoch": resume.initial_epoch,
        "train_seconds": round(train_seconds, 1),  # of this attempt
        "history": history,
    }
    if not args.no_eval:
        sys.path.insert(0, HERE)
        import evaluate_retrieval

        evaluation_dir = os.path.join(args.out, "evaluation")
        status = evaluate_retrieval.main([
            "--model", final, "--data", args.data, "--captions", captions,
            "--language", args.language, "--split", args.eval_split,
            "--sequence-length", str(args.sequence_length),
            "--max-regions", str(args.max_regions),
            "--batch-size", str(args.eval_batch_size),
            "--out", evaluation_dir] + (["--no-progress"] if args.verbose != 1
                                        else []))
        if status != 0:
            raise SystemExit(f"evaluation stopped early (status {status}).")
        with open(os.path.join(evaluation_dir, "retrieval_metrics.json")) as f:
            summary["evaluation"] = json.load(f)
    write_json_atomically(os.path.join(args.out, "metrics.json"), summary,
                          default=float)
    run.finish()
    resume.finished()
    return summary


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
