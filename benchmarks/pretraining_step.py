"""The quickstart's training steps on their own: time per step, and ops.

Runs `recipes/pretrain.py` (or, with `--recipe finetune_retrieval --init
FILE`, `recipes/finetune_retrieval.py` from a pretrained `.keras` file of
the data's feature width) with the arguments `recipes/quickstart.py` gives
it (English, recipe "improved"; `quickstart.pretrain_argv` and
`finetune_argv`), plus those given after `--`, up to the point where
the recipe calls `fit`, and there, instead of training, times the step the
recipe built: its model, optimizer and losses on the first batch of its own
pipeline, repeated (so the input pipeline is out of the figure; it is timed
on its own too). Prints the input pipeline's time per batch, the step's
mean time over `--steps` steps after `--warmup`, and with `--profile` the
TensorFlow ops that took the most time (TensorFlow's profiler, self time
summed over its threads).

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/pretraining_step.py \\
        --data runs/quickstart/bundled-data-1000-d256 --profile
    # the same step without the masked-segment task:
    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/pretraining_step.py \\
        --data runs/quickstart/bundled-data-1000-d256 -- --msm-weight 0
    # the retrieval finetuning step (128 pairs; under XLA on TensorFlow, as
    # the quickstart runs it, or without with `-- --jit-compile false`):
    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/pretraining_step.py \\
        --recipe finetune_retrieval --data runs/quickstart/bundled-data-1000-d256 \\
        --init runs/quickstart/pretrain/pretrained.keras

`--data` is a folder of the bundled data set (`make quickstart` writes one);
without it, a 1,000-image set with 256-d features is generated in a
temporary folder first.
"""
import argparse
import collections
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "recipes"))
sys.path.insert(0, HERE)

class _Measured(Exception):
    """Ends the recipe once the step has been measured."""


def measure(model, dataset, steps, warmup, profile, fit):
    import keras

    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    pipeline = (time.perf_counter() - start) / steps
    fixed = dataset.take(1).cache().repeat()
    marks = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())

    fit(model, fixed, epochs=1, steps_per_epoch=warmup + steps, verbose=0,
        callbacks=[Timer()], shuffle=False)
    times = [b - a for a, b in zip(marks[warmup - 1:-1], marks[warmup:])]
    result = {"pipeline_ms_per_batch": 1000 * pipeline,
              "step_ms": 1000 * sum(times) / len(times), "steps": len(times)}
    if profile:
        result["top_ops"] = profile_ops(model, fixed, fit)
    return result


def profile_ops(model, dataset, fit, steps=5):
    """`[(op type, seconds per step)]`: TensorFlow ops by self time."""
    import tensorflow as tf

    import profile_step

    with tempfile.TemporaryDirectory(prefix="pretraining_step_") as logdir:
        tf.profiler.experimental.start(logdir)
        fit(model, dataset, epochs=1, steps_per_epoch=steps, verbose=0,
            shuffle=False)
        tf.profiler.experimental.stop()
        events, _ = profile_step._xplane_events(logdir)
    totals = collections.Counter()
    for name, _, seconds, thread in events:
        if thread == "python" or any(name.lower().startswith(k)
                                     for k in profile_step.FRAMEWORK):
            continue
        totals[name.split(":")[0]] += seconds / steps
    return totals.most_common(15)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=("pretrain", "finetune_retrieval"),
                   default="pretrain", help="recipes/pretrain.py (default) or "
                   "recipes/finetune_retrieval.py")
    p.add_argument("--data", default=None,
                   help="the bundled data set's folder (default: generate one)")
    p.add_argument("--init", default=None,
                   help="finetuning only: the pretrained .keras file to start "
                   "from (e.g. runs/quickstart/pretrain/pretrained.keras)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile", action="store_true",
                   help="also list the top ops (TensorFlow only)")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    if (args.recipe == "finetune_retrieval") != (args.init is not None):
        p.error("--init MODEL.keras is needed with --recipe "
                "finetune_retrieval, and only there")

    import keras

    if args.profile and keras.config.backend() != "tensorflow":
        p.error("--profile needs KERAS_BACKEND=tensorflow")
    if args.data is not None and not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder")
    with tempfile.TemporaryDirectory(prefix="pretraining_step_") as work:
        result = _run_recipe(args, extra, work)
    if not result:
        raise SystemExit(f"recipes/{args.recipe}.py ended before calling "
                         "fit; nothing was measured.")
    print(f"backend {keras.config.backend()}; recipes/{args.recipe}.py "
          f"arguments: {' '.join(result['argv'])}")
    print(f"input pipeline alone: {result['pipeline_ms_per_batch']:.1f} ms "
          "per batch")
    print(f"step on a fixed batch: {result['step_ms']:.0f} ms (mean of "
          f"{result['steps']} steps after {args.warmup})")
    for name, seconds in result.get("top_ops", []):
        print(f"  {1000 * seconds:8.1f} ms/step  {name}")
    return result


def _run_recipe(args, extra, work):
    """Runs the recipe in `work` up to `fit`; the measurements and `argv`."""
    import keras

    import quickstart

    data = args.data
    if data is None:
        from keras_interbert.data.synthetic import write_dataset

        data = os.path.join(work, "data")
        write_dataset(data, num_images=1000, seed=0, feature_dim=256,
                      languages=("en",), save_images=False, progress=False)
    settings, out = quickstart.parse_args([]), os.path.join(work, "run")
    if args.recipe == "pretrain":
        argv = quickstart.pretrain_argv(settings, out, 42, data=data)
    else:
        argv = quickstart.finetune_argv(settings, args.init, data, out,
                                        42) + ["--no-eval"]
    argv += ["--verbose", "0"] + extra

    import importlib

    recipe = importlib.import_module(args.recipe)
    fit = keras.Model.fit
    result = {}

    def intercept(model, dataset, *unused, **kwargs):
        result.update(measure(model, dataset, args.steps, args.warmup,
                              args.profile, fit))
        raise _Measured()

    keras.Model.fit = intercept
    try:
        recipe.main(argv)
    except _Measured:
        pass
    finally:
        keras.Model.fit = fit
    return dict(result, argv=argv) if result else result


if __name__ == "__main__":
    main()
