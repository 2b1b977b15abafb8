"""Wiring shared by the recipes: strategies, resumable runs, plots."""
from keras_interbert.training.exact_backup_and_restore import (
    ExactBackupAndRestore,
)
from keras_interbert.training.history_plot import plot_history
from keras_interbert.training.run_state import completed_epochs
from keras_interbert.training.strategies import make_strategy
from keras_interbert.training.finetuning import WarmupConstantStepDecay
from keras_interbert.training.finetuning import finetuning_optimizer
from keras_interbert.training.run_outputs import save_model_atomically
from keras_interbert.training.run_outputs import AtomicModelCheckpoint
from keras_interbert.training.run_outputs import HistoryCSVLogger
from keras_interbert.training.run_outputs import read_history_csv
from keras_interbert.training.resumable_fit import CrashAfterSteps
from keras_interbert.training.resumable_fit import ResumableFit
from keras_interbert.training.resumable_tensorboard import (
    ResumableTensorBoard,
)
