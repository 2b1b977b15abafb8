from keras_interbert.models.interbert_backbone import InterBERTBackbone
from keras_interbert.models.interbert_multiple_choice import (
    InterBERTMultipleChoice,
)
from keras_interbert.models.interbert_pretrainer import InterBERTPretrainer
from keras_interbert.models.interbert_retriever import InterBERTRetriever
from keras_interbert.models.interbert_text_classifier import (
    InterBERTTextClassifier,
)
from keras_interbert.models.loading import ModelLoadError
from keras_interbert.models.loading import load_interbert
