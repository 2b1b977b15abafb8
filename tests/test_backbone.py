import contextlib
import json

import keras
import keras_hub
import numpy as np
import pytest
from conftest import TINY_BACKBONE
from conftest import random_backbone_inputs
from conftest import to_numpy

import keras_interbert
from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer
from keras_interbert.convert import convert_original

FIXTURE_INPUTS = {
    "token_ids": "inputs/input_ids",
    "segment_ids": "inputs/token_type_ids",
    "text_mask": "inputs/text_mask",
    "region_features": "inputs/region_features",
    "region_locations": "inputs/region_locations",
    "region_mask": "inputs/region_mask",
}


def fixture_inputs(npz):
    return {ours: npz[theirs] for ours, theirs in FIXTURE_INPUTS.items()}


@pytest.fixture(scope="module")
def converted_fixture(fixture_npz):
    config = json.loads(str(fixture_npz["config"]))
    weights = {k[len("weights/"):]: v for k, v in fixture_npz.items()
               if k.startswith("weights/")}
    return convert_original(config, weights)


def test_matches_the_original_implementation(converted_fixture, fixture_npz):
    inputs = fixture_inputs(fixture_npz)
    outputs = to_numpy(converted_fixture.backbone(inputs, training=False))
    outputs.update(to_numpy(converted_fixture(inputs, training=False)))
    for name in ("text_sequence", "image_sequence", "text_pooled",
                 "image_pooled", "msm_logits", "mrm_logits", "itm_logits"):
        expected = fixture_npz[f"outputs/{name}"]
        assert outputs[name].shape == expected.shape, name
        np.testing.assert_allclose(outputs[name], expected, atol=1e-5, rtol=0,
                                   err_msg=name)


def test_padding_does_not_change_real_positions(converted_fixture, fixture_npz):
    # Extra padded text and region slots must leave every real output alone.
    inputs = fixture_inputs(fixture_npz)
    padded = {}
    for name, value in inputs.items():
        pad = [(0, 0)] * value.ndim
        pad[1] = (0, 3)
        padded[name] = np.pad(value, pad)
    base = to_numpy(converted_fixture.backbone(inputs, training=False))
    more = to_numpy(converted_fixture.backbone(padded, training=False))
    np.testing.assert_allclose(more["text_sequence"][:, :12], base["text_sequence"], atol=1e-5)
    np.testing.assert_allclose(more["image_sequence"][:, :10], base["image_sequence"], atol=1e-5)
    np.testing.assert_allclose(more["text_pooled"], base["text_pooled"], atol=1e-5)


def test_pooled_only_call_matches_the_original(converted_fixture, fixture_npz):
    # The pooled-only call computes each stream's last layer at position 0
    # alone; the poolers and the matching head must still give the
    # original's numbers.
    inputs = fixture_inputs(fixture_npz)
    backbone = converted_fixture.backbone
    assert backbone.num_text_layers >= 1 and backbone.num_image_layers >= 1
    pooled = to_numpy(backbone(inputs, training=False, pooled_only=True))
    assert sorted(pooled) == ["image_pooled", "text_pooled"]
    for name, value in pooled.items():
        np.testing.assert_allclose(value, fixture_npz[f"outputs/{name}"],
                                   atol=1e-5, rtol=0, err_msg=name)
    retriever = keras_interbert.InterBERTRetriever.from_pretrained(
        converted_fixture)
    np.testing.assert_allclose(
        to_numpy(retriever(inputs, training=False))["itm_logits"],
        fixture_npz["outputs/itm_logits"], atol=1e-5, rtol=0)


def _no_grad():
    if keras.config.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


@pytest.mark.parametrize("normalize_first", [False, True])
def test_first_only_layer_call_is_row_zero_of_the_full_call(normalize_first):
    layer = keras_interbert.layers.InterBERTTransformerLayer(
        intermediate_dim=24, num_heads=2, normalize_first=normalize_first)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 6, 16)).astype("float32")
    padding = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5], "int32")
    attention = rng.integers(0, 2, size=(3, 6, 6)).astype("int32")
    attention[:, :, 0] = 1
    for kwargs in ({}, {"padding_mask": padding},
                   {"padding_mask": padding, "attention_mask": attention}):
        full = keras.ops.convert_to_numpy(layer(x, **kwargs))
        # The full call is keras-hub's block (under TensorFlow outside
        # training, the layer's own `_block` with the fused product).
        # (Called directly, not through Keras' `__call__`: on tensors, and
        # under PyTorch without gradient tracking.)
        tensors = {k: keras.ops.convert_to_tensor(v) for k, v in kwargs.items()}
        with _no_grad():
            hub = keras.ops.convert_to_numpy(
                keras_hub.layers.TransformerEncoder.call(
                    layer, keras.ops.convert_to_tensor(x), **tensors))
        np.testing.assert_allclose(full, hub, atol=1e-6,
                                   err_msg=str(sorted(kwargs)))
        first = keras.ops.convert_to_numpy(layer(x, first_only=True, **kwargs))
        assert first.shape == (3, 1, 16)
        np.testing.assert_allclose(first, full[:, :1], atol=1e-6,
                                   err_msg=str(sorted(kwargs)))
    # Symbolic calls (a functional model) give the cut shape too.
    symbolic = layer(keras.Input((None, 16)), first_only=True)
    assert tuple(symbolic.shape) == (None, 1, 16)


