"""Files that appear complete or not at all.

A writer puts its bytes in a temporary file in the target's folder, flushes
and fsyncs it, then renames it over the target (`os.replace`, atomic on one
file system): a crash leaves either the old file or the new one, never a
truncated one.
"""
import json
import os
import tempfile


def write_bytes_atomically(path, data):
    """Writes `data` (bytes) to `path` atomically; returns `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: the folder {folder} does not exist.")
    handle, temporary = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode an
        # ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def write_text_atomically(path, text):
    """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path, value, indent=2):
    """Writes `value` as JSON to `path` atomically; returns `path`."""
    return write_text_atomically(path, json.dumps(value, indent=indent) + "\n")
