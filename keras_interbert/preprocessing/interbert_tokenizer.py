import os
import re

import keras
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops.regex_split_ops import gen_regex_split_ops

from keras_interbert import presets

VOCABULARY_ASSET = "vocabulary.txt"

# Hugging Face's BERT normalizer (the Rust `BertNormalizer` behind
# `transformers.BertTokenizer`) drops control and format characters
# (categories Cc, Cf, Co, plus U+0000 and U+FFFD) but keeps tab, newline and
# carriage return, which count as whitespace. Dropping, not splitting, matters:
# "soft\u00adhyphen" is one word there.
_DROPPED_CHARACTERS = (
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\p{Cf}\p{Co}\x{FFFD}]"
)
# Rust's `char::is_whitespace` once the control characters are gone.
_WHITESPACE = r"[\t\n\r\p{Zs}\x{2028}\x{2029}]"
# The CJK Unified Ideograph blocks of BERT's `_is_chinese_char`; each such
# character becomes a word of its own.
_CJK_CHARACTERS = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}"
    r"\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}"
    r"\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
# BERT's `_is_punctuation`: every non-alphanumeric printable ASCII character
# ("$", "^", "`" are symbols in Unicode, punctuation here) and Unicode P*.
_PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}]"
# Hugging Face's WordPiece maps a word of more than 100 characters (not bytes)
# to the unknown token.
_MAX_CHARACTERS_PER_WORD = 100
_REQUIRED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _ragged(values, row_splits):
    """A `tf.RaggedTensor` from splits this module computed itself, so
    without the validation asserts `from_row_splits` adds by default.

    Each validated construction puts conditional assert ops in the graph,
    and a `tf.data` pipeline instantiates every one of them again each
    time an iterator over it is created (every `fit`, `evaluate` and
    `predict` call, every epoch of a finite data set): with them, creating
    an iterator over the tokenizer alone cost about 0.27 CPU s, without
    them about 0.02 (docs/benchmarks.md, issue 17, eleventh pass).
    """
    return tf.RaggedTensor.from_row_splits(values, row_splits, validate=False)


def _regex_split(text, delimiters, kept):
    """`tf_text.regex_split` of a `[N]` string tensor into `[N, None]` pieces,
    built without validation asserts (`_ragged`). As there, `delimiters`
    split the text and those that also match `kept` stay as pieces."""
    # Through a reshape, as `tf_text.regex_split` does: the op's shape
    # function wants rank 1, and grappler would otherwise carry that rank
    # back through an `identity` onto the input itself, folding an exported
    # signature's rank check on it (`export.serving_inputs`) to "passed".
    pieces, _, _, row_splits = gen_regex_split_ops.regex_split_with_offsets(
        tf.reshape(text, [-1]), f"({delimiters})".encode(),
        f"({kept})".encode())
    return _ragged(pieces, row_splits)


