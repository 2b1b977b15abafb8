"""Raw text (or text pairs) to the backbone's six inputs, no image."""
import keras
import tensorflow as tf

from keras_interbert.preprocessing.preprocessor_base import InterBERTPreprocessor
from keras_interbert.preprocessing.preprocessor_base import check_raw_inputs
from keras_interbert.preprocessing.preprocessor_base import checked_text
from keras_interbert.preprocessing.preprocessor_base import tokenize_together
from keras_interbert.preprocessing.region_packer import empty_image_slots


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTTextClassifierPreprocessor(InterBERTPreprocessor):
    """Sentences (or sentence pairs) in, the text classifier's inputs out.

    The text is packed as BERT packs it, `[CLS] text [SEP]` or `[CLS] text
    [SEP] text_pair [SEP]` (truncated longest first to `sequence_length`),
    and the image side is `num_region_slots` zero slots with mask 0, so the
    text path is the BERT encoder alone (docs/architecture.md §4.3) — the
    layout `keras_interbert.data.text_classification_dataset` gives.

    Raw inputs, named as the SavedModel's `classify_text` signature names
    them: `text` string `[B]`, and `text_pair` string `[B]` when
    `text_pairs=True`.

    Args:
        tokenizer: an `InterBERTTokenizer`.
        image_feature_dim: D of the backbone's region features (the zero
            slots' width).
        sequence_length: packed length (128).
        text_pairs: take `text` and `text_pair`.
        num_region_slots: zero image slots (1).
        truncate_after_packing: see `InterBERTTextPacker` (off: the text is
            truncated, never the closing `[SEP]`).
    """

    def __init__(self, tokenizer, image_feature_dim, sequence_length=128,
                 text_pairs=False, num_region_slots=1,
                 truncate_after_packing=False, **kwargs):
        super().__init__(tokenizer, sequence_length, truncate_after_packing,
                         **kwargs)
        self.image_feature_dim = int(image_feature_dim)
        self.text_pairs = bool(text_pairs)
        self.num_region_slots = int(num_region_slots)
        if self.image_feature_dim < 1 or self.num_region_slots < 1:
            raise ValueError("image_feature_dim and num_region_slots must be "
                             f">= 1; received {image_feature_dim}, "
                             f"{num_region_slots}.")

    @property
    def raw_input_names(self):
        return ("text", "text_pair") if self.text_pairs else ("text",)

    def _settings(self):
        return {"image_feature_dim": self.image_feature_dim,
                "sequence_length": self.sequence_length,
                "text_pairs": self.text_pairs,
                "num_region_slots": self.num_region_slots,
                "truncate_after_packing": self.truncate_after_packing}

    def call(self, x, y=None, sample_weight=None):
        owner = type(self).__name__
        check_raw_inputs(x, self.raw_input_names, owner)
        texts = [checked_text(x, name, owner) for name in self.raw_input_names]
        out = dict(self.packer(*tokenize_together(self.tokenizer, texts)))
        out.update(empty_image_slots(tf.shape(texts[0])[0],
                                     self.num_region_slots,
                                     self.image_feature_dim))
        return keras.utils.pack_x_y_sample_weight(out, y, sample_weight)
