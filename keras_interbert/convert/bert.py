"""Initialising InterBERT from a BERT checkpoint (docs/architecture.md §2.7).

Embeddings and the first `single_stream_layers` BERT layers go to the
single-stream module, the remaining layers to the text stream, the masked-LM
head (if the checkpoint has one) to the masked-segment head. The image
embedding, the image stream, both poolers (BERT's tanh pooler is not reused),
the region head, the matching head and the optional contrastive head are
newly initialised. Settings that are not weights (pooling, dropout rates, the
new heads' options) can be chosen with `backbone_options` and `task_options`.

Three sources are accepted: a Hugging Face BERT directory (`config.json` +
`model.safetensors` or `pytorch_model.bin`), a Google TF BERT checkpoint
(`bert_config.json` + `bert_model.ckpt.*`), and a keras-hub `BertBackbone`
(an object, a `.keras` file or a local keras-hub preset directory).
"""
import os
import re

import numpy as np

from keras_interbert.convert.checkpoint_io import WeightAssigner
from keras_interbert.convert.checkpoint_io import assign_dense
from keras_interbert.convert.checkpoint_io import assign_layer_norm
from keras_interbert.convert.checkpoint_io import assign_transformer_layer
from keras_interbert.convert.checkpoint_io import load_state_dict
from keras_interbert.convert.checkpoint_io import take_layer_norm
from keras_interbert.convert.checkpoint_io import torch_layer_getter
from keras_interbert.utils.atomic import read_json

# Tensors of a BERT checkpoint InterBERT has no place for, on purpose.
_UNUSED = (
    r"(bert\.)?pooler\..*",  # BERT's tanh pooler (InterBERT's are new)
    r"cls\.seq_relationship\..*",  # the NSP head (the ITM head is new)
    r".*position_ids",  # a buffer
)

# Google TF checkpoint name pieces -> Hugging Face name pieces.
_TF_RENAMES = (
    (r"/", "."),
    (r"layer_(\d+)", r"layer.\1"),
    (r"\.kernel$", ".weight"),
    (r"\.gamma$", ".weight"),
    (r"\.beta$", ".bias"),
    (r"^bert\.embeddings\.(word_embeddings|position_embeddings|"
     r"token_type_embeddings)$", r"bert.embeddings.\1.weight"),
    (r"^cls\.predictions\.output_bias$", "cls.predictions.bias"),
    (r"^cls\.seq_relationship\.output_weights$", "cls.seq_relationship.weight"),
    (r"^cls\.seq_relationship\.output_bias$", "cls.seq_relationship.bias"),
)


def _image_defaults(hidden_dim, num_heads, intermediate_dim, text_layers):
    return {
        "num_image_layers": max(text_layers, 1),
        "num_image_heads": num_heads,
        "image_intermediate_dim": intermediate_dim,
        "pooled_dim": hidden_dim * 4 // 3,
        "image_feature_dim": 2048,
        "image_dropout": 0.2,
        "image_attention_dropout": 0.1,
        "num_region_classes": 1601,
    }


# `backbone_options` a caller may set: settings that are not BERT weights.
_BACKBONE_OPTIONS = ("pooling", "dropout", "attention_dropout", "image_dropout",
                     "image_attention_dropout", "initializer_range")
# Backbone settings fixed by the checkpoint (its shapes and its arithmetic).
_FROM_CHECKPOINT = ("vocabulary_size", "num_layers", "num_single_stream_layers",
                    "num_text_layers", "hidden_dim", "num_heads",
                    "intermediate_dim", "max_sequence_length", "num_segments",
                    "layer_norm_epsilon", "approximate_gelu")
# `task_options` a caller may set: `InterBERTPretrainer` arguments for the
# new heads (none of them is in a BERT checkpoint).
_TASK_OPTIONS = ("contrastive", "contrastive_dim", "itm_initializer",
                 "itm_dropout")


def _check_options(backbone_options, task_options, image_settings):
    backbone_options = dict(backbone_options or {})
    task_options = dict(task_options or {})
    for key in backbone_options:
        if key in _FROM_CHECKPOINT:
            raise ValueError(
                f"backbone_options: '{key}' comes from the BERT checkpoint "
                "and cannot be changed; settable: "
                f"{list(_BACKBONE_OPTIONS)}."
            )
        if key == "dtype":
            raise ValueError(
                "backbone_options: pass 'dtype' as `convert_bert(dtype=...)`."
            )
        if key in image_settings and key not in _BACKBONE_OPTIONS:
            raise ValueError(
                f"backbone_options: pass the image setting '{key}' in "
                "`image_config`."
            )
    unknown = sorted(set(backbone_options) - set(_BACKBONE_OPTIONS))
    if unknown:
        raise ValueError(
            f"Unknown backbone_options {unknown}; expected some of "
            f"{list(_BACKBONE_OPTIONS)}."
        )
    unknown = sorted(set(task_options) - set(_TASK_OPTIONS))
    if unknown:
        raise ValueError(
            f"Unknown task_options {unknown}; expected some of "
            f"{list(_TASK_OPTIONS)}."
        )
    return backbone_options, task_options