def _read_vocabulary(vocabulary):
    """Resolves a preset name, a file path or a list into a token list."""
    if isinstance(vocabulary, (list, tuple)):
        return list(vocabulary), None
    if not isinstance(vocabulary, str):
        raise ValueError(
            "`vocabulary` must be a preset name, the path of a vocabulary "
            "file (one word piece a line) or a list of word pieces. "
            f"Received: vocabulary={vocabulary!r}"
        )
    preset = None
    path = vocabulary
    if vocabulary in presets.PRESETS:
        preset = vocabulary
        path = presets.preset_vocabulary(vocabulary)
    elif not os.path.isfile(vocabulary):
        raise ValueError(
            f"`vocabulary='{vocabulary}'` is neither a preset name "
            f"({presets.list_presets()}) nor an existing vocabulary file."
        )
    with open(path, "r", encoding="utf-8") as file:
        # Only the line break is stripped: BERT vocabularies hold no
        # whitespace tokens, and other trailing characters are part of a token.
        tokens = [line.rstrip("\r\n") for line in file]
    if tokens and tokens[-1] == "":
        tokens.pop()
    return tokens, preset


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTTokenizer(keras.layers.Layer):
    """BERT WordPiece tokenizer that gives Hugging Face's ids, in TF graph ops.

    Maps strings to word-piece ids exactly as `transformers.BertTokenizer(
    vocab_file, do_lower_case=True)` (`tokenize` then `convert_tokens_to_ids`,
    no special tokens added): control and format characters dropped,
    whitespace normalised, every CJK ideograph a word of its own, accents
    stripped (NFD, then combining marks removed) and lower-casing, splitting on
    whitespace and punctuation, then greedy longest-match-first WordPiece
    (`tf_text.FastWordpieceTokenizer`), a word longer than 100 characters or
    with no segmentation becoming `[UNK]`. Everything runs as TensorFlow ops,
    so the layer works inside `tf.data.Dataset.map` and an exported
    SavedModel, under any Keras backend.

    As in Hugging Face, a literal special token in the text ("[MASK]",
    "[SEP]", exact case) becomes its special id; pass
    `special_tokens_in_strings=False` to tokenize it as ordinary text (e.g.
    for captions that must never inject separators).

    Known differences from Hugging Face, none of which occur in ordinary text:
    unassigned code points (category Cn) are kept, not dropped; and character
    properties come from the ICU/RE2 Unicode tables of TensorFlow, which may
    be a different Unicode version than Rust's. The Python
    `BertTokenizerLegacy` (transformers < 5: `BertTokenizer`) also differs on
    a capital sigma at the end of a word ("ΟΔΟΣ"), which it lower-cases to
    "ς" where the Rust one, and this layer, give "σ".

    A scalar string gives a dense `[None]` int32 tensor; a `[B]` string tensor
    gives a `tf.RaggedTensor` `[B, None]` of int32 ids.

    Args:
        vocabulary: a preset name (`"interbert_base_en"` for bert-base-uncased,
            `"interbert_base_zh"` for bert-base-chinese), the path of a
            vocabulary file with one word piece a line (line number = id), or
            a list of word pieces. It must hold `[PAD]`, `[UNK]`, `[CLS]`,
            `[SEP]` and `[MASK]`.
        lowercase: bool. Lower-case the text (both bundled vocabularies are
            uncased).
        strip_accents: bool or None. Remove accents; `None` follows
            `lowercase`, as BERT does.
        split_on_cjk: bool. Make each CJK ideograph a word of its own.
        special_tokens_in_strings: bool. Map an exact `[PAD]`, `[UNK]`,
            `[CLS]`, `[SEP]` or `[MASK]` in the text to its id.

    Examples:
    ```python
    tokenizer = InterBERTTokenizer("interbert_base_en")
    tokenizer(["A man rides a horse.", "Two dogs"])
    # <tf.RaggedTensor [[1037, 2158, 12271, 1037, 3586, 1012], [2048, 6077]]>
    tokenizer.detokenize(tokenizer(["A man rides a horse."]))
    # [b'a man rides a horse .']
    ```
    """

    def __init__(
        self,
        vocabulary=None,
        lowercase=True,
        strip_accents=None,
        split_on_cjk=True,
        special_tokens_in_strings=True,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        # Inputs are TF string tensors whatever the backend: never convert
        # them to backend tensors.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.lowercase = bool(lowercase)
        self.strip_accents = (
            self.lowercase if strip_accents is None else bool(strip_accents)
        )
        self.split_on_cjk = bool(split_on_cjk)
        self.special_tokens_in_strings = bool(special_tokens_in_strings)
        self._preset = None
        self.vocabulary = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        self.built = True

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """The tokenizer with the vocabulary of a named preset."""
        if preset not in presets.PRESETS:
            raise ValueError(
                f"Unknown preset '{preset}'; expected one of "
                f"{presets.list_presets()}."
            )
        return cls(vocabulary=preset, **kwargs)

    def set_vocabulary(self, vocabulary):
        tokens, preset = _read_vocabulary(vocabulary)
        missing = [t for t in _REQUIRED_TOKENS if t not in tokens]
        if missing:
            raise ValueError(
                f"The vocabulary must contain {list(_REQUIRED_TOKENS)}; "
                f"missing {missing} (vocabulary of {len(tokens)} tokens from "
                f"{vocabulary if isinstance(vocabulary, str) else 'a list'})."
            )
        seen = {}
        for index, token in enumerate(tokens):
            if token in seen:
                raise ValueError(
                    f"The vocabulary lists '{token}' twice (ids {seen[token]} "
                    f"and {index}); each word piece must appear once."
                )
            seen[token] = index
        self.vocabulary = tokens
        self._preset = preset
        self._token_to_id = seen
        self.pad_id = seen["[PAD]"]
        self.unk_id = seen["[UNK]"]
        self.cls_id = seen["[CLS]"]
        self.sep_id = seen["[SEP]"]
        self.mask_id = seen["[MASK]"]
        self._word_piece = tf_text.FastWordpieceTokenizer(
            vocab=tokens,
            suffix_indicator="##",
            # Over-long words are handled by characters in `tokenize`; this
            # byte limit must never bite first (a character is <= 4 bytes).
            max_bytes_per_word=4 * _MAX_CHARACTERS_PER_WORD,
            token_out_type=tf.int32,
            unknown_token="[UNK]",
            no_pretokenization=True,
        )
        self._vocabulary_tensor = tf.constant(tokens, dtype=tf.string)

    def _check_vocabulary(self):
        if self.vocabulary is None:
            raise ValueError(
                "InterBERTTokenizer has no vocabulary; pass `vocabulary=` (a "
                "preset name, a file path or a list of word pieces)."
            )

    def get_vocabulary(self):
        self._check_vocabulary()
        return list(self.vocabulary)

    def vocabulary_size(self):
        self._check_vocabulary()
        return len(self.vocabulary)

    def id_to_token(self, id):
        self._check_vocabulary()
        if not 0 <= int(id) < len(self.vocabulary):
            raise ValueError(
                f"`id` must be in [0, {len(self.vocabulary) - 1}]. "
                f"Received: {id}"
            )
        return self.vocabulary[int(id)]

    def token_to_id(self, token):
        self._check_vocabulary()
        if token not in self._token_to_id:
            raise ValueError(f"Token '{token}' is not in the vocabulary.")
        return self._token_to_id[token]

    @property
    def special_token_ids(self):
        return [self.pad_id, self.unk_id, self.cls_id, self.sep_id,
                self.mask_id]

    def _basic_split(self, text):
        text = tf.strings.regex_replace(text, _DROPPED_CHARACTERS, "")
        text = tf.strings.regex_replace(text, _WHITESPACE, " ")
        if self.split_on_cjk:
            text = tf.strings.regex_replace(text, _CJK_CHARACTERS, r" \0 ")
        if self.strip_accents:
            text = tf_text.normalize_utf8(text, "NFD")
            text = tf.strings.regex_replace(text, r"\p{Mn}", "")
        if self.lowercase:
            # Hugging Face lower-cases character by character, so a capital
            # sigma is always "σ"; ICU would give "ς" at the end of a word.
            text = tf.strings.regex_replace(text, "\u03a3", "\u03c3")
            text = tf.strings.lower(text, encoding="utf-8")
        return _regex_split(text, r"\s|" + _PUNCTUATION, _PUNCTUATION)

    def split_words(self, inputs):
        """Basic (pre-)tokenization: a `[B]` string tensor to ragged words."""
        text = tf.convert_to_tensor(inputs, dtype=tf.string)
        if not self.special_tokens_in_strings:
            return self._basic_split(text)
        # As Hugging Face does for its special tokens: an exact "[MASK]" (...)
        # in the raw text is cut out first and kept whole; the text between
        # is normalised and split on its own.
        pattern = "|".join(re.escape(t) for t in _REQUIRED_TOKENS)
        pieces = _regex_split(text, pattern, pattern)
        flat = pieces.flat_values
        is_special = tf.strings.regex_full_match(flat, pattern)
        ordinary = self._basic_split(flat)
        # Each piece's words: a special piece is one word, itself; another
        # its normalised, split words. Gathered from `ordinary`'s words
        # followed by the pieces, so that the row splits are computed here
        # (no validation asserts, `_ragged`).
        ordinary_splits = ordinary.row_splits
        lengths = tf.where(is_special, tf.ones_like(ordinary_splits[1:]),
                           ordinary_splits[1:] - ordinary_splits[:-1])
        word_splits = tf.concat(
            [tf.zeros([1], lengths.dtype), tf.cumsum(lengths)], axis=0)
        word = tf.range(word_splits[-1])
        piece = tf.searchsorted(word_splits, word, side="right",
                                out_type=word.dtype) - 1
        source = tf.where(
            tf.gather(is_special, piece),
            tf.size(ordinary.flat_values, out_type=word.dtype) + piece,
            tf.gather(ordinary_splits, piece) + word
            - tf.gather(word_splits, piece))
        words = tf.gather(tf.concat([ordinary.flat_values, flat], axis=0),
                          source)
        return _ragged(words, tf.gather(
            word_splits, tf.cast(pieces.row_splits, word_splits.dtype)))

    def tokenize(self, inputs):
        self._check_vocabulary()
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        rank = inputs.shape.rank
        if rank not in (0, 1):
            raise ValueError(
                "InterBERTTokenizer expects a scalar string or a [batch] "
                f"string tensor. Received shape {inputs.shape}."
            )
        batched = inputs if rank == 1 else inputs[tf.newaxis]
        words = self.split_words(batched)
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > (
            _MAX_CHARACTERS_PER_WORD
        )
        # "[UNK]" is itself in the vocabulary, so an over-long word replaced
        # by it comes out of WordPiece as exactly one unknown id.
        words = words.with_flat_values(
            tf.where(too_long, "[UNK]", words.flat_values)
        )
        pieces = self._word_piece.tokenize(words)  # [B, words, pieces]
        # The pieces of each text, its words' pieces one after the other
        # (`merge_dims(-2, -1)` without its validation asserts, `_ragged`).
        ids = _ragged(pieces.flat_values,
                      tf.gather(pieces.values.row_splits, pieces.row_splits))
        if rank == 0:
            return ids[0]
        return ids

    def call(self, inputs):
        return self.tokenize(inputs)

    def ids_to_tokens(self, ids):
        """Word-piece strings of an int tensor (dense or ragged) of ids."""
        self._check_vocabulary()
        if isinstance(ids, tf.RaggedTensor):
            return ids.with_flat_values(
                tf.gather(self._vocabulary_tensor, ids.flat_values)
            )
        return tf.gather(self._vocabulary_tensor, tf.convert_to_tensor(ids))

    def detokenize(self, ids, skip_special_tokens=False):
        """Joins ids back into text as Hugging Face's `convert_tokens_to_string`.

        Pieces are joined with spaces and " ##" is removed, so the result is
        the normalised (lower-cased, split) text, not the original string.
        `ids` is `[None]` or `[B, None]` (dense or ragged); with
        `skip_special_tokens`, [PAD], [UNK], [CLS], [SEP] and [MASK] are
        dropped first.
        """
        self._check_vocabulary()
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
        unbatched = ids.shape.rank == 1
        if unbatched:
            ids = ids[tf.newaxis]
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        if skip_special_tokens:
            keep = tf.reduce_all(
                ids[..., tf.newaxis] != tf.constant(self.special_token_ids),
                axis=-1,
            )
            ids = tf.ragged.boolean_mask(ids, keep)
        tokens = self.ids_to_tokens(ids)
        text = tf.strings.reduce_join(tokens, axis=-1, separator=" ")
        text = tf.strings.strip(tf.strings.regex_replace(text, " ##", ""))
        return text[0] if unbatched else text

    def save_assets(self, dir_path):
        self._check_vocabulary()
        with open(os.path.join(dir_path, VOCABULARY_ASSET), "w",
                  encoding="utf-8") as file:
            for token in self.vocabulary:
                file.write(token + "\n")

    def load_assets(self, dir_path):
        self.set_vocabulary(os.path.join(dir_path, VOCABULARY_ASSET))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                # A preset name travels in the config; any other vocabulary
                # travels as an asset of the `.keras` file.
                "vocabulary": self._preset,
                "lowercase": self.lowercase,
                "strip_accents": self.strip_accents,
                "split_on_cjk": self.split_on_cjk,
                "special_tokens_in_strings": self.special_tokens_in_strings,
            }
        )
        return config
