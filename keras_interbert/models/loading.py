"""Loading InterBERT models from `.keras` files, presets and objects.

Every finetuning task starts from "something pretrained": a `.keras` file
written by `recipes/pretrain.py` or by the converters (an
`InterBERTPretrainer`), a task saved earlier, a bare backbone, or a preset
name (random weights, for tests and from-scratch runs). `load_interbert`
reads a file with clear errors; `backbone_and_parts` takes any of them apart.
"""
import os
import zipfile

import keras

from keras_interbert.models.interbert_backbone import InterBERTBackbone


class ModelLoadError(ValueError):
    """A file or object that cannot be used as an InterBERT model."""


def load_interbert(path, compile=False):
    """Loads a `.keras` file holding an InterBERT model, in safe mode.

    Args:
        path: the `.keras` file.
        compile: whether to restore the compile state (optimizer) too.

    Returns:
        The model: an `InterBERTBackbone`, an `InterBERTPretrainer` or a task.

    Raises:
        ModelLoadError: the file is missing, is not a `.keras` archive (or is
            truncated), or holds a model that is not InterBERT.
    """
    # Importing the package registers every serializable class.
    import keras_interbert  # noqa: F401

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file.")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path}: not a .keras archive (a .keras file is a zip; this one "
            "is not, or it is truncated).")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"{path}: unreadable .keras archive ({e}).") from e
    if bad is not None:
        raise ModelLoadError(f"{path}: corrupted .keras archive (member "
                             f"{bad!r} fails its checksum).")
    if "config.json" not in names:
        raise ModelLoadError(f"{path}: not a .keras model file (no "
                             "config.json inside).")
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as e:  # Keras raises TypeError/ValueError/KeyError...
        raise ModelLoadError(
            f"{path}: could not be loaded as a Keras model: "
            f"{type(e).__name__}: {e}") from e
    if _backbone_of(model) is None:
        raise ModelLoadError(
            f"{path}: holds a {type(model).__name__}, not an InterBERT model "
            "(expected an InterBERTBackbone, an InterBERTPretrainer or an "
            "InterBERT task).")
    return model


def _backbone_of(model):
    if isinstance(model, InterBERTBackbone):
        return model
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, InterBERTBackbone):
        return backbone
    return None


def resolve_source(source, preset_overrides=None):
    """Turns a model source into a model object.

    Args:
        source: a model object, a `.keras` path, or a preset name.
        preset_overrides: backbone config overrides used with a preset name
            (e.g. `image_feature_dim`).

    Returns:
        `(model, description)`.
    """
    from keras_interbert.presets import list_presets

    if isinstance(source, keras.Model):
        return source, f"a {type(source).__name__} object"
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if name in list_presets():
            from keras_interbert.models.interbert_pretrainer import (
                InterBERTPretrainer,
            )

            model = InterBERTPretrainer.from_preset(
                name, **(preset_overrides or {}))
            return model, f"preset {name} (random weights)"
        from keras_interbert.models import preset_io

        if preset_io.is_preset_directory(name):
            return preset_io.load_preset(name), f"preset directory {name}"
        if name.endswith(".keras") or os.path.exists(name):
            return load_interbert(name), name
        raise ModelLoadError(
            f"{name!r} is neither a .keras file nor a preset; presets are "
            f"{list_presets()}.")
    raise ModelLoadError(
        f"cannot build an InterBERT task from a {type(source).__name__}; "
        "expected a model, a .keras path or a preset name.")


def backbone_of(model, what="model"):
    """The `InterBERTBackbone` of `model`, or a `ModelLoadError`."""
    backbone = _backbone_of(model)
    if backbone is None:
        raise ModelLoadError(
            f"{what} is a {type(model).__name__}, not an InterBERT model.")
    return backbone


def check_vocabulary(backbone, tokenizer, what="model"):
    """Raises a `ValueError` if `tokenizer` and `backbone` disagree on the vocabulary."""
    size = tokenizer.vocabulary_size()
    if size != backbone.vocabulary_size:
        raise ValueError(
            f"{what} has a vocabulary of {backbone.vocabulary_size:,} word "
            f"pieces but the tokenizer has {size:,}: they do not belong "
            "together (e.g. an English model with the Chinese vocabulary). "
            "Use the tokenizer of the model's preset.")
