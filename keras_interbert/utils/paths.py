"""Names that must stay inside their folder."""
import os


def check_plain_name(name, what="name"):
    """Returns `name` if it is one plain path component; raises otherwise.

    A plain name is not empty, not `.` or `..`, holds no path separator
    (`/`, or `\\` on Windows) and no NUL, and is not absolute, so that
    `os.path.join(folder, name)` stays a direct child of `folder`.

    Raises:
        ValueError: naming `what` and the problem.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty name; received "
                         f"{name!r}.")
    separators = [s for s in (os.sep, os.altsep, "/", "\\") if s]
    if name in (".", "..") or any(s in name for s in separators) or (
            "\0" in name) or os.path.isabs(name):
        raise ValueError(
            f"{what} {name!r} is not a plain name: it must not be '.' or "
            "'..', be absolute or hold a path separator, so that it stays "
            "inside its folder.")
    return name
