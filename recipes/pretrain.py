"""Pretrain InterBERT (MSM + MRM + ITM) with `model.fit`.

Reads canonical region shards and captions (by default the bundled data set,
generated on first use), builds or loads the model (a preset, a `.keras`
file, or a BERT checkpoint through the converter), and trains with a progress
bar, TensorBoard logs, a CSV log, periodic `.keras` checkpoints and a
crash-safe backup (`ExactBackupAndRestore`): a killed run started again with
the same command continues from its last completed epoch. Ends by writing
`pretrained.keras` (what the finetuning recipes load), `metrics.json` and
`training_curves.png` into `--out`. `--out` must be new, empty or this
recipe's own run with the same arguments (see docs/reliability.md); a
finished run is reported and left unchanged. Every saved model holds the
`InterBERTPretrainerPreprocessor` of the run (`model.preprocessor`: the
tokenizer, lengths and masking settings, and the data's
`region_feature_source`).

The backend comes from KERAS_BACKEND; the strategy from `--strategy`.

    KERAS_BACKEND=jax .venv/bin/python recipes/pretrain.py --out runs/pretrain \
        --preset interbert_tiny_en --steps 300 --batch-size 32
"""
import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    from keras_interbert.utils.cli import add_jit_compile_argument
    from keras_interbert.utils.cli import add_run_eagerly_argument
    from keras_interbert.utils.cli import step_options

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Run directory.")
    data = p.add_argument_group("data")
    data.add_argument("--data", default=None,
                      help="Data folder with regions/ and captions_<lang>.jsonl "
                      "(default: the bundled data set, made in <out>/../bundled-data).")
    data.add_argument("--captions", default=None,
                      help="Captions JSON Lines (default: <data>/captions_<language>.jsonl).")
    data.add_argument("--language", choices=("en", "zh"), default="en")
    data.add_argument("--num-images", type=int, default=2000,
                      help="Size of the bundled data set when it is generated.")
    data.add_argument("--feature-dim", type=int, default=2048,
                      help="Region feature width of the bundled data set.")
    data.add_argument("--sequence-length", type=int, default=36)
    data.add_argument("--max-regions", type=int, default=36)
    data.add_argument("--msm", choices=("span", "token"), default="span")
    data.add_argument("--mrm", choices=("group", "random"), default="group")
    data.add_argument("--mrm-targets", default="auto",
                      choices=("auto", "class_probs", "one_hot", "confidence"),
                      help="Masked-region targets: the stored class_probs; "
                      "one-hot over the detector's classes from its class "
                      "ids (LXMERT's objects_id); the same scaled by the "
                      "detector's confidence (objects_conf); auto (default): "
                      "class_probs, else one-hot, else masked region "
                      "modelling is off, said in one line at the start.")
    data.add_argument("--num-object-classes", type=int, default=None,
                      help="Class count of the detector's class ids (1600 for "
                      "Visual Genome bottom-up-attention features), when the "
                      "region manifest does not state it.")
    model = p.add_argument_group("model")
    model.add_argument("--preset", default=None,
                       help="Start from this preset (random weights). Default: "
                       "interbert_tiny_<language>.")
    model.add_argument("--init", default=None,
                       help="Start from a .keras InterBERTPretrainer instead.")
    model.add_argument("--bert", default=None,
                       help="Initialise from a BERT checkpoint (HF dir, TF "
                       "checkpoint dir or keras-hub BertBackbone).")
    model.add_argument("--backbone-override", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="Override one backbone setting of the preset "
                       "(repeatable), e.g. hidden_dim=128. Only for a new "
                       "model.")
    model.add_argument("--pooling", choices=("first", "mean"), default="first",
                       help="What the poolers read: [CLS] and the global "
                       "image token (first, the original) or the mean of "
                       "each stream (mean). Only for a new model.")
    model.add_argument("--dropout", type=float, default=None,
                       help="Set every dropout rate of a new model (hidden, "
                       "attention, image stream, fused vector) to this "
                       "value (default: the preset's).")
    model.add_argument("--itm-initializer", default=None,
                       help="Initializer of the matching classifier's kernel "
                       "(e.g. zeros; default: the backbone's normal one). "
                       "Only for a new model.")
    model.add_argument("--single-layers", type=int, default=None,
                       help="With --bert: BERT layers that form the single stream.")
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=int, default=300,
                       help="Optimizer steps of the whole run.")
    train.add_argument("--steps-per-epoch", type=int, default=50,
                       help="Steps between validations, checkpoints and backups.")
    train.add_argument("--batch-size", type=int, default=32, help="Global batch.")
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--bert-learning-rate", type=float, default=1e-5)
    train.add_argument("--head-learning-rate-multiplier", type=float,
                       default=1.0,
                       help="Learning rate of the matching and contrastive "
                       "heads, as a multiple of --learning-rate (1: the "
                       "original's single rate).")
    train.add_argument("--warmup-fraction", type=float, default=0.1)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--gradient-accumulation-steps", type=int, default=None)
    train.add_argument("--msm-weight", type=float, default=1.0)
    train.add_argument("--mrm-weight", type=float, default=1.0)
    train.add_argument("--itm-weight", type=float, default=1.0)
    train.add_argument("--itc-weight", type=float, default=0.0,
                       help="Weight of the optional image-text contrastive "
                       "task (not in the published objective; 0 = off). "
                       "Adds a contrastive head of --contrastive-dim.")
    train.add_argument("--contrastive-dim", type=int, default=0,
                       help="Width of the contrastive head's projections "
                       "(with --itc-weight); 0: no projection, the pooled "
                       "vectors themselves are compared.")
    train.add_argument("--validation-steps", type=int, default=10)
    train.add_argument("--strategy", default="none",
                       choices=("none", "mirrored", "multi_worker", "jax_data_parallel"))
    train.add_argument("--mixed-precision", default="float32",
                       choices=("float32", "mixed_bfloat16", "mixed_float16"))
    add_jit_compile_argument(train, "passed to compile.")
    add_run_eagerly_argument(train)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--verbose", type=int, default=1)
    train.add_argument("--crash-after-steps", type=int, default=None,
                       help="Testing aid: end the process abruptly (as a "
                       "kill would) after this many steps of this attempt.")
    args = p.parse_args(argv)
    try:
        step_options(args)
    except ValueError as e:
        p.error(str(e))
    if args.validation_steps < 1:
        p.error(f"--validation-steps must be at least 1; received "
                f"{args.validation_steps}.")
    return args


