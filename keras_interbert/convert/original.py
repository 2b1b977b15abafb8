"""The authors' InterBERT checkpoints (`InterBertForMultiModalPreTraining`)."""
import re

import numpy as np

from keras_interbert.convert.checkpoint_io import WeightAssigner
from keras_interbert.convert.checkpoint_io import assign_dense
from keras_interbert.convert.checkpoint_io import assign_layer_norm
from keras_interbert.convert.checkpoint_io import assign_transformer_layer
from keras_interbert.convert.checkpoint_io import load_state_dict
from keras_interbert.convert.checkpoint_io import torch_layer_getter
from keras_interbert.utils.atomic import read_json

# Original config key -> InterBERTBackbone argument.
_CONFIG_KEYS = {
    "vocab_size": "vocabulary_size",
    "num_hidden_layers": "num_single_stream_layers",
    "t_num_hidden_layers": "num_text_layers",
    "v_num_hidden_layers": "num_image_layers",
    "hidden_size": "hidden_dim",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_dim",
    "v_num_attention_heads": "num_image_heads",
    "v_intermediate_size": "image_intermediate_dim",
    "bi_hidden_size": "pooled_dim",
    "v_feature_size": "image_feature_dim",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "v_hidden_dropout_prob": "image_dropout",
    "v_attention_probs_dropout_prob": "image_attention_dropout",
    "max_position_embeddings": "max_sequence_length",
    "type_vocab_size": "num_segments",
}
# Class defaults of the original `BertConfig` for keys its JSON may omit.
_ORIGINAL_DEFAULTS = {"bi_hidden_size": 1024, "v_target_size": 1601}


def backbone_config_from_original(config, state_dict=None):
    """InterBERTBackbone kwargs (and the region class count) from an original config.

    A missing `t_num_hidden_layers` is read off the checkpoint: the encoder
    layers beyond `num_hidden_layers` are the text stream.
    """
    config = dict(_ORIGINAL_DEFAULTS, **config)
    if "t_num_hidden_layers" not in config and state_dict is not None:
        indices = {
            int(m.group(1))
            for name in state_dict
            if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", name))
        }
        config["t_num_hidden_layers"] = len(indices) - config["num_hidden_layers"]
    for key, expected in (("hidden_act", "gelu"), ("v_hidden_act", "gelu")):
        if config.get(key, expected) != expected:
            raise ValueError(
                f"Original config '{key}': only '{expected}' is supported, "
                f"received {config[key]!r}."
            )
    if config.get("v_hidden_size", config["hidden_size"]) != config["hidden_size"]:
        raise ValueError(
            "Original config: 'v_hidden_size' must equal 'hidden_size' (the "
            "streams share the single-stream module); received "
            f"{config['v_hidden_size']} and {config['hidden_size']}."
        )
    if config.get("pooling_method", "mul") != "mul":
        raise ValueError(
            "Original config 'pooling_method': only 'mul' (the published "
            f"fusion) is supported, received {config['pooling_method']!r}."
        )
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"Original config is missing the keys {missing}.")
    backbone = {ours: config[theirs] for theirs, ours in _CONFIG_KEYS.items()}
    backbone["layer_norm_epsilon"] = 1e-12
    return backbone, int(config["v_target_size"])


