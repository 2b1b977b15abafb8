"""The quickstart: the whole story on the bundled data set, on this machine.

1. Generates the bundled data set (rendered scenes of coloured shapes,
   English and Chinese captions, region features computed from the pixels).
2. Pretrains the mini model (the tiny one for `--recipe faithful`) on it
   with `recipes/pretrain.py`, 600 steps (faithful: 300): MSM + MRM +
   ITM plus the optional image-text contrastive task (`--recipe improved`,
   the default; docs/pretraining.md says why), or the published three tasks
   and settings alone (`--recipe faithful`).
3. Trains the dual-encoder baseline (`benchmarks/dual_encoder_baseline.py`)
   on the same training split: the ceiling every figure is read against.
4. Evaluates zero-shot retrieval (the pretrained matching head, no
   finetuning) on the held-out test split, full cross-encoding and two-stage.
5. Finetunes retrieval (`recipes/finetune_retrieval.py`) and evaluates it on
   the same split.
6. Exports the finetuned `.keras` file as a SavedModel for TF Serving and
   scores one request (a caption and an image's region features) against it,
   loaded the way the server loads it.
7. Prints the table (random ranking, the dual encoder, zero-shot and
   finetuned Recall@1/5/10 both ways) and writes `reports/quickstart[_zh].md`
   with the plots.

`--language zh` runs the same story with the Chinese preset and captions.
Needs the TensorFlow backend for the export step (`make quickstart` sets it).

    KERAS_BACKEND=tensorflow .venv/bin/python recipes/quickstart.py [--language zh]
"""
import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# The pretraining settings of each recipe (docs/pretraining.md, "What made
# the recipe learn"); any of them can still be overridden on the command line.
RECIPES = {
    "improved": {
        "preset": "interbert_mini",
        "pretrain": ["--itc-weight", "1", "--pooling", "mean",
                     "--itm-initializer", "zeros",
                     "--head-learning-rate-multiplier", "20",
                     "--dropout", "0"],
        "finetune": ["--itc-weight", "0.1"],
        "learning_rate": 1e-3, "batch_size": 64, "finetune_steps": 1200,
        # 600 against 300 steps (docs/results.md, session of 2026-12-02):
        # zero-shot text -> image R@1 28.4 -> 46.9 and held-out matching
        # accuracy on clean pairs 0.83 -> 0.88 over three seeds, the
        # finetuned model level on the validation split, for about a minute
        # more of pretraining on 2 cores.
        "pretrain_steps": 600,
        # Chosen on the validation split (docs/results.md): 1e-3 against
        # 5e-4 gained 2.1-5.0 points of text -> image R@1 in every seed tried.
        "finetune_learning_rate": 1e-3,
    },
    "faithful": {"preset": "interbert_tiny", "pretrain": [], "finetune": [],
                 "learning_rate": 5e-4, "batch_size": 32,
                 "pretrain_steps": 300,
                 "finetune_steps": 1000, "finetune_learning_rate": 5e-4},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="improved",
                   help="improved: the published tasks plus image-text "
                   "contrastive learning, mean pooling and a faster "
                   "matching head; faithful: the published objective and "
                   "model alone.")
    p.add_argument("--out", default=None,
                   help="Run directory (default: runs/quickstart[_zh]).")
    p.add_argument("--report", default=None,
                   help="Report path (default: reports/quickstart[_zh].md).")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--feature-dim", type=int, default=256)
    p.add_argument("--max-regions", type=int, default=8)
    p.add_argument("--preset", default=None,
                   help="Default: interbert_mini_<language> (improved), "
                   "interbert_tiny_<language> (faithful).")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="Default: 600 (improved), 300 (faithful).")
    p.add_argument("--pretrain-batch-size", type=int, default=None,
                   help="Default: 64 (improved), 32 (faithful).")
    p.add_argument("--pretrain-learning-rate", type=float, default=None,
                   help="Default: 1e-3 (improved), 5e-4 (faithful).")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="Default: 12 (improved), 10 (faithful).")
    p.add_argument("--finetune-steps-per-epoch", type=int, default=100)
    p.add_argument("--finetune-batch-size", type=int, default=32,
                   help="Captions per step (four pairs each).")
    p.add_argument("--finetune-learning-rate", type=float, default=None,
                   help="Default: 1e-3 (improved), 5e-4 (faithful).")
    p.add_argument("--finetune-decay-epochs", default=None,
                   help="Comma-separated epochs after which the finetuning "
                   "learning rate is multiplied by 0.1 ('' for none; "
                   "default: the last 20%% of the epochs).")
    p.add_argument("--baseline-steps", type=int, default=600,
                   help="Training steps of the dual-encoder baseline "
                   "(0 skips it).")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-export", action="store_true")
    return apply_recipe_defaults(p.parse_args(argv))


