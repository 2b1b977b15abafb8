"""keras-interbert: InterBERT as a Keras 3 multi-backend implementation."""
from keras_interbert.layers import ImageTextMatchingHead
from keras_interbert.layers import InterBERTTransformerLayer
from keras_interbert.layers import MaskedRegionHead
from keras_interbert.layers import MaskedSegmentHead
from keras_interbert.models import InterBERTBackbone
from keras_interbert.models import InterBERTPretrainer
from keras_interbert.models.pretraining_objective import PretrainingObjective
from keras_interbert import optimizers
from keras_interbert.presets import list_presets
from keras_interbert.presets import preset_vocabulary

__version__ = "0.1.0"
