"""Finetune InterBERT for VCR-style multiple choice (docs/architecture.md §4.2).

Loads a pretrained model (a `.keras` file or a preset) with `keras.saving`,
adds the multiple-choice head (`Dense(1)` on the fused pooled vectors, a
softmax over the options) and trains Q->A and QA->R jointly: batches of the
two tasks alternate, each followed by its own optimizer step, as the
original does. Then reports, on `--eval-split`, Q->A and QA->R accuracy
(QA->R conditioned on the gold answer) and Q->AR (both right for the same
question). Writes `finetuned.keras`, `metrics.json`, `history.csv`,
`training_curves.png` and `tensorboard/` into `--out`. A killed run started
again with the same command continues from its last completed epoch (a
backup in `<out>/backup`, deleted when the run finishes); a finished run is
reported and left unchanged (docs/reliability.md).

Records are JSON Lines (see `keras_interbert.data.read_multiple_choice`);
the bundled data set's are made with
`python -m keras_interbert.data.multiple_choice_synthetic`.

    KERAS_BACKEND=tensorflow .venv/bin/python recipes/finetune_vcr.py \
        --init runs/pretrain/pretrained.keras --data runs/bundled-data \
        --records runs/bundled-data/multiple_choice.jsonl --out runs/vcr
"""
import sys
import argparse
import os
import time


def parse_args(argv=None):
    from keras_interbert.utils.cli import add_run_eagerly_argument

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--init", required=True,
                   help="A .keras InterBERT model or a preset name.")
    p.add_argument("--data", required=True, help="Folder with regions/.")
    p.add_argument("--records", default=None,
                   help="Multiple-choice JSON Lines (default: "
                   "<data>/multiple_choice.jsonl, generated from "
                   "<data>/scenes.jsonl when missing).")
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--max-regions", type=int, default=99)
    p.add_argument("--q-a-length", type=int, default=60)
    p.add_argument("--qa-r-length", type=int, default=80)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32,
                   help="Questions per batch and task.")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--warmup-fraction", type=float, default=0.1)
    p.add_argument("--ema-momentum", type=float, default=None)
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="val")
    add_run_eagerly_argument(p)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--verbose", type=int, default=1)
    p.add_argument("--crash-after-steps", type=int, default=None,
                   help="Testing aid: end the process abruptly (as a kill "
                   "would) after this many steps of this attempt.")
    return p.parse_args(argv)


# Arguments that may change between the attempts of one run.
NOT_DEFINING = ("out", "verbose", "crash_after_steps", "run_eagerly")


def alternate(first, second):
    """One batch of `first`, one of `second`, and so on."""
    import tensorflow as tf

    def pair(a, b):
        return tf.data.Dataset.from_tensors(a).concatenate(
            tf.data.Dataset.from_tensors(b))

    return tf.data.Dataset.zip((first, second)).flat_map(pair)


