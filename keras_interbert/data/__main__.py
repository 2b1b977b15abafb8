"""`python -m keras_interbert.data` runs the converter command line."""
import sys

from keras_interbert.data.convert import main

sys.exit(main())
