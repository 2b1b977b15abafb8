"""A question, its options and an image to the multiple-choice inputs."""
import keras
import tensorflow as tf

from keras_interbert.preprocessing.preprocessor_base import InterBERTPreprocessor
from keras_interbert.preprocessing.preprocessor_base import check_raw_inputs
from keras_interbert.preprocessing.preprocessor_base import checked_text
from keras_interbert.preprocessing.preprocessor_base import tokenize_together
from keras_interbert.preprocessing.region_packer import InterBERTRegionPacker


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTMultipleChoicePreprocessor(InterBERTPreprocessor):
    """Questions with `num_options` options each, and an image per question.

    Each option is packed after its question, `[CLS] question [SEP] option
    [SEP]` (truncated longest first to `sequence_length`), and every option
    row gets the question's image in the region layout of
    `InterBERTRegionPacker`: the `[B, O, ...]` inputs of
    `InterBERTMultipleChoice`, as the SavedModel's `choose` signature builds
    them.

    Raw inputs, named as the `choose` signature names them: `question`
    string `[B]`, `options` string `[B, O]`, `region_features` float
    `[B, N, D]`, `region_boxes` float `[B, N, 4]` pixels, `image_size` int
    `[B, 2]` `(height, width)`, `num_regions` int `[B]`.

    Args:
        tokenizer: an `InterBERTTokenizer`.
        num_options: O, the options per question.
        sequence_length: packed length (60).
        max_regions: region slots after the global one (99).
        truncate_after_packing: see `InterBERTTextPacker`.
    """

    raw_input_names = ("question", "options", "region_features",
                       "region_boxes", "image_size", "num_regions")

    def __init__(self, tokenizer, num_options=4, sequence_length=60,
                 max_regions=99, truncate_after_packing=False, **kwargs):
        super().__init__(tokenizer, sequence_length, truncate_after_packing,
                         **kwargs)
        self.num_options = int(num_options)
        if self.num_options < 1:
            raise ValueError("num_options must be >= 1; received "
                             f"{num_options}.")
        self.max_regions = int(max_regions)
        self.region_packer = InterBERTRegionPacker(self.max_regions)

    def _settings(self):
        return {"num_options": self.num_options,
                "sequence_length": self.sequence_length,
                "max_regions": self.max_regions,
                "truncate_after_packing": self.truncate_after_packing}

    def call(self, x, y=None, sample_weight=None):
        owner = type(self).__name__
        check_raw_inputs(x, self.raw_input_names, owner)
        question = checked_text(x, "question", owner)
        options = tf.convert_to_tensor(x["options"])
        count = self.num_options
        if options.dtype != tf.string or options.shape.rank != 2 or (
                options.shape[1] is not None and options.shape[1] != count):
            raise ValueError(
                f"{owner}: `options` must be a [batch, {count}] string "
                f"tensor; received {options.dtype.name} of shape "
                f"{options.shape}.")
        batch = tf.shape(question)[0]
        question_ids, option_ids = tokenize_together(
            self.tokenizer, [question, tf.reshape(options, [-1])])
        # Row b * O + o is question b with its option o.
        owner_rows = tf.repeat(tf.range(batch), count)
        text = self.packer(tf.gather(question_ids, owner_rows), option_ids)
        out = {k: tf.reshape(v, [-1, count, self.sequence_length])
               for k, v in text.items()}
        regions = self.region_packer(
            tf.convert_to_tensor(x["region_features"]),
            tf.convert_to_tensor(x["region_boxes"]),
            tf.convert_to_tensor(x["image_size"]),
            tf.convert_to_tensor(x["num_regions"]))
        for name, value in regions.items():
            out[name] = tf.repeat(value[:, None], count, axis=1)
        return keras.utils.pack_x_y_sample_weight(out, y, sample_weight)
