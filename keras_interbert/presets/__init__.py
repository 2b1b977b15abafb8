"""Named InterBERT configurations (config and vocabulary; no weights).

Weights come from the converters (`python -m keras_interbert.convert`) or from
pretraining; a preset only fixes the shapes and ships the vocabulary.
"""
import math
import os

_ASSETS = os.path.join(os.path.dirname(__file__), "assets")

VOCABULARIES = {
    # bert-base-uncased word pieces, 30,522 entries.
    "bert_base_uncased": os.path.join(_ASSETS, "bert_base_uncased_vocab.txt"),
    # bert-base-chinese (character-level), 21,128 entries.
    "bert_base_chinese": os.path.join(_ASSETS, "bert_base_chinese_vocab.txt"),
}

_PUBLISHED = dict(
    num_single_stream_layers=6,
    num_text_layers=6,
    num_image_layers=6,
    hidden_dim=768,
    num_heads=12,
    intermediate_dim=3072,
    num_image_heads=8,
    image_intermediate_dim=3072,
    pooled_dim=1024,
    image_feature_dim=2048,
    dropout=0.1,
    attention_dropout=0.1,
    image_dropout=0.2,
    image_attention_dropout=0.1,
    max_sequence_length=512,
    num_segments=2,
    layer_norm_epsilon=1e-12,
)



def _initializer_range(hidden_dim):
    """0.02 scaled by sqrt(768 / hidden_dim).

    A kernel `N(0, s)` multiplies the size of a unit-variance input by
    `s * sqrt(fan_in)`: 0.55 for the published configuration (0.02, 768).
    The smaller configurations keep that gain instead of the bare 0.02,
    which at hidden 64 makes every residual branch about 12 times weaker
    relative to the residual stream than in the published model; the text
    `[CLS]` then starts out almost the same vector for every caption and
    image-text matching cannot get off the ground (docs/pretraining.md).
    """
    return round(0.02 * math.sqrt(768 / hidden_dim), 4)


PRESETS = {
    "interbert_base_en": {
        "description": "The published configuration (6 single-stream, 6 text "
        "and 6 image layers, hidden 768, 154.6M backbone parameters) with the "
        "bert-base-uncased vocabulary.",
        "vocabulary": "bert_base_uncased",
        "backbone": dict(_PUBLISHED, vocabulary_size=30522),
        "task": {"num_region_classes": 1601},
    },
    "interbert_base_zh": {
        "description": "The published configuration with the bert-base-chinese "
        "vocabulary (21,128 entries), for Chinese captions.",
        "vocabulary": "bert_base_chinese",
        "backbone": dict(_PUBLISHED, vocabulary_size=21128),
        "task": {"num_region_classes": 1601},
    },
    "interbert_small_en": {
        "description": "A small configuration for quick experiments: hidden "
        "256, 2 single-stream, 2 text and 2 image layers.",
        "vocabulary": "bert_base_uncased",
        "backbone": dict(
            _PUBLISHED,
            vocabulary_size=30522,
            num_single_stream_layers=2,
            num_text_layers=2,
            num_image_layers=2,
            hidden_dim=256,
            num_heads=4,
            intermediate_dim=1024,
            num_image_heads=4,
            image_intermediate_dim=1024,
            pooled_dim=384,
            initializer_range=_initializer_range(256),
        ),
        "task": {"num_region_classes": 1601},
    },
    "interbert_tiny_en": {
        "description": "A tiny configuration for CPU work and tests: hidden "
        "64, 1 layer per stack.",
        "vocabulary": "bert_base_uncased",
        "backbone": dict(
            _PUBLISHED,
            vocabulary_size=30522,
            num_single_stream_layers=1,
            num_text_layers=1,
            num_image_layers=1,
            hidden_dim=64,
            num_heads=2,
            intermediate_dim=128,
            num_image_heads=2,
            image_intermediate_dim=128,
            pooled_dim=96,
            initializer_range=_initializer_range(64),
        ),
        "task": {"num_region_classes": 1601},
    },
    "interbert_mini_en": {
        "description": "The quickstart's configuration: hidden 128, 1 layer "
        "per stack (the smallest size whose finetuned cross-encoder beats "
        "the dual-encoder baseline on the bundled data, docs/results.md).",
        "vocabulary": "bert_base_uncased",
        "backbone": dict(
            _PUBLISHED,
            vocabulary_size=30522,
            num_single_stream_layers=1,
            num_text_layers=1,
            num_image_layers=1,
            hidden_dim=128,
            num_heads=4,
            intermediate_dim=256,
            num_image_heads=4,
            image_intermediate_dim=256,
            pooled_dim=192,
            initializer_range=_initializer_range(128),
        ),
        "task": {"num_region_classes": 1601},
    },
}
PRESETS["interbert_mini_zh"] = dict(
    PRESETS["interbert_mini_en"],
    description="The quickstart's configuration with the bert-base-chinese "
    "vocabulary.",
    vocabulary="bert_base_chinese",
    backbone=dict(PRESETS["interbert_mini_en"]["backbone"], vocabulary_size=21128),
)
PRESETS["interbert_tiny_zh"] = dict(
    PRESETS["interbert_tiny_en"],
    description="The tiny configuration with the bert-base-chinese vocabulary.",
    vocabulary="bert_base_chinese",
    backbone=dict(PRESETS["interbert_tiny_en"]["backbone"], vocabulary_size=21128),
)


def list_presets():
    return sorted(PRESETS)


def _get(preset):
    if preset not in PRESETS:
        raise ValueError(
            f"Unknown preset '{preset}'; expected one of {list_presets()}."
        )
    return PRESETS[preset]


def preset_backbone_config(preset):
    return dict(_get(preset)["backbone"])


def preset_task_config(preset):
    return dict(_get(preset)["task"])


def preset_vocabulary(preset):
    """Path of the vocabulary file (one word piece a line) of a preset."""
    return VOCABULARIES[_get(preset)["vocabulary"]]
