"""Writing a run's files so that a crash never leaves one looking complete.

Every file is written through `keras_interbert.utils.atomic` (a temporary
file in the same folder, fsync, rename): checkpoints, the history CSV and
the final model are either whole or absent under their final names.
"""
import csv
import io
import math
import os

import keras

from keras_interbert.utils.atomic import save_model_atomically  # noqa: F401
from keras_interbert.utils.atomic import write_text_atomically


def history_rows(history):
    """`{name: [values per epoch]}` (a Keras `History.history`) as rows."""
    names = sorted(history)
    count = max((len(v) for v in history.values()), default=0)
    return [dict({"epoch": epoch},
                 **{n: float(history[n][epoch]) for n in names
                    if epoch < len(history[n])})
            for epoch in range(count)]


def write_history_csv(path, rows):
    """Writes per-epoch `rows` (`{"epoch": i, metric: value}`) as a CSV.

    The layout of `keras.callbacks.CSVLogger` (an `epoch` column, then the
    metrics in sorted order), written whole and atomically each time, so
    the file always holds exactly the rows given: never a cut-off row, and
    never a row of an epoch that a resumed run trains again.
    """
    keys = sorted({k for row in rows for k in row if k != "epoch"})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for row in rows:
        writer.writerow([int(row["epoch"]),
                         *(row.get(k, "NA") for k in keys)])
    return write_text_atomically(path, out.getvalue())


def read_history_csv(path):
    """A history CSV as `{name: [values per epoch]}` (NA as NaN)."""
    history = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                history.setdefault(key, []).append(
                    math.nan if value in ("NA", "", None) else float(value))
    return history


def _log_value(value):
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None


def epoch_row(epoch, logs):
    """The history row of one epoch from `fit`'s `logs`."""
    row = {"epoch": int(epoch)}
    for key, value in (logs or {}).items():
        value = _log_value(value)
        if value is not None:
            row[key] = value
    return row


class HistoryCSVLogger(keras.callbacks.Callback):
    """`CSVLogger` that rewrites the whole file atomically after each epoch.

    Args:
        path: the CSV file (replaced at the first epoch's end).
    """

    def __init__(self, path):
        super().__init__()
        self.path = os.fspath(path)
        self.rows = []

    def on_train_begin(self, logs=None):
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append(epoch_row(epoch, logs))
        write_history_csv(self.path, self.rows)


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (`.keras`) after every epoch, atomically.

    The file name may use `{epoch}` (1-based, as `ModelCheckpoint`) and the
    epoch's logs, e.g. `checkpoints/epoch-{epoch:03d}.keras`. A failed save
    (full disk, kill) leaves no file under the name.

    Put it before `ExactBackupAndRestore` in the callback list: the backup
    then records an epoch as done only after its checkpoint exists, so a run
    that stopped while checkpointing trains that epoch again and writes the
    checkpoint on its re-run.
    """

    def __init__(self, filepath):
        super().__init__()
        self.filepath = os.fspath(filepath)
        if not self.filepath.endswith(".keras"):
            raise ValueError("AtomicModelCheckpoint: the path must end in "
                             f".keras; received {self.filepath!r}.")

    def on_epoch_end(self, epoch, logs=None):
        values = {k: v for k, v in epoch_row(epoch, logs).items()
                  if k != "epoch"}
        path = self.filepath.format(epoch=epoch + 1, **values)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_model_atomically(self.model, path)
