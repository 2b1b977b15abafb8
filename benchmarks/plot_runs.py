"""Overlays pretraining curves of several runs: one panel per metric.

Reads each run directory's `history.csv` (written by `recipes/pretrain.py`)
and draws the named metrics against the optimizer step, one line per run,
so that settings can be compared at a glance (docs/pretraining.md).

    .venv/bin/python benchmarks/plot_runs.py --out docs/figures/recipe.png \
        --steps-per-epoch 50 --metrics val_itc_accuracy val_itm_accuracy \
        --run "CLS pooling=runs/exp/itc1" --run "mean pooling=runs/exp/itc3"
"""
import argparse
import csv
import os


def read_history(path):
    history = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None):
                    history.setdefault(key, []).append(float(value))
    return history


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True,
                   metavar="LABEL=DIR", help="A labelled run directory.")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--steps-per-epoch", type=int, nargs="+", default=[50],
                   help="One value for every run, or one per run.")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="pretraining")
    args = p.parse_args(argv)
    runs = []
    for item in args.run:
        label, sep, folder = item.partition("=")
        if not sep:
            raise SystemExit(f"--run {item!r}: expected LABEL=DIR.")
        path = os.path.join(folder, "history.csv")
        if not os.path.exists(path):
            raise SystemExit(f"--run {item!r}: {path} does not exist.")
        runs.append((label, read_history(path)))
    steps = args.steps_per_epoch * (len(runs) if len(
        args.steps_per_epoch) == 1 else 1)
    if len(steps) != len(runs):
        raise SystemExit("--steps-per-epoch: give one value or one per run.")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.metrics),
                             figsize=(4.4 * len(args.metrics), 3.4),
                             squeeze=False)
    for ax, metric in zip(axes[0], args.metrics):
        for (label, history), per_epoch in zip(runs, steps):
            if metric not in history:
                continue
            values = history[metric]
            ax.plot([per_epoch * (i + 1) for i in range(len(values))], values,
                    marker="o", ms=3, label=label)
        ax.set_title(metric)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(args.title)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    temporary = args.out + ".tmp.png"
    fig.savefig(temporary, dpi=110)
    os.replace(temporary, args.out)
    plt.close(fig)
    print(f"Wrote {args.out}.")


if __name__ == "__main__":
    main()
