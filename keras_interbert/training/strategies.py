"""Distribution strategies by name, for the recipes' `--strategy` flag."""
import contextlib

import keras

STRATEGIES = ("none", "mirrored", "multi_worker", "jax_data_parallel")


def make_strategy(name):
    """A context manager to build and compile the model under, for `name`.

    `mirrored` and `multi_worker` are `tf.distribute` strategies (TensorFlow
    backend); `jax_data_parallel` sets `keras.distribution.DataParallel` over
    every local JAX device (JAX backend); `none` trains on one device.
    Returns `(scope, num_replicas)`.
    """
    backend = keras.config.backend()
    if name not in STRATEGIES:
        raise ValueError(f"--strategy: expected one of {list(STRATEGIES)}, "
                         f"received {name!r}.")
    if name in ("mirrored", "multi_worker"):
        if backend != "tensorflow":
            raise ValueError(
                f"--strategy {name} needs KERAS_BACKEND=tensorflow; the "
                f"backend is {backend}.")
        import tensorflow as tf

        strategy = (tf.distribute.MirroredStrategy() if name == "mirrored"
                    else tf.distribute.MultiWorkerMirroredStrategy())
        return strategy.scope(), strategy.num_replicas_in_sync
    if name == "jax_data_parallel":
        if backend != "jax":
            raise ValueError("--strategy jax_data_parallel needs "
                             f"KERAS_BACKEND=jax; the backend is {backend}.")
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), len(devices)
    return contextlib.nullcontext(), 1
