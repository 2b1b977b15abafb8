"""The paper's pretraining-task analysis at small scale (issue 5, docs/results.md).

Pretrains the same model four times on the same data with the same seed and
schedule: all three tasks (MSM + MRM + ITM), ITM only, no MSM (MRM + ITM) and
no MRM (MSM + ITM); evaluates each pretrained model zero-shot (its matching
head, no finetuning), finetunes each for retrieval with identical settings,
and evaluates it on the held-out split. Writes `ablations.json`,
`ablations.md` (the table with its commands and seeds) and
`ablations.png` into `--out`.

    KERAS_BACKEND=tensorflow .venv/bin/python recipes/ablations.py --out runs/ablations
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

VARIANTS = {
    "all three (MSM + MRM + ITM)": {"msm": 1.0, "mrm": 1.0, "itm": 1.0},
    "ITM only": {"msm": 0.0, "mrm": 0.0, "itm": 1.0},
    "no MSM (MRM + ITM)": {"msm": 0.0, "mrm": 1.0, "itm": 1.0},
    "no MRM (MSM + ITM)": {"msm": 1.0, "mrm": 0.0, "itm": 1.0},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--feature-dim", type=int, default=256)
    p.add_argument("--max-regions", type=int, default=8)
    # Pretraining at batch 128 and lr 5e-4: the settings under which the
    # tiny model's matching head leaves chance (docs/pretraining.md).
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--pretrain-batch-size", type=int, default=128)
    p.add_argument("--pretrain-learning-rate", type=float, default=5e-4)
    # Finetuning as the quickstart.
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--finetune-steps-per-epoch", type=int, default=100)
    p.add_argument("--finetune-batch-size", type=int, default=32)
    p.add_argument("--finetune-learning-rate", type=float, default=5e-4)
    p.add_argument("--finetune-decay-epochs", default="8")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--variants", nargs="+", default=None,
                   help="Subset of variants by index (0-3).")
    p.add_argument("--table-only", action="store_true",
                   help="Rewrite the table from <out>/ablations.json.")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import finetune_retrieval
    import pretrain
    import evaluate_retrieval

    from keras_interbert.utils.atomic import write_json_atomically
    from keras_interbert.utils.run_directory import fresh_run_directory

    os.makedirs(args.out, exist_ok=True)
    if args.table_only:
        with open(os.path.join(args.out, "ablations.json")) as f:
            results = json.load(f)["results"]
        write_table(args, results)
        return results
    names = list(VARIANTS)
    if args.variants:
        bad = [i for i in args.variants
               if not (i.isdigit() and int(i) < len(names))]
        if bad:
            raise SystemExit(f"--variants: {bad} are not variant indices "
                             f"0-{len(names) - 1} ({names})")
        names = [names[int(i)] for i in args.variants]
    # A subset run adds to the results already in --out, provided they were
    # made with the same settings; a different setting starts a new table.
    results = previous_results(args)
    order = list(VARIANTS)
    for name in names:
        weights = VARIANTS[name]
        run = os.path.join(args.out, f"variant-{order.index(name)}")
        print(f"\n=== {name} ===")
        # A rerun of a variant starts from nothing: an earlier run's
        # pretraining backup or score files would be resumed or refused.
        fresh_run_directory(run, "ablation")
        start = time.time()
        pretrain_argv = [
            "--out", os.path.join(run, "pretrain"),
            "--language", args.language,
            "--num-images", str(args.num_images),
            "--feature-dim", str(args.feature_dim),
            "--max-regions", str(args.max_regions),
            "--steps", str(args.pretrain_steps), "--steps-per-epoch", "100",
            "--validation-steps", "4",
            "--batch-size", str(args.pretrain_batch_size),
            "--learning-rate", str(args.pretrain_learning_rate),
            "--msm-weight", str(weights["msm"]),
            "--mrm-weight", str(weights["mrm"]),
            "--itm-weight", str(weights["itm"]),
            "--seed", str(args.seed), "--verbose", "2",
        ]
        summary = pretrain.main(pretrain_argv)
        data = summary["data"]
        zero_shot_dir = os.path.join(run, "zero_shot")
        zero_argv = ["--model", summary["model"], "--data", data,
                     "--language", args.language, "--split", "test",
                     "--max-regions", str(args.max_regions),
                     "--out", zero_shot_dir, "--no-progress"]
        if evaluate_retrieval.main(zero_argv) != 0:
            raise SystemExit("zero-shot evaluation stopped early")
        with open(os.path.join(zero_shot_dir, "retrieval_metrics.json")) as f:
            zero_shot = json.load(f)
        finetune_argv = [
            "--init", summary["model"], "--data", data,
            "--language", args.language, "--out", os.path.join(run, "finetune"),
            "--epochs", str(args.finetune_epochs),
            "--steps-per-epoch", str(args.finetune_steps_per_epoch),
            "--batch-size", str(args.finetune_batch_size),
            "--learning-rate", str(args.finetune_learning_rate),
            "--max-regions", str(args.max_regions),
            "--decay-epochs", args.finetune_decay_epochs,
            "--seed", str(args.seed), "--verbose", "2"]
        finetuned = finetune_retrieval.main(finetune_argv)
        results = [r for r in results if r["variant"] != name]
        results.append({
            "variant": name, "task_weights": weights,
            "pretrain_command": "recipes/pretrain.py " + " ".join(pretrain_argv),
            "finetune_command": "recipes/finetune_retrieval.py "
                                + " ".join(finetune_argv),
            "pretrain_final": summary["final"],
            "zero_shot": zero_shot["modes"]["full"]["text_to_image"],
            "finetuned": finetuned["evaluation"]["modes"]["full"][
                "text_to_image"],
            "finetuned_i2t": finetuned["evaluation"]["modes"]["full"][
                "image_to_text"],
            "random": zero_shot["random_baseline"]["text_to_image"],
            "seconds": round(time.time() - start, 1),
        })
        results.sort(key=lambda r: order.index(r["variant"]))
        path = os.path.join(args.out, "ablations.json")
        write_json_atomically(path, {"settings": vars(args),
                                     "results": results})
    write_table(args, results)
    return results


# Settings that do not change a variant's numbers.
_NOT_SETTINGS = ("out", "variants", "table_only")


def previous_results(args):
    path = os.path.join(args.out, "ablations.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        previous = json.load(f)
    mine = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    theirs = {k: v for k, v in previous["settings"].items()
              if k not in _NOT_SETTINGS}
    if mine != theirs:
        changed = sorted(k for k in set(mine) | set(theirs)
                         if mine.get(k) != theirs.get(k))
        print(f"{path} was made with other settings ({', '.join(changed)}); "
              f"starting a new table.")
        return []
    kept = [r["variant"] for r in previous["results"]]
    print(f"Keeping the results already in {path}: {kept}")
    return previous["results"]


def write_table(args, results):
    import keras

    from keras_interbert.evaluation import recall_at
    from keras_interbert.utils.atomic import write_text_atomically

    lines = [
        f"Backend {keras.config.backend()}, seed {args.seed}, "
        f"{args.num_images} bundled images ({args.language} captions), "
        f"test split, text->image over all test images; pretraining "
        f"{args.pretrain_steps} steps of {args.pretrain_batch_size} pairs at "
        f"lr {args.pretrain_learning_rate}, finetuning "
        f"{args.finetune_epochs} x {args.finetune_steps_per_epoch} steps of "
        f"{args.finetune_batch_size} captions at lr "
        f"{args.finetune_learning_rate} (x0.1 after epochs "
        f"{args.finetune_decay_epochs or 'none'}).", "",
        "| pretraining tasks | val MSM acc | val MRM loss | val ITM acc | "
        "zero-shot R@1 | finetuned R@1 | R@5 | R@10 | i2t R@1 | random R@1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        z, f, i = r["zero_shot"], r["finetuned"], r["finetuned_i2t"]
        p = r["pretrain_final"]

        def metric(name):
            return f"{p[name]:.3f}" if name in p else "off"

        lines.append(
            f"| {r['variant']} | {metric('val_msm_accuracy')} | "
            f"{metric('val_mrm_loss')} | {metric('val_itm_accuracy')} | "
            f"{recall_at(z, 1):.1f} | "
            f"{recall_at(f, 1):.1f} | {recall_at(f, 5):.1f} | "
            f"{recall_at(f, 10):.1f} | {recall_at(i, 1):.1f} | "
            f"{recall_at(r['random'], 1):.1f} |")
    write_text_atomically(os.path.join(args.out, "ablations.md"),
                          "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
