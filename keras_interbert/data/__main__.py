"""`python -m keras_interbert.data` runs the converter command line."""
import sys

from keras_interbert.data.convert import main
from keras_interbert.utils.cli import run_main

sys.exit(run_main(main))
