import os
import re

import keras
import numpy as np

from keras_interbert.training.run_outputs import epoch_row
from keras_interbert.training.run_outputs import write_history_csv
from keras_interbert.utils.atomic import PARTIAL_MARK
from keras_interbert.utils.atomic import atomic_path
from keras_interbert.utils.atomic import read_json
from keras_interbert.utils.atomic import save_weights_atomically
from keras_interbert.utils.atomic import write_json_atomically

METADATA_FILE = "training_metadata.json"
# Files of one saved state: state-000003.weights.h5, state-000003.seeds.npz.
_STATE_FILE = re.compile(r"^state-\d{6}\.(weights\.h5|seeds\.npz)$")
# What keras.callbacks.BackupAndRestore itself (and earlier versions of this
# callback) wrote.
_LEGACY_WEIGHTS = "latest.weights.h5"
_LEGACY_SEEDS = "seed_states.npz"


_TORCH_KEY = "torch_rng"


def _torch_rng_states():
    """Torch's global random states (CPU, then each CUDA device), under the
    PyTorch backend: `{"torch_rng": ..., "torch_rng_cuda0": ...}`."""
    if keras.backend.backend() != "torch":
        return {}
    import torch

    states = {_TORCH_KEY: torch.get_rng_state().numpy()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"{_TORCH_KEY}_cuda{i}"] = state.numpy()
    return states


def _set_torch_rng_states(states):
    if not states or keras.backend.backend() != "torch":
        return
    import torch

    if _TORCH_KEY in states:
        torch.set_rng_state(torch.from_numpy(states[_TORCH_KEY]))
    if torch.cuda.is_available():
        cuda = [states.get(f"{_TORCH_KEY}_cuda{i}")
                for i in range(torch.cuda.device_count())]
        if all(state is not None for state in cuda):
            torch.cuda.set_rng_state_all(
                [torch.from_numpy(state) for state in cuda])


class BackupDamagedError(ValueError):
    """A backup folder that cannot be resumed from."""


class ExactBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that restores the random state and survives crashes.

    Differences from Keras's callback:

    - The states of the models' `SeedGenerator`s (dropout) are saved and
      restored too, so a resumed run continues exactly as if it had never
      stopped (Keras would draw the first attempt's dropout masks again).
      Under PyTorch, Keras draws the masks of an unseeded `Dropout` layer
      from torch's global generator instead (its fast path), so that
      generator's state (and CUDA's) is saved and restored as well. Creating
      a torch data iterator draws from that generator, so the restore comes
      where the uninterrupted run's state was the saved one: after the
      resumed attempt's iterator is made (its first batch) when `fit` gets
      `steps_per_epoch` (Keras then keeps one iterator for the whole `fit`),
      before it (the epoch's beginning) with `iterator_per_epoch=True`.
    - A backup is crash-safe. Each save writes a new set of files
      (`state-NNNNNN.weights.h5`, `state-NNNNNN.seeds.npz`) through
      temporary files, then replaces `training_metadata.json`, which names
      them, atomically: that rename is the moment the new backup counts.
      The previous state's files are deleted only afterwards, so a kill or a
      full disk at any point leaves the previous complete backup in use,
      never a truncated file under a name the metadata points to.
    - With `history_path`, the per-epoch logs are kept in the metadata and
      the CSV at `history_path` is rewritten (atomically) from them after
      each backup and at a resume, so it holds exactly the epochs the
      backed-up state has trained: none missing, none twice.
    - A damaged backup raises `BackupDamagedError` naming the file and the
      folder to delete.

    Args:
        backup_dir: the backup folder (this callback's alone).
        save_freq: as `keras.callbacks.BackupAndRestore`.
        delete_checkpoint: delete the backup when `fit` ends. Recipes that
            write more files after `fit` pass `False` and delete it once
            their run is recorded as finished, so that a kill in between
            resumes from the last state rather than from scratch.
        history_path: optional CSV file of the per-epoch logs.
        iterator_per_epoch: `True` when `fit` runs without
            `steps_per_epoch`, so that Keras makes a new data iterator every
            epoch (matters only under PyTorch, for unseeded dropout).
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True,
                 history_path=None, iterator_per_epoch=False):
        super().__init__(backup_dir, save_freq=save_freq,
                         double_checkpoint=False,
                         delete_checkpoint=delete_checkpoint)
        self.history_path = history_path
        self._history = []
        self._save_index = 0
        self._pending_torch_rng = None
        self.iterator_per_epoch = iterator_per_epoch

    # -- paths --------------------------------------------------------------

    def _metadata_path(self):
        return os.path.join(self.backup_dir, METADATA_FILE)

    def _seed_states(self):
        return [v for v in self.model.variables
                if v.path.endswith("seed_generator_state")]

    def _damaged(self, problem):
        return BackupDamagedError(
            f"{problem} The backup in {self.backup_dir} cannot be resumed; "
            f"delete that folder to train from the start.")

    # -- restoring ----------------------------------------------------------

    def on_train_begin(self, logs=None):
        # Keras's version falls back to `.bkp` copies; this callback never
        # replaces a state in place, so there is nothing to fall back to.
        self._load_model()

    def _read_metadata(self):
        path = self._metadata_path()
        if not os.path.exists(path):
            return None
        try:
            metadata = read_json(path, "backup metadata")
        except ValueError as e:
            raise self._damaged(str(e)) from None
        if not isinstance(metadata, dict) or not isinstance(
                metadata.get("epoch"), int) or metadata["epoch"] < 0:
            raise self._damaged(f"{path}: no epoch count in the backup "
                                "metadata.")
        return metadata

    def _load_model(self):
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, the model must be "
                "built before `fit()`; call it on a batch of data first.")
        metadata = self._read_metadata()
        if metadata is None:
            self._history, self._save_index = [], 0
            return
        weights = os.path.join(self.backup_dir,
                               metadata.get("weights", _LEGACY_WEIGHTS))
        seeds = os.path.join(self.backup_dir,
                             metadata.get("seeds", _LEGACY_SEEDS))
        if not os.path.exists(weights):
            raise self._damaged(f"{self._metadata_path()} names {weights}, "
                                "which is missing.")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(weights)
        except Exception as e:  # h5py's OSError, Keras's ValueError, ...
            raise self._damaged(f"{weights}: cannot be loaded "
                                f"({type(e).__name__}: {e}).") from e
        if os.path.exists(seeds):
            self._load_seeds(seeds)
        self.model._initial_epoch = metadata["epoch"]
        self._current_epoch = metadata["epoch"]
        self._save_index = int(metadata.get("save_index", 0))
        self._history = [dict(row) for row in metadata.get("history", [])
                         if row.get("epoch", 0) < metadata["epoch"]]
        if self.history_path is not None and "history" in metadata:
            write_history_csv(self.history_path, self._history)

    def _load_seeds(self, path):
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {k: saved[k] for k in saved.files}
        except Exception as e:
            raise self._damaged(f"{path}: cannot be read "
                                f"({type(e).__name__}: {e}).") from e
        self._pending_torch_rng = {k: v for k, v in arrays.items()
                                   if k.startswith(_TORCH_KEY)}
        arrays = {k: v for k, v in arrays.items()
                  if not k.startswith(_TORCH_KEY)}
        variables = self._seed_states()
        if len(arrays) != len(variables):
            raise self._damaged(
                f"{path}: {len(arrays)} random states saved, the model has "
                f"{len(variables)}; the backup is from a different model.")
        for i, variable in enumerate(variables):
            variable.assign(arrays[f"s{i}"])

    def _restore_torch_rng(self):
        if self._pending_torch_rng:
            _set_torch_rng_states(self._pending_torch_rng)
        self._pending_torch_rng = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.iterator_per_epoch:
            self._restore_torch_rng()
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._restore_torch_rng()
        super().on_train_batch_begin(batch, logs)

    # -- saving -------------------------------------------------------------

    def on_epoch_end(self, epoch, logs=None):
        self._history = [r for r in self._history if r["epoch"] < epoch]
        self._history.append(epoch_row(epoch, logs))
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        self._save_index += 1
        stem = f"state-{self._save_index:06d}"
        weights, seeds = f"{stem}.weights.h5", f"{stem}.seeds.npz"
        save_weights_atomically(self.model,
                                os.path.join(self.backup_dir, weights))
        states = {f"s{i}": keras.ops.convert_to_numpy(v)
                  for i, v in enumerate(self._seed_states())}
        states.update(_torch_rng_states())
        with atomic_path(os.path.join(self.backup_dir, seeds)) as temporary:
            np.savez(temporary, **states)
        # The commit point: from here on the new state is the backup.
        write_json_atomically(self._metadata_path(), {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "save_index": self._save_index,
            "weights": weights,
            "seeds": seeds,
            "history": self._history,
        })
        if self.history_path is not None:
            write_history_csv(self.history_path, self._history)
        self._remove_old_states(keep={weights, seeds})

    def _remove_old_states(self, keep):
        for name in os.listdir(self.backup_dir):
            old = (_STATE_FILE.match(name) or name in (
                _LEGACY_WEIGHTS, _LEGACY_SEEDS, _LEGACY_WEIGHTS + ".bkp") or (
                name.startswith(".") and PARTIAL_MARK in name))
            if old and name not in keep:
                try:
                    os.remove(os.path.join(self.backup_dir, name))
                except OSError:
                    pass
