"""InterBERTTokenizer and InterBERTTextPacker against independent tokenizers.

Golden ids come from Hugging Face's `transformers.BertTokenizer` (the Rust
`tokenizers` WordPiece) and from BlingFire (`blingfire`, Microsoft's separate
C++ finite-state implementation with its own bert-base-uncased and
bert-base-chinese models), on real sentences that nobody here wrote (see
`helpers/tokenizer_corpus.py`), never from the code under test.
"""
import os
import tempfile

import blingfire
import numpy as np
import pytest
import tensorflow as tf
import transformers

from keras_interbert.presets import preset_vocabulary
from keras_interbert.preprocessing import InterBERTTextPacker
from keras_interbert.preprocessing import InterBERTTokenizer

from helpers import tokenizer_corpus  # tests/ is on sys.path under pytest

# The ids against the references are computed by tensorflow-text ops, the
# same under every KERAS_BACKEND (conftest.py); calling the layers, in and
# out of tf.data, runs in every session (every_backend).
pytestmark = pytest.mark.once

PRESETS = ("interbert_base_en", "interbert_base_zh")


@pytest.fixture(scope="module")
def corpora():
    return {
        "english": tokenizer_corpus.english_sentences(1500),
        "chinese": tokenizer_corpus.chinese_sentences(1500),
    }


@pytest.fixture(scope="module")
def tokenizers():
    return {p: InterBERTTokenizer(p) for p in PRESETS}


@pytest.fixture(scope="module")
def hf_tokenizers():
    # `BertTokenizerFast` is `BertTokenizer` itself from transformers 5 on
    # (the Rust WordPiece); naming it keeps the reference the same on 4.x,
    # where `BertTokenizer` is the Python one (see `legacy_tokenizer`).
    return {
        p: transformers.BertTokenizerFast(preset_vocabulary(p),
                                          do_lower_case=True)
        for p in PRESETS
    }


def legacy_tokenizer(preset):
    """The pure-Python BERT tokenizer of transformers (a third reference)."""
    try:
        from transformers.models.bert.tokenization_bert_legacy import (
            BertTokenizerLegacy as legacy,
        )
    except ImportError:  # transformers < 5: `BertTokenizer` is the Python one
        legacy = transformers.BertTokenizer
    return legacy(preset_vocabulary(preset), do_lower_case=True)


def hf_ids(hf, text):
    return hf.convert_tokens_to_ids(hf.tokenize(text))


def our_ids(tokenizer, texts):
    return tokenizer(tf.constant(texts)).to_list()


def assert_same_ids(texts, ours, reference, what):
    mismatches = [
        (t, a, b) for t, a, b in zip(texts, ours, reference) if a != b
    ]
    assert not mismatches, (
        f"{len(mismatches)} of {len(texts)} differ from {what}; first: "
        f"{mismatches[0]!r}"
    )


def test_corpora_are_real_and_large(corpora):
    english, chinese = corpora["english"], corpora["chinese"]
    assert len(english) >= 1000 and len(set(english)) == len(english)
    assert len(chinese) >= 1000
    cjk = sum(any("\u4e00" <= c <= "\u9fff" for c in s) for s in chinese)
    # A few reviews are written in English or in digits only.
    assert cjk >= 0.95 * len(chinese)
    # Full-width forms are the classic trap (NFKC would fold "，" to ",").
    assert sum("，" in s or "１" in s for s in chinese) > 500


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("corpus", ["english", "chinese"])
def test_ids_match_transformers(preset, corpus, corpora, tokenizers,
                                hf_tokenizers):
    # Each corpus through each vocabulary: English text through the Chinese
    # vocabulary and Chinese text through the English one exercise [UNK] and
    # the ## continuations of the other vocabulary.
    texts = corpora[corpus]
    ours = our_ids(tokenizers[preset], texts)
    reference = [hf_ids(hf_tokenizers[preset], t) for t in texts]
    assert sum(len(r) for r in reference) > 10 * len(texts)
    assert_same_ids(texts, ours, reference, f"transformers ({preset})")


