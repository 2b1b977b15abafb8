"""Finetune InterBERT on a text-only classification task (docs/architecture.md §4.3).

GLUE-style TSV files (`train.tsv`, `dev.tsv` in `--task-dir`, one or two text
columns and a `label` column); the text goes through the model with no image
and the classifier reads the pooled text vector. Loads the pretrained model
with `keras.saving` (or a preset), trains with the finetuning optimizer
(warmup, then constant), reports dev accuracy next to the majority-class
baseline, and writes `finetuned.keras`, `metrics.json`, `history.csv`,
`training_curves.png` and `tensorboard/` into `--out`. A killed run started
again with the same command continues from its last completed epoch (a
backup in `<out>/backup`, deleted when the run finishes); a finished run is
reported and left unchanged (docs/reliability.md).

The bundled data set has two small tasks made from its captions
(`keras_interbert.data.text_classification_pipeline.write_caption_tasks`):
`same_image` (do two captions describe the same image?) and
`mentions_circle`.

    KERAS_BACKEND=torch .venv/bin/python recipes/finetune_text.py \
        --init runs/pretrain/pretrained.keras \
        --task-dir runs/text_tasks/mentions_circle --columns sentence --out runs/text
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
    p.add_argument("--task-dir", required=True,
                   help="Folder with train.tsv and dev.tsv.")
    p.add_argument("--columns", default="sentence",
                   help="Comma-separated text columns (one or two).")
    p.add_argument("--label-column", default="label")
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--warmup-fraction", type=float, default=0.1)
    add_run_eagerly_argument(p)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--verbose", type=int, default=1)
    p.add_argument("--crash-after-steps", type=int, default=None,
                   help="Testing aid: end the process abruptly (as a kill "
                   "would) after this many steps of this attempt.")
    return p.parse_args(argv)


# Arguments that may change between the attempts of one run.
NOT_DEFINING = ("out", "verbose", "crash_after_steps", "run_eagerly")


def main(argv=None):
    args = parse_args(argv)
    import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)
    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    from keras_interbert import InterBERTTextClassifier
    from keras_interbert.data.text_classification_pipeline import (
        TextClassificationDataConfig, read_tsv, text_classification_dataset)
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

    run = claim_run_directory(args.out, "finetune_text",
                              run_arguments(args, ignore=NOT_DEFINING))
    if run.finished:
        return run.finished_summary()
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    train = read_tsv(os.path.join(args.task_dir, "train.tsv"), columns,
                     args.label_column)
    dev = read_tsv(os.path.join(args.task_dir, "dev.tsv"), columns,
                   args.label_column, label_vocabulary=train.label_vocabulary)
    tokenizer = InterBERTTokenizer.from_preset(f"interbert_base_{args.language}")
    model = InterBERTTextClassifier.from_pretrained(
        args.init, num_classes=train.num_classes)
    check_vocabulary(model.backbone, tokenizer, args.init)

    def config(training):
        return TextClassificationDataConfig(
            sequence_length=args.sequence_length, batch_size=args.batch_size,
            shuffle=training, repeat=training, seed=args.seed,
            image_feature_dim=model.backbone.image_feature_dim)

    steps = max(1, train.num_examples // args.batch_size)
    model.compile(optimizer=finetuning_optimizer(
        total_steps=steps * args.epochs, learning_rate=args.learning_rate,
        warmup_fraction=args.warmup_fraction, decay_epochs=()),
        **step_options(args))
    resume = ResumableFit(args.out, steps_per_epoch=steps,
                          crash_after_steps=args.crash_after_steps)
    train_data = resume.skip(text_classification_dataset(train, tokenizer,
                                                         config(True)))
    resume.build(model, train_data)
    start = time.time()
    model.fit(
        train_data,
        validation_data=text_classification_dataset(dev, tokenizer,
                                                    config(False)),
        epochs=args.epochs, steps_per_epoch=steps, verbose=args.verbose,
        shuffle=False, callbacks=resume.callbacks())
    history = resume.history()
    seconds = time.time() - start
    final = save_model_atomically(model, os.path.join(args.out,
                                                      "finetuned.keras"))
    plot_history(history, os.path.join(args.out, "training_curves.png"),
                 title=f"text classification ({keras.config.backend()})")
    logits = model.predict(text_classification_dataset(dev, tokenizer,
                                                       config(False)),
                           verbose=0)
    accuracy = float(np.mean(np.argmax(logits, -1) == dev.labels))
    majority = float(np.max(np.bincount(dev.labels)) / len(dev.labels))
    summary = {
        "backend": keras.config.backend(), "init": args.init, "model": final,
        "task_dir": args.task_dir, "labels": train.label_vocabulary,
        "train_examples": train.num_examples, "dev_examples": dev.num_examples,
        "epochs": args.epochs, "steps_per_epoch": steps,
        "resumed_after_epoch": resume.initial_epoch,
        "train_seconds": round(seconds, 1),  # of this attempt
        "dev_accuracy": accuracy, "majority_baseline": majority,
        "history": history,
    }
    write_json_atomically(os.path.join(args.out, "metrics.json"), summary)
    run.finish()
    resume.finished()
    print(f"dev accuracy {accuracy:.3f} (majority class {majority:.3f}, "
          f"{dev.num_examples} examples)")
    return summary


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
