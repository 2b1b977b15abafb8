"""SavedModel export for TensorFlow Serving, validated offline.

One export per task (tiny configuration) is built once per session; a fresh
process that imports TensorFlow and tensorflow-text only
(`helpers/serving_fresh_process.py`) answers every signature, and the answers
are matched against the Keras models, whose inputs are built by the data
pipeline's `to_backbone_regions` one image at a time rather than by the
serving graph's batched layout.
"""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import REPO_ROOT
from conftest import TINY_BACKBONE
from conftest import WRITER_BACKEND

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTMultipleChoice
from keras_interbert import InterBERTRetriever
from keras_interbert import InterBERTTextClassifier
from keras_interbert.export import ExportOptions
from keras_interbert.export import export_for_serving
from keras_interbert.export.validate import ExportValidationError
from keras_interbert.export.validate import _check_report
from keras_interbert.export.validate import keras_reference
from keras_interbert.export.validate import read_metadata
from keras_interbert.export.validate import validate_export
from keras_interbert.export.validate import validation_inputs

MAX_REGIONS = 6
SEQUENCE_LENGTH = 12
TEXT_OPS = {"FastWordpieceTokenizeWithOffsets", "NormalizeUTF8",
            "RegexSplitWithOffsets"}


def tiny_vocabulary():
    """120 word pieces: specials, letters, ##letters, some words."""
    words = ["horse", "beach", "runs", "brown", "dog", "man", "a", "the",
             "on", "in", "what", "is", "picture", "?", "."]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokens += [c for c in letters if c not in tokens]
    tokens += ["##" + c for c in letters]
    tokens += [f"unused{i}" for i in range(120 - len(tokens))]
    return tokens


def _run(command, env=None, timeout=600):
    result = subprocess.run(command, capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=timeout,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                                     **(env or {})))
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    vocabulary = root / "vocabulary.txt"
    vocabulary.write_text("".join(t + "\n" for t in tiny_vocabulary()))
    keras.utils.set_random_seed(0)
    models = {
        "retrieval": InterBERTRetriever(InterBERTBackbone(**TINY_BACKBONE)),
        "classifier": InterBERTTextClassifier(
            InterBERTBackbone(**TINY_BACKBONE), num_classes=3),
        "choice": InterBERTMultipleChoice(
            InterBERTBackbone(**TINY_BACKBONE), num_options=3),
    }
    options = {
        "retrieval": ExportOptions(vocabulary=str(vocabulary),
                                   sequence_length=SEQUENCE_LENGTH,
                                   max_regions=MAX_REGIONS),
        "classifier": ExportOptions(vocabulary=str(vocabulary),
                                    sequence_length=SEQUENCE_LENGTH,
                                    text_pairs=True),
        "choice": ExportOptions(vocabulary=str(vocabulary),
                                sequence_length=SEQUENCE_LENGTH,
                                max_regions=MAX_REGIONS),
    }
    out = {}
    for name, model in models.items():
        export_dir = str(root / name / "1")
        export_for_serving(model, export_dir, options[name])
        out[name] = (model, export_dir)
    return out


@pytest.fixture(scope="session")
def fresh(exports, tmp_path_factory):
    """Every signature of every export, answered in a fresh process."""
    work = tmp_path_factory.mktemp("fresh")
    requests, arguments = {}, []
    for name, (_, export_dir) in exports.items():
        metadata = read_metadata(export_dir)
        requests[name] = {
            f"{signature}#{batch}": validation_inputs(metadata, signature,
                                                      batch, seed=batch)
            for signature in metadata["signature_names"] + ["serving_default"]
            for batch in (1, 16)}
        flat = {f"{request}/{k}": (v.astype(str) if v.dtype == object else v)
                for request, inputs in requests[name].items()
                for k, v in inputs.items()}
        np.savez(work / f"{name}.npz", **flat)
        arguments += [export_dir, str(work / f"{name}.npz")]
    script = os.path.join(REPO_ROOT, "tests", "helpers",
                          "serving_fresh_process.py")
    _run([sys.executable, script, str(work)] + arguments,
         env={"KERAS_BACKEND": "tensorflow"})
    report = json.loads((work / "report.json").read_text())
    outputs = {}
    for k, name in enumerate(exports):
        with np.load(work / f"outputs_{k}.npz") as data:
            outputs[name] = {key: data[key] for key in data.files}
    return {"requests": requests, "outputs": outputs, "report": report}