@pytest.mark.parametrize("preset", PRESETS)
def test_ids_match_python_bert_tokenizer(preset, corpora, tokenizers):
    legacy = legacy_tokenizer(preset)
    texts = corpora["english"][:500] + corpora["chinese"][:500]
    reference = [hf_ids(legacy, t) for t in texts]
    assert_same_ids(texts, our_ids(tokenizers[preset], texts), reference,
                    f"the Python BertTokenizer ({preset})")


def test_capital_sigma_follows_the_rust_tokenizer(tokenizers, hf_tokenizers):
    # The one systematic difference between the two transformers tokenizers:
    # Python's str.lower() gives the final form "ς" at the end of a word,
    # Rust's char-by-char lower-casing always "σ". This layer follows Rust.
    tokenizer = tokenizers["interbert_base_en"]
    text = "ΟΔΟΣ"
    ours = our_ids(tokenizer, [text])[0]
    assert ours == hf_ids(hf_tokenizers["interbert_base_en"], text)
    assert tokenizer.id_to_token(ours[-1]) == "##σ"
    legacy = legacy_tokenizer("interbert_base_en").tokenize(text)
    assert legacy[-1] == "##ος"


@pytest.mark.parametrize(
    "preset, model, corpus",
    [
        ("interbert_base_en", "bert_base_tok.bin", "english"),
        ("interbert_base_en", "bert_base_tok.bin", "chinese"),
        ("interbert_base_zh", "bert_chinese.bin", "chinese"),
        ("interbert_base_zh", "bert_chinese.bin", "english"),
    ],
)
def test_ids_match_blingfire(preset, model, corpus, corpora, tokenizers):
    # BlingFire differs from BERT systematically on inputs that none of these
    # corpora contain (checked by hand): it splits words at zero-width and
    # other format/control characters (U+200B, U+00AD, BEL) where BERT drops
    # them, has no 100-character limit per word, maps text that is already
    # decomposed (a letter + combining accent, Hangul jamo after NFD) and
    # private-use characters to [UNK], and does not treat a literal "[MASK]"
    # as the special token. The comparison therefore runs on the real
    # sentences only, all of them, with no exclusion.
    handle = blingfire.load_model(
        os.path.join(os.path.dirname(blingfire.__file__), model)
    )
    tokenizer = tokenizers[preset]
    texts = corpora[corpus]
    try:
        reference = [
            [int(i) for i in blingfire.text_to_ids(
                handle, t, 4096, tokenizer.unk_id, no_padding=True)]
            for t in texts
        ]
    finally:
        blingfire.free_model(handle)
    assert_same_ids(texts, our_ids(tokenizer, texts), reference,
                    f"blingfire {model}")


# Hand-made hard cases; the expected ids still come from transformers.
EDGE_CASES = [
    "Crème brûlée à la MODE, naïve café!",
    "soft\u00adhyphen zero\u200bwidth ctrl\x07bell \ufeffbom",
    "nb\u00a0space tab\there\nnew\rline \u2028sep\u2029para \u3000ideo",
    "x" * 101 + " " + "y" * 100 + " " + "\u00e9" * 60,
    "ΟΔΟΣ ΑΣ. Σ",
    "Ｆｕｌｌ－ｗｉｄｔｈ １２３，中文字符。",
    "emoji 😀 ﬁne İstanbul Straße Ǆemal ①② x² a\u0301b e\u0308\u0323",
    "“quoted” — dash… $5 ^ `x` | ~ <tag> {brace} @home #hash",
    "日本語のテキスト 한국어 텍스트 ไทย \U0002B820\U0002B81F private\ue000use",
    "x[MASK]y [SEP] [mask] [CLS][PAD][UNK]",
    "",
    "   ",
]


@pytest.mark.parametrize("preset", PRESETS)
def test_edge_cases_match_transformers(preset, tokenizers, hf_tokenizers):
    ours = our_ids(tokenizers[preset], EDGE_CASES)
    reference = [hf_ids(hf_tokenizers[preset], t) for t in EDGE_CASES]
    assert_same_ids(EDGE_CASES, ours, reference, f"transformers ({preset})")


