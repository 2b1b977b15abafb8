"""Writes an InterBERT task as a SavedModel for TensorFlow Serving."""
import os
import tempfile

import keras
import tensorflow as tf

from keras_interbert.export.export_options import ExportOptions
from keras_interbert.export.image_serving import SCORE_IMAGE_IO
from keras_interbert.export.image_serving import append_image_warmup
from keras_interbert.export.image_serving import check_feature_source
from keras_interbert.export.image_serving import score_image_signature
from keras_interbert.export.tasks import serving_tasks
from keras_interbert.export.tasks import task_named
from keras_interbert.export.tasks import task_of
from keras_interbert.export.warmup import write_warmup_requests
from keras_interbert.models.loading import ModelLoadError
from keras_interbert.models.loading import check_vocabulary
from keras_interbert.models.loading import resolve_source
from keras_interbert.preprocessing import InterBERTTextPacker
from keras_interbert.preprocessing import InterBERTTokenizer
from keras_interbert.utils.atomic import atomic_directory
from keras_interbert.utils.atomic import write_json_atomically
from keras_interbert.vision.region_feature_extractor import feature_fingerprint

METADATA_FILE = os.path.join("assets.extra", "interbert_export.json")
VOCABULARY_FILE = "vocabulary.txt"
_BUNDLED_BY_SIZE = {30522: "interbert_base_en", 21128: "interbert_base_zh"}

def serving_task(model):
    """The name of the registered serving task (`keras_interbert.export.
    tasks`) that exports `model`: `"matching"`, `"text_classifier"`,
    `"multiple_choice"`, ..."""
    task = task_of(model)
    if task is None:
        known = ", ".join(
            f"{name} ({', '.join(c.__name__ for c in t.model_classes())})"
            for name, t in serving_tasks().items())
        raise ModelLoadError(
            f"cannot export a {type(model).__name__} for serving; the "
            f"registered serving tasks are {known}.")
    return task.name


def _tokenizer(options, backbone, preprocessor=None):
    vocabulary = options.vocabulary
    if preprocessor is not None:
        # The vocabulary the model was trained with travels in its file.
        trained = preprocessor.tokenizer.get_vocabulary()
        if vocabulary is None:
            vocabulary = trained
        else:
            given = InterBERTTokenizer(vocabulary).get_vocabulary()
            if given != trained:
                raise ValueError(
                    f"vocabulary {vocabulary!r} ({len(given):,} word pieces) "
                    "is not the vocabulary of the model's preprocessor "
                    f"({len(trained):,} word pieces); leave it unset to "
                    "export the model's own.")
    if vocabulary is None:
        vocabulary = _BUNDLED_BY_SIZE.get(backbone.vocabulary_size)
        if vocabulary is None:
            raise ValueError(
                f"the model has a vocabulary of {backbone.vocabulary_size:,} "
                "word pieces, which matches no bundled vocabulary; pass "
                "`vocabulary=` (the vocabulary file the model was trained "
                "with).")
    tokenizer = InterBERTTokenizer(vocabulary, lowercase=options.lowercase,
                                   special_tokens_in_strings=False)
    check_vocabulary(backbone, tokenizer)
    return tokenizer


def _signature_io(task, model, options, names):
    described = dict(task_named(task).describe_signatures(model, options),
                     score_image=SCORE_IMAGE_IO)
    return {
        name: {"inputs": {k: {"dtype": d, "shape": s}
                          for k, (d, s) in described[name][0].items()},
               "outputs": described[name][1]}
        for name in names
    }


