"""Text side of the data pipeline: tokenizer and packer (TF graph ops)."""
from keras_interbert.preprocessing.interbert_tokenizer import InterBERTTokenizer
from keras_interbert.preprocessing.text_packer import InterBERTTextPacker
