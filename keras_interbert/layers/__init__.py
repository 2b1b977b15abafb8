from keras_interbert.layers.image_text_matching_head import ImageTextMatchingHead
from keras_interbert.layers.interbert_transformer_layer import (
    InterBERTTransformerLayer,
)
from keras_interbert.layers.masked_region_head import MaskedRegionHead
from keras_interbert.layers.masked_segment_head import MaskedSegmentHead
