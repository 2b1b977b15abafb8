"""TensorBoard logs that a resumed run continues instead of repeating.

What `keras.callbacks.TensorBoard` (Keras 3) does when a run is killed and
resumed with `ExactBackupAndRestore`:

- the batch-level scalars (`batch_loss`, ... with `update_freq` a number)
  are written at the step `_global_train_batch`, a count of this `fit`
  call's batches that starts again at 0 in every `fit`: the second attempt
  writes its steps 1, 2, ... over the first attempt's, with other values;
- every attempt writes a new event file into `train/` and `validation/`,
  which TensorBoard reads as one run: the steps that the first attempt
  trained after its last backup and the resumed attempt trains again appear
  twice (the epoch-level scalars are written at fit's epoch index, which
  resumes correctly, but an epoch the first attempt logged and did not back
  up is logged again);
- events still in the writer's queue when the process is killed are lost
  (the writer flushes every 10 events or 2 minutes).

`ResumableTensorBoard` fixes the three (and logs every epoch, which Keras's
callback skips when an integer `update_freq` does not divide the steps per
epoch). It numbers batch steps from the
resumed position (`initial_epoch * steps_per_epoch`, the step an
uninterrupted run would be at); when an attempt starts it rewrites the event
files of earlier attempts, keeping only the events up to the state it
resumes from (each file replaced whole and atomically), so each step of
each tag appears once; and it flushes its writers at each epoch's end, so
that everything up to a backup is on disk before the backup counts.

Put it before `ExactBackupAndRestore` in the callback list: an epoch is then
logged and flushed before its backup is committed. A kill between the two
leaves that epoch's events in the old file, and the re-run, which trains
the epoch again, drops them.
"""
import os
import secrets

import keras

from keras_interbert.utils.atomic import PARTIAL_MARK
from keras_interbert.utils.atomic import fsync_directory
from keras_interbert.utils.atomic import fsync_path

# Temporary files of a rewrite: no "tfevents" in the name, so that
# TensorBoard never reads one that a kill left behind.
_TEMPORARY_PREFIX = ".trimmed-events."


def _is_event_file(name):
    return "tfevents" in name and not name.startswith(".")


def event_files(log_dir):
    """The TensorBoard event files under `log_dir`, sorted."""
    found = []
    for root, _dirs, files in os.walk(os.fspath(log_dir)):
        found += [os.path.join(root, n) for n in files if _is_event_file(n)]
    return sorted(found)


