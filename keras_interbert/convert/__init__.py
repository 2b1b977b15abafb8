"""Weight converters into `.keras` files of an `InterBERTPretrainer`.

Run `python -m keras_interbert.convert --help`.
"""
from keras_interbert.convert.bert import convert_bert
from keras_interbert.convert.original import convert_original
