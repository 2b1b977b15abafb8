"""keras-interbert: InterBERT as a Keras 3 multi-backend implementation."""
from keras_interbert.utils.quiet import quiet_startup

quiet_startup()  # before TensorFlow loads (keras_interbert/utils/quiet.py)

from keras_interbert.layers import ImageTextMatchingHead
from keras_interbert.layers import InterBERTTransformerLayer
from keras_interbert.layers import MaskedRegionHead
from keras_interbert.layers import MaskedSegmentHead
from keras_interbert.models import InterBERTBackbone
from keras_interbert.models import InterBERTMultipleChoice
from keras_interbert.models import InterBERTPretrainer
from keras_interbert.models import InterBERTRetriever
from keras_interbert.models import InterBERTTextClassifier
from keras_interbert.models import ModelLoadError
from keras_interbert.models import load_interbert
from keras_interbert.models.pretraining_objective import PretrainingObjective
from keras_interbert import evaluation
# Registers the tokenizer and the preprocessors with Keras' serialization:
# a `.keras` file written by a recipe carries its preprocessor, and loading
# it (`load_interbert`, `keras.saving.load_model`) in a fresh process needs
# their classes registered.
from keras_interbert import preprocessing
from keras_interbert import optimizers
from keras_interbert import training
from keras_interbert.presets import list_presets
from keras_interbert.presets import preset_vocabulary

__version__ = "0.1.0"
