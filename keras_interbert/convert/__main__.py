"""Command-line converters: `python -m keras_interbert.convert {original,bert} ...`.

Each writes a `.keras` file of an `InterBERTPretrainer` (its `.backbone` is
the `InterBERTBackbone`).
"""
import argparse
import json
import os
import sys


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.convert",
        description="Convert checkpoints into a .keras InterBERTPretrainer.",
    )
    sub = parser.add_subparsers(dest="source", required=True)

    original = sub.add_parser(
        "original", help="The authors' PyTorch InterBERT checkpoints."
    )
    original.add_argument("--config", required=True,
                          help="The original config JSON (original key names).")
    original.add_argument("--weights", required=True,
                          help="pytorch_model.bin, .safetensors or .npz state dict.")
    original.add_argument("--out", required=True, help="Output .keras file.")

    bert = sub.add_parser(
        "bert",
        help="Initialise from BERT: a Hugging Face directory, a Google TF "
        "checkpoint directory, or a keras-hub BertBackbone (.keras file or "
        "local preset directory).",
    )
    bert.add_argument("--checkpoint", required=True)
    bert.add_argument("--single-layers", type=int, required=True,
                      help="How many BERT layers form the single-stream module.")
    bert.add_argument("--out", required=True, help="Output .keras file.")
    bert.add_argument("--preset", default=None,
                      help="Take the image-side sizes from this preset.")
    for flag, kind in (
        ("num-image-layers", int), ("num-image-heads", int),
        ("image-intermediate-dim", int), ("pooled-dim", int),
        ("image-feature-dim", int), ("num-region-classes", int),
        ("image-dropout", float), ("image-attention-dropout", float),
    ):
        bert.add_argument(f"--{flag}", type=kind, default=None)
    return parser


def _image_config(args):
    keys = ("num_image_layers", "num_image_heads", "image_intermediate_dim",
            "pooled_dim", "image_feature_dim", "image_dropout",
            "image_attention_dropout")
    config = {}
    if args.preset:
        from keras_interbert.presets import preset_backbone_config
        from keras_interbert.presets import preset_task_config

        preset = preset_backbone_config(args.preset)
        config = {k: preset[k] for k in keys}
        config.update(preset_task_config(args.preset))
    for key in keys + ("num_region_classes",):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    return config


def main(argv=None):
    args = _parser().parse_args(argv)
    if not args.out.endswith(".keras"):
        raise SystemExit(f"--out must end in '.keras'; received '{args.out}'.")
    from keras_interbert.utils.atomic import save_model_atomically
    try:
        if args.source == "original":
            from keras_interbert.convert.original import convert_original

            model = convert_original(args.config, args.weights)
        else:
            from keras_interbert.convert.bert import convert_bert

            model = convert_bert(args.checkpoint, args.single_layers,
                                 image_config=_image_config(args))
    except (ValueError, OSError) as e:
        # Bad input: the message names the file and the problem.
        print(f"error: {e}", file=sys.stderr)
        return 1
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    # Written next to the target, then renamed: a failed save never leaves
    # a file that looks complete.
    save_model_atomically(model, args.out)
    summary = {
        "out": args.out,
        "backbone_parameters": model.backbone.count_params(),
        "pretrainer_parameters": model.count_params(),
        "config": model.backbone.get_config(),
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
