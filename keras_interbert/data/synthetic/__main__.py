"""`python -m keras_interbert.data.synthetic`: write the data set."""
import sys

from keras_interbert.data.synthetic.writer import main
from keras_interbert.utils.cli import run_main

sys.exit(run_main(main))
