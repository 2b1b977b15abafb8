"""Preset directories: a model's config, weights and vocabulary in a folder.

The layout follows keras-hub's, so the files mean what a keras-hub user
expects them to mean:

| file | holds |
|---|---|
| `config.json` | the backbone: `{"class_name", "config"}` |
| `model.weights.h5` | the backbone's weights |
| `task.json` | the task (pretrainer, retriever, ...) with its backbone, when a task was saved |
| `task.weights.h5` | all of the task's weights |
| `preprocessor.json`, `vocabulary.txt` | the task's preprocessor, when it has one |
| `metadata.json` | versions of keras and keras-interbert, the saved class |

`save_to_preset(model, directory)` writes the whole folder at once (it
appears complete or not at all); `load_preset(directory)` gives the task if
one was saved, else the backbone. The classes' `from_preset(directory)` call
this module; built-in preset names keep giving random weights.
"""
import json
import os

import keras

from keras_interbert.utils.atomic import atomic_directory
from keras_interbert.utils.atomic import read_json

BACKBONE_CONFIG = "config.json"
BACKBONE_WEIGHTS = "model.weights.h5"
TASK_CONFIG = "task.json"
TASK_WEIGHTS = "task.weights.h5"
METADATA = "metadata.json"


def is_preset_directory(preset):
    """Whether `preset` names a folder holding a saved backbone."""
    return isinstance(preset, (str, os.PathLike)) and os.path.isfile(
        os.path.join(os.fspath(preset), BACKBONE_CONFIG))


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def save_to_preset(model, preset_dir, overwrite=False):
    """Writes `model` (a backbone or a task) as a preset directory.

    The folder is filled under a temporary name and takes `preset_dir`'s
    place only when every file is written. An existing `preset_dir` is
    refused unless `overwrite`.
    """
    from keras_interbert import __version__
    from keras_interbert.models.interbert_backbone import InterBERTBackbone

    backbone = model if isinstance(model, InterBERTBackbone) else getattr(
        model, "backbone", None)
    if not isinstance(backbone, InterBERTBackbone):
        raise ValueError("save_to_preset takes an InterBERTBackbone or a task "
                         f"holding one; received {type(model).__name__}.")
    with atomic_directory(preset_dir, overwrite=overwrite) as folder:
        _write_json(os.path.join(folder, BACKBONE_CONFIG),
                    keras.saving.serialize_keras_object(backbone))
        backbone.save_weights(os.path.join(folder, BACKBONE_WEIGHTS))
        if model is not backbone:
            _write_json(os.path.join(folder, TASK_CONFIG),
                        keras.saving.serialize_keras_object(model))
            model.save_weights(os.path.join(folder, TASK_WEIGHTS))
            preprocessor = getattr(model, "preprocessor", None)
            if preprocessor is not None:
                preprocessor.save_to_preset(folder)
        _write_json(os.path.join(folder, METADATA), {
            "keras_version": keras.__version__,
            "keras_interbert_version": __version__,
            "class_name": type(model).__name__,
        })
    return os.fspath(preset_dir)


def _deserialize(path, what):
    # Importing the package registers every serializable class.
    import keras_interbert  # noqa: F401

    config = read_json(path, what)
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"{path}: the {what} has no `class_name`; it was not "
                         "written by save_to_preset.")
    try:
        return keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot rebuild the {what} ({e}).") from e


def load_backbone(preset_dir):
    """The backbone saved in `preset_dir`, with its weights."""
    preset_dir = os.fspath(preset_dir)
    backbone = _deserialize(os.path.join(preset_dir, BACKBONE_CONFIG),
                            "backbone config")
    _load_weights(backbone, os.path.join(preset_dir, BACKBONE_WEIGHTS))
    return backbone


def _load_weights(model, path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file.")
    try:
        model.load_weights(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot load the weights ({e}); the file is "
                         "damaged or belongs to another model.") from e


def load_preset(preset_dir):
    """The task saved in `preset_dir` (with its preprocessor), else the
    backbone; weights loaded."""
    preset_dir = os.fspath(preset_dir)
    if not is_preset_directory(preset_dir):
        raise ValueError(f"{preset_dir!r} is not a preset directory (no "
                         f"{BACKBONE_CONFIG}).")
    task_config = os.path.join(preset_dir, TASK_CONFIG)
    if not os.path.isfile(task_config):
        return load_backbone(preset_dir)
    task = _deserialize(task_config, "task config")
    _load_weights(task, os.path.join(preset_dir, TASK_WEIGHTS))
    if os.path.isfile(os.path.join(preset_dir, "preprocessor.json")):
        # The vocabulary of a saved preprocessor is a file of the folder.
        task.set_preprocessor(_load_preprocessor(preset_dir))
    return task


def _load_preprocessor(preset_dir):
    import keras_interbert  # noqa: F401  (registers every class)
    from keras_interbert.preprocessing import InterBERTPreprocessor

    path = os.path.join(preset_dir, "preprocessor.json")
    name = read_json(path, "preprocessor config").get("class_name")
    # Any registered preprocessor class, wherever it is defined.
    cls = keras.saving.get_registered_object(f"keras_interbert>{name}")
    if not (isinstance(cls, type) and issubclass(cls, InterBERTPreprocessor)):
        raise ValueError(f"{path}: unknown preprocessor class {name!r}.")
    return cls.from_preset(preset_dir)


def task_from_preset(cls, preset_dir, **kwargs):
    """`cls.from_preset(directory)`: the saved task if it is a `cls`, else
    `cls.from_pretrained` of what was saved (e.g. a retriever from a saved
    pretrainer keeps its matching head), `kwargs` going there."""
    model = load_preset(preset_dir)
    if isinstance(model, cls):
        if kwargs:
            raise ValueError(
                f"{preset_dir} holds a {cls.__name__}; it loads as saved, "
                f"without arguments (received {sorted(kwargs)}).")
        return model
    if not hasattr(cls, "from_pretrained"):
        raise ValueError(f"{preset_dir} holds a {type(model).__name__}, not "
                         f"a {cls.__name__}.")
    return cls.from_pretrained(model, **kwargs)
