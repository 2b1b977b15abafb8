"""Writing a run's final files so that a crash never leaves one looking complete."""
import os


def save_model_atomically(model, path):
    """Saves `model` to `path` (a `.keras` file) through a partial file.

    The model is written to `<name>.partial.keras` first and renamed when
    complete, so an interrupted save never leaves a truncated file under the
    final name. Returns `path`.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"expected a .keras path; received {path!r}.")
    partial = path[: -len(".keras")] + ".partial.keras"
    model.save(partial)
    os.replace(partial, path)
    return path
