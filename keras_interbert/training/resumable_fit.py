"""A `fit` that a killed recipe continues where it stopped (the finetuning
recipes; docs/reliability.md).

The pieces, in the order a recipe uses them:

    resume = ResumableFit(args.out, steps_per_epoch=steps,
                          crash_after_steps=args.crash_after_steps)
    train = resume.skip(train)           # the batches earlier attempts used
    resume.build(model, train)           # variables exist before restoring
    model.fit(train, epochs=..., steps_per_epoch=steps,
              callbacks=resume.callbacks(after=[...]), shuffle=False)
    history = resume.history()           # every epoch of the run, once
    ...write the outputs, then run.finish()...
    resume.finished()                    # the backup is no longer needed

The backup (`ExactBackupAndRestore` in `<out>/backup`) holds the weights,
the optimizer's variables (its iteration count, so the learning-rate
schedule continues where it was, and Adam's moments), the dropout random
states and the per-epoch logs; it is written at each epoch's end, so a
re-run repeats at most the epoch that was interrupted. The input pipeline
must be deterministic (the recipes' are: seeded orders, stateless random
choices) and `steps_per_epoch` fixed, so that skipping the batches of the
completed epochs gives exactly the batches an uninterrupted run would see
next.
"""
import os
import shutil
import sys

import keras

from keras_interbert.training.exact_backup_and_restore import (
    ExactBackupAndRestore)
from keras_interbert.training.resumable_tensorboard import (
    ResumableTensorBoard)
from keras_interbert.training.run_outputs import read_history_csv
from keras_interbert.training.run_state import completed_epochs


class CrashAfterSteps(keras.callbacks.Callback):
    """Testing aid: ends the process abruptly, as a kill would, after
    `steps` training batches of this attempt (exit status 3; no callback,
    `finally` block or buffered writer runs)."""

    EXIT_STATUS = 3

    def __init__(self, steps):
        super().__init__()
        if int(steps) < 1:
            raise ValueError(f"--crash-after-steps must be >= 1; received "
                             f"{steps}.")
        self.steps = int(steps)
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.steps:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.EXIT_STATUS)


class ResumableFit:
    """Resumable training in a run folder (see the module's docstring).

    Args:
        out: the run folder (claimed with `claim_run_directory`).
        steps_per_epoch: batches per epoch (fixed for the whole run).
        crash_after_steps: optional testing aid (`CrashAfterSteps`).
        tensorboard_update_freq: `update_freq` of the TensorBoard logs in
            `<out>/tensorboard`, or `None` for no TensorBoard logs.

    Attributes:
        initial_epoch: epochs completed by earlier attempts (0: a new run).
        backup_dir, history_path, tensorboard_dir: the paths it uses.
    """

    def __init__(self, out, steps_per_epoch, crash_after_steps=None,
                 tensorboard_update_freq=10):
        self.out = os.fspath(out)
        self.steps_per_epoch = int(steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError("steps per epoch must be >= 1; received "
                             f"{steps_per_epoch}.")
        self.crash_after_steps = crash_after_steps
        self.tensorboard_update_freq = tensorboard_update_freq
        self.backup_dir = os.path.join(self.out, "backup")
        self.history_path = os.path.join(self.out, "history.csv")
        self.tensorboard_dir = os.path.join(self.out, "tensorboard")
        self.initial_epoch = completed_epochs(self.backup_dir)
        if self.initial_epoch:
            print(f"Resuming after epoch {self.initial_epoch} (step "
                  f"{self.initial_epoch * self.steps_per_epoch}).",
                  flush=True)

    def skip(self, dataset):
        """`dataset` without the batches that earlier attempts trained on."""
        return dataset.skip(self.initial_epoch * self.steps_per_epoch)

    def build(self, model, dataset):
        """Calls `model` on the first batch of `dataset`, so that all its
        variables exist before the backup is loaded into them."""
        x = next(iter(dataset.take(1)))[0]
        model(keras.tree.map_structure(
            lambda v: keras.ops.convert_to_tensor(v.numpy()), x))

    def callbacks(self, before=(), after=()):
        """The callbacks for `fit`.

        Args:
            before: callbacks that must act on an epoch before it is backed
                up (e.g. `AtomicModelCheckpoint`: an epoch then counts as
                done only once its checkpoint exists).
            after: callbacks that must not act before the backup, e.g.
                `keras.callbacks.SwapEMAWeights(swap_on_epoch=True)`, which
                puts the averaged weights into the model at an epoch's end:
                the backup must hold the trained ones.
        """
        callbacks = list(before)
        if self.tensorboard_update_freq is not None:
            # Logged and flushed before the backup commits the epoch.
            callbacks.append(ResumableTensorBoard(
                self.tensorboard_dir, update_freq=self.tensorboard_update_freq))
        callbacks.append(ExactBackupAndRestore(
            self.backup_dir, save_freq="epoch", delete_checkpoint=False,
            history_path=self.history_path))
        callbacks += list(after)
        if self.crash_after_steps:
            callbacks.append(CrashAfterSteps(self.crash_after_steps))
        return callbacks

    def history(self):
        """`{metric: [value per epoch]}` of the whole run (from history.csv,
        which the backup rewrites: one row per completed epoch)."""
        history = read_history_csv(self.history_path)
        history.pop("epoch", None)
        return history

    def finished(self):
        """Deletes the backup; call after the run is recorded as finished
        (until then a kill resumes from the trained state)."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)
