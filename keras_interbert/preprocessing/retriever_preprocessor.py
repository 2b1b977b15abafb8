"""Raw (caption, detector output) pairs to the backbone's six inputs."""
import keras
import tensorflow as tf

from keras_interbert.preprocessing.preprocessor_base import InterBERTPreprocessor
from keras_interbert.preprocessing.preprocessor_base import check_raw_inputs
from keras_interbert.preprocessing.preprocessor_base import checked_text
from keras_interbert.preprocessing.region_packer import InterBERTRegionPacker

# What a client sends, named as the SavedModel's `score` signature names it.
RAW_INPUT_NAMES = ("text", "region_features", "region_boxes", "image_size",
                   "num_regions")


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTRetrieverPreprocessor(InterBERTPreprocessor):
    """Captions and detector outputs in, the retrieval model's inputs out.

    keras-hub's preprocessor contract: `call(x, y=None, sample_weight=None)`
    returns `(x, y, sample_weight)` packed as `keras.utils.
    pack_x_y_sample_weight` does, so the layer maps directly over a
    `tf.data.Dataset` of raw examples, and a task holding it takes raw
    inputs in `fit`, `evaluate` and `predict`. Everything runs as TensorFlow
    ops under any Keras backend; the same layers build the SavedModel's
    `score` signature.

    Raw inputs (batched), named as the `score` signature names them:
    `text` string `[B]`, `region_features` float `[B, N, D]`,
    `region_boxes` float `[B, N, 4]` pixel `x1, y1, x2, y2`, `image_size`
    int `[B, 2]` `(height, width)`, `num_regions` int `[B]`.

    Args:
        tokenizer: an `InterBERTTokenizer`.
        sequence_length: packed caption length, `[CLS] caption [SEP]`
            (30, the original retrieval finetuning).
        max_regions: region slots after the global one (101).
        truncate_after_packing: cut the packed sequence (the original
            retrieval loader: an over-long caption loses its `[SEP]`) rather
            than the caption.
        global_feature: see `InterBERTRegionPacker`.

    Examples:
    ```python
    preprocessor = InterBERTRetrieverPreprocessor.from_preset(
        "interbert_base_en", max_regions=36)
    x = preprocessor({"text": ["a dog on a beach"], "region_features": f,
                      "region_boxes": b, "image_size": [[480, 640]],
                      "num_regions": [12]})
    ```
    """

    raw_input_names = RAW_INPUT_NAMES

    def __init__(self, tokenizer, sequence_length=30, max_regions=101,
                 truncate_after_packing=True, global_feature="all_regions",
                 **kwargs):
        super().__init__(tokenizer, sequence_length, truncate_after_packing,
                         **kwargs)
        self.max_regions = int(max_regions)
        self.global_feature = global_feature
        self.region_packer = InterBERTRegionPacker(
            self.max_regions, global_feature=global_feature)

    def _settings(self):
        return {"sequence_length": self.sequence_length,
                "max_regions": self.max_regions,
                "truncate_after_packing": self.truncate_after_packing,
                "global_feature": self.global_feature}

    def call(self, x, y=None, sample_weight=None):
        owner = type(self).__name__
        check_raw_inputs(x, self.raw_input_names, owner)
        packed = self.packer(self.tokenizer(checked_text(x, "text", owner)))
        regions = self.region_packer(
            tf.convert_to_tensor(x["region_features"]),
            tf.convert_to_tensor(x["region_boxes"]),
            tf.convert_to_tensor(x["image_size"]),
            tf.convert_to_tensor(x["num_regions"]))
        return keras.utils.pack_x_y_sample_weight(
            {**packed, **regions}, y, sample_weight)
