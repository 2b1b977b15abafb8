"""Region features on disk: the canonical TFRecord format, its writer and reader.

One `tf.train.Example` per image, in shards named `{split}-{index:05d}.tfrecord`
with a `manifest.json` per directory; captions in JSON Lines. The reader turns
a record into the backbone's region inputs (`to_backbone_regions`) with graph
ops, so it runs inside `tf.data.Dataset.map`. See `docs/data.md`.

One module per responsibility, every public name importable from here:

| module | what |
|---|---|
| `record_format` | the record, its checks, shard names, the manifest |
| `writer` | `RegionFeatureWriter` |
| `captions` | captions in JSON Lines |
| `reader` | which shards, their widths, `region_dataset`, `scan_region_files` |
| `batch_parser` | `parse_region_batch` (a batch of records at once) |
| `model_inputs` | `to_backbone_regions` and its helpers |

This package is part of the data pipeline and uses TensorFlow directly; the
model itself only sees the arrays it produces.
"""
from keras_interbert.data.region_features.batch_parser import parse_region_batch
from keras_interbert.data.region_features.captions import check_captions_against_images
from keras_interbert.data.region_features.captions import read_captions
from keras_interbert.data.region_features.captions import read_json_lines
from keras_interbert.data.region_features.captions import write_captions
from keras_interbert.data.region_features.model_inputs import has_regions
from keras_interbert.data.region_features.model_inputs import recompute_global_region
from keras_interbert.data.region_features.model_inputs import to_backbone_regions
from keras_interbert.data.region_features.reader import region_dataset
from keras_interbert.data.region_features.reader import region_dims
from keras_interbert.data.region_features.reader import region_files
from keras_interbert.data.region_features.reader import region_image_ids
from keras_interbert.data.region_features.reader import region_object_classes
from keras_interbert.data.region_features.reader import scan_region_files
from keras_interbert.data.region_features.record_format import FLOAT16_MAX
from keras_interbert.data.region_features.record_format import FORMAT_NAME
from keras_interbert.data.region_features.record_format import FORMAT_VERSION
from keras_interbert.data.region_features.record_format import MANIFEST_NAME
from keras_interbert.data.region_features.record_format import manifest_shard_names
from keras_interbert.data.region_features.record_format import read_manifest
from keras_interbert.data.region_features.record_format import serialize_region_example
from keras_interbert.data.region_features.record_format import shard_name
from keras_interbert.data.region_features.record_format import validate_object_classes
from keras_interbert.data.region_features.record_format import validate_region_record
from keras_interbert.data.region_features.writer import RegionFeatureWriter
# Importable from here before the split (the layout's own module holds it).
from keras_interbert.preprocessing.region_packer import region_locations  # noqa: F401