def apply_recipe_defaults(args, finetune_steps=None):
    """Fills the settings `args` leaves unset (None or absent) with those of
    `RECIPES[args.recipe]`: the preset for `args.language`, the pretraining
    steps, batch and learning rate, the finetuning learning rate, the
    finetuning epochs (`finetune_steps`, default the recipe's, over
    `args.finetune_steps_per_epoch`) and the decay after 80% of them.
    Shared with recipes/ablations.py, whose variants use the same settings."""
    recipe = RECIPES[args.recipe]
    defaults = {
        "preset": f"{recipe['preset']}_{args.language}",
        "pretrain_steps": recipe["pretrain_steps"],
        "pretrain_batch_size": recipe["batch_size"],
        "pretrain_learning_rate": recipe["learning_rate"],
        "finetune_learning_rate": recipe["finetune_learning_rate"],
        "finetune_epochs": max(1, (finetune_steps or recipe["finetune_steps"])
                               // args.finetune_steps_per_epoch),
    }
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if getattr(args, "finetune_decay_epochs", None) is None:
        args.finetune_decay_epochs = str(round(0.8 * args.finetune_epochs))
    return args


def pretrain_argv(args, out, seed, data=None):
    """recipes/pretrain.py's arguments for the quickstart's settings in
    `args` (also the ablation's: the same names)."""
    argv = ["--out", out]
    if data is not None:
        argv += ["--data", data]
    return argv + [
        "--language", args.language,
        "--num-images", str(args.num_images),
        "--feature-dim", str(args.feature_dim),
        "--max-regions", str(args.max_regions),
        "--preset", args.preset,
        "--steps", str(args.pretrain_steps), "--steps-per-epoch", "50",
        "--batch-size", str(args.pretrain_batch_size),
        "--learning-rate", str(args.pretrain_learning_rate),
        "--validation-steps", "4", "--seed", str(seed), "--verbose", "2",
    ] + RECIPES[args.recipe]["pretrain"]


def finetune_argv(args, init, data, out, seed):
    """recipes/finetune_retrieval.py's arguments for the settings in `args`."""
    return [
        "--init", init, "--data", data,
        "--language", args.language, "--out", out,
        "--epochs", str(args.finetune_epochs),
        "--steps-per-epoch", str(args.finetune_steps_per_epoch),
        "--batch-size", str(args.finetune_batch_size),
        "--max-regions", str(args.max_regions),
        "--learning-rate", str(args.finetune_learning_rate),
        "--decay-epochs", args.finetune_decay_epochs, "--seed", str(seed),
        "--verbose", "2"] + _xla_on_tensorflow() + RECIPES[args.recipe][
            "finetune"]


def _xla_on_tensorflow():
    """`--jit-compile true` under TensorFlow: the finetuning step has fixed
    shapes, and with XLA the mini preset's step of 128 pairs costs about a
    fifth less after 7-10 s of compilation (docs/benchmarks.md). JAX
    compiles anyway; PyTorch keeps its default."""
    import keras

    return (["--jit-compile", "true"]
            if keras.config.backend() == "tensorflow" else [])


def _t2i(report):
    return report["modes"]["full"]["text_to_image"]


def score_one_request(export_dir, data, language, max_regions):
    """Scores a true and a wrong caption of one test image with the export."""
    import numpy as np
    import tensorflow as tf

    from keras_interbert.data.region_features import read_captions
    from keras_interbert.data.region_features import region_dataset

    example = next(iter(region_dataset(os.path.join(data, "regions"),
                                       split="test").take(1)))
    image_id = example["image_id"].numpy().decode()
    captions = [c for c in read_captions(
        os.path.join(data, f"captions_{language}.jsonl"))
        if c.get("split") == "test"]
    true = next(c["caption"] for c in captions if c["image_id"] == image_id)
    wrong = next(c["caption"] for c in captions if c["image_id"] != image_id)
    n = int(example["num_boxes"])
    loaded = tf.saved_model.load(export_dir)
    score = loaded.signatures["score"]
    features = np.asarray(example["features"], np.float32)[None].repeat(2, 0)
    boxes = np.asarray(example["boxes"], np.float32)[None].repeat(2, 0)
    size = np.array([[int(example["image_h"]), int(example["image_w"])]] * 2,
                    np.int32)
    out = score(text=tf.constant([true, wrong]),
                region_features=tf.constant(features),
                region_boxes=tf.constant(boxes),
                image_size=tf.constant(size),
                num_regions=tf.constant([n, n], tf.int32))
    probabilities = out["match_probability"].numpy().tolist()
    return {"image_id": image_id, "num_regions": n,
            "true_caption": true, "true_probability": probabilities[0],
            "other_caption": wrong, "other_probability": probabilities[1]}


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, HERE)
    import keras_interbert  # noqa: F401  (first: a quiet TensorFlow start-up)
    import keras

    suffix = "" if args.language == "en" else f"_{args.language}"
    out = args.out or os.path.join(ROOT, "runs", f"quickstart{suffix}")
    report_path = args.report or os.path.join(ROOT, "reports",
                                              f"quickstart{suffix}.md")
    from keras_interbert.utils.run_directory import fresh_run_directory

    # Leftovers of an earlier run (a finished pretraining backup, a score
    # file of another model) would be resumed or refused by the recipes.
    fresh_run_directory(out, "quickstart")
    timings = {}
    start = time.time()
    print(f"keras {keras.__version__}, backend {keras.config.backend()}, "
          f"language {args.language}")

    import evaluate_retrieval
    import finetune_retrieval
    import pretrain

    from keras_interbert.evaluation import recall_at

    # 1-2. Data and pretraining.
    print(f"\n== 1-2. Bundled data set and pretraining "
          f"({args.pretrain_steps} steps) ==")
    t = time.time()
    pretrained = pretrain.main(pretrain_argv(
        args, os.path.join(out, "pretrain"), args.seed))
    timings["data + pretraining"] = time.time() - t
    data = pretrained["data"]

    # 3. The dual-encoder baseline on the same split.
    baseline = None
    if args.baseline_steps > 0:
        print(f"\n== 3. Dual-encoder baseline ({args.baseline_steps} steps "
              "of 128 captions, same splits and evaluation) ==")
        t = time.time()
        sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
        import dual_encoder_baseline

        baseline = dual_encoder_baseline.train_and_evaluate(
            data, args.language, max_regions=args.max_regions,
            steps=args.baseline_steps, seed=args.seed, progress=False)
        from keras_interbert.utils.atomic import write_json_atomically

        os.makedirs(os.path.join(out, "baseline"), exist_ok=True)
        write_json_atomically(os.path.join(out, "baseline", "metrics.json"),
                              baseline)
        timings["dual-encoder baseline"] = time.time() - t

    # 4. Zero-shot retrieval.
    print("\n== 4. Zero-shot retrieval (pretrained matching head) ==")
    t = time.time()
    zero_dir = os.path.join(out, "zero_shot")
    status = evaluate_retrieval.main([
        "--model", pretrained["model"], "--data", data,
        "--language", args.language, "--split", "test",
        "--max-regions", str(args.max_regions), "--out", zero_dir,
        "--no-progress"])
    if status != 0:
        raise SystemExit(f"zero-shot evaluation stopped (status {status}).")
    with open(os.path.join(zero_dir, "retrieval_metrics.json")) as f:
        zero_shot = json.load(f)
    timings["zero-shot evaluation"] = time.time() - t

    # 5. Finetuning and evaluation.
    print("\n== 5. Retrieval finetuning and evaluation ==")
    t = time.time()
    finetuned = finetune_retrieval.main(finetune_argv(
        args, pretrained["model"], data, os.path.join(out, "retrieval"),
        args.seed))
    timings["finetuning + evaluation"] = time.time() - t

    # 6. Export and one request.
    request = None
    export_dir = None
    if not args.skip_export:
        print("\n== 6. SavedModel export and one request ==")
        t = time.time()
        from keras_interbert.export import ExportOptions
        from keras_interbert.export import export_for_serving

        export_dir = os.path.join(out, "saved_models", f"interbert_retrieval"
                                  f"{suffix}", "1")
        export_for_serving(
            finetuned["model"], export_dir,
            ExportOptions(max_regions=args.max_regions), overwrite=True)
        request = score_one_request(export_dir, data, args.language,
                                    args.max_regions)
        timings["export + request"] = time.time() - t
    timings["total"] = time.time() - start

    # 7. Table and report.
    random = zero_shot["random_baseline"]
    rows = [("random ranking", random)]
    if baseline is not None:
        rows.append(("dual-encoder baseline", baseline["metrics"]))
    for name, report in (("zero-shot", zero_shot),
                         ("finetuned", finetuned["evaluation"])):
        rows.append((f"{name}, full cross-encoder", report["modes"]["full"]))
        two = report["modes"].get("two_stage")
        if two:
            rows.append((f"{name}, first stage "
                         f"({two['settings']['first_stage']})",
                         two["first_stage"]))
            rows.append((f"{name}, two-stage (top {two['settings']['k']})",
                         two))
    protocol = finetuned["evaluation"].get("protocol", {})
    lines = [
        f"| {protocol.get('num_images', '?')} test images, "
        f"{protocol.get('num_captions', '?')} captions | t2i R@1 | R@5 | "
        "R@10 | i2t R@1 | R@5 | R@10 | i2t R@1, posterior |",
        "|---|---|---|---|---|---|---|---|",
    ] + [f"| {name} | " + " | ".join(
        f"{recall_at(s[d], k):.1f}" for d in ("text_to_image",
                                             "image_to_text")
        for k in (1, 5, 10)) + " | " + (
        f"{recall_at(s['image_to_text_posterior'], 1):.1f}"
        if "image_to_text_posterior" in s else "-") + " |"
        for name, s in rows]
    verdict = _verdict(random["text_to_image"], _t2i(zero_shot),
                       _t2i(finetuned["evaluation"]),
                       baseline["metrics"]["text_to_image"] if baseline
                       else None)
    lines += ["", verdict]
    print("\n" + "\n".join(lines))
    pre = pretrained
    metric_lines = [
        "| pretraining metric | first epoch | last epoch |", "|---|---|---|"]
    for name in ("msm_accuracy", "mrm_loss", "itm_accuracy", "itc_accuracy",
                 "val_msm_accuracy", "val_mrm_loss", "val_itm_accuracy",
                 "val_itc_accuracy"):
        if name in pre["final"]:
            metric_lines.append(f"| {name} | {pre['first'][name]:.3f} | "
                                f"{pre['final'][name]:.3f} |")
    print("\n" + "\n".join(metric_lines))
    if request:
        print(f"\nSavedModel {export_dir}: image {request['image_id']}\n"
              f"  match probability of its caption {request['true_caption']!r}:"
              f" {request['true_probability']:.3f}\n"
              f"  of another image's caption {request['other_caption']!r}: "
              f"{request['other_probability']:.3f}")
    write_report(report_path, args, out, lines, metric_lines, request,
                 export_dir, timings, zero_dir, finetuned)
    print(f"\nReport: {report_path}")
    for name, seconds in timings.items():
        print(f"  {name:<24} {seconds:7.1f} s")
    return {"zero_shot": _t2i(zero_shot), "finetuned": _t2i(
        finetuned["evaluation"]), "random": random, "request": request,
        "timings": timings, "pretraining": pre}


