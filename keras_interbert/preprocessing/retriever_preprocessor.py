"""Raw (caption, detector output) pairs to the backbone's six inputs."""
import os

import keras
import keras_hub
import tensorflow as tf

from keras_interbert import presets
from keras_interbert.preprocessing.interbert_tokenizer import InterBERTTokenizer
from keras_interbert.preprocessing.region_packer import InterBERTRegionPacker
from keras_interbert.preprocessing.text_packer import InterBERTTextPacker

# What a client sends, named as the SavedModel's `score` signature names it.
RAW_INPUT_NAMES = ("text", "region_features", "region_boxes", "image_size",
                   "num_regions")
PREPROCESSOR_CONFIG = "preprocessor.json"
VOCABULARY_FILE = "vocabulary.txt"


def check_raw_inputs(x, names, owner):
    """Refuses anything but a dict holding exactly `names`, naming the key."""
    if not isinstance(x, dict):
        raise ValueError(f"{owner} takes a dict of raw inputs {list(names)}; "
                         f"received {type(x).__name__}.")
    missing = [n for n in names if n not in x]
    extra = sorted(k for k in x if k not in names)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if extra:
            problems.append(f"unexpected {extra}")
        raise ValueError(f"{owner}: raw inputs {'; '.join(problems)}; "
                         f"expected exactly {list(names)}.")


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTRetrieverPreprocessor(keras_hub.models.Preprocessor):
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

    tokenizer_cls = InterBERTTokenizer
    raw_input_names = RAW_INPUT_NAMES

    def __init__(self, tokenizer, sequence_length=30, max_regions=101,
                 truncate_after_packing=True, global_feature="all_regions",
                 **kwargs):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if not isinstance(tokenizer, InterBERTTokenizer):
            raise ValueError("`tokenizer` must be an InterBERTTokenizer; "
                             f"received {type(tokenizer).__name__}.")
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.max_regions = int(max_regions)
        self.truncate_after_packing = bool(truncate_after_packing)
        self.global_feature = global_feature
        # The packer reads the special ids from the vocabulary, which a
        # tokenizer loaded from a `.keras` file receives only after
        # construction (as an asset): it is made on first use.
        self._packer = None
        self.region_packer = InterBERTRegionPacker(
            self.max_regions, global_feature=global_feature)
        self.built = True

    @property
    def packer(self):
        """The `InterBERTTextPacker` of `[CLS] caption [SEP]`."""
        if self._packer is None:
            tokenizer = self.tokenizer
            self._packer = InterBERTTextPacker(
                self.sequence_length, cls_id=tokenizer.cls_id,
                sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id,
                truncate_after_packing=self.truncate_after_packing)
        return self._packer

    @property
    def vocabulary_size(self):
        return self.tokenizer.vocabulary_size()

    def call(self, x, y=None, sample_weight=None):
        check_raw_inputs(x, self.raw_input_names, type(self).__name__)
        text = tf.convert_to_tensor(x["text"])
        if text.dtype != tf.string:
            raise ValueError(f"{type(self).__name__}: `text` must hold "
                             f"strings; received dtype {text.dtype.name}.")
        if text.shape.rank == 0:
            raise ValueError(f"{type(self).__name__}: `text` must be a batch "
                             "[B] of strings; received a scalar.")
        packed = self.packer(self.tokenizer(text))
        regions = self.region_packer(
            tf.convert_to_tensor(x["region_features"]),
            tf.convert_to_tensor(x["region_boxes"]),
            tf.convert_to_tensor(x["image_size"]),
            tf.convert_to_tensor(x["num_regions"]))
        return keras.utils.pack_x_y_sample_weight(
            {**packed, **regions}, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(self._settings())
        return config

    def _settings(self):
        return {"sequence_length": self.sequence_length,
                "max_regions": self.max_regions,
                "truncate_after_packing": self.truncate_after_packing,
                "global_feature": self.global_feature}

    def save_to_preset(self, preset_dir):
        """Writes `preprocessor.json` and the vocabulary into `preset_dir`.

        Each file appears complete or not at all; `from_preset(preset_dir)`
        reads them back.
        """
        from keras_interbert.utils.atomic import write_json_atomically
        from keras_interbert.utils.atomic import write_text_atomically

        os.makedirs(preset_dir, exist_ok=True)
        write_text_atomically(os.path.join(preset_dir, VOCABULARY_FILE),
                              "".join(t + "\n" for t in
                                      self.tokenizer.get_vocabulary()))
        write_json_atomically(os.path.join(preset_dir, PREPROCESSOR_CONFIG), {
            "class_name": type(self).__name__,
            "vocabulary": VOCABULARY_FILE, **self._settings()})

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A preprocessor from a built-in preset name or a saved directory.

        A built-in name (`presets.list_presets()`) gives its vocabulary with
        this class's defaults; a directory written by `save_to_preset` gives
        the saved settings and vocabulary. `overrides` replace any
        constructor argument (`sequence_length=40`, `max_regions=36`,
        `tokenizer=...`).
        """
        tokenizer = overrides.pop("tokenizer", None)
        if isinstance(preset, str) and os.path.isdir(preset):
            path = os.path.join(preset, PREPROCESSOR_CONFIG)
            if not os.path.isfile(path):
                raise ValueError(f"{preset!r} holds no {PREPROCESSOR_CONFIG}: "
                                 "not a directory written by save_to_preset.")
            import json

            with open(path, encoding="utf-8") as f:
                try:
                    config = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: not valid JSON ({e}).") from None
            saved = config.pop("class_name", None)
            if saved != cls.__name__:
                raise ValueError(f"{path} describes a {saved}, not a "
                                 f"{cls.__name__}.")
            vocabulary = os.path.join(preset, config.pop("vocabulary"))
            tokenizer = tokenizer or InterBERTTokenizer(vocabulary=vocabulary)
            config.update(overrides)
            return cls(tokenizer=tokenizer, **config)
        if preset not in presets.PRESETS:
            raise ValueError(
                f"Unknown preset {preset!r}: expected one of "
                f"{presets.list_presets()} or a directory written by "
                "save_to_preset.")
        tokenizer = tokenizer or InterBERTTokenizer.from_preset(preset)
        return cls(tokenizer=tokenizer, **overrides)
