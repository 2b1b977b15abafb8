"""Reading the state `ExactBackupAndRestore` leaves behind."""
import os

from keras_interbert.utils.atomic import read_json


def completed_epochs(backup_dir):
    """Epochs a backed-up run has completed (0 for a fresh run).

    The recipes make every epoch a fixed number of steps and back up at each
    epoch's end, so a restarted run skips exactly `completed * steps` batches
    of its deterministic input pipeline: the batches of the epoch that was
    interrupted are trained on once more from the saved weights, none twice
    into the saved state and none lost.

    Raises:
        ValueError: the backup's metadata is damaged (naming the file and
            the folder to delete).
    """
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    try:
        metadata = read_json(path, "backup metadata")
    except ValueError as e:
        problem = str(e)
    else:
        epoch = metadata.get("epoch") if isinstance(metadata, dict) else None
        if isinstance(epoch, int) and epoch >= 0:
            return epoch
        problem = f"{path}: no epoch count in the backup metadata."
    raise ValueError(f"{problem} The backup in {backup_dir} cannot be "
                     "resumed; delete that folder to train from the start.")