def _verdict(random, zero_shot, finetuned, baseline=None):
    """One honest sentence on finetuned R@1 against random, zero-shot and
    the dual encoder trained on the same data."""
    from keras_interbert.evaluation import recall_at

    r, z, f = recall_at(random, 1), recall_at(zero_shot, 1), recall_at(finetuned, 1)
    sentence = (f"Finetuned text->image R@1 {f:.1f}: {f / r:.1f}x random "
                f"({r:.1f}), zero-shot {z:.1f}")
    if baseline is None:
        return sentence + "."
    b = recall_at(baseline, 1)
    relation = "at or above" if f >= b else "BELOW"
    return (sentence + f"; {relation} the dual-encoder baseline trained on "
            f"the same data in this run ({b:.1f}).")


def write_report(path, args, out, table, metric_lines, request, export_dir,
                 timings, zero_dir, finetuned):
    import keras

    folder = os.path.dirname(os.path.abspath(path))
    images = os.path.join(folder, os.path.splitext(os.path.basename(path))[0])
    os.makedirs(images, exist_ok=True)
    plots = [
        ("Pretraining curves", os.path.join(out, "pretrain",
                                            "training_curves.png")),
        ("Zero-shot recall at K", os.path.join(zero_dir,
                                               "retrieval_recall.png")),
        ("Finetuning curves", os.path.join(out, "retrieval",
                                           "training_curves.png")),
        ("Finetuned recall at K", os.path.join(out, "retrieval", "evaluation",
                                               "retrieval_recall.png")),
    ]
    body = [
        f"# Quickstart report ({args.language})", "",
        f"Backend {keras.config.backend()}, keras {keras.__version__}, seed "
        f"{args.seed}, recipe `{args.recipe}`; the preset `{args.preset}` on "
        f"the bundled data set ({args.num_images} images, "
        f"{args.feature_dim}-d region features, {args.max_regions} regions + "
        f"the global slot). Run directory: `{os.path.relpath(out, ROOT)}`.", "",
        "## Retrieval on the held-out test split", "",
        *table, "",
        "Zero-shot is the pretrained model's matching head with no "
        "finetuning; random is the exact expectation of a random ranking. "
        "The dual-encoder baseline (`benchmarks/dual_encoder_baseline.py`) "
        "is trained from scratch in the same run on the same training "
        "split and scored by the same evaluation code. The first stage "
        "scores every pair from single-modality passes; two-stage reranks "
        "its top candidates with the cross-encoder.",
        "", "## Pretraining", "", *metric_lines, "",
    ]
    if request:
        body += [
            "## The exported SavedModel", "",
            f"`{os.path.relpath(export_dir, ROOT)}` (signatures `score`, "
            "`embed`; raw text and pixel boxes in), one request:", "",
            f"- image `{request['image_id']}` ({request['num_regions']} "
            "regions)",
            f"- its caption \"{request['true_caption']}\": match probability "
            f"{request['true_probability']:.3f}",
            f"- another image's caption \"{request['other_caption']}\": "
            f"{request['other_probability']:.3f}", ""]
    body += ["## Time", "", "| step | seconds |", "|---|---|"]
    body += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    body += [""]
    for title, source in plots:
        if os.path.exists(source):
            target = os.path.join(images, os.path.basename(
                os.path.dirname(source)) + "_" + os.path.basename(source))
            shutil.copyfile(source, target)
            body += [f"## {title}", "",
                     f"![{title}]({os.path.relpath(target, folder)})", ""]
    from keras_interbert.utils.atomic import write_text_atomically

    write_text_atomically(path, "\n".join(body))


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
