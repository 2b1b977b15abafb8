"""Shared checks for layers, preprocessors, backbones and tasks.

In the manner of keras-hub's `TestCase`: one function per kind of component,
each running the checks every component of that kind must pass (config
round trip, serialization, `predict` on `tf.data`, one `fit` step, mixed
precision, `.keras` reload). tests/test_components.py applies them to every
layer, preprocessor, the backbone and every task; a new component gets the
same checks by adding one line there.
"""
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf


def _numpy(tree):
    return keras.tree.map_structure(
        lambda v: np.asarray(keras.ops.convert_to_numpy(v)), tree)


def assert_all_close(a, b, rtol=1e-5, atol=1e-6):
    a, b = _numpy(a), _numpy(b)
    keras.tree.assert_same_structure(a, b)
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64),
                                   np.asarray(y, np.float64), rtol=rtol,
                                   atol=atol)


def _as_tuple(inputs):
    return inputs if isinstance(inputs, tuple) else (inputs,)


def run_layer_test(cls, init_kwargs, inputs, expected_output_shape=None,
                   call_kwargs=None, mixed_precision=True):
    """A layer: output shape, config and serialization round trips with
    identical outputs, mixed precision (float32 variables, the compute
    dtype out), finite outputs."""
    call_kwargs = call_kwargs or {}
    inputs = _as_tuple(inputs)
    layer = cls(**init_kwargs)
    outputs = layer(*inputs, **call_kwargs)
    if expected_output_shape is not None:
        shapes = keras.tree.map_structure(lambda v: tuple(v.shape), outputs)
        assert shapes == expected_output_shape, shapes
    for value in keras.tree.flatten(_numpy(outputs)):
        assert np.isfinite(np.asarray(value, np.float64)).all()

    clone = cls.from_config(layer.get_config())
    clone(*inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    assert_all_close(clone(*inputs, **call_kwargs), outputs)
    assert clone.get_config() == layer.get_config()

    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is cls
    assert revived.get_config() == layer.get_config()

    if mixed_precision and layer.weights:
        mixed = cls(**dict(init_kwargs, dtype="mixed_bfloat16"))
        mixed_outputs = mixed(*inputs, **call_kwargs)
        assert mixed.compute_dtype == "bfloat16"
        assert all(w.dtype == "float32" for w in mixed.weights)
        for value in keras.tree.flatten(mixed_outputs):
            dtype = keras.backend.standardize_dtype(value.dtype)
            if "float" in dtype:
                assert dtype in ("bfloat16", "float32"), dtype
                assert np.isfinite(np.asarray(keras.ops.convert_to_numpy(
                    keras.ops.cast(value, "float32")))).all()
    return layer, outputs


def run_preprocessor_test(preprocessor, raw, expected_keys, tmp_dir=None,
                          expected_label_keys=None, labels=None,
                          label_key=None):
    """A preprocessor: the expected keys, the same result eagerly and
    mapped over `tf.data`, after a config round trip (the same config
    again) and after a preset round trip (save and reload); labels given
    with the inputs reach the output.

    A preprocessor that makes its own targets (the pretrainer's) returns
    `(x, y)` from raw inputs alone: `expected_label_keys` are the keys of
    that `y`, and `labels` given with the inputs must come out as
    `y[label_key]`. Without `expected_label_keys` the output is `x`, and
    `(raw, labels)` gives `(x, labels)` (by default `labels` count the
    examples).
    """
    size = len(next(iter(raw.values())))
    outputs = preprocessor(raw)
    if expected_label_keys is None:
        x = outputs
    else:
        assert isinstance(outputs, tuple) and len(outputs) == 2, type(outputs)
        x, y = outputs
        assert sorted(y) == sorted(expected_label_keys), sorted(y)
    assert sorted(x) == sorted(expected_keys), sorted(x)
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(raw).batch(
        size).map(preprocessor)))
    assert_all_close(mapped, outputs, rtol=0, atol=0)

    config = preprocessor.get_config()
    clone = type(preprocessor).from_config(
        dict(config, tokenizer=preprocessor.tokenizer))
    assert clone.get_config() == config
    assert_all_close(clone(raw), outputs, rtol=0, atol=0)

    def settings(p):  # a reloaded layer has a new name and tokenizer object
        return {k: v for k, v in p.get_config().items()
                if k not in ("name", "tokenizer")}

    with tempfile.TemporaryDirectory(dir=tmp_dir) as folder:
        preset = os.path.join(folder, "preset")
        preprocessor.save_to_preset(preset)
        reloaded = type(preprocessor).from_preset(preset)
        assert settings(reloaded) == settings(preprocessor)
        assert (reloaded.tokenizer.get_vocabulary()
                == preprocessor.tokenizer.get_vocabulary())
        assert_all_close(reloaded(raw), outputs, rtol=0, atol=0)

    if labels is None:
        labels = np.arange(size)
    labelled = preprocessor(raw, labels)
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(
        (raw, labels)).batch(size).map(preprocessor)))
    assert_all_close(mapped, labelled, rtol=0, atol=0)
    x, y = labelled
    if expected_label_keys is None:
        np.testing.assert_array_equal(np.asarray(y), labels)
    else:
        assert sorted(y) == sorted(expected_label_keys), sorted(y)
        np.testing.assert_array_equal(np.asarray(y[label_key]), labels)
    return outputs


def run_model_test(model, x, y=None, loss=None, tmp_dir=None,
                   fit=True, mixed_precision=True):
    """A backbone or a task: `predict` on `tf.data` equals a direct call;
    config round trip (same weights, same outputs); `.keras` reload; one
    `fit` step with a finite loss (with `y`); under `mixed_bfloat16` the
    variables stay float32 and the outputs are finite."""
    direct = model(x, training=False)
    batch = len(next(iter(x.values())))
    predicted = model.predict(
        tf.data.Dataset.from_tensor_slices(x).batch(batch), verbose=0)
    assert_all_close(predicted, direct, rtol=1e-5, atol=1e-5)

    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert_all_close(clone(x, training=False), direct, rtol=1e-5, atol=1e-5)

    with tempfile.TemporaryDirectory(dir=tmp_dir) as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, compile=False)
        assert type(reloaded) is type(model)
        assert_all_close(reloaded(x, training=False), direct, rtol=1e-5,
                         atol=1e-5)

    if fit and y is not None:
        model.compile(optimizer=keras.optimizers.SGD(1e-3),
                      **({} if loss is None else {"loss": loss}))
        history = model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()

    if mixed_precision:
        mixed = type(model).from_config(_with_policy(model.get_config(),
                                                     "mixed_bfloat16"))
        mixed.set_weights(model.get_weights())
        outputs = mixed(x, training=False)
        assert all(w.dtype == "float32" for w in mixed.weights)
        dtypes = {keras.backend.standardize_dtype(v.dtype)
                  for v in keras.tree.flatten(outputs)}
        # Somewhere the model computes in bfloat16 (heads may hand float32
        # logits to the losses).
        assert "bfloat16" in dtypes or any(
            "bfloat16" in str(getattr(layer, "compute_dtype", ""))
            for layer in mixed._flatten_layers()), dtypes
        for value in keras.tree.flatten(_numpy(outputs)):
            assert np.isfinite(np.asarray(value, np.float64)).all()
    return direct


def _with_policy(config, policy):
    """`config` with every serialized dtype policy replaced by `policy`."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return keras.dtype_policies.serialize(
                keras.dtype_policies.get(policy))
        return {k: _with_policy(v, policy) for k, v in config.items()}
    if isinstance(config, list):
        return [_with_policy(v, policy) for v in config]
    return config
