"""Data pipeline: region features on disk, captions, converters."""
from keras_interbert.data.errors import ErrorReport
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.feature_source import feature_source_of
from keras_interbert.data.region_features import RegionFeatureWriter
from keras_interbert.data.region_features import check_captions_against_images
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.region_features import recompute_global_region
from keras_interbert.data.region_features import region_dataset
from keras_interbert.data.region_features import region_image_ids
from keras_interbert.data.region_features import scan_region_files
from keras_interbert.data.region_features import to_backbone_regions
from keras_interbert.data.region_features import write_captions
