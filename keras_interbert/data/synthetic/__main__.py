"""`python -m keras_interbert.data.synthetic`: write the data set."""
from keras_interbert.data.synthetic.writer import main

main()