def main(argv=None):
    args = parse_args(argv)
    import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)
    import keras

    keras.utils.set_random_seed(args.seed)
    from keras_interbert import InterBERTMultipleChoice
    from keras_interbert.data.multiple_choice_pipeline import (
        MultipleChoiceDataConfig, multiple_choice_dataset, read_multiple_choice)
    from keras_interbert.data.retrieval_pipeline import RegionTable
    from keras_interbert.models.interbert_multiple_choice import (
        multiple_choice_accuracies)
    from keras_interbert.models.loading import check_vocabulary
    from keras_interbert.preprocessing import InterBERTTokenizer
    from keras_interbert.training import ResumableFit
    from keras_interbert.training import finetuning_optimizer
    from keras_interbert.training import plot_history
    from keras_interbert.training import save_model_atomically
    from keras_interbert.utils.atomic import write_json_atomically
    from keras_interbert.utils.cli import step_options
    from keras_interbert.utils.run_directory import claim_run_directory
    from keras_interbert.utils.run_directory import run_arguments

    run = claim_run_directory(args.out, "finetune_vcr",
                              run_arguments(args, ignore=NOT_DEFINING))
    if run.finished:
        return run.finished_summary()
    regions = os.path.join(args.data, "regions")
    records_path = args.records or os.path.join(args.data,
                                                "multiple_choice.jsonl")
    if not os.path.exists(records_path):
        scenes = os.path.join(args.data, "scenes.jsonl")
        if args.records or not os.path.exists(scenes):
            raise SystemExit(f"{records_path}: no such file.")
        from keras_interbert.data.multiple_choice_synthetic import (
            write_multiple_choice)

        write_multiple_choice(scenes, records_path, seed=args.seed)
    records = read_multiple_choice(records_path)
    tokenizer = InterBERTTokenizer.from_preset(f"interbert_base_{args.language}")
    model = InterBERTMultipleChoice.from_pretrained(args.init)
    check_vocabulary(model.backbone, tokenizer, args.init)

    def data(split, task, training):
        table = RegionTable.from_files(regions, split=split,
                                       max_regions=args.max_regions)
        config = MultipleChoiceDataConfig(
            task=task, max_regions=args.max_regions,
            sequence_length=args.q_a_length if task == "q_a" else args.qa_r_length,
            batch_size=args.batch_size, shuffle=training, repeat=training,
            drop_remainder=training, seed=args.seed)
        kept = [r for r in records if r.get("split", split) == split]
        return multiple_choice_dataset(table, kept, tokenizer, config), len(kept)

    q_a, num_train = data(args.train_split, "q_a", True)
    qa_r, _ = data(args.train_split, "qa_r", True)
    steps = 2 * max(1, num_train // args.batch_size)
    total = steps * args.epochs
    model.compile(optimizer=finetuning_optimizer(
        total_steps=total, learning_rate=args.learning_rate,
        warmup_fraction=args.warmup_fraction, decay_epochs=(),
        ema_momentum=args.ema_momentum), **step_options(args))
    resume = ResumableFit(args.out, steps_per_epoch=steps,
                          crash_after_steps=args.crash_after_steps)
    train = resume.skip(alternate(q_a, qa_r))
    resume.build(model, train)
    # The averaged weights go into the model only after the backup, which
    # must hold the trained ones.
    callbacks = resume.callbacks(after=[
        keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    ] if args.ema_momentum else [])
    print(f"{num_train} training questions; {args.epochs} epochs x {steps} "
          "steps (Q->A and QA->R batches alternating).")
    start = time.time()
    model.fit(train, epochs=args.epochs, steps_per_epoch=steps,
              callbacks=callbacks, verbose=args.verbose, shuffle=False)
    history = resume.history()
    seconds = time.time() - start
    final = save_model_atomically(model, os.path.join(args.out,
                                                      "finetuned.keras"))
    plot_history(history, os.path.join(args.out, "training_curves.png"),
                 title=f"VCR-style finetuning ({keras.config.backend()})")

    eval_q_a, num_eval = data(args.eval_split, "q_a", False)
    eval_qa_r, _ = data(args.eval_split, "qa_r", False)
    scores = multiple_choice_accuracies(model.predict_choices(eval_q_a),
                                        model.predict_choices(eval_qa_r))
    chance = 1.0 / model.num_options
    summary = {
        "backend": keras.config.backend(), "init": args.init, "model": final,
        "records": records_path, "train_questions": num_train,
        "eval_split": args.eval_split, "eval_questions": num_eval,
        "epochs": args.epochs, "steps_per_epoch": steps,
        "resumed_after_epoch": resume.initial_epoch,
        "train_seconds": round(seconds, 1),  # of this attempt
        "accuracy": scores,
        "chance": {"q_a": chance, "qa_r": chance, "q_ar": chance ** 2},
        "history": history,
    }
    write_json_atomically(os.path.join(args.out, "metrics.json"), summary)
    run.finish()
    resume.finished()
    print(f"\n{'metric':<8} {'model':>8} {'chance':>8}   ({num_eval} "
          f"{args.eval_split} questions)")
    for k in ("q_a", "qa_r", "q_ar"):
        print(f"{k:<8} {scores[k]:>8.3f} {summary['chance'][k]:>8.3f}")
    return summary


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