def test_special_tokens_in_strings_can_be_turned_off(hf_tokenizers):
    tokenizer = InterBERTTokenizer("interbert_base_en",
                                   special_tokens_in_strings=False)
    hf = hf_tokenizers["interbert_base_en"]
    ids = tokenizer(tf.constant(["a [MASK] b"])).to_list()[0]
    assert ids == hf.convert_tokens_to_ids(["a", "[", "mask", "]", "b"])
    assert tokenizer.mask_id not in ids


@pytest.mark.parametrize("preset", PRESETS)
def test_special_ids_and_vocabulary_match_transformers(preset, tokenizers,
                                                       hf_tokenizers):
    tokenizer, hf = tokenizers[preset], hf_tokenizers[preset]
    assert tokenizer.vocabulary_size() == len(hf) == {
        "interbert_base_en": 30522, "interbert_base_zh": 21128}[preset]
    assert tokenizer.pad_id == hf.pad_token_id == 0
    assert tokenizer.unk_id == hf.unk_token_id == 100
    assert tokenizer.cls_id == hf.cls_token_id == 101
    assert tokenizer.sep_id == hf.sep_token_id == 102
    assert tokenizer.mask_id == hf.mask_token_id == 103
    for token_id in (0, 100, 103, 999, 2000, 7592, 21127):
        assert tokenizer.id_to_token(token_id) == hf.convert_ids_to_tokens(
            token_id)
        assert tokenizer.token_to_id(tokenizer.id_to_token(token_id)) == (
            token_id)
    with pytest.raises(ValueError, match="must be in"):
        tokenizer.id_to_token(tokenizer.vocabulary_size())


def test_detokenize_matches_transformers(corpora, tokenizers):
    tokenizer = tokenizers["interbert_base_en"]
    # The Python tokenizer's `convert_tokens_to_string` is a plain join; the
    # Rust decoder would also glue punctuation back ("here ." -> "here.").
    hf = legacy_tokenizer("interbert_base_en")
    texts = corpora["english"][:200]
    ids = tokenizer(tf.constant(texts))
    text = [t.decode("utf-8") for t in tokenizer.detokenize(ids).numpy()]
    assert text == [hf.convert_tokens_to_string(hf.tokenize(t)) for t in texts]
    strings = tokenizer.ids_to_tokens(ids).to_list()
    assert [[s.decode() for s in row] for row in strings] == [
        hf.tokenize(t) for t in texts]
    # Packed ids: special tokens and padding can be dropped.
    packed = InterBERTTextPacker(sequence_length=64)(ids)["token_ids"]
    clean = tokenizer.detokenize(packed, skip_special_tokens=True).numpy()
    assert [t.decode("utf-8") for t in clean] == text


@pytest.mark.every_backend
def test_scalar_and_batch_inputs(tokenizers, hf_tokenizers):
    tokenizer = tokenizers["interbert_base_en"]
    hf = hf_tokenizers["interbert_base_en"]
    single = tokenizer("A man rides a horse.")
    assert isinstance(single, tf.Tensor) and single.dtype == tf.int32
    assert single.numpy().tolist() == hf_ids(hf, "A man rides a horse.")
    batch = tokenizer(tf.constant(["A man rides a horse.", "Two dogs"]))
    assert isinstance(batch, tf.RaggedTensor) and batch.dtype == tf.int32
    assert batch.to_list()[1] == hf_ids(hf, "Two dogs")
    with pytest.raises(ValueError, match="scalar string or a \\[batch\\]"):
        tokenizer(tf.constant([["a", "b"]]))


