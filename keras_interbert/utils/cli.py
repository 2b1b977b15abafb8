"""Command-line entry points: a refused input is one line, not a traceback.

Every recipe and `python -m keras_interbert...` command runs its `main`
through `run_main`. The project raises `ValueError` subclasses
(`RegionDataError`, `ModelLoadError`, `ScoreFileError`, ...) and the
file-system errors for bad input, each naming the file and the problem;
`run_main` prints that message after the program's name and exits with
status 2, as argparse does for a bad flag. `INTERBERT_TRACEBACK=1` shows the
full traceback instead (for reporting a bug).
"""
import os
import sys

# What bad input raises; anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError,
                IsADirectoryError, NotADirectoryError, PermissionError)


def run_main(main, argv=None, prog=None):
    """`main(argv)`'s exit status, with input errors as one line."""
    prog = prog or os.path.basename(sys.argv[0]) or "keras_interbert"
    try:
        result = main(argv) if argv is not None else main()
    except INPUT_ERRORS as e:
        if os.environ.get("INTERBERT_TRACEBACK"):
            raise
        message = str(e) or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        print(f"{prog}: (INTERBERT_TRACEBACK=1 shows where it was raised)",
              file=sys.stderr)
        return 2
    if isinstance(result, bool):
        return 0 if result else 1
    return result if isinstance(result, int) else 0


# `--jit-compile` of the training recipes: the value `compile` takes.
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}


def add_jit_compile_argument(group, help):
    """`--jit-compile auto|true|false` (any case) on an argparse group;
    `JIT_COMPILE[args.jit_compile]` is what to pass to `compile`."""
    group.add_argument("--jit-compile", default="auto", type=str.lower,
                       choices=tuple(JIT_COMPILE), help=help)


def add_run_eagerly_argument(group):
    """`--run-eagerly` on an argparse group; `step_options(args)` turns it
    (and `--jit-compile`, where the recipe has it) into `compile`'s
    arguments."""
    group.add_argument(
        "--run-eagerly", action="store_true",
        help="Run the training and evaluation steps op by op (Keras "
        "`run_eagerly=True`): nothing is traced or compiled. For debugging, "
        "and for runs of a few steps of a tiny model, whose set-up costs "
        "more than their steps (under TensorFlow a two-step pretraining run "
        "of the tiny preset: about 7 CPU seconds against 11). The same "
        "computation, so a run may be resumed with or without it.")


def step_options(args):
    """`compile`'s `run_eagerly` and `jit_compile` from the command line.

    Raises:
        ValueError: `--run-eagerly` with `--jit-compile true` (one excludes
            the other).
    """
    jit = JIT_COMPILE[getattr(args, "jit_compile", "auto")]
    if args.run_eagerly:
        if jit is True:
            raise ValueError("--run-eagerly and --jit-compile true exclude "
                             "each other: give one of them.")
        jit = False
    return {"run_eagerly": bool(args.run_eagerly), "jit_compile": jit}
