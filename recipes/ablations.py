"""The paper's pretraining-task analysis at small scale (issues 5 and 13).

Pretrains the same model several times on the same data and schedule, with
one pretraining task switched off at a time: all tasks, ITM only, no MSM and
no MRM (and, on request, no image-text contrastive task). Each pretrained
model is evaluated zero-shot (its matching head, no finetuning), finetuned
for retrieval with identical settings and evaluated on the test split; the
whole set is repeated for every seed of `--seeds`. Writes `ablations.json`
(every run's commands and final logs), `ablations.md` (the table over seeds)
and `ablations.png` into `--out`.

The settings are the quickstart's (`--recipe improved`, the default, or
`faithful`; recipes/quickstart.py), so the "all tasks" row of seed 42 is the
quickstart's seed-42 run. In the improved recipe the contrastive task (ITC)
stays on in every variant but the last: the variants ablate the paper's
three tasks.

    KERAS_BACKEND=tensorflow .venv/bin/python recipes/ablations.py --out runs/ablations

A run that stops keeps every finished (seed, variant) in ablations.json; the
same command again runs only what is missing.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Loss weights per variant (the contrastive weight is the recipe's unless a
# variant sets it).
VARIANTS = {
    "all tasks": {"msm": 1.0, "mrm": 1.0, "itm": 1.0},
    "ITM only": {"msm": 0.0, "mrm": 0.0, "itm": 1.0},
    "no MSM": {"msm": 0.0, "mrm": 1.0, "itm": 1.0},
    "no MRM": {"msm": 1.0, "mrm": 0.0, "itm": 1.0},
    "no ITC": {"msm": 1.0, "mrm": 1.0, "itm": 1.0, "itc": 0.0},
}
DEFAULT_VARIANTS = ("0", "1", "2", "3")


def parse_args(argv=None):
    import quickstart

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", choices=tuple(quickstart.RECIPES),
                   default="improved",
                   help="The quickstart's recipe whose settings every "
                        "variant uses.")
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--feature-dim", type=int, default=256)
    p.add_argument("--max-regions", type=int, default=8)
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="Default: the recipe's (quickstart.RECIPES).")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="Finetuning steps (default: the recipe's).")
    p.add_argument("--finetune-steps-per-epoch", type=int, default=100)
    p.add_argument("--finetune-batch-size", type=int, default=32)
    p.add_argument("--finetune-learning-rate", type=float, default=None,
                   help="Default: the recipe's (quickstart.RECIPES).")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help="Variants by index: " + ", ".join(
                       f"{i} {n}" for i, n in enumerate(VARIANTS)) +
                   " (default: 0-3).")
    p.add_argument("--table-only", action="store_true",
                   help="Rewrite the table and plot from <out>/ablations.json.")
    args = p.parse_args(argv)
    names = list(VARIANTS)
    bad = [i for i in args.variants
           if not (i.isdigit() and int(i) < len(names))]
    if bad:
        p.error(f"--variants: {bad} are not variant indices "
                f"0-{len(names) - 1} ({names})")
    return quickstart.apply_recipe_defaults(args, args.finetune_steps)


# Settings that do not change a run's numbers.
_NOT_SETTINGS = ("out", "variants", "seeds", "table_only")


def settings_of(args):
    return {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}


def previous_results(args):
    """The finished runs in <out>/ablations.json made with these settings."""
    from keras_interbert.utils.atomic import read_json

    path = os.path.join(args.out, "ablations.json")
    if not os.path.exists(path):
        return []
    previous = read_json(path)
    if previous.get("settings") != settings_of(args):
        theirs = previous.get("settings") or {}
        mine = settings_of(args)
        changed = sorted(k for k in set(mine) | set(theirs)
                         if mine.get(k) != theirs.get(k))
        raise SystemExit(
            f"{path} holds runs made with other settings "
            f"({', '.join(changed)}); choose another --out, or remove it.")
    done = [(r["seed"], r["variant"]) for r in previous["results"]]
    print(f"Keeping the runs already in {path}: {done}")
    return previous["results"]


def run_one(args, data, seed, name, run):
    import evaluate_retrieval
    import finetune_retrieval
    import pretrain
    import quickstart

    from keras_interbert.utils.atomic import read_json
    from keras_interbert.utils.run_directory import fresh_run_directory

    weights = VARIANTS[name]
    # A rerun of a variant starts from nothing: an earlier run's pretraining
    # backup or score files would be resumed or refused.
    fresh_run_directory(run, "ablation")
    start = time.time()
    pretrain_argv = quickstart.pretrain_argv(
        args, os.path.join(run, "pretrain"), seed, data=data) + [
        "--msm-weight", str(weights["msm"]),
        "--mrm-weight", str(weights["mrm"]),
        "--itm-weight", str(weights["itm"])]
    if "itc" in weights:
        pretrain_argv += ["--itc-weight", str(weights["itc"])]
    summary = pretrain.main(pretrain_argv)
    zero_shot_dir = os.path.join(run, "zero_shot")
    zero_argv = ["--model", summary["model"], "--data", data,
                 "--language", args.language, "--split", "test",
                 "--max-regions", str(args.max_regions),
                 "--modes", "full", "--out", zero_shot_dir, "--no-progress"]
    if evaluate_retrieval.main(zero_argv) != 0:
        raise SystemExit("zero-shot evaluation stopped early")
    zero_shot = read_json(os.path.join(zero_shot_dir,
                                       "retrieval_metrics.json"))
    finetune_argv = quickstart.finetune_argv(
        args, summary["model"], data, os.path.join(run, "finetune"), seed)
    if weights.get("itc") == 0:  # no contrastive head to finetune
        finetune_argv += ["--itc-weight", "0"]
    finetuned = finetune_retrieval.main(finetune_argv)
    full = finetuned["evaluation"]["modes"]["full"]
    return {
        "seed": seed, "variant": name, "task_weights": weights,
        "pretrain_command": "recipes/pretrain.py " + " ".join(pretrain_argv),
        "finetune_command": "recipes/finetune_retrieval.py "
                            + " ".join(finetune_argv),
        "pretrain_final": summary["final"],
        "zero_shot": zero_shot["modes"]["full"]["text_to_image"],
        "zero_shot_i2t": zero_shot["modes"]["full"]["image_to_text"],
        "finetuned": full["text_to_image"],
        "finetuned_i2t": full["image_to_text"],
        "random": zero_shot["random_baseline"]["text_to_image"],
        "protocol": finetuned["evaluation"].get("protocol", {}),
        "seconds": round(time.time() - start, 1),
    }


def main(argv=None):
    args = parse_args(argv)
    import pretrain

    from keras_interbert.utils.atomic import write_json_atomically

    os.makedirs(args.out, exist_ok=True)
    results = previous_results(args)
    if args.table_only:
        write_table(args, results)
        return results
    data = pretrain.ensure_bundled_data(argparse.Namespace(
        out=os.path.join(args.out, "data-owner"), num_images=args.num_images,
        feature_dim=args.feature_dim))
    order = list(VARIANTS)
    names = [order[int(i)] for i in args.variants]
    for seed in args.seeds:
        for name in names:
            if any(r["seed"] == seed and r["variant"] == name
                   for r in results):
                continue
            print(f"\n=== seed {seed}: {name} ===", flush=True)
            run = os.path.join(args.out, f"seed-{seed}",
                               f"variant-{order.index(name)}")
            results.append(run_one(args, data, seed, name, run))
            results.sort(key=lambda r: (order.index(r["variant"]), r["seed"]))
            write_json_atomically(os.path.join(args.out, "ablations.json"),
                                  {"settings": settings_of(args),
                                   "results": results})
            write_table(args, results)
    return results


def _cell(values, digits=1):
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return (f"{mean:.{digits}f} ({min(values):.{digits}f}-"
            f"{max(values):.{digits}f})")


def summarise(results):
    """Per variant, in table order: the seeds run and each column's values."""
    from keras_interbert.evaluation import recall_at

    rows = []
    for name in VARIANTS:
        mine = [r for r in results if r["variant"] == name]
        if not mine:
            continue

        def final(metric):
            return [r["pretrain_final"][metric] for r in mine
                    if metric in r["pretrain_final"]]

        rows.append({
            "variant": name, "seeds": [r["seed"] for r in mine],
            "val_itm_accuracy": final("val_itm_accuracy"),
            "val_msm_accuracy": final("val_msm_accuracy"),
            "zero_shot": [recall_at(r["zero_shot"], 1) for r in mine],
            "finetuned": [recall_at(r["finetuned"], 1) for r in mine],
            "finetuned_r5": [recall_at(r["finetuned"], 5) for r in mine],
            "finetuned_i2t": [recall_at(r["finetuned_i2t"], 1) for r in mine],
        })
    return rows


