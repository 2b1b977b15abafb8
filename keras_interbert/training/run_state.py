"""Reading the state `keras.callbacks.BackupAndRestore` leaves behind."""
import json
import os


def completed_epochs(backup_dir):
    """Epochs a backed-up run has completed (0 for a fresh run).

    The recipes make every epoch a fixed number of steps and back up at each
    epoch's end, so a restarted run skips exactly `completed * steps` batches
    of its deterministic input pipeline: the batches of the epoch that was
    interrupted are trained on once more from the saved weights, none twice
    into the saved state and none lost.
    """
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])
