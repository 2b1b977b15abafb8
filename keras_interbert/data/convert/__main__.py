"""`python -m keras_interbert.data.convert`: the converter command line."""
import sys

from keras_interbert.data.convert.cli import main
from keras_interbert.utils.cli import run_main

sys.exit(run_main(main))
