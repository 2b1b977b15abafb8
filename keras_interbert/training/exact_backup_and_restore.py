import os

import keras
import numpy as np


class ExactBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that also restores the random-number state.

    Keras saves weights and optimizer state, but not the state of the
    models' `SeedGenerator`s (dropout): a restarted run would draw the same
    dropout masks again from where the first attempt started. This callback
    saves those states next to the backup and restores them, so a resumed
    run continues exactly as if it had never stopped.

    Args: as `keras.callbacks.BackupAndRestore`.
    """

    def _seed_states(self):
        return [v for v in self.model.variables
                if v.path.endswith("seed_generator_state")]

    def _seed_path(self):
        return os.path.join(self.backup_dir, "seed_states.npz")

    def _save_model(self):
        super()._save_model()
        states = {f"s{i}": keras.ops.convert_to_numpy(v)
                  for i, v in enumerate(self._seed_states())}
        partial = self._seed_path() + ".partial.npz"
        np.savez(partial, **states)
        os.replace(partial, self._seed_path())

    def _load_model(self):
        super()._load_model()
        if not os.path.exists(self._seed_path()):
            return
        with np.load(self._seed_path()) as saved:
            variables = self._seed_states()
            if len(saved.files) != len(variables):
                raise ValueError(
                    f"{self._seed_path()}: {len(saved.files)} random states "
                    f"saved, the model has {len(variables)}; the backup is "
                    "from a different model.")
            for i, variable in enumerate(variables):
                variable.assign(saved[f"s{i}"])