# Arguments that may change between the attempts of one run; every other
# one defines the run, and a resume must repeat it.
NOT_DEFINING = ("out", "verbose", "crash_after_steps", "run_eagerly")

# The heads that read the pooled vectors: a faster rate lets the matching
# classifier reach the size its small fused vector needs (docs/pretraining.md).
HEAD_PATTERNS = (r"(^|/)itm_head/", r"(^|/)itc_head/")


def parse_overrides(items, config):
    """`KEY=VALUE` strings as backbone settings, typed like the preset's."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in config:
            raise SystemExit(
                f"--backbone-override {item!r}: expected KEY=VALUE with KEY "
                f"one of {sorted(config)}.")
        kind = type(config[key])
        try:
            overrides[key] = (value.lower() in ("1", "true", "yes")
                              if kind is bool else kind(value))
        except ValueError:
            raise SystemExit(f"--backbone-override {item!r}: {value!r} is not "
                             f"a {kind.__name__}.") from None
    return overrides


def ensure_bundled_data(args):
    from keras_interbert.data.synthetic import write_dataset

    folder = os.path.join(os.path.dirname(os.path.abspath(args.out)),
                          f"bundled-data-{args.num_images}-d{args.feature_dim}")
    if not os.path.exists(os.path.join(folder, "metadata.json")):
        print(f"Generating the bundled data set in {folder} ...")
        write_dataset(folder, num_images=args.num_images, seed=0,
                      feature_dim=args.feature_dim, overwrite=True,
                      save_images=False)
    return folder


def build_model(args, feature_dim, num_classes):
    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTPretrainer
    from keras_interbert.models.loading import load_interbert
    from keras_interbert.presets import preset_backbone_config

    if args.init:
        model = load_interbert(args.init)
        if not isinstance(model, InterBERTPretrainer):
            raise SystemExit(f"--init {args.init}: not an InterBERTPretrainer "
                             f"(found {type(model).__name__}).")
        widths = (model.backbone.image_feature_dim, model.num_region_classes)
        if num_classes is None:  # no region targets: any head will do
            num_classes = model.num_region_classes
        if widths != (feature_dim, num_classes):
            raise SystemExit(
                f"--init {args.init}: the model takes {widths[0]}-d region "
                f"features and {widths[1]} region classes; the data has "
                f"{feature_dim} and {num_classes}.")
        return model
    # Without region targets the region head is never trained: one class.
    num_classes = num_classes or 1
    # The improved recipe's options, the same for a preset and for --bert:
    # --dropout sets every rate of the backbone and the matching head's.
    dropout = {} if args.dropout is None else dict.fromkeys(
        ("dropout", "attention_dropout", "image_dropout",
         "image_attention_dropout"), args.dropout)
    task_options = dict(
        contrastive=args.itc_weight > 0,
        contrastive_dim=args.contrastive_dim or None,
        itm_initializer=args.itm_initializer)
    if args.dropout is not None:
        task_options["itm_dropout"] = args.dropout
    if args.bert:
        from keras_interbert.convert import convert_bert

        if args.single_layers is None:
            raise SystemExit("--bert needs --single-layers K.")
        if args.backbone_override:
            raise SystemExit(
                "--backbone-override changes a preset's settings; with --bert "
                "the checkpoint fixes them (--pooling and --dropout still "
                "apply).")
        return convert_bert(args.bert, args.single_layers, image_config={
            "image_feature_dim": feature_dim, "num_region_classes": num_classes},
            backbone_options={"pooling": args.pooling, **dropout},
            task_options=task_options)
    preset = args.preset or f"interbert_tiny_{args.language}"
    config = preset_backbone_config(preset)
    config["image_feature_dim"] = feature_dim
    config["pooling"] = args.pooling
    config.update(parse_overrides(args.backbone_override, config))
    config.update(dropout)
    return InterBERTPretrainer(
        InterBERTBackbone(**config), num_region_classes=num_classes,
        **task_options)


def main(argv=None):
    args = parse_args(argv)
    import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)
    import keras

    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.mixed_precision)

    from keras_interbert.data.errors import RegionDataError
    from keras_interbert.data.feature_source import feature_source_of
    from keras_interbert.data.pretraining_pipeline import PretrainingDataConfig
    from keras_interbert.data.pretraining_pipeline import pretraining_dataset
    from keras_interbert.data.pretraining_pipeline import pretrainer_preprocessor
    from keras_interbert.data.pretraining_pipeline import resolve_mrm_targets
    from keras_interbert.data.region_features import MANIFEST_NAME
    from keras_interbert.data.region_features import read_manifest
    from keras_interbert.models.loading import check_vocabulary
    from keras_interbert.optimizers import BERT_INITIALISED_PATTERNS
    from keras_interbert.optimizers import pretraining_optimizer
    from keras_interbert.preprocessing import InterBERTTokenizer
    from keras_interbert.training import AtomicModelCheckpoint
    from keras_interbert.training import ResumableFit
    from keras_interbert.training import make_strategy
    from keras_interbert.training import plot_history
    from keras_interbert.training import read_history_csv
    from keras_interbert.training import save_model_atomically
    from keras_interbert.utils.atomic import write_json_atomically
    from keras_interbert.utils.run_directory import claim_run_directory
    from keras_interbert.utils.run_directory import run_arguments

    run = claim_run_directory(args.out, "pretrain", run_arguments(
        args, ignore=NOT_DEFINING))
    if run.finished:
        return run.finished_summary()
    data = args.data or ensure_bundled_data(args)
    regions = os.path.join(data, "regions")
    captions = args.captions or os.path.join(data, f"captions_{args.language}.jsonl")
    manifest = read_manifest(regions)
    if manifest is None:
        raise RegionDataError(
            f"no {MANIFEST_NAME}: --data must hold a regions/ folder written "
            "by `python -m keras_interbert.data.convert` (see "
            "docs/your-data.md).", regions, kind="bad_manifest")
    if manifest.get("feature_dim") is None:
        raise RegionDataError(
            f"its {MANIFEST_NAME} has no feature_dim (no split was "
            "converted).", regions, kind="bad_manifest")
    feature_dim = manifest["feature_dim"]
    # --mrm-weight 0 trains no region targets, so it never needs them.
    targets = resolve_mrm_targets(
        regions, split="train", targets=args.mrm_targets,
        num_object_classes=args.num_object_classes,
        required=args.mrm_weight > 0)
    mrm_weight = args.mrm_weight
    if not targets.enabled:
        if mrm_weight > 0:
            print(f"Masked region modelling is off: {targets.description}; "
                  "pretraining trains MSM and ITM only.", flush=True)
        mrm_weight = 0.0
    elif mrm_weight > 0:
        print(f"MRM targets: {targets.description}.", flush=True)
    num_classes = targets.num_classes
    tokenizer = InterBERTTokenizer.from_preset(f"interbert_base_{args.language}")

    scope, replicas = make_strategy(args.strategy)
    epochs = -(-args.steps // args.steps_per_epoch)
    updates = args.steps // (args.gradient_accumulation_steps or 1)
    with scope:
        model = build_model(args, feature_dim, num_classes)
        check_vocabulary(model.backbone, tokenizer, "the model")
        optimizer = pretraining_optimizer(
            total_steps=updates, learning_rate=args.learning_rate,
            bert_learning_rate=args.bert_learning_rate,
            warmup_fraction=args.warmup_fraction,
            weight_decay=args.weight_decay,
            bert_variable_patterns=BERT_INITIALISED_PATTERNS if args.bert else (),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            learning_rate_multipliers=[
                (pattern, args.head_learning_rate_multiplier)
                for pattern in HEAD_PATTERNS
            ] if args.head_learning_rate_multiplier != 1.0 else [])
        from keras_interbert.utils.cli import step_options

        model.compile(optimizer=optimizer, msm_weight=args.msm_weight,
                      mrm_weight=mrm_weight, itm_weight=args.itm_weight,
                      itc_weight=args.itc_weight, **step_options(args))

    def data_config(**overrides):
        return PretrainingDataConfig(**dict(dict(
            sequence_length=args.sequence_length, max_regions=args.max_regions,
            batch_size=args.batch_size, msm=args.msm, mrm=args.mrm,
            itc=args.itc_weight > 0, seed=args.seed, mrm_targets=targets.kind,
            num_object_classes=args.num_object_classes), **overrides))

    # The layer that applies the pipeline's packing, layout and masking
    # rules travels in every saved model (`model.preprocessor`), with what
    # made the region features (checked by the exporter's --image-extractor).
    model.set_preprocessor(pretrainer_preprocessor(
        tokenizer, data_config(), region_feature_source=feature_source_of(
            data)))
    train = pretraining_dataset(regions, captions, tokenizer,
                                data_config(repeat=True), split="train")
    # Every validation reads the same first `validation_steps` batches (Keras
    # starts a new iterator for each); cached, so that no pipeline iterator
    # is torn down at each validation. Tearing down the repeating one took
    # 17-20 s at most validations of the quickstart (2 cores), against
    # under 2 s for the 4 batches themselves (docs/benchmarks.md).
    val = pretraining_dataset(regions, captions, tokenizer,
                              data_config(shuffle_buffer=0, seed=args.seed + 1,
                                          repeat=True), split="val").take(
        args.validation_steps).cache()
    # The pipeline is deterministic: skipping what earlier attempts consumed
    # gives exactly the batches that follow the backed-up state
    # (`ResumableFit`, shared with the finetuning recipes).
    resume = ResumableFit(args.out, args.steps_per_epoch,
                          crash_after_steps=args.crash_after_steps)
    train = resume.skip(train)
    resume.build(model, train)
    # The checkpoint (and the TensorBoard logs) come before the backup,
    # which records the epoch as done and rewrites history.csv from the
    # backed-up logs: an epoch counts as done only once its checkpoint
    # exists and its summaries are on disk (docs/reliability.md).
    callbacks = resume.callbacks(before=[AtomicModelCheckpoint(
        os.path.join(args.out, "checkpoints", "epoch-{epoch:03d}.keras"))])
    os.makedirs(os.path.join(args.out, "checkpoints"), exist_ok=True)
    start = time.time()
    model.fit(train, epochs=epochs, steps_per_epoch=args.steps_per_epoch,
              validation_data=val, validation_steps=args.validation_steps,
              callbacks=callbacks, verbose=args.verbose, shuffle=False)
    elapsed = time.time() - start
    final = save_model_atomically(model, os.path.join(args.out,
                                                      "pretrained.keras"))

    history = read_history_csv(resume.history_path)
    plot_history(history, os.path.join(args.out, "training_curves.png"),
                 title=f"InterBERT pretraining ({keras.config.backend()})")
    summary = {
        "backend": keras.config.backend(),
        "strategy": args.strategy,
        "replicas": replicas,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seconds_this_attempt": round(elapsed, 1),
        "model": final,
        "data": data,
        "mrm_targets": (targets.description if targets.enabled and mrm_weight
                        else "off"),
        "final": {k: v[-1] for k, v in history.items() if k != "epoch"},
        "first": {k: v[0] for k, v in history.items() if k != "epoch"},
    }
    write_json_atomically(os.path.join(args.out, "metrics.json"), summary)
    run.finish()
    # The backup outlives fit so that a kill before this point resumes from
    # the trained state; the finished run no longer needs it.
    resume.finished()
    print(json.dumps(summary["final"], indent=2))
    return summary


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(lambda: 0 if main() else 1))