def _read_events(path):
    """The events of a file; a record cut off by a kill ends the file."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2

    events = []
    try:
        for record in tf.data.TFRecordDataset(path):
            events.append(event_pb2.Event.FromString(record.numpy()))
    except tf.errors.DataLossError:
        pass  # the end of a file whose last record was being written
    return events


def read_scalars(log_dir):
    """`{(subfolder, tag): [(step, value), ...]}` of the scalars in a log
    folder, in file order (a test and inspection aid)."""
    import tensorflow as tf

    scalars = {}
    for path in event_files(log_dir):
        run = os.path.relpath(os.path.dirname(path), os.fspath(log_dir))
        for event in _read_events(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                else:
                    array = tf.make_ndarray(value.tensor)
                    if array.ndim or array.dtype.kind not in "fiu":
                        continue  # not a scalar (a model summary, text)
                    number = float(array)
                scalars.setdefault((run, value.tag), []).append(
                    (int(event.step), number))
    return scalars


def _write_events(path, events):
    """Replaces `path` by a file of `events`, atomically."""
    import tensorflow as tf

    folder = os.path.dirname(path)
    temporary = os.path.join(
        folder, f"{_TEMPORARY_PREFIX}{secrets.token_hex(4)}{PARTIAL_MARK}")
    try:
        with tf.io.TFRecordWriter(temporary) as writer:
            for event in events:
                writer.write(event.SerializeToString())
        fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    fsync_directory(folder)


def trim_event_files(paths, keep):
    """Drops from the event files `paths` the summary values `keep` rejects.

    Args:
        paths: event files (of earlier attempts: not open for writing).
        keep: `keep(tag, step) -> bool`.

    Each changed file is rewritten whole and atomically; a file left with
    no summary at all (only its version record) is deleted. Events without
    summaries (the file version, graphs) are kept. Returns the number of
    values dropped.
    """
    dropped = 0
    for path in paths:
        if not os.path.exists(path):
            continue
        events, changed = [], False
        for event in _read_events(path):
            if event.HasField("summary"):
                values = [v for v in event.summary.value
                          if keep(v.tag, int(event.step))]
                if len(values) != len(event.summary.value):
                    dropped += len(event.summary.value) - len(values)
                    changed = True
                    if not values:
                        continue
                    del event.summary.value[:]
                    event.summary.value.extend(values)
            events.append(event)
        if not any(e.HasField("summary") or e.HasField("graph_def")
                   for e in events):
            os.remove(path)
        elif changed:
            _write_events(path, events)
    return dropped


def _remove_temporaries(log_dir):
    for root, _dirs, files in os.walk(log_dir):
        for name in files:
            if name.startswith(_TEMPORARY_PREFIX):
                try:
                    os.remove(os.path.join(root, name))
                except OSError:
                    pass


class ResumableTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` for runs that `ExactBackupAndRestore`
    resumes: one continuous run in TensorBoard, every step once.

    Takes the arguments of `keras.callbacks.TensorBoard`. `log_dir` must
    belong to this run alone: when `fit` starts, the events that earlier
    attempts wrote beyond the state being resumed are deleted from it.

    The units of the steps, and what is kept from earlier attempts when an
    attempt starts at epoch `E` (0-based) after `S = E * steps_per_epoch`
    batches and `I` optimizer iterations:

    - `epoch_*` tags, step = epoch index: kept while step < `E`;
    - `batch_*` tags, step = batches since the run began (not since this
      attempt began): kept while step <= `S`;
    - `evaluation_*_vs_iterations`, step = optimizer iterations: kept while
      step <= `I`;
    - the model summary `keras` at step 0 (written again by each attempt
      when `write_graph` is on): dropped; other tags: kept.
    """

    def set_model(self, model):
        # What is here before this attempt writes anything is earlier
        # attempts' (TensorBoard's own writers create files lazily, some in
        # `set_model` itself).
        _remove_temporaries(self.log_dir)
        self._earlier_files = event_files(self.log_dir)
        self._trimmed = False
        super().set_model(model)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._trimmed = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._trimmed:
            # The first epoch of this attempt: fit's loop starts at the
            # epoch `ExactBackupAndRestore` restored.
            self._start_at(epoch)
        super().on_epoch_begin(epoch, logs)

    def on_train_end(self, logs=None):
        if not self._trimmed:  # nothing left to train: the run was complete
            self._start_at(self.params.get("epochs") or 0)
        super().on_train_end(logs)

    def _start_at(self, epoch):
        self._trimmed = True
        steps = int(self.params.get("steps") or 0)
        batches = epoch * steps
        iterations = 0
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and hasattr(optimizer, "iterations"):
            iterations = int(keras.ops.convert_to_numpy(optimizer.iterations))
        if epoch and not steps:
            raise ValueError(
                "ResumableTensorBoard: resuming needs a fixed number of steps "
                "per epoch (`fit(steps_per_epoch=...)`).")
        # The next batch is numbered as in an uninterrupted run.
        self._global_train_batch = batches
        write_graph = self.write_graph

        def keep(tag, step):
            if tag.startswith("epoch_"):
                return step < epoch
            if tag.startswith("batch_"):
                return step <= batches
            if tag.startswith("evaluation_") and tag.endswith(
                    "_vs_iterations"):
                return step <= iterations
            return not (write_graph and tag == "keras")

        trim_event_files(self._earlier_files, keep)
        self._earlier_files = []

    def _log_epoch_metrics(self, epoch, logs):
        # Keras's callback writes the epoch summaries inside the batch
        # summaries' `record_if(step % update_freq == 0)`: with an integer
        # `update_freq` that does not divide the steps per epoch, no epoch
        # is ever logged. Epoch summaries are always recorded here.
        with self.summary.record_if(True):
            super()._log_epoch_metrics(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        # On disk before the backup that follows counts the epoch as done.
        for writer in self._writers.values():
            writer.flush()