def load_original_into(pretrainer, state_dict, label="original checkpoint"):
    """Assigns every tensor of an original state dict to `pretrainer`."""
    a = WeightAssigner(state_dict, label)
    bb = pretrainer.backbone

    def t(name):
        return a.take(name)

    a.assign(bb.token_embedding.embeddings,
             t("bert.embeddings.word_embeddings.weight"), "word_embeddings")
    a.assign(bb.position_embedding.position_embeddings,
             t("bert.embeddings.position_embeddings.weight"),
             "position_embeddings")
    a.assign(bb.segment_embedding.embeddings,
             t("bert.embeddings.token_type_embeddings.weight"),
             "token_type_embeddings")
    assign_layer_norm(a, bb.text_embeddings_layer_norm,
                      t("bert.embeddings.LayerNorm.weight"),
                      t("bert.embeddings.LayerNorm.bias"),
                      "bert.embeddings.LayerNorm")
    v = "bert.v_embeddings"
    assign_dense(a, bb.image_feature_projection,
                 t(f"{v}.image_embeddings.weight"),
                 t(f"{v}.image_embeddings.bias"), f"{v}.image_embeddings")
    assign_dense(a, bb.image_location_projection,
                 t(f"{v}.image_location_embeddings.weight"),
                 t(f"{v}.image_location_embeddings.bias"),
                 f"{v}.image_location_embeddings")
    assign_layer_norm(a, bb.image_embeddings_layer_norm,
                      t(f"{v}.LayerNorm.weight"), t(f"{v}.LayerNorm.bias"),
                      f"{v}.LayerNorm")
    text_layers = bb.single_stream_layers + bb.text_stream_layers
    for i, layer in enumerate(text_layers):
        prefix = f"bert.encoder.layer.{i}"
        assign_transformer_layer(a, layer, torch_layer_getter(a, prefix), prefix)
    for i, layer in enumerate(bb.image_stream_layers):
        prefix = f"bert.encoder.v_layer.{i}"
        assign_transformer_layer(a, layer, torch_layer_getter(a, prefix), prefix)
    for ours, theirs in ((bb.text_pooler, "bert.t_pooler.dense"),
                         (bb.image_pooler, "bert.v_pooler.dense")):
        assign_dense(a, ours, t(f"{theirs}.weight"), t(f"{theirs}.bias"), theirs)

    msm = pretrainer.msm_head
    p = "cls.predictions"
    assign_dense(a, msm.transform_dense, t(f"{p}.transform.dense.weight"),
                 t(f"{p}.transform.dense.bias"), f"{p}.transform.dense")
    assign_layer_norm(a, msm.transform_layer_norm,
                      t(f"{p}.transform.LayerNorm.weight"),
                      t(f"{p}.transform.LayerNorm.bias"),
                      f"{p}.transform.LayerNorm")
    a.assign(msm.bias, t(f"{p}.bias"), f"{p}.bias")
    if a.has(f"{p}.decoder.weight"):
        decoder = t(f"{p}.decoder.weight")
        words = state_dict["bert.embeddings.word_embeddings.weight"]
        if decoder.shape != words.shape or not np.array_equal(decoder, words):
            raise ValueError(
                f"{label}: '{p}.decoder.weight' differs from the word "
                "embeddings; InterBERT ties the two, so this checkpoint is "
                "not an InterBERT pretraining model."
            )
    if a.has(f"{p}.decoder.bias"):
        # Newer transformers versions store the same bias twice.
        if not np.array_equal(t(f"{p}.decoder.bias"), state_dict[f"{p}.bias"]):
            raise ValueError(f"{label}: '{p}.decoder.bias' differs from '{p}.bias'.")

    mrm = pretrainer.mrm_head
    p = "cls.imagePredictions"
    assign_dense(a, mrm.transform_dense, t(f"{p}.transform.dense.weight"),
                 t(f"{p}.transform.dense.bias"), f"{p}.transform.dense")
    assign_layer_norm(a, mrm.transform_layer_norm,
                      t(f"{p}.transform.LayerNorm.weight"),
                      t(f"{p}.transform.LayerNorm.bias"),
                      f"{p}.transform.LayerNorm")
    assign_dense(a, mrm.decoder, t(f"{p}.decoder.weight"),
                 t(f"{p}.decoder.bias"), f"{p}.decoder")
    assign_dense(a, pretrainer.itm_head.classifier,
                 t("cls.bi_seq_relationship.weight"),
                 t("cls.bi_seq_relationship.bias"), "cls.bi_seq_relationship")
    for name in state_dict:
        if name.endswith("position_ids"):
            a.skip(name)  # a buffer, not a weight
    a.finish(pretrainer)
    return pretrainer


def convert_original(config, weights, dtype=None):
    """Builds an `InterBERTPretrainer` holding an original checkpoint.

    Args:
        config: dict in the original's key names, or a path to its JSON.
        weights: a state dict (`{name: array}`) or a path (`.bin`,
            `.safetensors`, `.npz` with the original tensor names).
    """
    from keras_interbert.models import InterBERTBackbone
    from keras_interbert.models import InterBERTPretrainer

    label = "original checkpoint"
    if isinstance(config, str):
        path, config = config, read_json(config, "original config")
        if not isinstance(config, dict):
            raise ValueError(f"{path}: the original config must be a JSON "
                             f"object; it holds a {type(config).__name__}.")
    if isinstance(weights, str):
        label = f"original checkpoint '{weights}'"
        weights = load_state_dict(weights)
    backbone_kwargs, num_classes = backbone_config_from_original(config, weights)
    backbone = InterBERTBackbone(**backbone_kwargs, dtype=dtype)
    pretrainer = InterBERTPretrainer(
        backbone, num_region_classes=num_classes, dtype=dtype
    )
    return load_original_into(pretrainer, weights, label)
