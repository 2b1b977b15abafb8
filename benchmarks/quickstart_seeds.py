"""The quickstart over several seeds: the spread, not one lucky run.

Runs `recipes/quickstart.py` once per seed (one after the other, each in its
own process, run directories `runs/quickstart_seeds/<language>_s<seed>`),
or with `--aggregate-only` reads reports that already exist, and prints a
table of text -> image and image -> text R@1 per seed with the mean and the
range (max - min) of every row: the dual-encoder baseline, zero-shot, and
the finetuned model's full cross-encoder, first stage and two-stage scores.
The table is read from each run's report (`reports/.../quickstart_*.md`).

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/quickstart_seeds.py \
        --language en --seeds 42 43 44 --out reports/seeds_en.md
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("dual-encoder baseline", "zero-shot, full cross-encoder",
        "zero-shot, first stage", "finetuned, full cross-encoder",
        "finetuned, first stage", "finetuned, two-stage")


# The suffix of a row's image -> text R@1 ranked by the caption posterior
# (keras_interbert.evaluation.caption_posterior).
POSTERIOR = ", i2t R@1 posterior"


PRETRAINING = ("val_itm_accuracy", "val_itc_accuracy", "val_msm_accuracy")


def read_report(path):
    """`{row name: (t2i R@1, i2t R@1)}` and the time table of a report."""
    rows, times = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) in (7, 8) and cells[0] and cells[1][:1].isdigit():
                for prefix in ROWS:
                    if cells[0].startswith(prefix):
                        rows[prefix] = (float(cells[1]), float(cells[4]))
                        # Reports since the image -> text posterior column.
                        if len(cells) == 8 and cells[7] != "-":
                            rows[prefix + POSTERIOR] = (float(cells[7]),)
            elif len(cells) == 2 and cells[1].isdigit():
                times[cells[0]] = float(cells[1])
            elif len(cells) == 3 and cells[0] in PRETRAINING:
                rows[cells[0]] = (float(cells[1]), float(cells[2]))
    if not rows:
        raise SystemExit(f"{path}: no retrieval table found.")
    return rows, times


def summarise(reports):
    """Markdown lines: one column per seed, then mean and range."""
    seeds = list(reports)
    head = "| R@1 (t2i / i2t) | " + " | ".join(
        f"seed {s}" for s in seeds) + " | mean | range |"
    lines = [head, "|---" * (len(seeds) + 3) + "|"]
    for row in ROWS:
        values = [reports[s][0].get(row) for s in seeds]
        if any(v is None for v in values):
            continue
        t2i = [v[0] for v in values]
        i2t = [v[1] for v in values]
        cells = [f"{a:.1f} / {b:.1f}" for a, b in values]
        mean = f"{sum(t2i) / len(t2i):.1f} / {sum(i2t) / len(i2t):.1f}"
        spread = f"{max(t2i) - min(t2i):.1f} / {max(i2t) - min(i2t):.1f}"
        lines.append(f"| {row} | " + " | ".join(cells) +
                     f" | {mean} | {spread} |")
    for row in ROWS:
        values = [reports[s][0].get(row + POSTERIOR) for s in seeds]
        if any(v is None for v in values):
            continue
        values = [v[0] for v in values]
        lines.append(f"| {row}{POSTERIOR} | " + " | ".join(
            f"{v:.1f}" for v in values) + f" | {sum(values) / len(values):.1f}"
            f" | {max(values) - min(values):.1f} |")
    for row in PRETRAINING:
        values = [reports[s][0].get(row) for s in seeds]
        if any(v is None for v in values):
            continue
        last = [v[1] for v in values]
        lines.append(f"| held-out {row[4:]} (step 50 -> end) | " +
                     " | ".join(f"{a:.3f} -> {b:.3f}" for a, b in values) +
                     f" | {sum(last) / len(last):.3f} | "
                     f"{max(last) - min(last):.3f} |")
    totals = [reports[s][1].get("total") for s in seeds]
    if all(t is not None for t in totals):
        lines.append("| quickstart run time (s) | " + " | ".join(
            f"{t:.0f}" for t in totals) + " | | |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--language", choices=("en", "zh"), default="en")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--reports", default=os.path.join(ROOT, "reports",
                                                    "seeds"),
                   help="Folder of the per-seed reports.")
    p.add_argument("--aggregate-only", action="store_true",
                   help="Read existing reports; run nothing.")
    p.add_argument("--out", default=None, help="Write the table here too.")
    p.add_argument("quickstart_args", nargs=argparse.REMAINDER,
                   help="After '--': more quickstart arguments.")
    args = p.parse_args(argv)
    extra = [a for a in args.quickstart_args if a != "--"]
    reports = {}
    for seed in args.seeds:
        report = os.path.join(args.reports,
                              f"quickstart_{args.language}_s{seed}.md")
        if not args.aggregate_only:
            command = [sys.executable, os.path.join(ROOT, "recipes",
                                                    "quickstart.py"),
                       "--language", args.language, "--seed", str(seed),
                       "--out", os.path.join(ROOT, "runs", "quickstart_seeds",
                                             f"{args.language}_s{seed}"),
                       "--report", report] + extra
            print("$", " ".join(command), flush=True)
            subprocess.run(command, check=True)
        if not os.path.exists(report):
            raise SystemExit(f"{report}: missing (run without "
                             "--aggregate-only).")
        reports[seed] = read_report(report)
    lines = summarise(reports)
    print("\n".join(lines))
    if args.out:
        sys.path.insert(0, ROOT)
        from keras_interbert.utils.atomic import write_text_atomically

        write_text_atomically(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
