"""The retrieval learning test's runs, with their CPU time and results.

Runs what `tests/test_retrieval_learning.py` runs (the improved recipe's
pretraining with `recipes/pretrain.py`, a zero-shot evaluation, finetuning
with `recipes/finetune_retrieval.py`, the dual-encoder baseline), with its
settings as defaults and the step counts, batch sizes and seed as options,
and prints one JSON line: the CPU seconds of each piece (this process, all
threads) and the held-out ITM accuracy and text -> image R@1 the test
asserts on. Used to choose the test's settings (docs/benchmarks.md, issue
17, eighth pass). TensorFlow, as the test:

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/retrieval_learning_costs.py \
        --out runs/retrieval_learning_s43 --seed 43
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

from quickstart import RECIPES  # noqa: E402

# The quickstart's improved recipe: its pretraining and finetuning options.
IMPROVED = RECIPES["improved"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="A new folder for the runs.")
    p.add_argument("--seed", type=int, default=42,
                   help="Pretraining, finetuning and dual-encoder seed.")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--pretrain-batch-size", type=int, default=32)
    p.add_argument("--pretrain-steps-per-epoch", type=int, default=100)
    p.add_argument("--finetune-epochs", type=int, default=6,
                   help="Epochs of 100 steps (decay after all but one).")
    p.add_argument("--finetune-batch-size", type=int, default=32)
    p.add_argument("--baseline-steps", type=int, default=600)
    args = p.parse_args(argv)
    if os.path.exists(args.out):
        p.error(f"--out {args.out} exists; give a new folder.")
    return args


def run(out, seed=42, pretrain_steps=300, pretrain_batch_size=32,
        finetune_epochs=6, finetune_batch_size=32, baseline_steps=600,
        pretrain_steps_per_epoch=100):
    """The test's runs in `out`; returns their reports and CPU seconds.

    A dict: `itm_accuracy` (held-out, after pretraining), `zero_shot`
    (`recipes/evaluate_retrieval.py`'s metrics of the pretrained model,
    full scoring), `finetuned` (`recipes/finetune_retrieval.py`'s
    evaluation: full and two-stage), `dual_encoder`
    (`benchmarks/dual_encoder_baseline.py`'s report) and `cpu_seconds` per
    piece (this process, all threads).
    """
    import dual_encoder_baseline
    import evaluate_retrieval
    import finetune_retrieval
    import pretrain

    from keras_interbert.data.synthetic import write_dataset

    cpu = {}
    start = time.process_time()

    def lap(name):
        nonlocal start
        now = time.process_time()
        cpu[name] = round(now - start, 1)
        start = now

    data = os.path.join(out, "data")
    write_dataset(data, num_images=1000, seed=0, feature_dim=64,
                  languages=("en",), save_images=False, progress=False)
    common = ["--data", data, "--max-regions", "8"]
    lap("data")
    pretrained = pretrain.main(
        ["--out", os.path.join(out, "pretrain"), "--preset",
         "interbert_mini_en", "--steps", str(pretrain_steps),
         "--steps-per-epoch", str(pretrain_steps_per_epoch),
         "--batch-size", str(pretrain_batch_size),
         "--learning-rate", "1e-3", "--validation-steps", "4", "--seed",
         str(seed), "--verbose", "0"] + common + IMPROVED["pretrain"])
    lap("pretraining")
    zero_dir = os.path.join(out, "zero_shot")
    # Zero-shot, full scoring only: the two-stage pass is skipped.
    if evaluate_retrieval.main(
            ["--model", pretrained["model"], "--split", "test", "--out",
             zero_dir, "--modes", "full", "--no-progress"] + common) != 0:
        raise RuntimeError("the zero-shot evaluation failed")
    with open(os.path.join(zero_dir, "retrieval_metrics.json")) as f:
        zero_shot = json.load(f)
    lap("zero_shot")
    finetuned = finetune_retrieval.main(
        ["--init", pretrained["model"], "--out", os.path.join(out, "retrieval"),
         "--epochs", str(finetune_epochs), "--steps-per-epoch", "100",
         "--batch-size", str(finetune_batch_size), "--learning-rate", "1e-3",
         "--decay-epochs", str(max(1, finetune_epochs - 1)),
         "--verbose", "0", "--eval-split", "test",
         # As the quickstart finetunes under TensorFlow (about a fifth less
         # per step after 7-10 s of compilation).
         "--jit-compile", "true"] + common + IMPROVED["finetune"])[
             "evaluation"]
    lap("finetuning_and_evaluation")
    baseline = dual_encoder_baseline.train_and_evaluate(
        data, "en", max_regions=8, steps=baseline_steps,
        batch_size=finetune_batch_size, seed=seed, progress=False)
    lap("dual_encoder")
    return {"itm_accuracy": pretrained["final"]["val_itm_accuracy"],
            "zero_shot": zero_shot, "finetuned": finetuned,
            "dual_encoder": baseline, "cpu_seconds": cpu}


def main(argv=None):
    args = parse_args(argv)
    from keras_interbert.evaluation import recall_at

    result = run(args.out, seed=args.seed,
                 pretrain_steps=args.pretrain_steps,
                 pretrain_batch_size=args.pretrain_batch_size,
                 pretrain_steps_per_epoch=args.pretrain_steps_per_epoch,
                 finetune_epochs=args.finetune_epochs,
                 finetune_batch_size=args.finetune_batch_size,
                 baseline_steps=args.baseline_steps)

    def t2i(metrics):
        return round(recall_at(metrics["text_to_image"], 1), 1)

    zero_shot, finetuned = result["zero_shot"], result["finetuned"]
    print(json.dumps({
        "arguments": vars(args), "cpu_seconds": result["cpu_seconds"],
        "itm_accuracy": round(result["itm_accuracy"], 3),
        "t2i_r1": {"random": t2i(zero_shot["random_baseline"]),
                   "zero_shot": t2i(zero_shot["modes"]["full"]),
                   "finetuned": t2i(finetuned["modes"]["full"]),
                   "two_stage": t2i(finetuned["modes"]["two_stage"]),
                   "dual_encoder": t2i(result["dual_encoder"]["metrics"])}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