@pytest.fixture(scope="session")
def loaded_signatures(exports):
    """The exports loaded in this process, for the bad-input tests."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    return {name: tf.saved_model.load(export_dir).signatures
            for name, (_, export_dir) in exports.items()}


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", ["retrieval", "classifier", "choice"])
def test_fresh_process_matches_keras(exports, fresh, name):
    model, export_dir = exports[name]
    metadata = read_metadata(export_dir)
    assert fresh["report"]["project_modules"] == []
    checked = 0
    for request, inputs in fresh["requests"][name].items():
        signature = request.split("#")[0]
        if signature == "serving_default":
            signature = metadata["serving_default"]
        expected = keras_reference(model, export_dir, metadata, signature,
                                   inputs)
        assert set(expected) == set(
            metadata["signatures"][signature]["outputs"])
        for output, want in expected.items():
            got = fresh["outputs"][name][f"{request}/{output}"]
            assert got.shape == want.shape, f"{request}/{output}"
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0,
                                       err_msg=f"{name} {request}/{output}")
            checked += 1
    assert checked >= 8


@pytest.mark.tensorflow_only
def test_signatures_ops_and_warmup(exports, fresh):
    expected = {"retrieval": {"serving_default", "score", "embed"},
                "classifier": {"serving_default", "classify_text"},
                "choice": {"serving_default", "choose"}}
    for name, (_, export_dir) in exports.items():
        report = fresh["report"][export_dir]
        assert set(report["signatures"]) == expected[name]
        # Core TensorFlow and tensorflow-text ops only.
        assert report["other_ops"] == [], name
        assert set(report["text_ops"]) == TEXT_OPS, name
        assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & set(
            report["core_ops"])
        # One record per (non-alias) signature and batch size 1 and 8.
        assert report["warmup_records"] == 2 * (len(expected[name]) - 1)
        assert os.path.exists(os.path.join(export_dir, "assets",
                                           "vocabulary.txt"))


@pytest.mark.tensorflow_only
def test_edge_cases_in_the_graph(exports, loaded_signatures):
    """Truncated text, zero regions, more regions than slots, padding."""
    import tensorflow as tf

    metadata = read_metadata(exports["retrieval"][1])
    score = loaded_signatures["retrieval"]["score"]
    x = validation_inputs(metadata, "score", 6, seed=3)

    def run(inputs):
        feed = {k: tf.constant(v.astype(str).tolist() if v.dtype == object
                               else v) for k, v in inputs.items()}
        return score(**feed)["itm_logits"].numpy()

    base = run(x)
    changed = {k: v.copy() for k, v in x.items()}
    # Words past the packed length change nothing (row 0 is over-long).
    changed["text"][0] = x["text"][0] + " dog dog dog"
    # An image without regions ignores its feature rows (row 2).
    changed["region_features"][2] += 5.0
    # Rows past num_regions are padding (row 4 holds NaN there).
    changed["region_boxes"][4, 3:] = -7.0
    np.testing.assert_allclose(run(changed), base, atol=1e-6)
    # Row 3 has more regions than slots: the first MAX_REGIONS fill the
    # slots, the rest still count in the global slot's mean.
    assert x["num_regions"][3] > MAX_REGIONS
    changed["region_features"][3, -1] += 1.0
    moved = run(changed)
    assert not np.allclose(moved[3], base[3])
    np.testing.assert_allclose(np.delete(moved, 3, 0), np.delete(base, 3, 0),
                               atol=1e-6)


BAD_INPUTS = [
    ("wrong rank", "region_features", lambda x: x["region_features"][0],
     "rank 3"),
    ("wrong width", "region_features",
     lambda x: x["region_features"][..., :-1], "feature width 24"),
    ("too many regions", "num_regions",
     lambda x: x["num_regions"] + x["region_features"].shape[1],
     "values in [0, N]"),
    ("negative regions", "num_regions", lambda x: x["num_regions"] * 0 - 1,
     "values in [0, N]"),
    ("negative box", "region_boxes",
     lambda x: np.where(np.arange(4) == 0, -3.0, x["region_boxes"]).astype(
         np.float32), "non-negative"),
    ("NaN box", "region_boxes",
     lambda x: np.where(np.arange(4) == 2, np.nan, x["region_boxes"]).astype(
         np.float32), "finite values"),
    ("reversed box", "region_boxes",
     lambda x: x["region_boxes"][..., [2, 3, 0, 1]], "x2 >= x1"),
    ("NaN feature", "region_features",
     lambda x: np.full_like(x["region_features"], np.nan), "finite values"),
    ("huge feature", "region_features",
     lambda x: np.full_like(x["region_features"], 3e38), "at most 1e+06"),
    ("huge box", "region_boxes",
     lambda x: np.where(np.arange(4) >= 2, 1e30, x["region_boxes"]).astype(
         np.float32), "at most 1e+06"),
    ("text rank", "text", lambda x: x["text"][:, None], "[batch] string"),
    ("batch mismatch", "image_size", lambda x: x["image_size"][:1],
     "batch size of the text"),
    ("box width", "region_boxes", lambda x: x["region_boxes"][..., :3],
     "[batch, regions, 4]"),
    ("image size", "image_size", lambda x: x["image_size"] * 0,
     "positive (height, width)"),
]


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("case,name,corrupt,message", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_an_invalid_argument_naming_it(
        exports, loaded_signatures, case, name, corrupt, message):
    import tensorflow as tf

    metadata = read_metadata(exports["retrieval"][1])
    x = validation_inputs(metadata, "score", 3, seed=1)
    x[name] = corrupt(x)
    feed = {k: tf.constant(v.astype(str).tolist() if v.dtype == object else v)
            for k, v in x.items()}
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        loaded_signatures["retrieval"]["score"](**feed)
    assert f"Invalid serving input `{name}`" in str(error.value)
    assert message in str(error.value)


@pytest.mark.tensorflow_only
def test_wrong_dtype_is_an_invalid_argument(exports, loaded_signatures):
    import tensorflow as tf

    metadata = read_metadata(exports["retrieval"][1])
    x = validation_inputs(metadata, "score", 2)
    feed = {k: tf.constant(v.astype(str).tolist() if v.dtype == object else v)
            for k, v in x.items()}
    feed["region_features"] = tf.cast(feed["region_features"], tf.float64)
    # The signature itself rejects a dtype, by the input's position among
    # the sorted input names (docs/serving.md lists them).
    position = sorted(feed).index("region_features")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"input #{position}\(zero-based\) was expected "
                       "to be a float tensor but is a double tensor"):
        loaded_signatures["retrieval"]["score"](**feed)


@pytest.mark.tensorflow_only
def test_bad_options_and_text_pair(exports, loaded_signatures):
    import tensorflow as tf

    for name, signature, key, corrupt, message in [
            ("choice", "choose", "options", lambda v: v[:, :2],
             "[batch, 3] with the batch size"),
            ("classifier", "classify_text", "text_pair", lambda v: v[:1],
             "batch size of `text`")]:
        metadata = read_metadata(exports[name][1])
        x = validation_inputs(metadata, signature, 2)
        x[key] = corrupt(x[key])
        feed = {k: tf.constant(v.astype(str).tolist() if v.dtype == object
                               else v) for k, v in x.items()}
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"Invalid serving input `{key}`.*"
                           + message.replace("[", r"\[").replace("]", r"\]")):
            loaded_signatures[name][signature](**feed)


@pytest.mark.tensorflow_only
def test_keras_file_from_another_backend_exports_and_validates(
        tmp_path, saved_by_other_backend):
    """A pretrainer saved under another backend exports (scored by its ITM head).

    The file is the one tests/test_cross_backend.py loads in this session
    (conftest.py's `saved_by_other_backend`, written under PyTorch for the
    TensorFlow session)."""
    assert WRITER_BACKEND != "tensorflow"
    saved = saved_by_other_backend / "model.keras"
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("".join(t + "\n" for t in tiny_vocabulary()))
    export_dir = str(tmp_path / "pretrained" / "1")
    metadata = export_for_serving(
        str(saved), export_dir,
        ExportOptions(vocabulary=str(vocabulary), max_regions=MAX_REGIONS,
                      sequence_length=SEQUENCE_LENGTH))
    assert metadata["model_class"] == "InterBERTPretrainer"
    assert metadata["signature_names"] == ["score", "embed"]
    # Fresh process, ops, warmup replay, saved_model_cli and the Keras
    # model's outputs on batch sizes 1 and 16 with the edge cases.
    summary = validate_export(export_dir, model=str(saved))
    assert summary["differences"]["score/itm_logits"] <= 1e-5
    assert "signature_def['serving_default']" in summary["saved_model_cli"]
    assert "inputs['region_boxes']" in summary["saved_model_cli"]


def test_validator_reports_forbidden_and_unknown_ops():
    metadata = {"signature_names": ["score"], "serving_default": "score",
                "signatures": {"score": {"inputs": {"text": {}},
                                         "outputs": {"itm_logits": ""}}}}
    report = {"other_ops": ["InterBERTCustomOp"], "forbidden_ops": ["PyFunc"],
              "project_modules": ["keras_interbert"],
              "warmup": {"present": True, "records": 0, "failures": []},
              "signatures": {"score": {"inputs": {"text": {}},
                                       "outputs": ["itm_logits"]}}}
    problems = []
    _check_report(report, metadata, problems)
    joined = "\n".join(problems)
    for expected in ("InterBERTCustomOp", "PyFunc", "project modules",
                     "no records", "serving_default"):
        assert expected in joined
    assert issubclass(ExportValidationError, AssertionError)


def test_export_needs_the_tensorflow_backend(tmp_path):
    if BACKEND == "tensorflow":
        pytest.skip("checks the error raised under JAX and PyTorch")
    model = InterBERTRetriever(InterBERTBackbone(**TINY_BACKBONE))
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        export_for_serving(model, str(tmp_path / "m" / "1"))


def test_export_options_defaults_per_task():
    matching = ExportOptions().resolved("matching")
    assert (matching.sequence_length, matching.max_regions,
            matching.truncate_after_packing) == (30, 101, True)
    choice = ExportOptions().resolved("multiple_choice")
    assert (choice.sequence_length, choice.max_regions) == (60, 99)
    with pytest.raises(ValueError, match="text_pairs"):
        ExportOptions(text_pairs=True).resolved("matching")
    with pytest.raises(ValueError, match="max_regions"):
        ExportOptions(max_regions=0).resolved("matching")


def _preprocessed_retriever(tmp_path, sequence_length=9, max_regions=4):
    from keras_interbert.preprocessing import InterBERTRetrieverPreprocessor
    from keras_interbert.preprocessing import InterBERTTokenizer

    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("".join(t + "\n" for t in tiny_vocabulary()))
    preprocessor = InterBERTRetrieverPreprocessor(
        InterBERTTokenizer(vocabulary=str(vocabulary)),
        sequence_length=sequence_length, max_regions=max_regions)
    keras.utils.set_random_seed(1)
    return InterBERTRetriever(InterBERTBackbone(**TINY_BACKBONE),
                              preprocessor=preprocessor), vocabulary


def test_export_options_come_from_the_model_preprocessor(tmp_path):
    model, _ = _preprocessed_retriever(tmp_path)
    options = ExportOptions().resolved("matching", model.preprocessor)
    assert (options.sequence_length, options.max_regions,
            options.truncate_after_packing) == (9, 4, True)
    same = ExportOptions(sequence_length=9).resolved("matching",
                                                     model.preprocessor)
    assert same.sequence_length == 9
    with pytest.raises(ValueError, match=r"sequence_length=30 contradicts.*"
                                         r"sequence_length=9"):
        ExportOptions(sequence_length=30).resolved("matching",
                                                   model.preprocessor)
    with pytest.raises(ValueError, match=r"max_regions=101 contradicts.*"
                                         r"max_regions=4"):
        ExportOptions(max_regions=101).resolved("matching", model.preprocessor)


def test_export_reads_the_model_and_serves_what_predict_gives(tmp_path):
    """No option: lengths, slots and vocabulary come from the model; the
    `score` signature answers raw inputs as `predict` does on them."""
    if BACKEND != "tensorflow":
        pytest.skip("exports run under TensorFlow")
    import tensorflow as tf

    model, _ = _preprocessed_retriever(tmp_path)
    path = str(tmp_path / "retriever.keras")
    model.save(path)
    export_dir = str(tmp_path / "served" / "1")
    metadata = export_for_serving(path, export_dir)
    assert (metadata["sequence_length"], metadata["max_regions"]) == (9, 4)
    with pytest.raises(ValueError, match="not the vocabulary of the model"):
        export_for_serving(path, str(tmp_path / "other" / "1"),
                           ExportOptions(vocabulary="interbert_tiny_en"))

    rng = np.random.default_rng(0)
    raw = {
        "text": np.array(["a brown dog runs on the beach", "horse",
                          "what is the man in the picture ?"]),
        "region_features": rng.normal(size=(3, 7, TINY_BACKBONE[
            "image_feature_dim"])).astype("float32"),
        "region_boxes": np.tile(np.array([[10, 20, 110, 220]], "float32"),
                                (3, 7, 1)),
        "image_size": np.array([[300, 400]] * 3, "int32"),
        "num_regions": np.array([7, 2, 5], "int32"),
    }
    served = tf.saved_model.load(export_dir).signatures["score"](
        **{k: tf.constant(v) for k, v in raw.items()})
    expected = model.predict(raw, verbose=0)["itm_logits"]
    np.testing.assert_allclose(served["itm_logits"].numpy(), expected,
                               rtol=1e-4, atol=1e-5)


def test_serving_task_registry():
    from keras_interbert.export import serving_task
    from keras_interbert.export.tasks import register
    from keras_interbert.export.tasks import serving_tasks
    from keras_interbert.export.tasks import task_named

    assert sorted(serving_tasks()) == ["matching", "multiple_choice",
                                       "text_classifier"]
    assert serving_task(InterBERTRetriever(
        InterBERTBackbone(**TINY_BACKBONE))) == "matching"
    with pytest.raises(ValueError, match="already registered"):
        register(task_named("matching"))
    with pytest.raises(ValueError, match="registered: "):
        task_named("vqa")
    with pytest.raises(Exception, match="registered serving tasks are"):
        serving_task(InterBERTBackbone(**TINY_BACKBONE))