def write_table(args, results):
    import keras

    from keras_interbert.utils.atomic import write_text_atomically

    from keras_interbert.evaluation import recall_at

    rows = summarise(results)
    images = sorted({r.get("protocol", {}).get("num_images", "?")
                     for r in results}, key=str)
    random = sorted({round(recall_at(r["random"], 1), 1) for r in results})
    lines = [
        f"Backend {keras.config.backend()}, recipe {args.recipe} "
        f"({args.preset}), {args.num_images} bundled images "
        f"({args.language} captions), test split "
        f"({'/'.join(map(str, images))} images); pretraining "
        f"{args.pretrain_steps} steps of {args.pretrain_batch_size} pairs at "
        f"lr {args.pretrain_learning_rate}, finetuning "
        f"{args.finetune_epochs} x {args.finetune_steps_per_epoch} steps of "
        f"{args.finetune_batch_size} captions at lr "
        f"{args.finetune_learning_rate} (x0.1 after epoch "
        f"{args.finetune_decay_epochs}). Each cell: mean (min-max) over the "
        f"seeds listed; random ranking gives t2i R@1 "
        f"{'/'.join(map(str, random))}.", "",
        "| pretraining tasks | seeds | val ITM acc | val MSM acc | "
        "zero-shot t2i R@1 | finetuned t2i R@1 | t2i R@5 | i2t R@1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {' '.join(map(str, row['seeds']))} | "
            f"{_cell(row['val_itm_accuracy'], 3)} | "
            f"{_cell(row['val_msm_accuracy'], 3) if row['val_msm_accuracy'] else 'off'} | "
            f"{_cell(row['zero_shot'])} | {_cell(row['finetuned'])} | "
            f"{_cell(row['finetuned_r5'])} | {_cell(row['finetuned_i2t'])} |")
    write_text_atomically(os.path.join(args.out, "ablations.md"),
                          "\n".join(lines) + "\n")
    plot(rows, os.path.join(args.out, "ablations.png"))
    print("\n".join(lines))


def plot(rows, path):
    """Finetuned and zero-shot R@1 per variant, one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_interbert.utils.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    for ax, key, title in ((axes[0], "zero_shot", "zero-shot t2i R@1"),
                           (axes[1], "finetuned", "finetuned t2i R@1")):
        for i, row in enumerate(rows):
            values = row[key]
            ax.scatter([i] * len(values), values, color="tab:blue", zorder=3)
            ax.hlines(sum(values) / len(values), i - 0.25, i + 0.25,
                      color="black")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["variant"] for r in rows], rotation=20)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
