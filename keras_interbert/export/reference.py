"""The Keras side of export validation: a request through the project's own
preprocessing (`pipeline_inputs`) and the model's outputs for it.
"""
import os

import numpy as np


def pipeline_inputs(export_dir, metadata, inputs, columns=("text",)):
    """Backbone inputs of a request, built by the project's data pipeline.

    Text goes through `InterBERTTokenizer` (the export's vocabulary) and
    `InterBERTTextPacker` as configured in the export; each image goes
    through `to_backbone_regions` on its first `num_regions` rows, one
    example at a time (the serving graph does the same batched, by its own
    code). `columns` names the text inputs packed together.
    """
    import tensorflow as tf

    from keras_interbert.data.region_features import to_backbone_regions
    from keras_interbert.preprocessing import InterBERTTextPacker
    from keras_interbert.preprocessing import InterBERTTokenizer

    tokenizer = InterBERTTokenizer(
        os.path.join(export_dir, "assets", "vocabulary.txt"),
        lowercase=metadata["lowercase"], special_tokens_in_strings=False)
    packer = InterBERTTextPacker(
        metadata["sequence_length"], cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id,
        truncate_after_packing=metadata["truncate_after_packing"])
    ids = [tokenizer(tf.constant(np.asarray(inputs[c]).astype(str).tolist(),
                                 tf.string)) for c in columns]
    x = {k: v.numpy() for k, v in packer(*ids).items()}
    if "num_regions" not in inputs:
        return x
    rows = []
    for i in range(len(inputs["num_regions"])):
        n = int(inputs["num_regions"][i])
        height, width = inputs["image_size"][i]
        rows.append(to_backbone_regions(
            {"features": inputs["region_features"][i, :n],
             "boxes": inputs["region_boxes"][i, :n],
             "image_h": height, "image_w": width},
            max_regions=metadata["max_regions"], policy="skip",
            include_class_probs=False))
    for k in ("region_features", "region_locations", "region_mask"):
        x[k] = np.stack([r[k].numpy() for r in rows])
    return x


def as_numpy(value):
    """A backend tensor as float32 numpy (for the Keras references)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), np.float32)


def softmax(logits):
    """Softmax over the last axis, in numpy."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def keras_reference(model, export_dir, metadata, signature, inputs,
                    image_extractor=None):
    """The Keras model's outputs for one request (see `pipeline_inputs`).

    Runs under any Keras backend. `score_image` needs `image_extractor`
    (without it nothing is compared): the images go through the Python
    extraction pipeline (`keras_interbert.vision.extract_regions`), then
    the `score` reference. Every other signature is answered by its
    task's `reference` (`keras_interbert.export.tasks`).
    """
    if signature == "score_image":
        if image_extractor is None:
            return {}
        from keras_interbert.export.image_serving import python_score_inputs

        return keras_reference(
            model, export_dir, metadata, "score", python_score_inputs(
                image_extractor, inputs,
                metadata["image_extractor"]["grid_levels"]))

    from keras_interbert.export.tasks import task_named

    task = task_named(metadata["task"])
    if signature not in metadata["signatures"]:
        raise ValueError(f"unknown signature {signature!r}; the export has "
                         f"{sorted(metadata['signatures'])}.")
    return task.reference(model, export_dir, metadata, signature, inputs)
