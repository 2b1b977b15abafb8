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
