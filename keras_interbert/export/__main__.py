"""`python -m keras_interbert.export MODEL --name NAME`: a SavedModel for TF Serving.

Writes `<output-dir>/<name>/<version>/` (default `saved_models/`, version one
more than the largest there), then, with `--validate`, checks it offline
(`python -m keras_interbert.export.validate`). MODEL is a `.keras` file
saved under any backend, or a preset name (random weights). The export runs
on the TensorFlow backend: under another one this command restarts itself
with `KERAS_BACKEND=tensorflow`.
"""
import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.export",
        description="Export an InterBERT task as a SavedModel for TensorFlow "
        "Serving (raw text in, tokenized in the graph).")
    parser.add_argument("model", help="a .keras file (retriever, pretrainer, "
                        "text classifier or multiple choice) or a preset name")
    parser.add_argument("--name", required=True,
                        help="the model's name in TF Serving (a directory "
                        "under --output-dir)")
    parser.add_argument("--version", type=int,
                        help="version number (default: next free one)")
    parser.add_argument("--output-dir", default="saved_models")
    parser.add_argument("--vocabulary", help="preset name or vocabulary file "
                        "(default: the bundled one of the model's size)")
    parser.add_argument("--sequence-length", type=int,
                        help="packed text length (30 matching, 128 text "
                        "classification, 60 multiple choice)")
    parser.add_argument("--max-regions", type=int,
                        help="region slots after the global one (101 "
                        "matching, 99 multiple choice)")
    parser.add_argument("--truncate", choices=("after-packing", "text"),
                        help="cut the packed sequence (over-long captions "
                        "lose [SEP]; the matching default) or the text first")
    parser.add_argument("--text-pairs", action="store_true",
                        help="text classifiers: take text and text_pair")
    parser.add_argument("--cased", action="store_true",
                        help="do not lower-case (for cased vocabularies)")
    parser.add_argument("--image-extractor",
                        help="a .keras RegionFeatureExtractor: adds the "
                        "score_image signature (encoded image + caption in; "
                        "matching models only; docs/vision.md)")
    parser.add_argument("--allow-other-features", action="store_true",
                        help="export with an --image-extractor that does "
                        "not give the features the model was trained on "
                        "(refused by default; docs/your-data.md)")
    parser.add_argument("--grid-levels", default="6",
                        help="score_image's grid of regions, comma-separated "
                        "levels (default 6: 36 cells)")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--validate", action="store_true",
                        help="validate the export against the model")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from keras_interbert.utils.paths import check_plain_name

    try:  # the name is a folder under --output-dir, and must stay there
        check_plain_name(args.name, "--name")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.version is not None and args.version < 1:
        raise SystemExit(f"error: --version must be >= 1; received "
                         f"{args.version}.")
    import keras

    if keras.config.backend() != "tensorflow":
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        os.execve(sys.executable,
                  [sys.executable, "-m", "keras_interbert.export", *argv], env)

    from keras_interbert.export import ExportOptions
    from keras_interbert.export import export_for_serving
    from keras_interbert.export import next_version
    from keras_interbert.export.validate import validate_export

    model_dir = os.path.join(args.output_dir, args.name)
    version = args.version or next_version(model_dir)
    export_dir = os.path.join(model_dir, str(version))
    options = ExportOptions(
        vocabulary=args.vocabulary, sequence_length=args.sequence_length,
        max_regions=args.max_regions,
        truncate_after_packing=None if args.truncate is None
        else args.truncate == "after-packing",
        text_pairs=args.text_pairs, lowercase=not args.cased,
        warmup=not args.no_warmup)
    metadata = export_for_serving(args.model, export_dir, options,
                                  model_name=args.name,
                                  overwrite=args.overwrite,
                                  image_extractor=args.image_extractor,
                                  allow_other_features=(
                                      args.allow_other_features),
                                  grid_levels=tuple(
                                      int(v) for v in
                                      args.grid_levels.split(",") if v))
    print(f"wrote {export_dir}: {metadata['model_class']} "
          f"({metadata['task']}), signatures {metadata['signature_names']} "
          f"(serving_default = {metadata['serving_default']}), "
          f"sequence_length {metadata['sequence_length']}, max_regions "
          f"{metadata['max_regions']}")
    if args.validate:
        model = args.model if os.path.exists(args.model) else None
        summary = validate_export(export_dir, model=model,
                                  image_extractor=args.image_extractor)
        worst = max(summary["differences"].values(), default=None)
        print(f"validated: {summary['requests']} requests, "
              f"{len(summary['report']['ops'])} ops, warmup records "
              f"{summary['report']['warmup']['records']}"
              + ("" if worst is None else f", max |SavedModel - Keras| "
                 f"{worst:.2e}"))
    return 0


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
