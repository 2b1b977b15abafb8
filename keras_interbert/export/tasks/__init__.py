"""The kinds of served task, one module each, and their registry.

A `ServingTask` says everything the exporter and the validator need about
one kind of model: which classes it covers, its default text and region
settings, its signatures (traced TF functions on raw client values), how
those signatures' inputs and outputs are described in
`interbert_export.json`, and the Keras reference the validator compares a
SavedModel's answers with. `exporter.py` and `validate.py` only look tasks
up here; adding a kind of task (say VQA) is one new module in this folder
plus its import below (docs/adding-a-task.md).
"""
import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class ServingTask:
    """One kind of served task.

    Attributes:
        name: the task name recorded in the export (`"matching"`).
        model_classes: a callable returning the model classes exported as
            this task (called late, so task modules need not import every
            model at import time).
        defaults: `sequence_length`, `max_regions` and
            `truncate_after_packing` for a model without a preprocessor.
        min_sequence_length: the shortest packed text that makes sense.
        uses_regions: whether the signatures take an image.
        accepts_text_pairs: whether `ExportOptions(text_pairs=True)` applies.
        build_signatures: `(model, tokenizer, packer, options) -> {name:
            (function, input_specs)}`; the first is `serving_default`.
        describe_signatures: `(model, options) -> {name: (inputs,
            outputs)}`, inputs `{key: (dtype, shape text)}`, outputs `{key:
            shape text}`.
        reference: `(model, export_dir, metadata, signature, inputs) ->
            {output: numpy}`, the Keras model's answer to a request, with
            inputs built by the project's data pipeline.
    """

    name: str
    model_classes: Callable
    defaults: dict
    min_sequence_length: int
    uses_regions: bool
    accepts_text_pairs: bool
    build_signatures: Callable
    describe_signatures: Callable
    reference: Callable


_REGISTRY = {}


def register(task):
    """Adds `task` to the registry (its name must be new); returns it."""
    if task.name in _REGISTRY:
        raise ValueError(f"a serving task named {task.name!r} is already "
                         "registered.")
    _REGISTRY[task.name] = task
    return task


def serving_tasks():
    """Every registered `ServingTask`, by name."""
    return dict(_REGISTRY)


def task_named(name):
    """The `ServingTask` called `name`, or a `ValueError` listing them."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown serving task {name!r}; registered: "
                         f"{sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def task_of(model):
    """The `ServingTask` that exports `model`, or `None`."""
    for task in _REGISTRY.values():
        if isinstance(model, tuple(task.model_classes())):
            return task
    return None


# The registered tasks (each module calls `register`).
from keras_interbert.export.tasks import matching  # noqa: E402,F401
from keras_interbert.export.tasks import multiple_choice  # noqa: E402,F401
from keras_interbert.export.tasks import text_classifier  # noqa: E402,F401
