"""Region features from raw images with Keras 3 parts (see docs/vision.md)."""
from keras_interbert.vision.detector_boxes import DetectorBoxes
from keras_interbert.vision.grid_boxes import grid_boxes
from keras_interbert.vision.grid_boxes import num_grid_boxes
from keras_interbert.vision.image_backbones import load_image_backbone
from keras_interbert.vision.image_backbones import resnet_backbone
from keras_interbert.vision.region_extraction import extract_regions
from keras_interbert.vision.region_extraction import prepare_images
from keras_interbert.vision.region_feature_extractor import (
    RegionFeatureExtractor,
)
from keras_interbert.vision.region_feature_extractor import feature_fingerprint
from keras_interbert.vision.roi_align import RoIAlign
from keras_interbert.vision.roi_align import roi_align