@pytest.mark.every_backend
def test_works_inside_tf_data_and_a_savedmodel(corpora, tokenizers,
                                               hf_tokenizers):
    tokenizer = tokenizers["interbert_base_zh"]
    hf = hf_tokenizers["interbert_base_zh"]
    packer = InterBERTTextPacker(sequence_length=36)
    texts = corpora["chinese"][:64]
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(
        lambda t: packer(tokenizer(t))).batch(16)
    from_dataset = np.concatenate(
        [b["token_ids"].numpy() for b in dataset])
    expected = np.zeros((len(texts), 36), np.int32)
    for row, text in enumerate(texts):
        ids = [101] + hf_ids(hf, text)[:34] + [102]
        expected[row, :len(ids)] = ids
    np.testing.assert_array_equal(from_dataset, expected)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(text):
        return packer(tokenizer(text))

    module = tf.Module()
    module.serve = serve
    with tempfile.TemporaryDirectory() as directory:
        tf.saved_model.save(module, directory)
        loaded = tf.saved_model.load(directory)
        served = loaded.serve(tf.constant(texts))["token_ids"].numpy()
    np.testing.assert_array_equal(served, expected)


@pytest.mark.every_backend
def test_config_and_assets_round_trip(tmp_path):
    tokenizer = InterBERTTokenizer("interbert_base_zh")
    config = tokenizer.get_config()
    assert config["vocabulary"] == "interbert_base_zh"
    again = InterBERTTokenizer.from_config(config)
    text = tf.constant(["我正在写这本书的心得，勘误。", "Hello"])
    assert again(text).to_list() == tokenizer(text).to_list()

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "qu",
                  "##ick", "fox", "."]
    small = InterBERTTokenizer(vocabulary)
    assert small(tf.constant(["The quick fox."])).to_list() == [
        [5, 6, 7, 8, 9]]
    config = small.get_config()
    assert config["vocabulary"] is None
    small.save_assets(str(tmp_path))
    restored = InterBERTTokenizer.from_config(config)
    restored.load_assets(str(tmp_path))
    assert restored.get_vocabulary() == vocabulary
    assert restored(tf.constant(["The quick fox."])).to_list() == [
        [5, 6, 7, 8, 9]]


def test_bad_vocabularies_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a preset name"):
        InterBERTTokenizer(str(tmp_path / "missing_vocab.txt"))
    with pytest.raises(ValueError, match="Unknown preset"):
        InterBERTTokenizer.from_preset("interbert_huge_xx")
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing \['\[MASK\]'\]"):
        InterBERTTokenizer(str(path))
    with pytest.raises(ValueError, match="twice"):
        InterBERTTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a",
                            "a"])
    with pytest.raises(ValueError, match="preset name"):
        InterBERTTokenizer(123)
    with pytest.raises(ValueError, match="no vocabulary"):
        InterBERTTokenizer()(tf.constant(["x"]))


# ---------------------------------------------------------------- packing

def truncate_seq_pair(tokens_a, tokens_b, max_length):
    """BERT's `_truncate_seq_pair` (google-research/bert run_classifier.py),
    re-typed here as the reference for longest-first truncation."""
    tokens_a, tokens_b = list(tokens_a), list(tokens_b)
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_length:
            break
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()
    return tokens_a, tokens_b


def reference_pack(a, b, length, cut_after=False):
    if b is None:
        a = list(a) if cut_after else list(a)[: length - 2]
        ids = [101] + a + [102]
        segments = [0] * len(ids)
    else:
        if not cut_after:
            a, b = truncate_seq_pair(a, b, length - 3)
        ids = [101] + list(a) + [102] + list(b) + [102]
        segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    ids, segments = ids[:length], segments[:length]
    mask = [1] * len(ids)
    pad = length - len(ids)
    return ids + [0] * pad, segments + [0] * pad, mask + [0] * pad


def ragged(rows):
    return tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1)


def check_packed(outputs, rows_a, rows_b, length, cut_after=False):
    for key in ("token_ids", "segment_ids", "text_mask"):
        assert outputs[key].dtype == tf.int32
        assert outputs[key].shape == (len(rows_a), length)
    for i, a in enumerate(rows_a):
        b = None if rows_b is None else rows_b[i]
        ids, segments, mask = reference_pack(a, b, length, cut_after)
        assert outputs["token_ids"][i].numpy().tolist() == ids, (a, b)
        assert outputs["segment_ids"][i].numpy().tolist() == segments, (a, b)
        assert outputs["text_mask"][i].numpy().tolist() == mask, (a, b)