_ACTIVATIONS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}


def _config_from_hf(config):
    activation = config.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"BERT config 'hidden_act': expected one of {sorted(_ACTIVATIONS)}, "
            f"received {activation!r}."
        )
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            "BERT config 'position_embedding_type': only 'absolute' is "
            f"supported, received {config['position_embedding_type']!r}."
        )
    return {
        "vocabulary_size": config["vocab_size"],
        "num_layers": config["num_hidden_layers"],
        "hidden_dim": config["hidden_size"],
        "num_heads": config["num_attention_heads"],
        "intermediate_dim": config["intermediate_size"],
        "dropout": config.get("hidden_dropout_prob", 0.1),
        "attention_dropout": config.get("attention_probs_dropout_prob", 0.1),
        "max_sequence_length": config.get("max_position_embeddings", 512),
        "num_segments": config.get("type_vocab_size", 2),
        "layer_norm_epsilon": config.get("layer_norm_eps", 1e-12),
        "approximate_gelu": _ACTIVATIONS[activation],
    }


def _read_config(path):
    config = read_json(path, "BERT config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a BERT config must be a JSON object; it "
                         f"holds a {type(config).__name__}.")
    return config


def _read_hf_directory(directory):
    config = _config_from_hf(_read_config(os.path.join(directory,
                                                       "config.json")))
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return config, load_state_dict(path), f"BERT checkpoint '{path}'"
    raise FileNotFoundError(
        f"BERT directory '{directory}' has neither model.safetensors nor "
        "pytorch_model.bin."
    )


def _read_tf_checkpoint(directory):
    import tensorflow as tf

    config = _config_from_hf(_read_config(os.path.join(directory,
                                                       "bert_config.json")))
    prefix = os.path.join(directory, "bert_model.ckpt")
    state = {}
    for name, _ in tf.train.list_variables(prefix):
        if re.search(r"(adam_[mv]|global_step|_power)$", name) or "/Adam" in name:
            continue  # optimizer state
        value = np.asarray(tf.train.load_variable(prefix, name), np.float32)
        hf_name = name
        for pattern, repl in _TF_RENAMES:
            hf_name = re.sub(pattern, repl, hf_name)
        if name.endswith("/kernel"):
            value = value.T  # TF Dense kernels are [in, out]
        state[hf_name] = value
    return config, state, f"TF BERT checkpoint '{prefix}'"


def _strip_prefix(state):
    """Hugging Face `BertModel` names lack the `bert.` prefix; add it."""
    fixed = {}
    for name, value in state.items():
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        fixed[name] = value
    return fixed


def _build(bert_config, single_stream_layers, image_config, dtype,
           backbone_options=None, task_options=None):
    from keras_interbert.models import InterBERTBackbone
    from keras_interbert.models import InterBERTPretrainer

    num_layers = bert_config["num_layers"]
    if not 0 <= single_stream_layers <= num_layers:
        raise ValueError(
            f"single_stream_layers must be between 0 and the checkpoint's "
            f"{num_layers} layers; received {single_stream_layers}."
        )
    text_layers = num_layers - single_stream_layers
    image = _image_defaults(
        bert_config["hidden_dim"], bert_config["num_heads"],
        bert_config["intermediate_dim"], text_layers,
    )
    unknown = set(image_config or {}) - set(image)
    if unknown:
        raise ValueError(
            f"Unknown image settings {sorted(unknown)}; expected some of "
            f"{sorted(image)}."
        )
    backbone_options, task_options = _check_options(
        backbone_options, task_options, image)
    image.update({k: v for k, v in (image_config or {}).items() if v is not None})
    num_classes = image.pop("num_region_classes")
    settings = {
        "dropout": bert_config["dropout"],
        "attention_dropout": bert_config["attention_dropout"],
        **image,
        **backbone_options,
    }
    backbone = InterBERTBackbone(
        vocabulary_size=bert_config["vocabulary_size"],
        num_single_stream_layers=single_stream_layers,
        num_text_layers=text_layers,
        hidden_dim=bert_config["hidden_dim"],
        num_heads=bert_config["num_heads"],
        intermediate_dim=bert_config["intermediate_dim"],
        max_sequence_length=bert_config["max_sequence_length"],
        num_segments=bert_config["num_segments"],
        layer_norm_epsilon=bert_config["layer_norm_epsilon"],
        approximate_gelu=bert_config["approximate_gelu"],
        dtype=dtype,
        **settings,
    )
    return InterBERTPretrainer(backbone, num_region_classes=num_classes,
                               dtype=dtype, **task_options)