def test_pooled_only_call_in_training_and_in_the_tasks():
    backbone = InterBERTBackbone(**dict(TINY_BACKBONE, num_text_layers=2,
                                        num_image_layers=2))
    inputs = random_backbone_inputs(batch=3)
    full = to_numpy(backbone(inputs))
    pooled = to_numpy(backbone(inputs, pooled_only=True))
    for name in ("text_pooled", "image_pooled"):
        np.testing.assert_allclose(pooled[name], full[name], atol=1e-6)
    # In training it draws the full call's dropout masks: from the same
    # seed-generator states both give the same numbers, bit for bit.
    # (Under PyTorch, Keras' unseeded dropout draws from torch's own
    # generator, whose state is kept too.)
    states = [keras.ops.convert_to_numpy(v)
              for v in backbone.non_trainable_variables]
    assert states, "the dropout layers' seed generators"
    torch_state = None
    if keras.config.backend() == "torch":
        import torch

        torch_state = torch.random.get_rng_state()
    first = to_numpy(backbone(inputs, training=True))
    for variable, state in zip(backbone.non_trainable_variables, states):
        variable.assign(state)
    if torch_state is not None:
        torch.random.set_rng_state(torch_state)
    second = to_numpy(backbone(inputs, training=True, pooled_only=True))
    assert sorted(second) == ["image_pooled", "text_pooled"]
    for name, value in second.items():
        np.testing.assert_array_equal(value, first[name], err_msg=name)
    third = to_numpy(backbone(inputs, training=True, pooled_only=True))
    assert np.abs(third["text_pooled"] - second["text_pooled"]).max() > 0
    # The tasks that read only the pooled vectors call it that way: the
    # backbone node of their graph, and their outputs, are the full call's.
    retriever = keras_interbert.InterBERTRetriever(backbone)
    node = [n for n in backbone._inbound_nodes
            if n.operation is backbone and n.arguments.kwargs.get(
                "pooled_only")]
    assert node, "the retriever's graph calls the full backbone"
    logits = to_numpy(retriever(inputs))["itm_logits"]
    expected = keras.ops.convert_to_numpy(retriever.itm_head(
        full["text_pooled"], full["image_pooled"]))
    np.testing.assert_allclose(logits, expected, atol=1e-6)
    # No second path to any weight: the pooled-only graph is not tracked.
    assert len(retriever.weights) == len(backbone.weights) + len(
        retriever.itm_head.weights)
    # A pretrainer's pair scorer (zero-shot retrieval) takes the same call.
    from keras_interbert.evaluation.pair_scorer import PairScorer

    pretrainer = InterBERTPretrainer(backbone, 11)
    logits = to_numpy(pretrainer(inputs))["itm_logits"]
    np.testing.assert_allclose(PairScorer(pretrainer)(inputs),
                               logits[:, 0] - logits[:, 1], atol=1e-6)


# The counts follow from the variables' shapes, which do not depend on the
# backend: `once` (tests/conftest.py). Building the published configuration
# costs about 34 CPU seconds under JAX.
@pytest.mark.large
@pytest.mark.once
def test_published_parameter_counts():
    pretrainer = InterBERTPretrainer.from_preset("interbert_base_en")
    assert pretrainer.backbone.count_params() == 154_573_568
    assert pretrainer.count_params() == 157_021_565


