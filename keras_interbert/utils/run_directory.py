"""Output folders that a program owns: the guard every recipe goes through.

A program marks each folder it writes with a small JSON file,
`.keras_interbert_<owner>`, saying who wrote it and, for resumable runs,
the arguments that define the run and whether it finished. Two entry
points:

- `claim_run_directory`: for a run that may be resumed (pretraining,
  finetuning). A new or empty folder is taken and marked; a folder holding
  files without this owner's mark is refused, never written into; a folder
  of an unfinished run of the same owner is resumed only with the same
  defining arguments (a changed one is refused, naming the old and new
  values); a finished run is reported as finished and left unchanged.
- `fresh_run_directory`: for a program that tells its story from scratch
  every time (the quickstart, each ablation variant): its own earlier run is
  emptied, anybody else's folder is refused.
- `claim_output_directory`: for a program whose outputs check themselves
  (the retrieval evaluation: its score files carry a fingerprint of the
  model, data and batching): its own folder is reused with any arguments,
  anybody else's refused.
"""
import json
import os
import shutil

from keras_interbert.utils.atomic import read_json
from keras_interbert.utils.atomic import write_json_atomically

MARK_PREFIX = ".keras_interbert_"


def marker_path(path, owner):
    """The mark that says `owner` wrote the folder `path`."""
    return os.path.join(path, f"{MARK_PREFIX}{owner}")


def _check_folder(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise SystemExit(f"{path} exists and is not a directory.")


def _foreign(path, owner):
    others = sorted(n[len(MARK_PREFIX):] for n in os.listdir(path)
                    if n.startswith(MARK_PREFIX) and n != MARK_PREFIX + owner)
    by = f" (it holds a run of {', '.join(others)})" if others else ""
    return SystemExit(
        f"{path} is not empty and was not written by the {owner}{by}; "
        "choose a new or empty directory.")


def _comparable(value):
    return json.loads(json.dumps(value, default=str))


class RunDirectory:
    """A claimed run folder (see `claim_run_directory`).

    Attributes:
        path: the folder.
        owner: the program's short name.
        arguments: the arguments that define the run.
        state: `"new"`, `"resumed"` (an unfinished run of the same
            arguments) or `"finished"`.
    """

    def __init__(self, path, owner, record, state):
        self.path = path
        self.owner = owner
        self.record = record
        self.state = state

    @property
    def arguments(self):
        return self.record["arguments"]

    @property
    def finished(self):
        return self.state == "finished"

    @property
    def resumed(self):
        return self.state == "resumed"

    def finish(self, **details):
        """Records the run as finished (after all its outputs are written)."""
        self.record = dict(self.record, finished=True, **details)
        write_json_atomically(marker_path(self.path, self.owner), self.record)
        self.state = "finished"

    def finished_summary(self, summary_file="metrics.json"):
        """The finished run's summary file, after saying it is finished."""
        path = os.path.join(self.path, summary_file)
        print(f"{self.path}: this {self.owner} run finished already; "
              "nothing was changed. Use a new output folder to run again.")
        if not os.path.exists(path):
            raise SystemExit(f"{self.path} is marked finished but "
                             f"{path} is missing; use a new output folder.")
        try:
            return read_json(path, "run summary")
        except ValueError as e:
            raise SystemExit(str(e)) from None


def run_arguments(args, ignore=("out", "verbose")):
    """The arguments of an `argparse.Namespace` that define a run."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in ignore}


def claim_run_directory(path, owner, arguments):
    """Takes the folder `path` for a (resumable) run of `owner`.

    Args:
        path: the output folder.
        owner: the program's short name, e.g. `"pretrain"`.
        arguments: `{name: value}` (JSON values) that define the run: a
            resume must give the same ones. Leave out what may change
            between attempts (verbosity, the output folder itself).

    Returns:
        A `RunDirectory`; check `.finished` before doing any work.

    Raises:
        SystemExit: `path` is a file; holds files that `owner` did not
            write; is a run of `owner` with other arguments (naming each
            differing argument, its old and its new value); or its mark is
            damaged (naming the file).
    """
    path = os.fspath(path)
    _check_folder(path)
    arguments = _comparable(arguments)
    marker = marker_path(path, owner)
    if not os.path.isdir(path) or not os.listdir(path):
        os.makedirs(path, exist_ok=True)
        record = {"written_by": f"keras_interbert {owner}", "owner": owner,
                  "arguments": arguments, "finished": False}
        write_json_atomically(marker, record)
        return RunDirectory(path, owner, record, "new")
    if not os.path.exists(marker):
        raise _foreign(path, owner)
    try:
        record = read_json(marker, f"{owner} run record")
    except ValueError as e:
        raise SystemExit(f"{e} Delete {path} or choose another folder.") \
            from None
    if not isinstance(record, dict) or not isinstance(
            record.get("arguments"), dict):
        raise SystemExit(f"{marker}: not a run record (no arguments); "
                         f"delete {path} or choose another folder.")
    before = record["arguments"]
    changed = sorted(k for k in set(before) | set(arguments)
                     if before.get(k) != arguments.get(k))
    if changed:
        details = "; ".join(
            f"--{k.replace('_', '-')}: {before.get(k)!r} in the run, "
            f"{arguments.get(k)!r} now" for k in changed)
        raise SystemExit(
            f"{path} holds a {owner} run made with other arguments "
            f"({details}). Run it again with its own arguments to resume or "
            "reuse it, or choose a new output folder.")
    state = "finished" if record.get("finished") else "resumed"
    return RunDirectory(path, owner, record, state)


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
    _check_folder(path)
    marker = marker_path(path, owner)
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.exists(marker):
            raise _foreign(path, owner)
        print(f"Removing the previous {owner} run in {path}.")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    write_json_atomically(marker, {
        "written_by": f"keras_interbert {owner}", "owner": owner,
        "note": "emptied on every run"})


def claim_output_directory(path, owner, own_names=()):
    """Takes `path` for `owner`, whose outputs check themselves on reuse.

    A new or empty folder is created and marked; a folder with `owner`'s
    mark is reused as it is (whatever the arguments: the program validates
    its own files, e.g. a score file's fingerprint); a folder written before
    marks existed is adopted when every entry is one of `own_names` (the
    program's own file names); anything else is refused, never written into.

    Args:
        path: the output folder.
        owner: the program's short name, e.g. `"evaluation"`.
        own_names: the names the program writes in the folder.

    Raises:
        SystemExit: `path` is a file, or a non-empty folder holding other
            files without `owner`'s mark.
    """
    path = os.fspath(path)
    _check_folder(path)
    marker = marker_path(path, owner)
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(marker):
        if set(os.listdir(path)) - set(own_names):
            raise _foreign(path, owner)
    os.makedirs(path, exist_ok=True)
    if not os.path.exists(marker):
        write_json_atomically(marker, {
            "written_by": f"keras_interbert {owner}", "owner": owner,
            "note": "reused by later runs; its files check themselves"})