def test_single_segment_packing_truncates_and_pads():
    packer = InterBERTTextPacker(sequence_length=8)
    rows = [[7, 8, 9], [], list(range(1000, 1006)), list(range(1000, 1020))]
    outputs = packer(ragged(rows))
    check_packed(outputs, rows, None, 8)
    # Spelled out: [CLS] 7 8 9 [SEP] then padding, segment 0 throughout.
    assert outputs["token_ids"][0].numpy().tolist() == [
        101, 7, 8, 9, 102, 0, 0, 0]
    # An over-long caption keeps its [SEP].
    assert outputs["token_ids"][3].numpy().tolist()[-1] == 102


def test_pair_packing_longest_first_matches_bert():
    rng = np.random.default_rng(0)
    rows_a, rows_b = [], []
    for _ in range(300):
        rows_a.append(rng.integers(1000, 2000, rng.integers(0, 40)).tolist())
        rows_b.append(rng.integers(2000, 3000, rng.integers(0, 40)).tolist())
    for length in (4, 5, 12, 13, 60):
        packer = InterBERTTextPacker(sequence_length=length)
        check_packed(packer(ragged(rows_a), ragged(rows_b)), rows_a, rows_b,
                     length)
    packer = InterBERTTextPacker(sequence_length=8)
    # a has 6 pieces, b 3, budget 5: pop a to 3, tie, pop b: a=3, b=2.
    out = packer(tf.constant([1, 2, 3, 4, 5, 6]), tf.constant([7, 8, 9]))
    assert out["token_ids"].numpy().tolist() == [101, 1, 2, 3, 102, 7, 8, 102]
    assert out["segment_ids"].numpy().tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert out["text_mask"].numpy().tolist() == [1] * 8


def test_retrieval_quirk_cuts_after_packing():
    rows = [list(range(1000, 1040)), list(range(1000, 1028)),
            list(range(1000, 1029)), [5]]
    quirk = InterBERTTextPacker(sequence_length=30, truncate_after_packing=True)
    outputs = quirk(ragged(rows))
    check_packed(outputs, rows, None, 30, cut_after=True)
    ids = outputs["token_ids"].numpy()
    # 40 and 29 pieces: cut to 30, the final [SEP] is lost; 28 pieces fit.
    assert ids[0, -1] == 1028 and 102 not in ids[0]
    assert ids[2, -1] == 1028 and 102 not in ids[2]
    assert ids[1, -1] == 102
    # Without the quirk the same caption keeps [SEP] and loses a piece.
    normal = InterBERTTextPacker(sequence_length=30)(ragged(rows))
    assert normal["token_ids"].numpy()[0, -1] == 102


@pytest.mark.every_backend
def test_packer_in_tf_data_unbatched_and_dense_inputs():
    packer = InterBERTTextPacker(sequence_length=6)
    dataset = tf.data.Dataset.from_tensor_slices(
        tf.constant([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0]])
    ).map(lambda ids: packer(ids[ids > 0]))
    got = [e["token_ids"].numpy().tolist() for e in dataset]
    assert got == [[101, 5, 6, 7, 8, 102], [101, 5, 6, 102, 0, 0]]
    dense = packer(tf.constant([[5, 6], [7, 8]]))["token_ids"].numpy()
    assert dense.tolist() == [[101, 5, 6, 102, 0, 0], [101, 7, 8, 102, 0, 0]]
    config = packer.get_config()
    assert InterBERTTextPacker.from_config(config).get_config() == config


def test_packer_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least 3"):
        InterBERTTextPacker(sequence_length=2)
    packer = InterBERTTextPacker(sequence_length=8)
    with pytest.raises(ValueError, match="integer token ids"):
        packer(tf.constant([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \[None\]"):
        packer(tf.zeros([2, 2, 2], tf.int32))
    with pytest.raises(ValueError, match="both be one sequence"):
        packer(tf.constant([1, 2]), tf.constant([[1, 2]]))
    with pytest.raises(ValueError, match="sequence_length >= 4"):
        InterBERTTextPacker(sequence_length=3)(tf.constant([1]),
                                               tf.constant([2]))
