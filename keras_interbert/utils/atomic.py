"""Files and folders that appear complete or not at all.

A writer puts its output under a temporary name in the target's own folder
(so that the final rename stays on one file system), flushes and fsyncs it,
then renames it over the target with `os.replace`, which is atomic: a crash,
a kill or a full disk leaves either the old file or the new one under the
final name, never a truncated one. A failed write removes its temporary file
and leaves the old target untouched.

- `write_bytes_atomically`, `write_text_atomically`, `write_json_atomically`:
  a value already in memory.
- `atomic_path`: a context manager giving a temporary path, for writers that
  want a file name (`model.save`, `np.savez`, `fig.savefig`, TFRecord
  writers). Its name keeps the target's suffix (`.keras`, `.weights.h5`),
  which Keras checks.
- `save_model_atomically`, `save_weights_atomically`: Keras models.
- `atomic_directory`: a folder built under a temporary name and renamed into
  place when complete (a SavedModel export), replacing an old one only then.
- `read_json`: the reading side, with errors that name the file.
"""
import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil

# Temporary names start with "." and hold ".partial": hidden from plain
# listings and globs, and never taken for a finished file.
PARTIAL_MARK = ".partial"

# Compound suffixes that must survive in a temporary name.
_SUFFIXES = (".weights.h5", ".weights.json", ".tar.gz")


def _suffix(path):
    name = os.path.basename(path)
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return os.path.splitext(name)[1]


def temporary_name(path, suffix=None):
    """A fresh temporary path next to `path`, ending in `suffix`.

    `.<stem>.<random>.partial<suffix>`, with `suffix` defaulting to the
    target's own (`.keras`, `.weights.h5`, `.npz`, ...).
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    suffix = _suffix(path) if suffix is None else suffix
    stem = name[: len(name) - len(suffix)] if suffix and name.endswith(
        suffix) else name
    return os.path.join(
        folder, f".{stem}.{secrets.token_hex(4)}{PARTIAL_MARK}{suffix}")


def _ordinary_mode(path):
    # mkstemp-style private modes would make results unreadable to a
    # group; give the file the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def fsync_path(path):
    """Flushes a file, or every file under a folder, to the disk."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in files:
                fsync_path(os.path.join(root, name))
            fsync_directory(root)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(folder):
    """Makes a rename inside `folder` durable (where the system allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse to fsync a folder
    finally:
        os.close(fd)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def _check_folder(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: the folder {folder} does not exist.")
    return folder


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path; on success it becomes `path` atomically.

    Write the file at the yielded path (with any writer that takes a path).
    When the block ends normally the file is fsynced and renamed over
    `path`; when it raises, the temporary file is removed and `path` keeps
    its old content (or stays absent).

    Args:
        path: the final file.
        suffix: the temporary name's ending (default: `path`'s, e.g.
            `.keras` or `.weights.h5`, so that writers that check it agree).

    Examples:
    ```python
    with atomic_path("out/scores.npz") as tmp:
        np.savez(tmp, scores=scores)
    ```
    """
    path = os.fspath(path)
    folder = _check_folder(path)
    temporary = temporary_name(path, suffix)
    try:
        yield temporary
        if not os.path.isfile(temporary):
            raise FileNotFoundError(
                f"{path}: the writer left no file at {temporary}.")
        _ordinary_mode(temporary)
        fsync_path(temporary)
        os.replace(temporary, path)
        fsync_directory(folder)
    finally:
        _remove(temporary)


def write_bytes_atomically(path, data):
    """Writes `data` (bytes) to `path` atomically; returns `path`."""
    with atomic_path(path, suffix=".tmp") as temporary:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_text_atomically(path, text):
    """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path, value, indent=2, **kwargs):
    """Writes `value` as JSON to `path` atomically; returns `path`.

    Extra keyword arguments go to `json.dumps` (e.g. `default=float`,
    `ensure_ascii=False`).
    """
    return write_text_atomically(
        path, json.dumps(value, indent=indent, **kwargs) + "\n")


def save_model_atomically(model, path):
    """`model.save(path)` (a `.keras` file) through a temporary file.

    An interrupted or failed save (a kill, a full disk) never leaves a
    truncated file under `path`; an older file there stays whole until the
    new one is complete. Returns `path`.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"expected a .keras path; received {path!r}.")
    with atomic_path(path) as temporary:
        model.save(temporary)
    return path


def save_weights_atomically(model, path):
    """`model.save_weights(path)` (a `.weights.h5` file), atomically.

    Returns `path`.
    """
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"expected a .weights.h5 path; received {path!r}.")
    with atomic_path(path) as temporary:
        model.save_weights(temporary)
    return path


def _renameat2_exchange():
    """libc's `renameat2(..., RENAME_EXCHANGE)`, or `None` where missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                           use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                         ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2

    def exchange(a, b):
        if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                    rename_exchange) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), a)

    return exchange


def replace_directory(source, target):
    """Puts the finished folder `source` at `target`; returns the old one.

    With no `target` yet, a plain rename. Otherwise the two are swapped in
    one step where the system can (Linux `renameat2` with
    `RENAME_EXCHANGE`): `target` is never missing, and the old content ends
    up at `source`. Elsewhere the old folder is renamed aside first, then
    the new one into place (a moment without `target`, but the old content
    is never deleted before the new one is in place). Returns the path
    holding the old content (delete it), or `None`.
    """
    if not os.path.lexists(target):
        os.rename(source, target)
        return None
    exchange = _renameat2_exchange()
    if exchange is not None:
        try:
            exchange(source, target)
            return source
        except OSError:
            pass  # a file system without RENAME_EXCHANGE
    aside = temporary_name(target, suffix=".old")
    os.rename(target, aside)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(aside, target)
        raise
    return aside


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yields a temporary folder; on success it becomes `path`.

    Fill the yielded folder. When the block ends normally every file in it
    is fsynced and the folder takes `path`'s place (see
    `replace_directory`); the old `path` is deleted only afterwards. When
    the block raises, the temporary folder is deleted and `path` is left as
    it was. The temporary folder sits next to `path` under a hidden,
    non-numeric name (`.<name>.<random>.partial`), which TensorFlow Serving
    never takes for a model version.

    Args:
        path: the final folder.
        overwrite: allow replacing an existing `path`; otherwise an
            existing one raises `FileExistsError`, before and after the
            block.
    """
    path = os.fspath(path).rstrip(os.sep) or os.sep
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to "
                              "replace it.")
    temporary = temporary_name(path, suffix="")
    os.mkdir(temporary)
    old = None
    try:
        yield temporary
        if os.path.lexists(path) and not overwrite:
            raise FileExistsError(f"{path} appeared while it was being "
                                  "written; the new content is discarded.")
        fsync_path(temporary)
        old = replace_directory(temporary, path)
        fsync_directory(parent)
    finally:
        _remove(temporary)
        if old is not None:
            _remove(old)


def read_json(path, what="JSON file"):
    """The parsed content of a JSON file; errors name the file.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not UTF-8 JSON (damaged or truncated).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}.") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the {what} is not UTF-8 text ({e}).") \
            from None
    except json.JSONDecodeError as e:
        problem = "empty" if not raw.strip() else (
            f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")
        raise ValueError(f"{path}: the {what} is {problem}; it is damaged "
                         "or truncated.") from None


def save_figure_atomically(figure, path, **kwargs):
    """`figure.savefig(path, **kwargs)` through a temporary file.

    The format comes from `path`'s extension (PNG without one). Returns
    `path`.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=extension or "png", **kwargs)
    return path