def test_presets_and_vocabularies():
    assert set(keras_interbert.list_presets()) >= {
        "interbert_base_en", "interbert_base_zh", "interbert_small_en",
        "interbert_tiny_en"}
    for preset, size in (("interbert_base_en", 30522), ("interbert_base_zh", 21128)):
        with open(keras_interbert.preset_vocabulary(preset), encoding="utf-8") as f:
            lines = f.read().rstrip("\n").split("\n")
        assert len(lines) == size
        assert {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"} <= set(lines)
        from keras_interbert.presets import preset_backbone_config
        assert preset_backbone_config(preset)["vocabulary_size"] == size
    with pytest.raises(ValueError, match="interbert_nope"):
        InterBERTBackbone.from_preset("interbert_nope")


def test_output_shapes_and_names():
    backbone = InterBERTBackbone(**TINY_BACKBONE)
    outputs = backbone(random_backbone_inputs(batch=3, text_len=9, regions=6))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "text_sequence": (3, 9, 32), "image_sequence": (3, 6, 32),
        "text_pooled": (3, 40), "image_pooled": (3, 40)}
    pretrainer = InterBERTPretrainer(backbone, num_region_classes=11)
    logits = pretrainer(random_backbone_inputs(batch=3, text_len=9, regions=6))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {
        "msm_logits": (3, 9, 120), "mrm_logits": (3, 6, 11), "itm_logits": (3, 2)}
    # Layer names are an interface.
    names = {layer.name for layer in backbone.layers}
    assert {"single_stream_layer_0", "text_stream_layer_0",
            "image_stream_layer_0", "token_embedding", "text_pooler",
            "image_pooler"} <= names


def test_image_stream_uses_its_own_heads_and_dropout():
    backbone = InterBERTBackbone(**TINY_BACKBONE)
    image_layer = backbone.image_stream_layers[0]
    text_layer = backbone.text_stream_layers[0]
    assert image_layer._self_attention_layer.num_heads == 4
    assert image_layer._self_attention_layer.key_dim == 8
    assert text_layer._self_attention_layer.num_heads == 2
    assert image_layer._feedforward_intermediate_dense.units == 48
    assert image_layer._feedforward_dropout.rate == 0.2
    assert image_layer._self_attention_dropout.rate == 0.2
    assert image_layer._self_attention_layer.dropout == 0.1


def test_msm_decoder_is_tied_to_word_embeddings():
    pretrainer = InterBERTPretrainer(InterBERTBackbone(**TINY_BACKBONE), 11)
    inputs = random_backbone_inputs()
    before = to_numpy(pretrainer(inputs))["msm_logits"]
    embeddings = pretrainer.backbone.token_embedding.embeddings
    embeddings.assign(embeddings.numpy() * 0 + 0.01 if hasattr(embeddings, "numpy")
                      else keras.ops.ones_like(embeddings) * 0.01)
    after = to_numpy(pretrainer(inputs))["msm_logits"]
    assert not np.allclose(before, after)
    # Weights are not duplicated by the tie.
    assert pretrainer.count_params() == (
        pretrainer.backbone.count_params()
        + sum(int(np.prod(w.shape)) for w in pretrainer.msm_head.weights
              if w is not embeddings)
        + pretrainer.mrm_head.count_params() + pretrainer.itm_head.count_params())


def test_all_regions_masked_gives_finite_outputs():
    backbone = InterBERTBackbone(**TINY_BACKBONE)
    inputs = random_backbone_inputs()
    inputs["region_mask"][:] = 0
    inputs["region_features"][:] = 0
    for training in (False, True):
        outputs = to_numpy(backbone(inputs, training=training))
        for name, value in outputs.items():
            assert np.isfinite(value).all(), (name, training)
    no_dropout = InterBERTBackbone(**dict(
        TINY_BACKBONE, dropout=0.0, attention_dropout=0.0, image_dropout=0.0,
        image_attention_dropout=0.0))
    for name, value in to_numpy(no_dropout(inputs)).items():
        assert np.isfinite(value).all(), name


def test_text_path_ignores_regions_when_all_masked():
    backbone = InterBERTBackbone(**TINY_BACKBONE)
    a = random_backbone_inputs(seed=1)
    a["region_mask"][:] = 0
    b = {k: v.copy() for k, v in a.items()}
    b["region_features"] = np.random.default_rng(5).normal(
        size=b["region_features"].shape).astype("float32") * 10
    out_a = to_numpy(backbone(a))
    out_b = to_numpy(backbone(b))
    np.testing.assert_allclose(out_a["text_sequence"], out_b["text_sequence"], atol=1e-6)
    # ...while real regions do change the text path (interaction).
    c = {k: v.copy() for k, v in b.items()}
    c["region_mask"][:] = 1
    out_c = to_numpy(backbone(c))
    assert np.abs(out_c["text_sequence"] - out_a["text_sequence"]).max() > 1e-3