def _new_weights(pretrainer, with_mlm_head):
    """Variables a BERT checkpoint does not provide."""
    bb = pretrainer.backbone
    layers = [bb.image_feature_projection, bb.image_location_projection,
              bb.image_embeddings_layer_norm, bb.text_pooler, bb.image_pooler,
              pretrainer.mrm_head, pretrainer.itm_head, *bb.image_stream_layers]
    if pretrainer.itc_head is not None:  # the optional contrastive head
        layers.append(pretrainer.itc_head)
    if not with_mlm_head:
        layers.append(pretrainer.msm_head)
    new = [w for layer in layers for w in layer.weights]
    if with_mlm_head:
        return new
    # The MSM head's decoder is the (loaded) word embedding matrix.
    return [w for w in new if w is not bb.token_embedding.embeddings]


def _load_torch_named(pretrainer, state, label):
    a = WeightAssigner(state, label)
    bb = pretrainer.backbone
    e = "bert.embeddings"
    a.assign(bb.token_embedding.embeddings,
             a.take(f"{e}.word_embeddings.weight"), "word_embeddings")
    a.assign(bb.position_embedding.position_embeddings,
             a.take(f"{e}.position_embeddings.weight"), "position_embeddings")
    a.assign(bb.segment_embedding.embeddings,
             a.take(f"{e}.token_type_embeddings.weight"),
             "token_type_embeddings")
    assign_layer_norm(a, bb.text_embeddings_layer_norm,
                      *take_layer_norm(a, f"{e}.LayerNorm"), f"{e}.LayerNorm")
    for i, layer in enumerate(bb.single_stream_layers + bb.text_stream_layers):
        prefix = f"bert.encoder.layer.{i}"
        assign_transformer_layer(a, layer, torch_layer_getter(a, prefix), prefix)
    layers_in_checkpoint = sum(
        1 for n in state
        if re.match(r"bert\.encoder\.layer\.\d+\.attention\.self\.query\.weight$", n)
    )
    if layers_in_checkpoint != len(bb.single_stream_layers) + len(bb.text_stream_layers):
        raise ValueError(
            f"{label}: has {layers_in_checkpoint} encoder layers, the model "
            f"{len(bb.single_stream_layers) + len(bb.text_stream_layers)}."
        )
    p = "cls.predictions"
    with_mlm = a.has(f"{p}.transform.dense.weight")
    if with_mlm:
        msm = pretrainer.msm_head
        assign_dense(a, msm.transform_dense, a.take(f"{p}.transform.dense.weight"),
                     a.take(f"{p}.transform.dense.bias"), f"{p}.transform.dense")
        assign_layer_norm(a, msm.transform_layer_norm,
                          *take_layer_norm(a, f"{p}.transform.LayerNorm"),
                          f"{p}.transform.LayerNorm")
        a.assign(msm.bias, a.take(f"{p}.bias"), f"{p}.bias")
        for tied in (f"{p}.decoder.weight", f"{p}.decoder.bias"):
            if a.has(tied):
                a.skip(tied)  # the word embeddings and `cls.predictions.bias`
    for name in state:
        if any(re.fullmatch(pattern, name) for pattern in _UNUSED):
            a.skip(name)
    a.finish(pretrainer, allow_unassigned=_new_weights(pretrainer, with_mlm))
    return pretrainer


def _load_keras_hub(pretrainer, bert, label):
    a = WeightAssigner({}, label)
    bb = pretrainer.backbone
    pairs = [
        (bb.token_embedding, bert.token_embedding),
        (bb.position_embedding, bert.position_embedding),
        (bb.segment_embedding, bert.segment_embedding),
        (bb.text_embeddings_layer_norm, bert.embeddings_layer_norm),
    ]
    pairs += list(zip(bb.single_stream_layers + bb.text_stream_layers,
                      bert.transformer_layers))
    for ours, theirs in pairs:
        if len(ours.weights) != len(theirs.weights):
            raise ValueError(
                f"{label}: layer '{theirs.name}' has {len(theirs.weights)} "
                f"weights, '{ours.name}' expects {len(ours.weights)}."
            )
        for dst, src in zip(ours.weights, theirs.weights):
            a.assign(dst, np.asarray(src.numpy() if hasattr(src, "numpy")
                                     else src.value), src.path)
    a.finish(pretrainer, allow_unassigned=_new_weights(pretrainer, False))
    return pretrainer


