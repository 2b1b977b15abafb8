"""Preprocessing layers: tokenizer, text and region packers, task preprocessors (TF graph ops)."""
from keras_interbert.preprocessing.interbert_tokenizer import InterBERTTokenizer
from keras_interbert.preprocessing.text_packer import InterBERTTextPacker
from keras_interbert.preprocessing.region_packer import InterBERTRegionPacker
from keras_interbert.preprocessing.retriever_preprocessor import (
    InterBERTRetrieverPreprocessor)
from keras_interbert.preprocessing.preprocessor_base import InterBERTPreprocessor
from keras_interbert.preprocessing.multiple_choice_preprocessor import (
    InterBERTMultipleChoicePreprocessor)
from keras_interbert.preprocessing.text_classifier_preprocessor import (
    InterBERTTextClassifierPreprocessor)
from keras_interbert.preprocessing.pretrainer_preprocessor import (
    InterBERTPretrainerPreprocessor)