def test_config_round_trip():
    backbone = InterBERTBackbone(**TINY_BACKBONE, name="my_backbone")
    config = backbone.get_config()
    clone = InterBERTBackbone.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(backbone.get_weights())
    inputs = random_backbone_inputs()
    expected = to_numpy(backbone(inputs))
    for name, value in to_numpy(clone(inputs)).items():
        np.testing.assert_allclose(value, expected[name], atol=1e-6)

    pretrainer = InterBERTPretrainer(backbone, num_region_classes=11)
    config = pretrainer.get_config()
    clone = InterBERTPretrainer.from_config(config)
    assert clone.get_config()["backbone"]["config"] == backbone.get_config()
    assert clone.num_region_classes == 11


def test_keras_save_and_load(tmp_path):
    pretrainer = InterBERTPretrainer(InterBERTBackbone(**TINY_BACKBONE), 11)
    inputs = random_backbone_inputs()
    expected = to_numpy(pretrainer(inputs))
    path = str(tmp_path / "model.keras")
    pretrainer.save(path)
    restored = keras.saving.load_model(path)  # safe mode
    assert isinstance(restored, InterBERTPretrainer)
    assert isinstance(restored.backbone, InterBERTBackbone)
    for name, value in to_numpy(restored(inputs)).items():
        np.testing.assert_allclose(value, expected[name], atol=1e-6, err_msg=name)
    backbone_path = str(tmp_path / "backbone.keras")
    pretrainer.backbone.save(backbone_path)
    backbone = keras.saving.load_model(backbone_path)
    np.testing.assert_allclose(
        to_numpy(backbone(inputs))["text_pooled"],
        to_numpy(pretrainer.backbone(inputs))["text_pooled"], atol=1e-6)


def test_mixed_bfloat16_keeps_float32_variables():
    keras.config.set_dtype_policy("mixed_bfloat16")
    pretrainer = InterBERTPretrainer(InterBERTBackbone(**TINY_BACKBONE), 11)
    inputs = random_backbone_inputs()
    assert all(w.dtype == "float32" for w in pretrainer.weights)
    # The encoder computes in bfloat16...
    for name, value in pretrainer.backbone(inputs).items():
        assert keras.backend.standardize_dtype(value.dtype) == "bfloat16", name
    # ...and every head gives finite logits (the tied decoder returns them
    # in float32, which suits the losses).
    for name, value in pretrainer(inputs).items():
        assert np.isfinite(keras.ops.convert_to_numpy(
            keras.ops.cast(value, "float32"))).all(), name


def test_mixed_bfloat16_close_to_float32():
    float_model = InterBERTBackbone(**TINY_BACKBONE)
    inputs = random_backbone_inputs()
    expected = to_numpy(float_model(inputs))
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed = InterBERTBackbone(**TINY_BACKBONE)
    mixed.set_weights(float_model.get_weights())
    got = keras.ops.convert_to_numpy(
        keras.ops.cast(mixed(inputs)["text_sequence"], "float32"))
    assert np.abs(got - expected["text_sequence"]).max() < 0.15


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda x: x.pop("region_mask"), r"missing \['region_mask'\]"),
        (lambda x: x.update(image_ids=np.zeros((2,), "int32")),
         r"unexpected \['image_ids'\]"),
        (lambda x: x.update(region_locations=np.zeros((2, 4, 5), "float32")),
         r"region count.*'region_features' has 5.*'region_locations' has 4"),
        (lambda x: x.update(region_mask=np.ones((2, 6), "int32")),
         r"region count.*'region_mask' has 6"),
        (lambda x: x.update(region_features=np.zeros((2, 5, 30), "float32")),
         r"'region_features'.*expected feature width 24.*\(2, 5, 30\)"),
        (lambda x: x.update(segment_ids=np.zeros((2, 8), "int32")),
         r"text length.*'segment_ids' has 8"),
        (lambda x: x.update(region_locations=np.zeros((2, 5, 4), "float32")),
         r"'region_locations'.*expected 5 values.*\(2, 5, 4\)"),
        (lambda x: x.update(token_ids=np.zeros((2, 7, 1), "int32")),
         r"'token_ids'.*expected rank 2.*\(2, 7, 1\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, pattern):
    inputs = random_backbone_inputs()
    mutate(inputs)
    backbone = InterBERTBackbone(**TINY_BACKBONE)
    with pytest.raises(ValueError, match=pattern):
        backbone(inputs)
    pretrainer = InterBERTPretrainer(backbone, 11)
    with pytest.raises(ValueError, match=pattern):
        pretrainer(inputs)