def _keras_hub_config(bert):
    return {
        "vocabulary_size": bert.vocabulary_size,
        "num_layers": bert.num_layers,
        "hidden_dim": bert.hidden_dim,
        "num_heads": bert.num_heads,
        "intermediate_dim": bert.intermediate_dim,
        "dropout": bert.dropout,
        "attention_dropout": bert.dropout,
        "max_sequence_length": bert.max_sequence_length,
        "num_segments": bert.num_segments,
        "layer_norm_epsilon": 1e-12,
        # keras-hub's BERT uses the tanh approximation of GELU.
        "approximate_gelu": True,
    }


def _load_keras_file(path):
    """A `.keras` file, with errors that name it and say what is wrong."""
    import zipfile

    import keras

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .keras archive (a .keras file is a "
                         "zip; this one is not, or it is truncated).")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise ValueError(f"{path}: could not be loaded as a Keras model "
                         f"({type(e).__name__}: {e}).") from e


def convert_bert(source, single_stream_layers, image_config=None, dtype=None,
                 backbone_options=None, task_options=None):
    """Builds an `InterBERTPretrainer` initialised from a BERT checkpoint.

    Args:
        source: a Hugging Face BERT directory, a Google TF BERT checkpoint
            directory (`bert_config.json` + `bert_model.ckpt.*`), a keras-hub
            `BertBackbone`, or a `.keras` file / local keras-hub preset
            directory holding one.
        single_stream_layers: int. How many of the first BERT layers become
            the single-stream (interaction) module; the rest form the text
            stream.
        image_config: dict overriding the new image-side settings
            (`num_image_layers`, `num_image_heads`, `image_intermediate_dim`,
            `pooled_dim`, `image_feature_dim`, `image_dropout`,
            `image_attention_dropout`, `num_region_classes`).
        dtype: dtype policy of the new model.
        backbone_options: dict of further `InterBERTBackbone` settings that
            are not BERT weights: `pooling`, `dropout`, `attention_dropout`
            (default: the checkpoint's), `image_dropout`,
            `image_attention_dropout` (these two win over `image_config`)
            and `initializer_range` (of the new weights). A setting the
            checkpoint fixes (`hidden_dim`, `num_heads`, `vocabulary_size`,
            `num_layers`, ...) raises a `ValueError` naming it.
        task_options: dict of further `InterBERTPretrainer` arguments for
            the new heads: `contrastive`, `contrastive_dim`,
            `itm_initializer`, `itm_dropout`. Other keys raise a
            `ValueError`. The contrastive head, like the matching head, is
            newly initialised.
    """
    import keras_hub

    if isinstance(source, str):
        if os.path.isdir(source) and os.path.exists(os.path.join(source, "config.json")) \
                and not os.path.exists(os.path.join(source, "metadata.json")):
            bert_config, state, label = _read_hf_directory(source)
            pretrainer = _build(bert_config, single_stream_layers, image_config,
                                dtype, backbone_options, task_options)
            return _load_torch_named(pretrainer, _strip_prefix(state), label)
        if os.path.isdir(source) and os.path.exists(os.path.join(source, "bert_config.json")):
            bert_config, state, label = _read_tf_checkpoint(source)
            pretrainer = _build(bert_config, single_stream_layers, image_config,
                                dtype, backbone_options, task_options)
            return _load_torch_named(pretrainer, state, label)
        if source.endswith(".keras"):
            source = _load_keras_file(source)
        elif os.path.isdir(source):
            source = keras_hub.models.BertBackbone.from_preset(source)
        else:
            raise ValueError(
                f"BERT source '{source}' is not a Hugging Face directory "
                "(config.json), a TF checkpoint directory (bert_config.json), "
                "a keras-hub preset directory or a .keras file."
            )
    if not isinstance(source, keras_hub.models.BertBackbone):
        raise ValueError(
            "BERT source must be a keras-hub BertBackbone; received "
            f"{type(source).__name__}."
        )
    pretrainer = _build(_keras_hub_config(source), single_stream_layers,
                        image_config, dtype, backbone_options, task_options)
    return _load_keras_hub(pretrainer, source, f"keras-hub BertBackbone '{source.name}'")