def export_for_serving(model, export_dir, options=None, model_name=None,
                       overwrite=False, image_extractor=None,
                       grid_levels=(6,), allow_other_features=False):
    """Writes `model` as a SavedModel that TensorFlow Serving loads.

    The signatures take raw values (caption strings, region features and
    pixel boxes) and tokenize, pack and lay out the regions in the graph,
    so the SavedModel needs no project code: only TensorFlow and
    tensorflow-text ops. Besides the graph the export holds
    `assets/vocabulary.txt`, `assets.extra/interbert_export.json` (what the
    graph does: lengths, slot counts, truncation rules, signatures) and,
    unless `options.warmup` is off, `assets.extra/tf_serving_warmup_requests`.

    Needs the TensorFlow backend; a `.keras` file saved under any backend
    loads under it.

    Args:
        model: an `InterBERTRetriever`, `InterBERTPretrainer` (scored with
            its matching head), `InterBERTTextClassifier` or
            `InterBERTMultipleChoice`; or a `.keras` path or preset name.
        export_dir: the version directory to write
            (`saved_models/<name>/<version>`).
        options: an `ExportOptions`.
        model_name: the name TensorFlow Serving serves the model under (in
            the warmup requests); defaults to the parent directory's name.
        overwrite: replace an existing `export_dir`. Either way the new
            version is written to a hidden folder next to `export_dir` and
            renamed into place when complete (warmup included): a failed or
            killed export leaves the old version, or nothing, never a
            partial one.
        image_extractor: optional `RegionFeatureExtractor` (or a `.keras`
            path to one), for a matching model only: adds the `score_image`
            signature (encoded image and caption in; decoding, resizing,
            the extractor on `grid_levels` grid boxes and the model in the
            graph; see `image_serving`).
        grid_levels: the grid of regions `score_image` pools.
        allow_other_features: export with an `image_extractor` that does
            not give the features the model was trained on (its
            preprocessor's `region_feature_source`), with a warning line,
            instead of refusing it (see `image_serving.check_feature_source`).

    Returns:
        The export's metadata (the content of `interbert_export.json`).
    """
    if keras.config.backend() != "tensorflow":
        raise RuntimeError(
            "export_for_serving needs KERAS_BACKEND=tensorflow (the backend "
            f"now is {keras.config.backend()!r}); a .keras file saved under "
            "JAX or PyTorch loads under TensorFlow. `python -m "
            "keras_interbert.export` switches the backend itself.")
    export_dir = os.fspath(export_dir)
    if os.path.exists(export_dir) and not overwrite:
        raise FileExistsError(
            f"{export_dir} exists; pass overwrite=True (--overwrite) or "
            "export a new version.")
    source = model if isinstance(model, (str, os.PathLike)) else None
    model, _ = resolve_source(model)
    task = serving_task(model)
    preprocessor = getattr(model, "preprocessor", None)
    options = (options or ExportOptions()).resolved(task, preprocessor)
    backbone = model.backbone
    if options.sequence_length > backbone.max_sequence_length:
        raise ValueError(
            f"sequence_length {options.sequence_length} exceeds the model's "
            f"max_sequence_length {backbone.max_sequence_length}.")
    tokenizer = _tokenizer(options, backbone, preprocessor)
    packer = InterBERTTextPacker(
        options.sequence_length, cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id,
        truncate_after_packing=options.truncate_after_packing)
    signatures = task_named(task).build_signatures(model, tokenizer, packer,
                                                   options)
    if image_extractor is not None:
        extractor_name = (os.fspath(image_extractor) if isinstance(
            image_extractor, (str, os.PathLike)) else None)
        image_extractor = _image_extractor(image_extractor, task, backbone)
        check_feature_source(
            image_extractor, getattr(preprocessor, "region_feature_source",
                                     None),
            name=extractor_name, allow_other=allow_other_features)
        signatures.update(score_image_signature(
            signatures["score"][0], image_extractor, grid_levels))

    if model_name is None:
        model_name = os.path.basename(os.path.dirname(
            os.path.abspath(export_dir))) or "interbert"
    # The version is built in a hidden folder next to it (a name a model
    # server never loads) and takes its place only when complete, warmup
    # included; an old version with the same number is deleted only then.
    with atomic_directory(export_dir, overwrite=overwrite) as staging:
        return _write_export(staging, model, source, task, options, backbone,
                             tokenizer, signatures, image_extractor,
                             grid_levels, model_name)


