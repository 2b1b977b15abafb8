"""Shared base of the task preprocessors: checks, packer, presets."""
import json
import os

import keras_hub
import tensorflow as tf

from keras_interbert import presets
from keras_interbert.preprocessing.interbert_tokenizer import InterBERTTokenizer
from keras_interbert.preprocessing.text_packer import InterBERTTextPacker

PREPROCESSOR_CONFIG = "preprocessor.json"
VOCABULARY_FILE = "vocabulary.txt"


def check_raw_inputs(x, names, owner, optional=()):
    """Refuses anything but a dict holding exactly `names` (and any of
    `optional`), naming the key."""
    if not isinstance(x, dict):
        raise ValueError(f"{owner} takes a dict of raw inputs {list(names)}; "
                         f"received {type(x).__name__}.")
    missing = [n for n in names if n not in x]
    extra = sorted(k for k in x if k not in names and k not in optional)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if extra:
            problems.append(f"unexpected {extra}")
        allowed = (f"; optional {list(optional)}" if optional else "")
        raise ValueError(f"{owner}: raw inputs {'; '.join(problems)}; "
                         f"expected exactly {list(names)}{allowed}.")


def checked_text(x, name, owner):
    """`x[name]` as a `[B]` string tensor, or an error naming the input."""
    text = tf.convert_to_tensor(x[name])
    if text.dtype != tf.string:
        raise ValueError(f"{owner}: `{name}` must hold strings; received "
                         f"dtype {text.dtype.name}.")
    if text.shape.rank != 1:
        raise ValueError(f"{owner}: `{name}` must be a batch [B] of strings; "
                         f"received shape {text.shape}.")
    return text


def tokenize_together(tokenizer, columns):
    """Word pieces of several `[B]` string columns in one tokenizer call
    (each call builds a WordPiece model in the graph, which is slow)."""
    ids = tokenizer(tf.concat(columns, axis=0))
    pieces, start = [], tf.constant(0, tf.int64)
    for column in columns:
        end = start + tf.shape(column, out_type=tf.int64)[0]
        pieces.append(ids[start:end])
        start = end
    return pieces


def checked_feature_source(source, owner):
    """`source` (a preprocessor's `region_feature_source`) as plain JSON
    values, or an error naming what is wrong.

    `None` (not known) or a dict such as `feature_source_of(data_dir)`
    gives (`keras_interbert.data.feature_source`).
    """
    if source is None:
        return None
    if not isinstance(source, dict):
        raise ValueError(
            f"{owner}: `region_feature_source` must be a dict (see "
            "keras_interbert.data.feature_source_of) or None; received "
            f"{type(source).__name__}.")
    try:
        plain = json.loads(json.dumps(source, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{owner}: `region_feature_source` must hold JSON "
                         f"values only ({e}).") from None
    if "class_name" in plain:  # Keras would read it as a serialized object
        raise ValueError(f"{owner}: `region_feature_source` may not have a "
                         "'class_name' key.")
    return plain


class InterBERTPreprocessor(keras_hub.models.Preprocessor):
    """Base of the task preprocessors (keras-hub's `Preprocessor` contract).

    Subclasses set `raw_input_names`, keep their settings in `_settings()`
    (constructor arguments besides the tokenizer) and implement `call(x,
    y=None, sample_weight=None)`. This base holds the tokenizer and the
    text packer, and gives `from_preset` / `save_to_preset`.

    Every preprocessor also carries `region_feature_source`: what made the
    region features the model was trained on (a dict, as
    `keras_interbert.data.feature_source_of(data_dir)` gives it, or `None`
    when not known). It changes nothing in `call`; it travels in the config
    so that the exporter can refuse an image extractor that would give the
    served model other features (docs/serving.md, docs/your-data.md).
    """

    tokenizer_cls = InterBERTTokenizer
    raw_input_names = ()

    def __init__(self, tokenizer, sequence_length, truncate_after_packing,
                 region_feature_source=None, **kwargs):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if not isinstance(tokenizer, InterBERTTokenizer):
            raise ValueError("`tokenizer` must be an InterBERTTokenizer; "
                             f"received {type(tokenizer).__name__}.")
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.truncate_after_packing = bool(truncate_after_packing)
        self.region_feature_source = checked_feature_source(
            region_feature_source, type(self).__name__)
        # The packer reads the special ids from the vocabulary, which a
        # tokenizer loaded from a `.keras` file receives only after
        # construction (as an asset): it is made on first use.
        self._packer = None
        self.built = True

    @property
    def packer(self):
        """The `InterBERTTextPacker` of `[CLS] a [SEP] (b [SEP])`."""
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

    def _settings(self):
        raise NotImplementedError

    def _all_settings(self):
        return {**self._settings(),
                "region_feature_source": self.region_feature_source}

    def get_config(self):
        config = super().get_config()
        config.update(self._all_settings())
        return config

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
            "vocabulary": VOCABULARY_FILE, **self._all_settings()})

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
