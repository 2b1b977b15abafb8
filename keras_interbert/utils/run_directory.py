"""Run directories that a program owns and empties for every new run."""
import os
import shutil


def fresh_run_directory(path, owner):
    """Empties `path` for a new run of `owner`, or creates it.

    A program that tells its story from scratch every time (the quickstart,
    each ablation variant) must not meet leftovers of an earlier run: a
    finished pretraining backup would be resumed, a score file of another
    model refused. The directory is marked as the owner's; a non-empty
    directory without that mark is somebody else's and is refused, never
    deleted.

    Args:
        path: str. The run directory.
        owner: str. A short name of the program, e.g. `"quickstart"`.

    Raises:
        SystemExit: `path` is a non-empty directory `owner` did not create,
            or exists and is not a directory.
    """
    marker = os.path.join(path, f".keras_interbert_{owner}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise SystemExit(f"{path} exists and is not a directory.")
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.exists(marker):
            raise SystemExit(
                f"{path} is not empty and was not written by the {owner}; "
                "choose a new or empty directory.")
        print(f"Removing the previous {owner} run in {path}.")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    with open(marker, "w") as f:
        f.write(f"written by the keras_interbert {owner}; emptied on every "
                "run\n")