def _write_export(export_dir, model, source, task, options, backbone,
                  tokenizer, signatures, image_extractor, grid_levels,
                  model_name):
    archive = keras.export.ExportArchive()
    archive.track(model)
    if image_extractor is not None:
        archive.track(image_extractor)
    with tempfile.TemporaryDirectory() as tmp:
        vocabulary_path = os.path.join(tmp, VOCABULARY_FILE)
        with open(vocabulary_path, "w", encoding="utf-8") as f:
            f.writelines(token + "\n" for token in tokenizer.get_vocabulary())
        # The vocabulary travels as an asset of the SavedModel (token -> id
        # table); the tokenizer's WordPiece model, built from the same
        # tokens, is a constant of the graph.
        archive.track(tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocabulary_path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
            default_value=-1, name="vocabulary"))
        # The first endpoint is also `serving_default`.
        for name, (fn, specs) in signatures.items():
            archive.add_endpoint(name, fn, list(specs))
        archive.write_out(export_dir, verbose=False)

    names = list(signatures)
    uses_regions = task_named(task).uses_regions
    metadata = {
        "format": "keras_interbert.serving",
        "version": 1,
        "model_name": model_name,
        "model_class": type(model).__name__,
        "task": task,
        "source": None if source is None else os.fspath(source),
        "serving_default": names[0],
        "signature_names": names,
        "signatures": _signature_io(task, model, options, names),
        "sequence_length": options.sequence_length,
        "truncate_after_packing": options.truncate_after_packing,
        "max_regions": options.max_regions if uses_regions else None,
        "region_slots": options.max_regions + 1 if uses_regions else 1,
        "image_feature_dim": backbone.image_feature_dim,
        "vocabulary_size": backbone.vocabulary_size,
        "lowercase": options.lowercase,
        "text_pairs": options.text_pairs,
        "num_classes": getattr(model, "num_classes", None),
        "num_options": getattr(model, "num_options", None),
        "image_size_order": "height, width",
        "region_truncation": "the first max_regions of the num_regions real "
                             "regions are kept (detector score order)",
        "global_slot": "mean of all num_regions real region features, "
                       "location [0, 0, 1, 1, 1], mask 1",
        # What made the features the model was trained on (its
        # preprocessor's record; None when not known).
        "region_feature_source": getattr(
            getattr(model, "preprocessor", None), "region_feature_source",
            None),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    if image_extractor is not None:
        metadata["image_extractor"] = {
            "image_size": image_extractor.image_size,
            "resize": "longer side to image_size (bilinear), zero padding "
                      "bottom and right",
            "grid_levels": list(grid_levels),
            "feature_dim": image_extractor.feature_dim,
            "feature_stride": image_extractor.feature_stride,
            "fingerprint": feature_fingerprint(image_extractor),
        }
    path = os.path.join(export_dir, METADATA_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomically(path, metadata)
    if options.warmup:
        # score_image's requests carry encoded images: written apart.
        write_warmup_requests(export_dir, model_name, dict(
            metadata, signature_names=[n for n in names
                                       if n != "score_image"]))
        if image_extractor is not None:
            append_image_warmup(export_dir, model_name)
    return metadata


def _image_extractor(extractor, task, backbone):
    if task != "matching":
        raise ValueError("image_extractor (score_image) needs a matching "
                         f"model (retriever or pretrainer); this one is "
                         f"{task!r}.")
    if isinstance(extractor, (str, os.PathLike)):
        extractor = keras.saving.load_model(extractor, compile=False)
    if extractor.feature_dim != backbone.image_feature_dim:
        raise ValueError(
            f"image_extractor gives {extractor.feature_dim}-d features; the "
            f"model expects image_feature_dim {backbone.image_feature_dim}.")
    return extractor


def next_version(model_dir):
    """One more than the largest integer version under `model_dir` (or 1)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if d.isdigit()]
    return max(versions, default=0) + 1
